"""The evaluation engine on tiny random models: method wiring, batching invariance, voting, resume."""

from __future__ import annotations

import json

import pytest
import torch

from softcot import evaluate as ev
from softcot.config import Config
from softcot.errors import DataError
from softcot.io import load_jsonl
from softcot.methods import method_class
from softcot.methods.assist_cot import assistant_hints
from softcot.methods.catalog import method_spec
from softcot.plan import Plan
from softcot.prompts import PromptRenderer, load_prompt_set
from softcot.records import Evaluation
from softcot.resources import CPU_BATCH_SIZE
from softcot.shards import merge, read_rows, shard_bounds
from softcot.thoughts import Projector
from softcot.voting import vote

N = 2  # thought tokens at evaluation in these tests


def make_job(kind, tiny_base, tiny_assistant, examples, batch_size=4, **overrides) -> ev.Job:
    settings = Plan(Config.load()).evaluate("tiny", "gsm8k", kind).settings
    settings.update(seeds=[41, 42], max_new_tokens=6, limit=None)
    settings.update(
        {k: v for k, v in {"num_thought_tokens": N, "assist_hard_tokens": 3}.items() if k in settings}
    )
    settings.update(overrides)
    prompt_set = load_prompt_set("paper")
    method = method_class(kind)()
    job = ev.Job(
        "tiny",
        "gsm8k",
        kind,
        settings,
        examples,
        tiny_base,
        PromptRenderer(prompt_set, tiny_base, None),
        method,
        batch_size,
    )
    if method_spec(kind).uses_assistant:
        job.assistant = tiny_assistant
        job.assistant_renderer = PromptRenderer(prompt_set, tiny_assistant, None)
    if kind == "softcot":
        hidden_b, hidden_a = tiny_base.model.config.hidden_size, tiny_assistant.model.config.hidden_size
        job.artefact = Projector.seeded(hidden_a, hidden_b, seed=0)
    return job


def run_eval(job: ev.Job, out_dir):
    """Evaluate into out_dir/seed{seed}.jsonl and .metrics.json, as the rule lays them out."""
    seeds = job.settings["seeds"]
    return ev.evaluate(
        job, [out_dir / f"seed{s}.jsonl" for s in seeds], [out_dir / f"seed{s}.metrics.json" for s in seeds]
    )


def placeholder_count(ids: list[int], token_id: int) -> int:
    return sum(token == token_id for token in ids)


def test_cot_prompt_has_no_placeholders(tiny_base, tiny_assistant, gsm8k_examples):
    job = make_job("cot", tiny_base, tiny_assistant, gsm8k_examples)
    marks = tiny_base.placeholder_ids
    for ids in job.method.base_prompts(job):
        assert all(placeholder_count(ids, t) == 0 for t in (marks.unk, marks.bot, marks.eot))


def test_cot_unk_prompt_has_exactly_n_placeholders_between_markers(tiny_base, tiny_assistant, gsm8k_examples):
    job = make_job("cot-unk", tiny_base, tiny_assistant, gsm8k_examples)
    marks = tiny_base.placeholder_ids
    for ids in job.method.base_prompts(job):
        assert placeholder_count(ids, marks.unk) == N
        start = ids.index(marks.bot)
        assert ids[start : start + N + 2] == [marks.bot] + [marks.unk] * N + [marks.eot]


def greedy_continuation(loaded, ids: list[int], n: int) -> list[int]:
    """Independent greedy decoding: a full forward per step, no cache, no batching."""
    out = []
    for _ in range(n):
        logits = loaded.model(torch.tensor([ids + out])).logits[0, -1]
        token = int(logits.argmax())
        if token in loaded.stop_ids:
            break
        out.append(token)
    return out


