"""Pre-downloaded weights (issue 10): registry sources of kind `local`, and a Hub model redirected
to a local directory (params `models.local_paths` -> registry.get_spec(name, local_paths)).

The directory is what `hf download meta-llama/Llama-3.1-8B-Instruct --local-dir DIR` leaves on a
cluster's shared disk, in miniature: a tiny random Llama with the real vocabulary size and the
real Llama 3 tokenizer (tests/real_tokenizers.py) with the Llama 3.1 chat template, plus the
`original/` checkpoint and the `.cache/huggingface` metadata that must not be copied.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from real_tokenizers import LLAMA3_CHAT_TEMPLATE
from transformers import LlamaConfig, LlamaForCausalLM

from softcot import cli
from softcot.errors import ModelError
from softcot.models import load_model, sources
from softcot.models.load import load_materialized
from softcot.models.manifest import read_manifest
from softcot.models.materialize import materialize_spec
from softcot.models.registry import (
    REGISTRY_PATH,
    HubSource,
    LocalSource,
    get_spec,
    load_registry,
    with_local_path,
)

LLAMA = "llama-3.1-8b-instruct"
REVISION = get_spec(LLAMA).source.revision
LLAMA_TOKEN_IDS = {"unk": 128001, "bot": 128002, "eot": 128003, "stop": [128009], "pad": 128009}


def write_model_dir(path: Path, tokenizer_dir: Path, revision: str | None) -> Path:
    """A Hugging Face model directory as `hf download --local-dir` leaves it (weights in bf16)."""
    config = LlamaConfig(
        vocab_size=128256, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=[128001, 128008, 128009],
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    shutil.copy(tokenizer_dir / "tokenizer.json", path / "tokenizer.json")
    tokenizer_config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = LLAMA3_CHAT_TEMPLATE  # where the Hub repository keeps it
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (path / "original").mkdir()
    (path / "original" / "consolidated.00.pth").write_bytes(b"the 16 GB Meta checkpoint")
    metadata = path / ".cache" / "huggingface" / "download"
    metadata.mkdir(parents=True)
    if revision is not None:
        (metadata / "config.json.metadata").write_text(f"{revision}\nsome-etag\n1722000000.0\n")
    return path


@pytest.fixture(scope="module")
def local_llama(tmp_path_factory, real_tokenizer_dirs) -> Path:
    """The pinned revision of Llama-3.1-8B-Instruct, downloaded with `hf download --local-dir`."""
    root = tmp_path_factory.mktemp("weights") / "Llama-3.1-8B-Instruct"
    return write_model_dir(root, real_tokenizer_dirs["llama3"], REVISION)


@pytest.fixture
def offline(monkeypatch):
    """No network: a Hub download fails the test."""

    def snapshot_download(**kwargs):
        pytest.fail(f"tried to download {kwargs}")

    monkeypatch.setattr(sources, "snapshot_download", snapshot_download)


def check_loaded(loaded, directory: Path) -> None:
    """A frozen bf16 model with the directory's weights, and the protocol's Llama token ids."""
    assert (loaded.placeholder_ids.unk, loaded.placeholder_ids.bot, loaded.placeholder_ids.eot) == (
        128001,
        128002,
        128003,
    )
    assert (loaded.stop_ids, loaded.pad_id) == ([128009], 128009)
    assert loaded.model.dtype == torch.bfloat16 and not any(
        p.requires_grad for p in loaded.model.parameters()
    )
    reference = LlamaForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    ids = torch.tensor([[128000, 9906, 128002, 128001, 128001, 128003, 128009]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, reference(ids).logits)
    prompt = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, date_string="26 Jul 2024"
    )
    assert "Today Date: 26 Jul 2024\n\n<|eot_id|>" in prompt


# --- the registry ----------------------------------------------------------------------------------
def test_a_local_registry_entry_materializes_and_loads(tmp_path, local_llama, offline):
    raw = yaml.safe_load(REGISTRY_PATH.read_text())
    entry = {
        **raw["models"][LLAMA],
        "source": {"kind": "local", "path": str(local_llama), "files": raw["hub_files"]},
    }
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"models": {"my-llama": entry}}))
    spec = load_registry(registry)["my-llama"]
    assert spec.source == LocalSource(path=str(local_llama), files=tuple(raw["hub_files"]))

    target = materialize_spec(spec, tmp_path / "models")

    manifest = read_manifest(target)
    assert manifest["token_ids"] == LLAMA_TOKEN_IDS
    assert manifest["vocab_size"] == 128256
    assert manifest["source"] == {
        "kind": "local",
        "path": str(local_llama.resolve()),
        "repo_id": None,
        "revision": None,
        "directory_revision": REVISION,
        "revision_verified": False,
    }
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(
        manifest["files"]
    )
    assert not any(name.startswith(("original/", ".cache/")) for name in manifest["files"])
    check_loaded(load_materialized(spec, tmp_path / "models", device="cpu"), local_llama)


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ({"kind": "local", "files": ["config.json"]}, "'path' is a required property"),
        ({"kind": "local", "path": "/w", "files": ["*"], "revision": "main"}, "source.revision"),
        ({"kind": "local", "path": "/w", "files": ["*"], "url": "x"}, "source"),
    ],
)
def test_invalid_local_sources_are_rejected(tmp_path, source, key):
    raw = yaml.safe_load(REGISTRY_PATH.read_text())
    raw["models"][LLAMA]["source"] = source
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelError, match=f"models.{LLAMA}.*{key}"):
        load_registry(registry)


# --- a Hub model redirected to a local directory --------------------------------------------------
def test_a_local_path_redirects_a_hub_model_and_keeps_everything_else():
    hub = get_spec(LLAMA)
    redirected = get_spec(LLAMA, {LLAMA: "/shared/weights/Llama-3.1-8B-Instruct"})
    assert isinstance(hub.source, HubSource)
    assert redirected.source == LocalSource(
        path="/shared/weights/Llama-3.1-8B-Instruct",
        files=hub.source.files,
        repo_id="meta-llama/Llama-3.1-8B-Instruct",
        revision=hub.source.revision,
    )
    assert dataclasses.replace(redirected, source=hub.source) == hub
    assert get_spec("qwen2.5-7b-instruct", {LLAMA: "/x"}) == get_spec("qwen2.5-7b-instruct")
    assert with_local_path(redirected, "/y").source.path == "/y"


def test_local_paths_name_registered_hub_models_only():
    with pytest.raises(ModelError, match=r"models.local_paths: unknown model\(s\) 'llama-3.1-8b'"):
        get_spec(LLAMA, {"llama-3.1-8b": "/x"})
    with pytest.raises(ModelError, match="smollm2-135m-instruct: a local path cannot replace a PyPI source"):
        get_spec("smollm2-135m-instruct", {"smollm2-135m-instruct": "/x"})


def test_the_materialize_command_takes_local_paths(tmp_path, local_llama, offline, capsys):
    models_dir = tmp_path / "models"
    argv = ["materialize", LLAMA, "--models-dir", str(models_dir), "--local-path", f"{LLAMA}={local_llama}"]

    assert cli.main(argv) == 0

    manifest = read_manifest(models_dir / LLAMA)
    assert manifest["token_ids"] == LLAMA_TOKEN_IDS
    assert manifest["source"]["repo_id"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert manifest["source"]["revision_verified"] is True
    assert manifest["spec"] == get_spec(LLAMA, {LLAMA: str(local_llama)}).to_dict()
    check_loaded(
        load_model(LLAMA, models_dir, device="cpu", local_paths={LLAMA: str(local_llama)}), local_llama
    )
    # The build belongs to the redirected spec: loading it as the Hub spec is refused.
    with pytest.raises(ModelError, match="another spec"):
        load_model(LLAMA, models_dir, device="cpu")
    assert cli.main(["materialize", LLAMA, "--local-path", "no-equals-sign"]) == 2
    assert "expected MODEL=DIR" in capsys.readouterr().err


def test_a_directory_of_another_revision_is_refused(tmp_path, local_llama):
    other = tmp_path / "other"
    shutil.copytree(local_llama, other, ignore=shutil.ignore_patterns("*.safetensors", "tokenizer.json"))
    (other / ".cache/huggingface/download/config.json.metadata").write_text("b" * 40 + "\netag\n0\n")
    spec = get_spec(LLAMA, {LLAMA: str(other)})
    with pytest.raises(ModelError, match=f"holds revision b{{40}} .* the spec pins {REVISION}"):
        materialize_spec(spec, tmp_path / "models")
    assert not (tmp_path / "models" / LLAMA).exists()


def test_the_revision_a_directory_records(tmp_path):
    snapshot = tmp_path / "models--org--m" / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    assert sources.local_revision(snapshot) == "c" * 40  # an HF cache snapshot
    link = tmp_path / "weights"
    link.symlink_to(snapshot)
    assert sources.local_revision(link) == "c" * 40  # ... reached through a link
    plain = tmp_path / "plain"
    plain.mkdir()
    assert sources.local_revision(plain) is None
    (plain / ".cache/huggingface/download").mkdir(parents=True)
    (plain / ".cache/huggingface/download/config.json.metadata").write_text("d" * 40 + "\netag\n0\n")
    assert sources.local_revision(plain) == "d" * 40  # hf download --local-dir


def test_an_hf_cache_snapshot_is_copied_through_its_links(tmp_path):
    """The HF cache layout: snapshot files are links into blobs/; the commit is in the path."""
    repo = tmp_path / "hub" / "models--org--m"
    snapshot = repo / "snapshots" / ("c" * 40)
    (snapshot / "original").mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name, data in {
        "config.json": b"{}",
        "model.safetensors": b"weights",
        "original/x.pth": b"no",
    }.items():
        blob = repo / "blobs" / name.replace("/", "_")
        blob.write_bytes(data)
        (snapshot / name).symlink_to(blob)
    source = LocalSource(str(snapshot), ("config.json", "model*.safetensors"), "org/m", "c" * 40)

    record = sources.copy_local_model("m", source, tmp_path / "build")

    copied = sorted(p.relative_to(tmp_path / "build").as_posix() for p in (tmp_path / "build").rglob("*"))
    assert copied == ["config.json", "model.safetensors"]
    assert (tmp_path / "build" / "model.safetensors").read_bytes() == b"weights"
    assert not (tmp_path / "build" / "model.safetensors").is_symlink()
    assert (record["directory_revision"], record["revision_verified"]) == ("c" * 40, True)


def test_a_directory_that_records_no_revision_is_taken_unverified(tmp_path, capsys):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "config.json").write_text("{}")
    source = LocalSource(str(tmp_path / "weights"), ("config.json",), "org/m", "e" * 40)

    record = sources.copy_local_model("m", source, tmp_path / "build")

    assert (record["directory_revision"], record["revision_verified"]) == (None, False)
    assert f"taking it as org/m@{'e' * 40} unverified" in capsys.readouterr().err


def test_a_missing_directory_is_a_model_error(tmp_path):
    spec = get_spec(LLAMA, {LLAMA: str(tmp_path / "absent")})
    with pytest.raises(
        ModelError, match=r"absent \(model llama-3.1-8b-instruct: source.path\): not a directory"
    ):
        materialize_spec(spec, tmp_path / "models")


def test_a_local_llama_pair_materializes_trains_and_evaluates_through_the_commands(
    tmp_path, local_llama, real_tokenizer_dirs, offline, gsm8k_examples
):
    """Both paper Llama models redirected to pre-downloaded directories, end to end with `softcot`."""
    from softcot.io import load_jsonl, write_jsonl_atomic
    from softcot.plan import Plan

    assistant = "llama-3.2-1b-instruct"
    assistant_dir = write_model_dir(tmp_path / "Llama-3.2-1B", real_tokenizer_dirs["llama3"], None)
    redirect = ["--local-path", f"{LLAMA}={local_llama}", "--local-path", f"{assistant}={assistant_dir}"]
    models = tmp_path / "models"
    assert cli.main(["materialize", LLAMA, assistant, "--models-dir", str(models), *redirect]) == 0

    write_jsonl_atomic(tmp_path / "train.jsonl", gsm8k_examples)
    write_jsonl_atomic(tmp_path / "test.jsonl", [dict(e, split="test") for e in gsm8k_examples[:2]])
    plan = Plan.load(Path(__file__).resolve().parent.parent / "params.yaml", {"preset": "paper"})
    train_settings = dict(plan.train("projector", "llama", "gsm8k").settings, epochs=1, limit=2, batch_size=2)
    checkpoint = tmp_path / "projector.safetensors"
    common = ["--pair", "llama", "--dataset", "gsm8k", "--models-dir", str(models), *redirect]
    assert (
        cli.main(
            [
                "train",
                *common,
                "--settings",
                json.dumps(train_settings),
                "--train",
                str(tmp_path / "train.jsonl"),
            ]
            + ["--states", str(tmp_path / "states"), "--checkpoint", str(checkpoint)]
            + ["--record", str(tmp_path / "projector.json")]
        )
        == 0
    )
    eval_settings = dict(plan.evaluate("llama", "gsm8k", "softcot").settings, seeds=[41], max_new_tokens=3)
    predictions = tmp_path / "seed41.jsonl"
    assert (
        cli.main(
            ["evaluate", *common, "--method", "softcot", "--settings", json.dumps(eval_settings)]
            + ["--test", str(tmp_path / "test.jsonl"), "--artefact", str(checkpoint)]
            + ["--predictions", str(predictions), "--metrics", str(tmp_path / "seed41.metrics.json")]
        )
        == 0
    )
    assert [r["id"] for r in load_jsonl(predictions)] == [e["id"] for e in gsm8k_examples[:2]]
