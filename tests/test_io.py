"""Atomic writes: nothing at the target unless the block succeeds, and the usual file mode."""

from __future__ import annotations

import os

import pytest

from softcot.io import atomic_path, write_json_atomic


def test_failed_block_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_file_gets_the_mode_open_would_give(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "out.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o666 & ~umask
