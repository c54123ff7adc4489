# The thought probe (softcot/probe/): the base model's teacher-forced NLL of the gold target on
# held-out examples under six conditions, with its own projector, and three more per centred
# projector (probe.centred). `snakemake reports/thought_probe.md`
# scores the test split; reports/thought_probe_validation.md scores the validation slice of the
# train split, where the probe's training settings are chosen. The main tables' jobs are untouched.
from softcot.plan import PROBE_HELDOUT, PROBE_REPORTS


# Snakemake exports OMP_NUM_THREADS={threads}, which is 1 under the `--cores 1` this target runs
# with: torch would use one core of a 2-core laptop, and the probe would not fit its 20 minutes.
# Under `--cores 1` one job runs at a time, so torch_threads=0 (the default) has each take every CPU
# it may use, counted inside the job (a SLURM allocation's binding holds). A resource, so a profile
# can set it without rerunning anything (--set-resources probe_score:torch_threads=4).
PROBE_TORCH_THREADS = 0


rule probe_split:
    input:
        train=lambda wildcards: PLAN.probe_split(wildcards.dataset).inputs["train"],
    output:
        fit="results/probe/data/{dataset}/fit.jsonl",
        validation="results/probe/data/{dataset}/validation.jsonl",
    params:
        settings=lambda wildcards: PLAN.probe_split(wildcards.dataset).settings_json,
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/probe/data/{dataset}.log",
    benchmark:
        "logs/probe/data/{dataset}.bench.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "softcot probe split --dataset {wildcards.dataset} --settings {params.settings:q}"
        " --train {input.train} --fit {output.fit} --validation {output.validation} > {log} 2>&1"


# SoftCoT's training (softcot train) with probe.train on the fit part, with train.projection_center
# {center}: the paper's `none`, or one of probe.centred. Its assistant state cache is kept apart from
# the main projectors' (results/probe/states) and shared by every centring.
rule probe_train:
    input:
        unpack(
            lambda wildcards: PLAN.probe_train(wildcards.pair, wildcards.dataset, wildcards.center).inputs
        ),
    output:
        checkpoint="results/probe/{pair}/{dataset}/center-{center}/projector.safetensors",
        record="results/probe/{pair}/{dataset}/center-{center}/projector.json",
    wildcard_constraints:
        center=r"[a-z]+",
    params:
        settings=lambda wildcards: PLAN.probe_train(
            wildcards.pair, wildcards.dataset, wildcards.center
        ).settings_json,
        local=lambda wildcards: PLAN.local_path_arguments(
            list(
                PLAN.probe_train(wildcards.pair, wildcards.dataset, wildcards.center).settings["pair"].values()
            )
        ),
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/probe/{pair}/{dataset}/train-{center}.log",
    benchmark:
        "logs/probe/{pair}/{dataset}/train-{center}.bench.tsv"
    resources:
        mem_mb=8000 if GPU_PER_JOB == 0 else 64000,
        runtime=train_runtime,
        gpu=GPU_PER_JOB,
        torch_threads=PROBE_TORCH_THREADS,
    shell:
        "softcot train --artefact projector --pair {wildcards.pair} --dataset {wildcards.dataset}"
        " --settings {params.settings:q} --train {input.train} --models-dir results/models"
        " --states results/probe/states --checkpoint {output.checkpoint} --record {output.record}"
        " --threads {resources.torch_threads} {params.local} > {log} 2>&1"


rule probe_score:
    input:
        unpack(lambda wildcards: PLAN.probe(wildcards.pair, wildcards.dataset, wildcards.heldout).inputs),
    output:
        per_example="results/probe/{pair}/{dataset}/{heldout}/per_example.jsonl",
    wildcard_constraints:
        heldout=one_of(PROBE_HELDOUT),
    params:
        settings=lambda wildcards: PLAN.probe(wildcards.pair, wildcards.dataset, wildcards.heldout).settings_json,
        local=lambda wildcards: PLAN.local_path_arguments(
            list(PLAN.probe(wildcards.pair, wildcards.dataset, wildcards.heldout).settings["pair"].values())
        ),
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/probe/{pair}/{dataset}/{heldout}.log",
    benchmark:
        "logs/probe/{pair}/{dataset}/{heldout}.bench.tsv"
    resources:
        mem_mb=8000 if GPU_PER_JOB == 0 else 64000,
        runtime=60 if GPU_PER_JOB == 0 else 240,
        gpu=GPU_PER_JOB,
        torch_threads=PROBE_TORCH_THREADS,
    shell:
        "softcot probe score --pair {wildcards.pair} --dataset {wildcards.dataset} --heldout {wildcards.heldout}"
        " --settings {params.settings:q} --examples {input.examples} --fit {input.fit}"
        " --projector {input.projector} --record {input.record}"
        " --centred-projectors {input.centred_projectors} --centred-records {input.centred_records}"
        " --models-dir results/models"
        " --states results/probe/states --out {output.per_example} --threads {resources.torch_threads}"
        " {params.local} > {log} 2>&1"


rule probe_table:
    input:
        unpack(lambda wildcards: PLAN.probe_table(wildcards.probe).inputs),
    output:
        md="reports/{probe}.md",
        csv="reports/{probe}.csv",
        json="reports/{probe}.json",
        png="reports/{probe}.png",
    wildcard_constraints:
        probe=one_of(PROBE_REPORTS),
    params:
        spec=lambda wildcards: PLAN.probe_table(wildcards.probe).settings_json,
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/reports/{probe}.log",
    benchmark:
        "logs/reports/{probe}.bench.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "softcot probe table --name {wildcards.probe} --settings {params.spec:q}"
        " --per-example {input.per_example} --records {input.records} --examples {input.examples}"
        " --fit {input.fit} --centred-records {input.centred_records}"
        " --md {output.md} --csv {output.csv} --json {output.json} --png {output.png}"
        " > {log} 2>&1"
