# Projector training: one job per (pair, dataset) fits the soft-thought projection on the
# prepared train split, both models frozen. Date Understanding has no rule instance: it is
# evaluated with the gsm8k projector. The assistant's slot states are cached in results/states
# (keyed by their inputs, not a declared output: any change there is recomputed by the job).


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoint=projector("{pair}", "{dataset}"),
        record="results/projectors/{pair}/{dataset}/projector.json",
    wildcard_constraints:
        dataset="gsm8k|asdiv-aug|aqua|strategyqa",
    params:
        settings=as_json(CFG.train_settings()),
        pair_models=pair_models,
        option_format=option_format,
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/projectors/{pair}/{dataset}.log",
    benchmark:
        "logs/projectors/{pair}/{dataset}.bench.tsv"
    resources:
        # Tiny: both float32 models, the cached states and the base's activations (~6 GB peak).
        mem_mb=8000 if GPU_PER_JOB == 0 else 64000,
        runtime=train_runtime,
        gpu=GPU_PER_JOB,
    shell:
        "softcot train --pair {wildcards.pair} --dataset {wildcards.dataset}"
        " --settings {params.settings:q} --pair-models {params.pair_models:q}"
        " --option-format {params.option_format:q} --models-dir results/models"
        " --data data/prepared --states results/states --out results/projectors > {log} 2>&1"
