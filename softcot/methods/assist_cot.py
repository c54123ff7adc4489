"""Zero-Shot Assist-CoT (protocol §11): the assistant *writes* N hard tokens into the hint.

They are decoded greedily once per example (the protocol leaves this decoding open; greedy makes
the hint a property of the example, shared by every seed), and that text fills the hint.
"""

from __future__ import annotations

from tqdm import tqdm

from softcot.evaluate import Job
from softcot.generate import SamplingConfig, generate, left_pad
from softcot.methods.base import Method, assistant_inputs, longest_assistant_prompt


class AssistCoT(Method):
    kind = "assist-cot"

    def base_prompts(self, job: Job) -> list[list[int]]:
        agp = bool(job.settings["add_generation_prompt"])
        hints = assistant_hints(job)
        return [
            job.base_renderer.hinted_ids(example, hint, agp)
            for example, hint in zip(job.examples, hints, strict=True)
        ]


def assistant_hints(job: Job) -> list[str]:
    """The assistant continues its reply ("Here are N tokens ...: ") with N greedy tokens."""
    n = int(job.settings["assist_hard_tokens"])
    config = SamplingConfig(greedy=True, max_new_tokens=n)
    hints: list[str] = []
    device = job.assistant.model.device
    chunk = job.batch_size or job.rows_per_batch(
        job.assistant, longest_assistant_prompt(job, n), n, len(job.examples)
    )
    for lo in tqdm(range(0, len(job.examples), chunk), desc="assistant hints", unit="batch"):
        indices = range(lo, min(lo + chunk, len(job.examples)))
        ids, mask, starts = assistant_inputs(job, indices, n)
        # The reply's slot marks where the assistant's own text begins: cut the prompt there.
        prefixes = [ids[row, : int(start)].tolist() for row, start in enumerate(starts)]
        prompt_ids, prompt_mask = left_pad(prefixes, job.assistant.pad_id)
        outputs = generate(
            job.assistant.model,
            prompt_ids.to(device),
            prompt_mask.to(device),
            row_seeds=[0] * len(prefixes),
            config=config,
            stop_ids=job.assistant.stop_ids,
            pad_id=job.assistant.pad_id,
        )
        tokenizer = job.assistant.tokenizer
        hints += [tokenizer.decode(out.token_ids, skip_special_tokens=True).strip() for out in outputs]
    return hints
