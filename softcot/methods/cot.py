"""Zero-Shot CoT and Zero-Shot CoT-UNK (protocol §11): the base model alone.

- cot:     the prompt with no thought hint (N = 0).
- cot-unk: the hint with BOT, N x UNK, EOT left as the base model's own (frozen) embeddings.
"""

from __future__ import annotations

from softcot.evaluate import Job
from softcot.methods.base import Method


class ZeroShotCoT(Method):
    kind = "cot"

    def base_prompts(self, job: Job) -> list[list[int]]:
        agp = bool(job.settings["add_generation_prompt"])
        return [job.base_renderer.base_ids(example, 0, agp) for example in job.examples]


class ZeroShotCoTUnk(Method):
    kind = "cot-unk"

    def base_prompts(self, job: Job) -> list[list[int]]:
        agp = bool(job.settings["add_generation_prompt"])
        return [job.base_renderer.base_ids(example, job.num_thoughts, agp) for example in job.examples]
