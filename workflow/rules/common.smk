# Shared by all the .smk files: the plan (softcot.plan, the one resolver of settings and paths)
# and the small functions the rules call. The other .smk files hold rules only.
import json
import re
from pathlib import Path

from snakemake.logging import logger

from softcot.data.datasets import dataset_names
from softcot.methods.catalog import artefacts
from softcot.models.registry import get_spec
from softcot.errors import ModelError
from softcot.models.manifest import MANIFEST_NAME, incomplete_folders
from softcot.plan import (
    Plan,
    datasets_built_jointly,
    datasets_built_per_split,
    model_dir,
    prepared,
    trainable_datasets,
)
from softcot.config import Config

# Validates params.yaml (and any --config override) before a single job is scheduled.
PLAN = Plan(Config(config))
SPLITS = ("train", "test")
DATASETS = dataset_names()
# GPUs one training or evaluation job needs (0 on the CPU preset); a profile maps it to the cluster.
GPU_PER_JOB = PLAN.gpus_per_job

# A model folder with a missing or truncated file stops the workflow with the repair command.
# Planning writes nothing, so a dry run (`snakemake -n`) leaves the tree as it was.
if workflow.is_main_process:
    _incomplete = incomplete_folders("results/models")
    if _incomplete:
        raise ModelError(
            "materialized models are incomplete:\n"
            + "".join(f"  results/models/{name}: {'; '.join(p)}\n" for name, p in _incomplete.items())
            + f"Repair: `softcot verify {' '.join(_incomplete)} --invalidate` removes their manifests; "
            "then run snakemake again: it rebuilds them and everything that used them."
        )



# --- a failing job says why, on the console ------------------------------------------------------
def failed_job_errors(snakemake_logs):
    """What each failed job said about its failure, from its own log: Snakemake prints only the
    log's path. A `softcot` command writes one `softcot COMMAND: error: ...` line; for anything
    else, the log's last lines. `snakemake_logs`: the run's log file (a path or a list of them)."""
    errors = []
    paths = [snakemake_logs] if isinstance(snakemake_logs, str) else snakemake_logs
    text = "".join(Path(p).read_text(encoding="utf-8", errors="replace") for p in paths)
    for logs in re.findall(r"^\s*log: (.+) \(check log file\(s\) for error details\)$", text, re.MULTILINE):
        for job_log in logs.split(", "):
            path = Path(job_log)
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []
            own = [line for line in lines if re.match(r"softcot [\w-]+: error: ", line)]
            errors += [f"{job_log}: {line}" for line in own or lines[-10:]]
    return errors


onerror:
    for _line in failed_job_errors(log):
        logger.error(_line)


# --- tables -----------------------------------------------------------------------------------
_NOTICED_TABLES = set()


def table_inputs(wildcards):
    """A table's inputs. The first time a table enters the DAG, say which of its rows the preset
    leaves out (it lacks their pair role): once per requested table, not on every call."""
    labels = PLAN.dropped_rows()[wildcards.table]
    if labels and wildcards.table not in _NOTICED_TABLES:
        _NOTICED_TABLES.add(wildcards.table)
        logger.info(f"{wildcards.table}: preset {PLAN.preset!r} leaves out the rows {', '.join(labels)}")
    return PLAN.table(wildcards.table).inputs


def one_of(names):
    """A wildcard pattern matching exactly `names`; with none it matches nothing."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


# --- data -------------------------------------------------------------------------------------
def prepare_settings(wildcards):
    """Only what changes a dataset's prepared files (softcot/data/datasets.yaml)."""
    return PLAN.prepare(wildcards.dataset).settings_json


# --- models -----------------------------------------------------------------------------------
def model_spec_json(wildcards):
    return json.dumps(get_spec(wildcards.model, PLAN.local_paths).to_dict(), sort_keys=True)


def materialize_runtime(wildcards):
    """Minutes: a GGUF from PyPI converts in a few; a Hub download of an 8B model can take an hour."""
    return 120 if get_spec(wildcards.model, PLAN.local_paths).source.kind == "hub" else 20


# --- training ---------------------------------------------------------------------------------
def train_step(artefact):
    """The train step of `artefact` as a function of a job's wildcards (one rule per artefact)."""
    return lambda wildcards: PLAN.train(artefact, wildcards.pair, wildcards.dataset)


# Input and params functions from a step function (the train rules are made in a loop, so each
# binds its own step here rather than in a lambda that would see the loop's last value).
def step_inputs(step):
    return lambda wildcards: step(wildcards).inputs


def step_settings(step):
    return lambda wildcards: step(wildcards).settings_json


def step_local_paths(step):
    """`--local-path` arguments for the step's redirected models; they cannot change an output."""
    return lambda wildcards: PLAN.local_path_arguments(list(step(wildcards).settings["pair"].values()))


# Runtime and memory come from each job's workload and the preset's figures (softcot/resources.py,
# presets.<preset>.resources); a retry (e.g. after a SLURM time-out) asks for `attempt` times the time.
def step_minutes(step):
    return lambda wildcards, attempt: step(wildcards).runtime["minutes"] * attempt


def step_mem_mb(step):
    return lambda wildcards: step(wildcards).runtime["mem_mb"]


def train_runtime(wildcards):
    """Minutes of a training step that has no workload estimate (the thought probe's projector)."""
    return 60 if GPU_PER_JOB == 0 else 24 * 60


# --- evaluation -------------------------------------------------------------------------------
def eval_step(wildcards):
    return PLAN.evaluate(wildcards.pair, wildcards.dataset, wildcards.method)


def eval_shard_step(wildcards):
    return PLAN.evaluate_shard(
        wildcards.pair, wildcards.dataset, wildcards.method, int(wildcards.shard), int(wildcards.shards)
    )


def merge_step(wildcards):
    return PLAN.merge(wildcards.pair, wildcards.dataset, wildcards.method)


def artefact_argument(wildcards, input):
    return f"--artefact {input.artefact}" if "artefact" in input.keys() else ""


# --- tables -----------------------------------------------------------------------------------
def all_targets():
    """Every table of the active preset."""
    return PLAN.targets()
