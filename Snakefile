# SoftCoT reproduction workflow. Thin on purpose: the rules live in workflow/rules/, the
# configuration in params.yaml (validated in common.smk before any job runs).
from snakemake.utils import min_version

from softcot.config import read_params

min_version("9.0")

read_params("params.yaml")  # a syntax error is named by line and column before Snakemake reads it


configfile: "params.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset=one_of(DATASETS),
    split=one_of(SPLITS),
    model=r"[a-z0-9][a-z0-9._-]*",
    pair=r"[a-z0-9][a-z0-9._-]*",
    method=r"[a-z0-9][a-z0-9._-]*",
    table=r"[a-z0-9][a-z0-9_-]*",
    seed=r"\d+",


include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/probe.smk"


rule all:
    default_target: True
    input:
        all_targets(),
