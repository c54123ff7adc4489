"""Fault injection: deleted, truncated or corrupt files give a project error naming the file, or
are treated as stale and rebuilt, with the same result as a clean run.

Model directories are built by `materialize_spec` from a saved tiny random model (the source
fetch is replaced by a copy), so a rebuild costs a fraction of a second.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from softcot import cli
from softcot.data.schema import read_prepared
from softcot.errors import DataError, ModelError
from softcot.io import read_jsonl, write_jsonl_atomic
from softcot.methods.softcot import batch_loss, batch_thoughts, make_batch
from softcot.models.load import load_materialized
from softcot.models.manifest import MANIFEST_NAME, folder_problems, incomplete_folders, read_manifest
from softcot.models.materialize import materialize_spec
from softcot.prompts import PromptRenderer, load_prompt_set
from softcot.thoughts import MASTER_DTYPES, Projector, check_projector_file, load_projector, save_projector
from softcot.training import loop
from softcot.training.loop import Recipe, fit, token_mean
from softcot.training.pair_data import (
    TrainingData,
    compute_states,
    encode_training_data,
    load_or_compute_states,
)

MATERIALIZE_MODULE = importlib.import_module("softcot.models.materialize")
MODEL_FILES = ["model.safetensors", "tokenizer.json", "config.json"]


# --- materialized model directories -----------------------------------------------------------
@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, tiny_base) -> Path:
    """The tiny base model saved as a Hugging Face directory: what a source fetch would give."""
    directory = tmp_path_factory.mktemp("snapshot")
    tiny_base.model.save_pretrained(directory)
    tiny_base.tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def builds(snapshot, monkeypatch) -> list[str]:
    """Replace the source fetch by a copy of `snapshot`; record the name of each build."""
    calls: list[str] = []

    def copy_snapshot(spec, work, build, downloads):
        calls.append(spec.name)
        shutil.copytree(snapshot, build, dirs_exist_ok=True)
        return {"kind": "test"}

    monkeypatch.setattr(MATERIALIZE_MODULE, "_build", copy_snapshot)
    return calls


@pytest.fixture
def models_dir(tmp_path, builds, tiny_base) -> Path:
    materialize_spec(tiny_base.spec, tmp_path / "models")
    assert builds == ["tiny-base"]
    return tmp_path / "models"


def entries(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir())


def test_the_manifest_records_every_file_with_its_size(models_dir):
    model_dir = models_dir / "tiny-base"
    manifest = read_manifest(model_dir)
    assert set(MODEL_FILES) <= set(manifest["files"]) == set(manifest["sizes"])
    assert all(manifest["sizes"][name] == (model_dir / name).stat().st_size for name in manifest["files"])
    assert folder_problems(model_dir, hashes=True) == []


@pytest.mark.parametrize("name", MODEL_FILES)
def test_a_deleted_file_is_named_and_materialize_repairs_it(models_dir, builds, tiny_base, name, capsys):
    (models_dir / "tiny-base" / name).unlink()

    with pytest.raises(ModelError) as error:
        load_materialized(tiny_base.spec, models_dir, device="cpu")
    message = str(error.value)
    assert f"{models_dir / 'tiny-base' / name}: missing" in message
    assert f"softcot materialize tiny-base --models-dir {models_dir}" in message
    assert "snakemake --cores 1" in message

    materialize_spec(tiny_base.spec, models_dir)
    assert builds == ["tiny-base", "tiny-base"]
    assert "is incomplete: " in capsys.readouterr().err
    assert entries(models_dir) == ["tiny-base"]  # rebuilt beside it and renamed: nothing left over
    loaded = load_materialized(tiny_base.spec, models_dir, device="cpu")
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, tiny_base.model(ids).logits)


def test_a_failed_repair_leaves_the_old_directory_and_no_partial_one(models_dir, tiny_base, monkeypatch):
    (models_dir / "tiny-base" / "model.safetensors").unlink()
    before = sorted(p.name for p in (models_dir / "tiny-base").iterdir())

    def failing_build(spec, work, build, downloads):
        (build / "config.json").write_text("{}")  # half-way through
        raise ModelError("source unreachable")

    monkeypatch.setattr(MATERIALIZE_MODULE, "_build", failing_build)
    with pytest.raises(ModelError, match="source unreachable"):
        materialize_spec(tiny_base.spec, models_dir)
    assert entries(models_dir) == ["tiny-base"]
    assert sorted(p.name for p in (models_dir / "tiny-base").iterdir()) == before
    with pytest.raises(ModelError, match="model.safetensors: missing"):
        load_materialized(tiny_base.spec, models_dir, device="cpu")


def test_a_truncated_file_is_named_with_its_size(models_dir, tiny_base):
    tokenizer = models_dir / "tiny-base" / "tokenizer.json"
    size = tokenizer.stat().st_size
    tokenizer.write_bytes(tokenizer.read_bytes()[: size // 2])
    with pytest.raises(ModelError, match=rf"tokenizer.json: {size // 2} bytes, the manifest says {size}"):
        load_materialized(tiny_base.spec, models_dir, device="cpu")


def test_a_complete_directory_is_not_rebuilt(models_dir, builds, tiny_base):
    materialize_spec(tiny_base.spec, models_dir)
    assert builds == ["tiny-base"]


def test_a_manifest_without_sizes_is_checked_for_presence(models_dir, builds, tiny_base):
    """Directories materialized before sizes were recorded stay valid while their files are there."""
    model_dir = models_dir / "tiny-base"
    manifest = read_manifest(model_dir)
    del manifest["sizes"]
    (model_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    load_materialized(tiny_base.spec, models_dir, device="cpu")
    materialize_spec(tiny_base.spec, models_dir)
    assert builds == ["tiny-base"]

    (model_dir / "config.json").unlink()
    with pytest.raises(ModelError, match="config.json: missing"):
        load_materialized(tiny_base.spec, models_dir, device="cpu")


def flip_bytes(path: Path) -> None:
    """Same size, other content: only a hash check sees it."""
    data = bytearray(path.read_bytes())
    data[: min(64, len(data))] = bytes(b ^ 0xFF for b in data[:64])
    path.write_bytes(bytes(data))


def test_verify_checks_sizes_and_on_demand_hashes(models_dir, builds, tiny_base, capsys):
    where = ["--models-dir", str(models_dir)]
    assert cli.main(["verify", *where]) == 0
    assert "tiny-base: ok (sizes)" in capsys.readouterr().out

    flip_bytes(models_dir / "tiny-base" / "model.safetensors")
    assert cli.main(["verify", "tiny-base", *where]) == 0  # the size is right
    with pytest.raises(ModelError, match="cannot load model 'tiny-base'.*--hashes"):
        load_materialized(tiny_base.spec, models_dir, device="cpu")

    assert cli.main(["verify", "tiny-base", *where, "--hashes"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("softcot verify: error: 1 of 1 model(s) damaged or missing:")
    assert "model.safetensors: sha256 differs" in err
    assert f"softcot materialize tiny-base --models-dir {models_dir}" in err
    assert read_manifest(models_dir / "tiny-base") is not None  # only --invalidate removes it

    assert cli.main(["verify", "tiny-base", *where, "--hashes", "--invalidate"]) == 2
    assert read_manifest(models_dir / "tiny-base") is None
    materialize_spec(tiny_base.spec, models_dir)
    assert builds == ["tiny-base", "tiny-base"]
    assert cli.main(["verify", *where, "--hashes"]) == 0


def test_verify_names_a_model_that_is_not_materialized(tmp_path, capsys):
    assert cli.main(["verify", "nothing-here", "--models-dir", str(tmp_path)]) == 2
    assert f"{tmp_path / 'nothing-here' / MANIFEST_NAME}: missing or unreadable" in capsys.readouterr().err
    assert cli.main(["verify", "--models-dir", str(tmp_path / "empty")]) == 2
    assert "no model directories to verify" in capsys.readouterr().err


def test_incomplete_folders_names_only_a_damaged_directory_and_writes_nothing(models_dir, tmp_path):
    """What the Snakefile checks before building its DAG: the damaged directory and its problem,
    with every manifest left in place (planning writes nothing)."""
    shutil.copytree(models_dir / "tiny-base", models_dir / "other")
    (models_dir / "other" / "tokenizer.json").unlink()
    (models_dir / ".downloads").mkdir()

    found = incomplete_folders(models_dir)

    assert list(found) == ["other"] and any("tokenizer.json: missing" in p for p in found["other"])
    assert (models_dir / "other" / MANIFEST_NAME).exists()
    assert (models_dir / "tiny-base" / MANIFEST_NAME).exists()
    assert incomplete_folders(tmp_path / "absent") == {}


# --- prepared data ----------------------------------------------------------------------------
def test_non_utf8_bytes_name_the_file_and_line(tmp_path, gsm8k_examples):
    path = tmp_path / "gsm8k" / "train.jsonl"
    write_jsonl_atomic(path, gsm8k_examples)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"apples", "pommes \u00e9t\u00e9".encode("latin-1"), 1)
    path.write_bytes(b"".join(lines))

    with pytest.raises(DataError, match=rf"^{path}:3: not valid UTF-8 \(byte 0xe9 at offset \d+"):
        list(read_jsonl(path))
    with pytest.raises(DataError, match=rf"^{path}:3: not valid UTF-8"):
        read_prepared(path)


def test_utf8_and_crlf_lines_still_read(tmp_path, gsm8k_examples):
    records = [dict(gsm8k_examples[0], question="Combien de pommes a-t-il ? \u00e9\u00e9 \u2014 \U0001f34e")]
    path = tmp_path / "gsm8k" / "train.jsonl"
    write_jsonl_atomic(path, records + gsm8k_examples[1:])
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert read_prepared(path) == records + gsm8k_examples[1:]


# --- projector checkpoints --------------------------------------------------------------------
@pytest.fixture
def projector_file(tmp_path) -> Path:
    path = tmp_path / "projector.safetensors"
    save_projector(path, Projector.seeded(48, 32, seed=0))
    return path


def test_check_projector_file_reads_the_header(projector_file):
    assert check_projector_file(projector_file) == (48, 32)
    assert check_projector_file(projector_file, assistant_dim=48, base_dim=32) == (48, 32)
    with pytest.raises(ModelError, match=rf"{projector_file}: weight \[32, 48\] does not map .* 64"):
        check_projector_file(projector_file, assistant_dim=64, base_dim=32)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"not a safetensors file at all" * 4, id="garbage"),
        pytest.param(lambda data: data[: len(data) - 7], id="truncated"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: data + b"\0" * 16, id="trailing-bytes"),
    ],
)
def test_a_corrupt_projector_is_a_model_error_naming_it(projector_file, damage):
    projector_file.write_bytes(damage(projector_file.read_bytes()))
    for read in (check_projector_file, load_projector):
        with pytest.raises(ModelError, match=rf"^{projector_file}: not a readable projector checkpoint"):
            read(projector_file)


def test_a_projector_with_other_tensors_is_named(tmp_path):
    path = tmp_path / "projector.safetensors"
    save_file({"weight": torch.zeros(4, 3), "bias": torch.zeros(5)}, str(path))
    with pytest.raises(ModelError, match=rf"{path}: weight \[4, 3\] and bias \[5\] do not form a Linear"):
        load_projector(path)
    save_file({"weight": torch.zeros(4, 3)}, str(path))
    with pytest.raises(
        ModelError, match=r"expected exactly the tensors \['bias', 'weight'\], found \['weight'\]"
    ):
        check_projector_file(path)
    save_file({"weight": torch.zeros(4, 3, dtype=torch.int64), "bias": torch.zeros(4)}, str(path))
    with pytest.raises(ModelError, match="expected floating-point tensors"):
        check_projector_file(path)
    with pytest.raises(ModelError, match="projector checkpoint not found"):
        check_projector_file(tmp_path / "absent.safetensors")


# --- training caches --------------------------------------------------------------------------
# The training loop is driven directly (not through `softcot train`), so these tests do not
# depend on how the command resolves its configuration.
N = 4
SETTINGS = {
    "num_thought_tokens": N,
    "lr": 1e-2,
    "batch_size": 2,
    "grad_accum": 2,
    "epochs": 2,
    "max_grad_norm": 1.0,
    "seed": 0,
    "projection_master_dtype": "fp32",
}
FINGERPRINT = {"run": "fault injection"}
OUTPUTS = ("projector.safetensors", "dvclive/plots/metrics/train/loss.tsv")


@pytest.fixture
def data(tiny_base, tiny_assistant, gsm8k_examples) -> TrainingData:
    paper = load_prompt_set("paper")
    return encode_training_data(
        gsm8k_examples,
        PromptRenderer(paper, tiny_base, "{letter}){text}"),
        PromptRenderer(paper, tiny_assistant, "{letter}){text}"),
        N,
        drop_last_token=False,
        max_length=1024,
        source="train.jsonl",
    )


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"\x07garbage" * 8, id="garbage"),
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: b"", id="empty"),
    ],
)
def test_a_corrupt_state_cache_is_recomputed(tmp_path, data, tiny_assistant, capsys, damage):
    cache = tmp_path / "states" / f"train-n{N}.safetensors"
    metadata = {"inputs": "these"}
    computed = []

    def compute() -> torch.Tensor:
        computed.append(1)
        return compute_states(tiny_assistant, data, range(len(data)), N, 2)

    clean = load_or_compute_states(cache, metadata, compute)
    cache.write_bytes(damage(cache.read_bytes()))
    capsys.readouterr()

    again = load_or_compute_states(cache, metadata, compute)

    assert f"softcot train: warning: {cache} is unreadable" in capsys.readouterr().out
    assert computed == [1, 1] and torch.equal(again, clean)
    assert torch.equal(load_or_compute_states(cache, metadata, compute), clean)
    assert computed == [1, 1]  # the rewritten cache is valid and reused


@pytest.fixture
def states(data, tiny_assistant) -> torch.Tensor:
    return compute_states(tiny_assistant, data, range(len(data)), N, 2)


def train_into(out_dir: Path, base, assistant, data, states) -> Path:
    """SoftCoT's projector fitted by the one training loop, as `SoftCoT.train` builds its recipe."""
    device = next(base.model.parameters()).device
    projector = Projector.seeded(
        states.shape[-1],
        base.model.get_input_embeddings().embedding_dim,
        SETTINGS["seed"],
        MASTER_DTYPES[SETTINGS["projection_master_dtype"]],
    ).to(device)

    def loss(batch, step):
        thoughts = batch_thoughts(assistant, data, batch.indices, N, states)
        return token_mean(batch_loss(base, projector, batch, thoughts)[0], step)

    recipe = Recipe(
        dict(projector.named_parameters()),
        len(data),
        lambda epoch, indices: make_batch(base, data, indices, N),
        loss,
    )
    checkpoint = out_dir / "projector.safetensors"
    fit(recipe, SETTINGS, out_dir, FINGERPRINT, save=lambda: save_projector(checkpoint, projector))
    return out_dir


