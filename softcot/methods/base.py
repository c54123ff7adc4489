"""The interface every method family implements, so the drivers never branch on a method's name.

A method answers three questions: what it needs (the assistant? a trained artefact?), which
settings can change its outputs (so Snakemake reruns exactly its jobs when one changes), and
how it builds the base model's inputs for a batch of evaluation rows. A method that trains an
artefact also says how it trains it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from softcot.prompts import locate_assistant_slots
from softcot.thoughts import right_pad

if TYPE_CHECKING:
    from softcot.evaluate import Job, Row

# Evaluation settings every generating method reads: each can change a prediction file.
GENERATION_KEYS = (
    "prompt_set",
    "seeds",
    "samples",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "penalty_scope",
    "max_new_tokens",
    "greedy",
    "add_generation_prompt",
    "extractor",
    "vote",
    "limit",
)


@dataclass(frozen=True)
class Artefact:
    """What a method trains per (pair, dataset): its name and the files it writes.

    By default the files live in results/{name}s/{pair}/{dataset}/: `{name}.safetensors` (the
    checkpoint) and `{name}.json` (the training record). An artefact may name another directory
    and file names (fields {name}, {pair}, {dataset}) and further files the training writes
    beside the checkpoint (`extra`: (key, file name) pairs); resume and logging files go there too.
    """

    name: str
    directory: str = "results/{name}s/{pair}/{dataset}"
    checkpoint: str = "{name}.safetensors"
    record: str = "{name}.json"
    extra: tuple[tuple[str, str], ...] = ()

    def files(self, pair: str, dataset: str) -> dict[str, str]:
        """Every output file by key: `checkpoint`, `record` and the extra keys."""
        directory = self.directory.format(name=self.name, pair=pair, dataset=dataset)
        names = {"checkpoint": self.checkpoint, "record": self.record, **dict(self.extra)}
        return {key: f"{directory}/{name.format(name=self.name)}" for key, name in names.items()}

    def log(self, pair: str, dataset: str) -> str:
        """The training job's log, mirroring the directory (logs/projectors/{pair}/{dataset}.log)."""
        directory = self.directory.format(name=self.name, pair=pair, dataset=dataset)
        return f"logs/{directory.removeprefix('results/')}.log"


class Method:
    """A method family. Subclasses set the class attributes and override the hooks they need."""

    kind: ClassVar[str]
    uses_assistant: ClassVar[bool] = False
    artefact: ClassVar[Artefact | None] = None
    # Evaluation settings read beyond GENERATION_KEYS.
    extra_eval_keys: ClassVar[tuple[str, ...]] = ()
    # The keys of the train section its artefact's training reads (the artefact's own section,
    # `train.<artefact>`, merged over the common keys); None: every common key.
    train_keys: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def eval_keys(cls) -> tuple[str, ...]:
        return GENERATION_KEYS + cls.extra_eval_keys

    # --- evaluation ---------------------------------------------------------------------------
    def check_artefact(self, path: Path) -> None:
        """A cheap check of the artefact file, run before any model loads (default: none)."""

    def load_artefact(self, job: Job, path: Path) -> None:
        """Load the trained artefact into `job` (only methods with an artefact)."""
        raise NotImplementedError(f"method {self.kind!r} has no trained artefact")

    def base_prompts(self, job: Job) -> list[list[int]]:
        """The base model's prompt ids per example."""
        raise NotImplementedError

    def prepare(self, job: Job) -> None:
        """Per-example work shared by every seed and sample (e.g. soft thoughts), done once."""

    def input_embeddings(
        self, job: Job, rows: list[Row], ids: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        """The base model's input embeddings for a left-padded batch; None: the plain token ids."""
        return None

    def fingerprint_tensors(self, job: Job) -> list[torch.Tensor]:
        """Tensors besides settings and prompts that decide the outputs (a resume must match them)."""
        return []

    # --- training -----------------------------------------------------------------------------
    def train(self, context: Any) -> dict[str, Any]:
        """Train the artefact and write its files; return the training record."""
        raise NotImplementedError(f"method {self.kind!r} trains nothing")


def longest_assistant_prompt(job: Job, n: int) -> int:
    """Tokens of the job's longest assistant prompt (sizes an automatic batch; 1 without examples)."""
    return max((len(job.assistant_renderer.assistant_ids(example, n)) for example in job.examples), default=1)


def assistant_inputs(
    job: Job, indices: Sequence[int], n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded assistant prompts of some examples and the start of each one's N x UNK slot."""
    sequences = [job.assistant_renderer.assistant_ids(job.examples[i], n) for i in indices]
    ids, mask = right_pad(sequences, job.assistant.pad_id)
    example_ids = [job.examples[i]["id"] for i in indices]
    starts = locate_assistant_slots(ids, mask, job.assistant.placeholder_ids, n, example_ids)
    return ids, mask, starts
