"""The documents match the code: none of them calls a method missing that softcot/methods/ provides.

A document is read as items (a paragraph, a list item or a table row); an item that says something
is not implemented must not name an implemented method: its kind (`softcot-pp`) or a table label
that evaluates it (`LoRA Fine-Tuning`, `Coconut (LoRA)`), or the label's first word or its name
before the parenthesis (`LoRA`, `Coconut`).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from softcot.methods.catalog import method_kinds

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", REPO / "data" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MISSING = re.compile(
    r"\bnot (?:yet )?implemented\b|\bunimplemented\b|\b(?:neither|nor)\b[^|]*\bimplemented\b", re.I
)
ITEM_START = re.compile(r"^\s*(?:\||[-*] |\d+\. |#)")


def implemented_names() -> set[str]:
    kinds = set(method_kinds())
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    names = set(kinds)
    for table in params["tables"].values():
        for row in table["rows"]:
            if params["methods"][row["method"]]["kind"] in kinds:
                names.update({row["label"], row["label"].split(" (")[0], row["label"].split()[0]})
    return names


def items(text: str) -> list[str]:
    """Paragraphs, list items and table rows, each joined into one string."""
    found: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            found.append([])
        elif ITEM_START.match(line) or not found:
            found.append([line])
        else:
            found[-1].append(line)
    return [" ".join(lines) for lines in found if lines]


def mentions(item: str, name: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w+-])", item, re.I) is not None


def test_no_document_calls_an_implemented_method_missing():
    names = implemented_names()
    assert {"lora", "coconut", "softcot-pp", "LoRA", "Coconut", "SoftCoT++"} <= names
    stale = [
        f"{path.relative_to(REPO)}: {item.strip()[:160]}"
        for path in DOCUMENTS
        for item in items(path.read_text(encoding="utf-8"))
        if MISSING.search(item) and any(mentions(item, name) for name in names)
    ]
    assert not stale, "documents call implemented methods missing:\n" + "\n".join(stale)


def test_the_check_finds_a_stale_sentence():
    stale = "2. The LoRA and Coconut configurations.\n   **Current choice:** neither baseline is implemented."
    assert any(MISSING.search(item) and mentions(item, "Coconut") for item in items(stale))
    assert not any(MISSING.search(item) for item in items("SoftCoT++ is implemented (§12)."))
