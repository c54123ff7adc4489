# Shared by every rule file: the validated configuration, wildcard constraints, path helpers.
import json

from softcot.config import DATASETS, Config

# Validates params.yaml (and any --config override) before a single job is scheduled.
CFG = Config(config)

SPLITS = ("train", "test")


wildcard_constraints:
    dataset="|".join(DATASETS),
    split="|".join(SPLITS),
    model=r"[a-z0-9][a-z0-9._-]*",
    pair=r"[a-z0-9][a-z0-9._-]*",
    method=r"[a-z0-9][a-z0-9._-]*",
    table=r"[a-z0-9][a-z0-9_-]*",
    seed=r"\d+",


def as_json(obj):
    """A canonical JSON string for `params:`: equal settings give equal strings, so changing a
    value reruns exactly the jobs that read it."""
    return json.dumps(obj, sort_keys=True)


# GPUs one training or evaluation job needs (0 on the CPU preset); a profile maps it to the cluster.
GPU_PER_JOB = CFG.preset["gpus_per_job"]


def prepared(dataset, split):
    return f"data/prepared/{dataset}/{split}.jsonl"


def model_dir(model):
    return f"results/models/{model}"


def projector(pair, dataset):
    return f"results/projectors/{pair}/{dataset}/projector.safetensors"


def all_targets():
    """Every table of the active preset (until the table rules exist: every prepared split)."""
    return [prepared(ds, split) for ds in DATASETS for split in SPLITS if not (ds == "date" and split == "train")]