def crash_after_first_epoch(out_dir: Path, monkeypatch, *models) -> Path:
    """Train until the first step of epoch 2, so that resume.pt holds epoch 1."""
    real_step = loop._optimizer_step
    calls = []

    def crash(*args):
        calls.append(1)
        if len(calls) == 3:  # 6 examples in steps of 2 x 2: epoch 1 has 2 steps
            raise KeyboardInterrupt
        real_step(*args)

    monkeypatch.setattr(loop, "_optimizer_step", crash)
    with pytest.raises(KeyboardInterrupt):
        train_into(out_dir, *models)
    monkeypatch.setattr(loop, "_optimizer_step", real_step)
    resume = out_dir / loop.RESUME_NAME
    assert resume.exists() and not (out_dir / "projector.safetensors").exists()
    return resume


def assert_same_outputs(first: Path, second: Path) -> None:
    for name in OUTPUTS:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: b"\x80garbage" * 8, id="garbage"),
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: b"", id="empty"),
    ],
)
def test_a_corrupt_resume_file_starts_over(
    tmp_path, monkeypatch, capsys, tiny_base, tiny_assistant, data, states, damage
):
    models = (tiny_base, tiny_assistant, data, states)
    clean = train_into(tmp_path / "clean", *models)
    resume = crash_after_first_epoch(tmp_path / "crashed", monkeypatch, *models)
    resume.write_bytes(damage(resume.read_bytes()))
    capsys.readouterr()

    restarted = train_into(tmp_path / "crashed", *models)

    out = capsys.readouterr().out
    assert f"softcot train: warning: {resume} is unreadable" in out and "starting over" in out
    assert "resuming" not in out
    assert not resume.exists()
    assert_same_outputs(clean, restarted)


