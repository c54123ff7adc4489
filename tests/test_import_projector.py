"""The authors' projection.bin: converted into a checkpoint that evaluates, or refused by name."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from softcot import cli
from softcot.errors import ModelError
from softcot.import_projector import import_projector
from softcot.thoughts import load_projector


def reference_bin(path, base_dim=32, assistant_dim=48, **extra):
    """What the reference saves: torch.save of the projection's state dict, in bf16."""
    torch.manual_seed(0)
    state = {
        "weight": torch.randn(base_dim, assistant_dim, dtype=torch.bfloat16),
        "bias": torch.randn(base_dim, dtype=torch.bfloat16),
        **extra,
    }
    torch.save(state, path)
    return state


def test_a_reference_checkpoint_imports_with_its_tensors_unchanged(tmp_path):
    state = reference_bin(tmp_path / "projection.bin")
    out = tmp_path / "projector.safetensors"
    assert cli.main(["import-projector", str(tmp_path / "projection.bin"), "--out", str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        assert sorted(f.keys()) == ["bias", "weight"]
        assert torch.equal(f.get_tensor("weight"), state["weight"])
        assert torch.equal(f.get_tensor("bias"), state["bias"])
    assert load_projector(out).weight.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_bytes(b"not a checkpoint"), "not a readable torch checkpoint"),
        (
            lambda p: reference_bin(p, embedding=torch.zeros(2, 48)),
            r"expected exactly the keys \['bias', 'weight'\]",
        ),
        (
            lambda p: torch.save({"weight": torch.zeros(4, 3), "bias": torch.zeros(5)}, p),
            "do not form a Linear",
        ),
        (lambda p: torch.save([1, 2], p), "expected a state dict"),
    ],
)
def test_a_wrong_file_fails_with_its_name(tmp_path, capsys, write, message):
    source = tmp_path / "projection.bin"
    write(source)
    out = tmp_path / "projector.safetensors"
    assert cli.main(["import-projector", str(source), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(source) in error and pytest.importorskip("re").search(message, error)
    assert not out.exists()


def test_a_projector_of_another_pair_is_refused(tmp_path):
    reference_bin(tmp_path / "projection.bin", base_dim=32, assistant_dim=48)
    with pytest.raises(ModelError, match="released for another pair"):
        import_projector(
            tmp_path / "projection.bin", tmp_path / "p.safetensors", assistant_dim=64, base_dim=32
        )


def test_an_imported_projector_evaluates(tmp_path, tiny_base, tiny_assistant, gsm8k_examples):
    """The softcot method loads the converted checkpoint and generates with it."""
    from test_evaluate import make_job, run_eval

    from softcot.io import load_jsonl

    hidden_b, hidden_a = tiny_base.model.config.hidden_size, tiny_assistant.model.config.hidden_size
    reference_bin(tmp_path / "projection.bin", base_dim=hidden_b, assistant_dim=hidden_a)
    out = tmp_path / "projector.safetensors"
    import_projector(tmp_path / "projection.bin", out, hidden_a, hidden_b)
    job = make_job("softcot", tiny_base, tiny_assistant, gsm8k_examples[:2], seeds=[41])
    job.method.load_artefact(job, out)
    run_eval(job, tmp_path / "pred")
    assert len(load_jsonl(tmp_path / "pred" / "seed41.jsonl")) == 2
