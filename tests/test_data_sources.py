import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from softcot.data.datasets import load_catalog
from softcot.data.sources import (
    MIRROR_ENV,
    RawFile,
    RawFiles,
    git_blob_sha1,
    load_registry,
    mirror_from,
    verify,
)
from softcot.errors import ChecksumError, DataError

CONTENT = b'{"question": "q", "answer": "#### 1"}\n'
SHA256 = hashlib.sha256(CONTENT).hexdigest()


def raw_file(url="http://127.0.0.1:1/x", **hashes):
    return RawFile(dir="gsm8k", file="test.jsonl", url=url, license="MIT", **(hashes or {"sha256": SHA256}))


# --- registry -------------------------------------------------------------------------------


def test_registry_pins_every_file_the_catalog_reads():
    registry = load_registry()
    for entry in registry.values():
        assert entry.url.startswith("https://raw.githubusercontent.com/")
        assert any(len(part) == 40 for part in entry.url.split("/")), (
            f"{entry.key}: URL not pinned to a commit"
        )
        assert entry.license
    for spec in load_catalog().values():
        for by_variant in spec.splits.values():
            for source in by_variant.values():
                assert set(source.files) <= set(registry), f"{spec.name}: {source.files}"


def test_registry_rejects_an_entry_without_exactly_one_hash(tmp_path):
    path = tmp_path / "sources.yaml"
    path.write_text("files:\n  - {dir: a, file: b, url: u, license: MIT}\n")
    with pytest.raises(DataError, match=r"files\[0\] \(a/b\): set exactly one of sha256, git_blob_sha1"):
        load_registry(path)


# --- verification -----------------------------------------------------------------------------


def test_git_blob_sha1_matches_git(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_sha1(path) == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_verify_names_the_file_and_both_hashes(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_bytes(CONTENT + b"x")
    actual = hashlib.sha256(CONTENT + b"x").hexdigest()
    with pytest.raises(ChecksumError) as info:
        verify(path, raw_file())
    assert str(path) in str(info.value) and SHA256 in str(info.value) and actual in str(info.value)


def test_verify_uses_the_git_blob_id_when_no_sha256_is_known(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_bytes(CONTENT)
    verify(path, raw_file(git_blob_sha1=git_blob_sha1(path)))
    with pytest.raises(ChecksumError, match="git blob sha1 mismatch"):
        verify(path, raw_file(git_blob_sha1="0" * 40))


# --- mirror -----------------------------------------------------------------------------------


def test_mirror_file_is_verified_and_read_in_place(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_bytes(CONTENT)
    files = RawFiles({"gsm8k/test.jsonl": raw_file()}, mirror=tmp_path, raw_dir=tmp_path / "raw")
    assert files.path("gsm8k/test.jsonl") == tmp_path / "gsm8k" / "test.jsonl"
    assert not (tmp_path / "raw").exists()


def test_corrupt_mirror_file_is_a_checksum_error(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_bytes(CONTENT.replace(b"1", b"2"))
    files = RawFiles({"gsm8k/test.jsonl": raw_file()}, mirror=tmp_path)
    with pytest.raises(
        ChecksumError, match=f"test.jsonl: sha256 mismatch .*expected {SHA256}, actual [0-9a-f]{{64}}"
    ):
        files.path("gsm8k/test.jsonl")


def test_file_missing_from_the_mirror_is_a_clear_error(tmp_path):
    files = RawFiles({"gsm8k/test.jsonl": raw_file()}, mirror=tmp_path)
    with pytest.raises(DataError, match="gsm8k/test.jsonl is missing from the mirror"):
        files.path("gsm8k/test.jsonl")


def test_unregistered_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="not in the raw-file registry"):
        RawFiles({}, mirror=tmp_path).path("gsm8k/nope.jsonl")


def test_mirror_environment_variable_wins_over_the_setting(monkeypatch, tmp_path):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    assert mirror_from(None) is None
    assert mirror_from("/from/params") == Path("/from/params")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path))
    assert mirror_from("/from/params") == tmp_path
    assert mirror_from(None) == tmp_path


# --- download (a real HTTP server on 127.0.0.1) ------------------------------------------------


class ScriptedServer:
    """Answers the n-th request with the n-th scripted behaviour: "ok", "sleep", or an HTTP status."""

    def __init__(self, script, body=CONTENT):
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                step = script[min(server.requests, len(script) - 1)]
                server.requests += 1
                if step == "sleep":
                    time.sleep(1.0)
                status = step if isinstance(step, int) else 200
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) if status == 200 else 0))
                self.end_headers()
                if status == 200:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.httpd.handle_error = lambda *args: None  # a client that timed out closed its socket
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/grade_school_math/data/test.jsonl"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def downloader(tmp_path, url, retries=2, **hashes):
    return RawFiles(
        {"gsm8k/test.jsonl": raw_file(url, **hashes)},
        mirror=None,
        raw_dir=tmp_path / "raw",
        timeout_s=0.3,
        retries=retries,
        backoff_s=0,
    )


def test_download_lands_in_raw_dir_and_is_reused(tmp_path):
    with ScriptedServer(["ok"]) as server:
        files = downloader(tmp_path, server.url)
        path = files.path("gsm8k/test.jsonl")
        assert path == tmp_path / "raw" / "gsm8k" / "test.jsonl"
        assert path.read_bytes() == CONTENT
        files.path("gsm8k/test.jsonl")
    assert server.requests == 1


def test_download_retries_after_a_server_error(tmp_path):
    with ScriptedServer([503, "ok"]) as server:
        path = downloader(tmp_path, server.url).path("gsm8k/test.jsonl")
    assert server.requests == 2
    assert path.read_bytes() == CONTENT


def test_download_retries_after_a_timeout(tmp_path):
    with ScriptedServer(["sleep", "ok"]) as server:
        path = downloader(tmp_path, server.url).path("gsm8k/test.jsonl")
    assert server.requests == 2
    assert path.read_bytes() == CONTENT


def test_download_gives_up_after_the_retries_and_leaves_no_file(tmp_path):
    with ScriptedServer([500]) as server, pytest.raises(DataError, match="download failed after 3 attempt"):
        downloader(tmp_path, server.url, retries=2).path("gsm8k/test.jsonl")
    assert server.requests == 3
    assert not [p for p in (tmp_path / "raw").rglob("*") if p.is_file()]


def test_download_does_not_retry_a_missing_file(tmp_path):
    with ScriptedServer([404]) as server, pytest.raises(DataError, match="HTTP 404"):
        downloader(tmp_path, server.url).path("gsm8k/test.jsonl")
    assert server.requests == 1


def test_downloaded_file_with_the_wrong_hash_is_not_kept(tmp_path):
    with ScriptedServer(["ok"], body=CONTENT + b"tampered") as server, pytest.raises(ChecksumError) as info:
        downloader(tmp_path, server.url).path("gsm8k/test.jsonl")
    assert "test.jsonl" in str(info.value) and SHA256 in str(info.value)
    assert hashlib.sha256(CONTENT + b"tampered").hexdigest() in str(info.value)
    assert not [p for p in (tmp_path / "raw").rglob("*") if p.is_file()]


def test_corrupt_cached_download_is_fetched_again(tmp_path):
    cached = tmp_path / "raw" / "gsm8k" / "test.jsonl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    with ScriptedServer(["ok"]) as server:
        downloader(tmp_path, server.url).path("gsm8k/test.jsonl")
    assert cached.read_bytes() == CONTENT
