"""Pinned raw files: the registry (sources.yaml), and obtaining a verified copy of each file.

A file comes either from a mirror directory laid out <dir>/<file> (read in place) or from its
pinned URL (downloaded once to data/raw/<dir>/<file>). Both paths check the pinned hash, so the
prepared data cannot silently depend on where the raw bytes came from.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml
from tqdm import tqdm

from softcot.errors import ChecksumError, DataError
from softcot.io import atomic_path, sha256_file

REGISTRY_PATH = Path(__file__).with_name("sources.yaml")
MIRROR_ENV = "SOFTCOT_DATA_MIRROR"
RAW_DIR = Path("data/raw")
_CHUNK = 1 << 20
# Server-side failures worth another attempt; any other HTTP error will not heal by retrying.
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RawFile:
    """One pinned raw file. Exactly one of sha256 / git_blob_sha1 is set."""

    dir: str
    file: str
    url: str
    license: str
    sha256: str | None = None
    git_blob_sha1: str | None = None

    @property
    def key(self) -> str:
        return f"{self.dir}/{self.file}"


def load_registry(path: Path = REGISTRY_PATH) -> dict[str, RawFile]:
    """The registry keyed by "<dir>/<file>"; a malformed entry is a DataError naming it."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8"))["files"]
    registry = {}
    for i, entry in enumerate(entries):
        try:
            raw = RawFile(**entry)
        except TypeError as exc:
            raise DataError(f"{path}: files[{i}]: {exc}") from exc
        if (raw.sha256 is None) == (raw.git_blob_sha1 is None):
            raise DataError(f"{path}: files[{i}] ({raw.key}): set exactly one of sha256, git_blob_sha1")
        if raw.key in registry:
            raise DataError(f"{path}: files[{i}]: {raw.key} is listed twice")
        registry[raw.key] = raw
    return registry


def git_blob_sha1(path: str | os.PathLike) -> str:
    """git's object id of a file's content: sha1 over "blob <size>\\0" followed by the bytes."""
    digest = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, raw: RawFile, shown_as: str | None = None) -> None:
    """Raise ChecksumError (naming the file, the expected and the actual hash) unless `path` matches."""
    if raw.sha256 is not None:
        kind, expected, actual = "sha256", raw.sha256, sha256_file(path)
    else:
        kind, expected, actual = "git blob sha1", raw.git_blob_sha1, git_blob_sha1(path)
    if actual != expected:
        raise ChecksumError(
            f"{shown_as or path}: {kind} mismatch for {raw.key}: expected {expected}, actual {actual}"
        )


def download(url: str, dest: Path, timeout_s: float, retries: int, backoff_s: float = 1.0) -> None:
    """Stream `url` into `dest`, retrying connection failures, timeouts and 5xx answers.

    `dest` is rewritten from the start on each attempt; callers pass a temporary path
    (softcot.io.atomic_path) so that a failed download never looks like a finished one.
    """
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        try:
            with requests.get(url, stream=True, timeout=timeout_s) as response:
                if response.status_code in _RETRY_STATUS:
                    raise requests.HTTPError(f"HTTP {response.status_code}", response=response)
                if response.status_code != 200:
                    raise DataError(f"{url}: download failed with HTTP {response.status_code}")
                total = int(response.headers.get("Content-Length", 0)) or None
                with (
                    dest.open("wb") as f,
                    tqdm(
                        total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], leave=False
                    ) as bar,
                ):
                    for chunk in response.iter_content(_CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            return
        except requests.RequestException as exc:
            if attempt == attempts:
                raise DataError(f"{url}: download failed after {attempts} attempt(s): {exc}") from exc
            tqdm.write(f"{url}: attempt {attempt} of {attempts} failed ({exc}); retrying")
            time.sleep(backoff_s * attempt)


def mirror_from(setting: str | None) -> Path | None:
    """The mirror directory: $SOFTCOT_DATA_MIRROR, else the data.mirror setting, else None (download)."""
    chosen = os.environ.get(MIRROR_ENV) or setting
    return Path(chosen) if chosen else None


@dataclass(frozen=True)
class RawFiles:
    """Where raw files come from, and the registry that pins them."""

    registry: dict[str, RawFile]
    mirror: Path | None
    raw_dir: Path = RAW_DIR
    timeout_s: float = 60
    retries: int = 3
    backoff_s: float = 1.0

    @classmethod
    def from_settings(cls, data: dict) -> RawFiles:
        """From params.yaml's `data` section (mirror, download) and the packaged registry."""
        return cls(
            registry=load_registry(),
            mirror=mirror_from(data["mirror"]),
            timeout_s=data["download"]["timeout_s"],
            retries=data["download"]["retries"],
        )

    def path(self, key: str) -> Path:
        """A verified local path of the raw file `key` ("<dir>/<file>")."""
        if key not in self.registry:
            raise DataError(f"{key}: not in the raw-file registry {REGISTRY_PATH}")
        raw = self.registry[key]
        if self.mirror is not None:
            path = self.mirror / key
            if not path.is_file():
                raise DataError(
                    f"{path}: {key} is missing from the mirror {self.mirror} "
                    f"(set by ${MIRROR_ENV} or data.mirror); unset both to download it from {raw.url}"
                )
            verify(path, raw)
            return path
        dest = self.raw_dir / key
        if dest.is_file():
            try:
                verify(dest, raw)
                return dest
            except ChecksumError as exc:
                tqdm.write(f"{exc}; downloading it again")
        with atomic_path(dest) as tmp:
            download(raw.url, tmp, self.timeout_s, self.retries, self.backoff_s)
            verify(tmp, raw, shown_as=f"{dest} (downloaded from {raw.url})")
        return dest
