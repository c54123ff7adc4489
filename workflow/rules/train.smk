# Training: one job per (trained artefact, pair, dataset). The method that owns the artefact
# (softcot.methods; SoftCoT's projector today) fits it with both models frozen. Datasets without a
# training split (Date Understanding) have no instance: the catalog's `trained_on` names the
# dataset whose artefact serves them. SoftCoT's assistant states are cached in results/states
# (keyed by their inputs, not a declared output: any change there is recomputed by the job).


rule train:
    input:
        unpack(lambda wildcards: train_step(wildcards).inputs),
    output:
        checkpoint="results/{artefact}s/{pair}/{dataset}/{artefact}.safetensors",
        record="results/{artefact}s/{pair}/{dataset}/{artefact}.json",
    wildcard_constraints:
        artefact=one_of(artefacts()),
        dataset=one_of(trainable_datasets()),
    params:
        settings=lambda wildcards: train_step(wildcards).settings_json,
        local=lambda wildcards: PLAN.local_path_arguments(list(train_step(wildcards).settings["pair"].values())),
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/{artefact}s/{pair}/{dataset}.log",
    benchmark:
        "logs/{artefact}s/{pair}/{dataset}.bench.tsv"
    resources:
        # Tiny: both float32 models, the cached states and the base's activations (~6 GB peak).
        mem_mb=8000 if GPU_PER_JOB == 0 else 64000,
        runtime=train_runtime,
        gpu=GPU_PER_JOB,
    shell:
        "softcot train --artefact {wildcards.artefact} --pair {wildcards.pair} --dataset {wildcards.dataset}"
        " --settings {params.settings:q} --train {input.train} --models-dir results/models"
        " --states results/states --checkpoint {output.checkpoint} --record {output.record} {params.local}"
        " > {log} 2>&1"
