"""What any method's training receives: the resolved train step and where its files go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softcot.data.schema import read_prepared
from softcot.errors import DataError


@dataclass(frozen=True)
class TrainingContext:
    pair: str
    dataset: str
    settings: dict[str, Any]  # the train step's settings (softcot.plan.Plan.train)
    train_file: Path
    models_dir: Path
    states_dir: Path  # caches a method may keep between runs (not outputs)
    checkpoint: Path
    record: Path
    local_paths: dict[str, str]  # models loaded from pre-downloaded directories

    def read_examples(self) -> list[dict]:
        """The prepared train split of the context's dataset, cut to `limit`."""
        examples = read_prepared(self.train_file)
        if (examples[0]["dataset"], examples[0]["split"]) != (self.dataset, "train"):
            raise DataError(
                f"{self.train_file}: holds {examples[0]['dataset']}/{examples[0]['split']}, "
                f"not {self.dataset}/train"
            )
        limit = self.settings["limit"]
        return examples if limit is None else examples[:limit]

    def load_base(self) -> Any:
        from softcot.models import load_model

        return load_model(self.settings["pair"]["base"], self.models_dir, local_paths=self.local_paths)

    def load_pair(self) -> tuple[Any, Any]:
        """(assistant, base) of the step's pair, loaded once when they are the same model."""
        from softcot.models import load_model

        models = self.settings["pair"]
        assistant = load_model(models["assistant"], self.models_dir, local_paths=self.local_paths)
        if models["base"] == models["assistant"]:
            return assistant, assistant
        return assistant, load_model(models["base"], self.models_dir, local_paths=self.local_paths)
