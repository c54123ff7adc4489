# SoftCoT reproduction workflow. Thin on purpose: the rules live in workflow/rules/, the
# configuration in params.yaml (validated in common.smk before any job runs).
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


rule all:
    default_target: True
    input:
        all_targets(),
