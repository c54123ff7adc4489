# Training: one job per (trained artefact, pair, dataset), one rule per artefact (train_projector,
# train_lora, train_coconut), all made here from the artefact's declared files (softcot.methods
# Artefact). The method that owns the artefact fits it: SoftCoT's projector with both models frozen,
# LoRA adapters and Coconut's on the base model. Datasets without a training split (Date
# Understanding) have no instance: the catalog's `trained_on` names the dataset whose artefact
# serves them. SoftCoT's assistant states are cached in results/states (keyed by their inputs, not
# a declared output: any change there is recomputed by the job).


for _artefact in artefacts().values():

    rule:
        name:
            f"train_{_artefact.name}"
        input:
            unpack(step_inputs(train_step(_artefact.name))),
        output:
            **_artefact.files("{pair}", "{dataset}"),
        wildcard_constraints:
            dataset=one_of(trainable_datasets()),
        params:
            artefact=_artefact.name,
            settings=step_settings(train_step(_artefact.name)),
            local=step_local_paths(train_step(_artefact.name)),
        conda:
            "../envs/softcot.yaml"
        log:
            _artefact.log("{pair}", "{dataset}"),
        benchmark:
            _artefact.log("{pair}", "{dataset}").removesuffix(".log") + ".bench.tsv"
        resources:
            mem_mb=step_mem_mb(train_step(_artefact.name)),
            runtime=step_minutes(train_step(_artefact.name)),
            gpu=GPU_PER_JOB,
        shell:
            "softcot train --artefact {params.artefact} --pair {wildcards.pair} --dataset {wildcards.dataset}"
            " --settings {params.settings:q} --train {input.train} --models-dir results/models"
            " --states results/states --checkpoint {output.checkpoint} --record {output.record} {params.local}"
            " > {log} 2>&1"


# The authors' released projectors (params imported_projectors), converted to this project's format,
# for methods with `artefact_source: imported`.
rule import_artefact:
    input:
        lambda wildcards: PLAN.imported_source(wildcards.artefact, wildcards.pair, wildcards.dataset),
    output:
        "results/imported/{artefact}s/{pair}/{dataset}/{artefact}.safetensors",
    wildcard_constraints:
        artefact="projector",
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/imported/{artefact}s/{pair}/{dataset}.log",
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "softcot import-projector {input} --out {output} > {log} 2>&1"