def test_assist_cot_inserts_the_assistants_greedy_text(tiny_base, tiny_assistant, gsm8k_examples):
    job = make_job("assist-cot", tiny_base, tiny_assistant, gsm8k_examples[:3])
    hints = assistant_hints(job)
    for example, hint in zip(job.examples, hints, strict=True):
        ids = job.assistant_renderer.assistant_ids(example, 3)
        prefix = ids[: ids.index(tiny_assistant.placeholder_ids.unk)]
        expected = tiny_assistant.tokenizer.decode(
            greedy_continuation(tiny_assistant, prefix, 3), skip_special_tokens=True
        )
        assert hint == expected.strip()
    for ids, hint in zip(job.method.base_prompts(job), hints, strict=True):
        assert hint in tiny_base.tokenizer.decode(ids)
        assert placeholder_count(ids, tiny_base.placeholder_ids.unk) == 0


def test_softcot_splices_projected_assistant_states(tiny_base, tiny_assistant, gsm8k_examples, monkeypatch):
    job = make_job("softcot", tiny_base, tiny_assistant, gsm8k_examples[:3], seeds=[41])
    prompts = job.method.base_prompts(job)
    job.method.prepare(job)
    captured = {}

    def fake_generate(model, ids, mask, seeds, config, stop_ids, pad_id, inputs_embeds=None, progress=None):
        captured.update(ids=ids, embeds=inputs_embeds)
        return []

    monkeypatch.setattr(ev, "generate", fake_generate)
    rows = [ev.Row(i, 41, 0) for i in range(3)]
    ev.run_batch(job, rows, prompts, config=None)
    ids, embeds = captured["ids"], captured["embeds"]
    own = tiny_base.model.get_input_embeddings()(ids)
    for row, example in enumerate(job.examples):
        # Independent computation: one unpadded assistant forward per example.
        a_ids = job.assistant_renderer.assistant_ids(example, N)
        hidden = tiny_assistant.model(torch.tensor([a_ids]), output_hidden_states=True).hidden_states[-1][0]
        a_start = a_ids.index(tiny_assistant.placeholder_ids.unk)
        expected = job.artefact(hidden[a_start : a_start + N])
        slot = (ids[row] == tiny_base.placeholder_ids.unk).nonzero().flatten()
        assert len(slot) == N
        torch.testing.assert_close(embeds[row, slot], expected.to(embeds.dtype))
        keep = torch.ones(ids.shape[1], dtype=torch.bool)
        keep[slot] = False
        assert torch.equal(embeds[row, keep], own[row, keep])


@pytest.mark.parametrize("kind", ["cot", "softcot"])
def test_predictions_do_not_depend_on_batch_size(kind, tiny_base, tiny_assistant, gsm8k_examples, tmp_path):
    outputs = []
    for batch_size in (1, 5):
        job = make_job(kind, tiny_base, tiny_assistant, gsm8k_examples, batch_size=batch_size)
        run_eval(job, tmp_path / str(batch_size))
        outputs.append([load_jsonl(tmp_path / str(batch_size) / f"seed{s}.jsonl") for s in (41, 42)])
    assert outputs[0] == outputs[1]
    seed41, seed42 = outputs[0]
    assert [r["output"] for r in seed41] != [r["output"] for r in seed42]


def test_prediction_records_and_metrics(tiny_base, tiny_assistant, gsm8k_examples, tmp_path):
    job = make_job("cot", tiny_base, tiny_assistant, gsm8k_examples)
    run_eval(job, tmp_path)
    records = load_jsonl(tmp_path / "seed41.jsonl")
    assert [r["id"] for r in records] == [e["id"] for e in gsm8k_examples]
    keys = {
        "id",
        "dataset",
        "pair",
        "method",
        "seed",
        "output",
        "prediction",
        "gold",
        "correct",
        "generated_tokens",
    }
    assert all(set(r) == keys for r in records)
    assert all(1 <= r["generated_tokens"] <= 6 for r in records)
    metrics = json.loads((tmp_path / "seed41.metrics.json").read_text())
    assert metrics["n"] == len(records)
    assert metrics["accuracy"] == sum(r["correct"] for r in records) / len(records)
    assert metrics["extraction_failures"] == sum(r["prediction"] is None for r in records)
    assert metrics["extractor"] == job.settings["extractor"]
    assert metrics["artefact_sha256"] is None  # CoT reads no trained artefact
    assert not (tmp_path / ev.PARTIAL_NAME).exists()


