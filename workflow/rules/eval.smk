# Evaluation: one job per (pair, dataset, method) writes one prediction file per seed, so the
# seeds of an example share generation batches.


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        predictions=[
            f"results/predictions/{{pair}}/{{dataset}}/{{method}}/seed{seed}.jsonl" for seed in CFG.seeds
        ],
        metrics=[
            f"results/predictions/{{pair}}/{{dataset}}/{{method}}/seed{seed}.metrics.json"
            for seed in CFG.seeds
        ],
    params:
        settings=lambda wildcards: as_json(CFG.eval_settings(wildcards.method)),
        pair_models=pair_models,
        option_format=option_format,
        projector=projector_argument,
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/predictions/{pair}/{dataset}/{method}.log",
    benchmark:
        "logs/predictions/{pair}/{dataset}/{method}.bench.tsv"
    threads: 4
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=GPU_PER_JOB,
    shell:
        "softcot evaluate --pair {wildcards.pair} --dataset {wildcards.dataset} --method {wildcards.method}"
        " --settings {params.settings:q} --pair-models {params.pair_models:q}"
        " --option-format {params.option_format:q} --test {input.test}"
        " --models-dir results/models {params.projector} --threads {threads}"
        " --out-dir results/predictions/{wildcards.pair}/{wildcards.dataset}/{wildcards.method} 2> {log}"