def test_a_resume_file_that_fails_half_way_leaves_a_fresh_state(
    tmp_path, monkeypatch, capsys, tiny_base, tiny_assistant, data, states
):
    """A readable file whose optimizer state does not fit: the projector it loaded first is undone."""
    models = (tiny_base, tiny_assistant, data, states)
    clean = train_into(tmp_path / "clean", *models)
    resume = crash_after_first_epoch(tmp_path / "crashed", monkeypatch, *models)
    saved = torch.load(resume, weights_only=True)
    saved["optimizer"]["param_groups"] = []
    torch.save(saved, resume)

    restarted = train_into(tmp_path / "crashed", *models)

    assert "is unreadable (ValueError" in capsys.readouterr().out
    assert_same_outputs(clean, restarted)


def test_an_intact_resume_file_still_resumes(
    tmp_path, monkeypatch, capsys, tiny_base, tiny_assistant, data, states
):
    models = (tiny_base, tiny_assistant, data, states)
    clean = train_into(tmp_path / "clean", *models)
    crash_after_first_epoch(tmp_path / "crashed", monkeypatch, *models)
    capsys.readouterr()
    resumed = train_into(tmp_path / "crashed", *models)
    assert "resuming" in capsys.readouterr().out
    assert_same_outputs(clean, resumed)


def test_a_garbage_projector_fails_the_evaluation_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from conftest import gsm8k_example

    import softcot.models
    from softcot import cli
    from softcot.plan import Plan

    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the projector was checked")

    monkeypatch.setattr(softcot.models, "load_model", must_not_load)
    garbage = tmp_path / "projector.safetensors"
    garbage.write_bytes(b"\x00garbage" * 10)
    write_jsonl_atomic(tmp_path / "test.jsonl", [gsm8k_example(0)])
    settings = Plan.load().evaluate("tiny", "gsm8k", "softcot").settings
    args = ["evaluate", "--pair", "tiny", "--dataset", "gsm8k", "--method", "softcot"]
    args += ["--settings", __import__("json").dumps(settings), "--test", str(tmp_path / "test.jsonl")]
    args += ["--artefact", str(garbage), "--predictions", str(tmp_path / "p.jsonl")]
    args += ["--metrics", str(tmp_path / "m.json"), "--batch-size", "2"]
    assert cli.main(args) == 2
    assert f"{garbage}: not a readable projector checkpoint" in capsys.readouterr().err