def test_self_consistency_votes_over_samples(tiny_base, tiny_assistant, gsm8k_examples, tmp_path):
    job = make_job("cot", tiny_base, tiny_assistant, gsm8k_examples[:3], samples=3, seeds=[41])
    run_eval(job, tmp_path)
    for record in load_jsonl(tmp_path / "seed41.jsonl"):
        assert len(record["samples"]) == len(record["outputs"]) == 3
        assert record["prediction"] == vote(record["samples"], job.settings["vote"])


def test_resume_after_a_crash_skips_done_batches_and_gives_the_same_files(
    tiny_base, tiny_assistant, gsm8k_examples, tmp_path, monkeypatch
):
    reference = tmp_path / "reference"
    run_eval(make_job("cot", tiny_base, tiny_assistant, gsm8k_examples), reference)

    crashed = tmp_path / "crashed"
    real_run_batch, calls = ev.run_batch, []

    def crash_on_third(job, rows, *args, **kwargs):
        calls.append(len(rows))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run_batch(job, rows, *args, **kwargs)

    monkeypatch.setattr(ev, "run_batch", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_eval(make_job("cot", tiny_base, tiny_assistant, gsm8k_examples), crashed)
    assert not (crashed / "seed41.jsonl").exists()
    assert len(load_jsonl(crashed / ev.PARTIAL_NAME)) == 1 + 2 * 4  # header + two batches of 4 rows

    calls.clear()
    monkeypatch.setattr(
        ev,
        "run_batch",
        lambda job, rows, *a, **k: calls.append(len(rows)) or real_run_batch(job, rows, *a, **k),
    )
    run_eval(make_job("cot", tiny_base, tiny_assistant, gsm8k_examples), crashed)
    assert sum(calls) == 12 - 8  # only the rows not done before the crash
    for seed in (41, 42):
        assert (crashed / f"seed{seed}.jsonl").read_bytes() == (reference / f"seed{seed}.jsonl").read_bytes()


def test_changed_settings_discard_the_partial_file(
    tiny_base, tiny_assistant, gsm8k_examples, tmp_path, monkeypatch
):
    job = make_job("cot", tiny_base, tiny_assistant, gsm8k_examples)
    prompts = job.method.base_prompts(job)
    (tmp_path / ev.PARTIAL_NAME).write_text(
        '{"fingerprint": "old"}\n{"example": 0, "seed": 41, "sample": 0}\n'
    )
    assert ev.load_partial(tmp_path / ev.PARTIAL_NAME, ev.job_fingerprint(job, prompts)) == {}


def test_a_torn_last_line_is_dropped_and_the_run_resumes(
    tiny_base, tiny_assistant, gsm8k_examples, tmp_path, monkeypatch
):
    reference = tmp_path / "reference"
    run_eval(make_job("cot", tiny_base, tiny_assistant, gsm8k_examples), reference)

    crashed = tmp_path / "crashed"
    real_run_batch, calls = ev.run_batch, []

    def crash_on_second(job, rows, *args, **kwargs):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_batch(job, rows, *args, **kwargs)

    monkeypatch.setattr(ev, "run_batch", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_eval(make_job("cot", tiny_base, tiny_assistant, gsm8k_examples), crashed)
    partial = crashed / ev.PARTIAL_NAME
    partial.write_bytes(partial.read_bytes() + b'{"example": 3, "seed": 41, "sam')  # a kill mid-write

    monkeypatch.setattr(ev, "run_batch", real_run_batch)
    with pytest.warns(UserWarning, match="torn last line"):
        # Resumed with another batch size (what a user does after running out of memory).
        run_eval(make_job("cot", tiny_base, tiny_assistant, gsm8k_examples, batch_size=3), crashed)
    for seed in (41, 42):
        assert (crashed / f"seed{seed}.jsonl").read_bytes() == (reference / f"seed{seed}.jsonl").read_bytes()
    assert not partial.exists()


def test_batch_size_is_not_part_of_the_resume_fingerprint(tiny_base, tiny_assistant, gsm8k_examples):
    small = make_job("cot", tiny_base, tiny_assistant, gsm8k_examples, batch_size=1)
    large = make_job("cot", tiny_base, tiny_assistant, gsm8k_examples, batch_size=8)
    prompts = small.method.base_prompts(small)
    assert ev.job_fingerprint(small, prompts) == ev.job_fingerprint(large, prompts)


def test_an_unreadable_partial_file_is_discarded(tmp_path):
    partial = tmp_path / ev.PARTIAL_NAME
    partial.write_bytes(b'{"fingerprint": "f"}\nnot json\n{"example": 0, "seed": 41, "sample": 0}\n')
    with pytest.warns(UserWarning, match="starting over"):
        assert ev.load_partial(partial, "f") == {}


# --- sharded evaluation ---------------------------------------------------------------------------
def run_shards(kind, tiny_base, tiny_assistant, examples, shards: int, out_dir) -> list:
    """Each shard evaluated as its own job would be (its own slice, batch size and partial file)."""
    files = []
    for shard in range(1, shards + 1):
        lo, hi = shard_bounds(len(examples), shard, shards)
        job = make_job(kind, tiny_base, tiny_assistant, examples[lo:hi], batch_size=3)
        files.append(ev.evaluate_shard(job, out_dir / "shards" / f"{shard}-of-{shards}.jsonl", shard, shards))
    return files


@pytest.mark.parametrize("kind", ["cot", "softcot", "assist-cot"])
def test_sharded_and_unsharded_evaluations_write_the_same_prediction_bytes(
    kind, tiny_base, tiny_assistant, gsm8k_examples, tmp_path
):
    whole = tmp_path / "whole"
    job = make_job(kind, tiny_base, tiny_assistant, gsm8k_examples, batch_size=4)
    run_eval(job, whole)
    for shards in (3, 8):  # 8 shards of 6 examples: two of them are empty
        out = tmp_path / f"{shards}-shards"
        files = run_shards(kind, tiny_base, tiny_assistant, gsm8k_examples, shards, out)
        assert not list((out / "shards").glob(".*partial*"))  # each shard removed its own partial file
        evaluation = Evaluation("tiny", "gsm8k", kind, job.settings, gsm8k_examples)
        seeds = job.settings["seeds"]
        merge(
            evaluation,
            files,
            [out / f"seed{s}.jsonl" for s in seeds],
            [out / f"seed{s}.metrics.json" for s in seeds],
        )
        for seed in seeds:
            assert (out / f"seed{seed}.jsonl").read_bytes() == (whole / f"seed{seed}.jsonl").read_bytes()
            merged = json.loads((out / f"seed{seed}.metrics.json").read_text())
            single = json.loads((whole / f"seed{seed}.metrics.json").read_text())
            assert {k: v for k, v in merged.items() if k != "tokens_per_second"} == {
                k: v for k, v in single.items() if k != "tokens_per_second"
            }


def test_a_merge_refuses_shards_that_do_not_cover_the_evaluation(
    tiny_base, tiny_assistant, gsm8k_examples, tmp_path
):
    files = run_shards("cot", tiny_base, tiny_assistant, gsm8k_examples, 2, tmp_path)
    job = make_job("cot", tiny_base, tiny_assistant, gsm8k_examples)
    outputs = (
        [tmp_path / f"seed{s}.jsonl" for s in job.settings["seeds"]],
        [tmp_path / f"seed{s}.metrics.json" for s in job.settings["seeds"]],
    )
    evaluation = Evaluation("tiny", "gsm8k", "cot", job.settings, gsm8k_examples)
    with pytest.raises(DataError, match="holds shard 2 of 2, expected 1 of 2"):
        merge(evaluation, files[::-1], *outputs)
    with pytest.raises(DataError, match="other settings"):
        merge(
            Evaluation("tiny", "gsm8k", "cot", dict(job.settings, top_p=0.5), gsm8k_examples), files, *outputs
        )
    with pytest.raises(DataError, match="other examples"):
        merge(Evaluation("tiny", "gsm8k", "cot", job.settings, gsm8k_examples[:5]), files, *outputs)
    lines = files[1].read_text().splitlines(keepends=True)
    files[1].write_text("".join(lines[:-1]))  # one row lost
    with pytest.raises(DataError, match="lack 1 rows"):
        merge(evaluation, files, *outputs)
    assert not outputs[0][0].exists()


def test_a_shard_resumes_from_its_own_partial_file(
    tiny_base, tiny_assistant, gsm8k_examples, tmp_path, monkeypatch
):
    reference = run_shards("cot", tiny_base, tiny_assistant, gsm8k_examples, 2, tmp_path / "reference")
    real_run_batch, calls = ev.run_batch, []

    def crash_on_second(job, rows, *args, **kwargs):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_batch(job, rows, *args, **kwargs)

    monkeypatch.setattr(ev, "run_batch", crash_on_second)
    rows_file = tmp_path / "crashed" / "shards" / "2-of-2.jsonl"
    job = make_job("cot", tiny_base, tiny_assistant, gsm8k_examples[3:], batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate_shard(job, rows_file, 2, 2)
    assert len(load_jsonl(ev.shard_partial(rows_file))) == 1 + 3  # header + one batch of 3 rows
    calls.clear()
    monkeypatch.setattr(
        ev,
        "run_batch",
        lambda job, rows, *a, **k: calls.append(len(rows)) or real_run_batch(job, rows, *a, **k),
    )
    ev.evaluate_shard(
        make_job("cot", tiny_base, tiny_assistant, gsm8k_examples[3:], batch_size=3), rows_file, 2, 2
    )
    assert sum(calls) == 3 * 2 - 3
    assert read_rows(rows_file)[1] == read_rows(reference[1])[1]
    assert not ev.shard_partial(rows_file).exists()


def test_the_projection_and_splice_keep_no_autograd_graph(tiny_base, tiny_assistant, gsm8k_examples):
    job = make_job("softcot", tiny_base, tiny_assistant, gsm8k_examples[:2], seeds=[41])
    job.artefact.requires_grad_(True)  # even a trainable projector builds no graph at evaluation
    prompts = job.method.base_prompts(job)
    job.method.prepare(job)
    ids, mask = ev.left_pad(prompts, tiny_base.pad_id)
    embeds = job.method.input_embeddings(job, [ev.Row(0, 41, 0), ev.Row(1, 41, 0)], ids, mask)
    assert not embeds.requires_grad and embeds.grad_fn is None


def test_the_assistant_pass_builds_no_kv_cache(tiny_base, tiny_assistant, gsm8k_examples, monkeypatch):
    job = make_job("softcot", tiny_base, tiny_assistant, gsm8k_examples[:2], seeds=[41])
    seen = []
    hook = tiny_assistant.model.base_model.register_forward_hook(
        lambda module, args, kwargs, out: seen.append((kwargs.get("use_cache"), out.past_key_values)),
        with_kwargs=True,
    )
    try:
        job.method.prepare(job)
    finally:
        hook.remove()
    assert seen and all(use_cache is False and cache is None for use_cache, cache in seen)


def test_auto_batch_size_keeps_todays_size_off_a_gpu(tiny_base, tiny_assistant, gsm8k_examples, capsys):
    job = make_job("cot", tiny_base, tiny_assistant, gsm8k_examples, batch_size=None)
    assert job.rows_per_batch(tiny_base, 100, 32, 1000) == CPU_BATCH_SIZE
    assert "batch size auto -> 32 rows" in capsys.readouterr().err
    reference = make_job("cot", tiny_base, tiny_assistant, gsm8k_examples, batch_size=32)
    assert (
        make_job("cot", tiny_base, tiny_assistant, gsm8k_examples, batch_size=7).rows_per_batch(
            tiny_base, 100, 32, 1000
        )
        == 7
    )
    assert reference.rows_per_batch(tiny_base, 100, 32, 1000) == 32
