"""File helpers shared by every step: atomic writes, JSON lines, hashing.

Every output goes through `atomic_path`, so a crash or a bad input never leaves a
half-written file where Snakemake or a user would take it for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from softcot.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file owner-only; give it the mode a plain open() would have, so
        # results stay readable by a team sharing the directory.
        tmp_path.chmod(_new_file_mode())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def dumps_jsonl_record(record: dict) -> str:
    """One canonical line: fixed key order and no ASCII escaping, so rebuilds are byte-identical."""
    return json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records as JSON lines atomically; return how many were written."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(dumps_jsonl_record(record))
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-empty line; a bad line is a DataError naming file and line.

    Lines are decoded one by one, so bytes that are not UTF-8 are reported with their line too.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: not valid UTF-8 (byte {raw[exc.start]:#04x} at offset "
                    f"{exc.start} of the line); the file is corrupt or was saved in another encoding"
                ) from exc
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def load_jsonl(path: str | os.PathLike) -> list[dict]:
    return [obj for _, obj in read_jsonl(path)]


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(obj: Any) -> str:
    """Equal objects give equal strings (keys sorted), so settings compare and hash exactly."""
    return json.dumps(obj, sort_keys=True)


def json_sha256(obj: Any) -> str:
    """A short sha256 (16 hex) of an object's canonical JSON: the fingerprint of a step's settings,
    the same whether computed from the plan or from a file that recorded them."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:16]
