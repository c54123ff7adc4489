# Evaluation: one job per (pair, dataset, method) writes one prediction file per seed, so the
# seeds of an example share generation batches. `params.settings` holds exactly what the method
# reads that can change its predictions; the batch size cannot, so it travels as a resource.


rule evaluate:
    input:
        unpack(lambda wildcards: eval_step(wildcards).inputs),
    output:
        predictions=[f"results/predictions/{{pair}}/{{dataset}}/{{method}}/seed{seed}.jsonl" for seed in PLAN.seeds],
        metrics=[
            f"results/predictions/{{pair}}/{{dataset}}/{{method}}/seed{seed}.metrics.json" for seed in PLAN.seeds
        ],
    params:
        settings=lambda wildcards: eval_step(wildcards).settings_json,
        artefact=artefact_argument,
        # Where redirected models load from; it cannot change a prediction (the revision is checked).
        local=lambda wildcards: PLAN.local_path_arguments(list(eval_step(wildcards).settings["pair"].values())),
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
        batch_size=lambda wildcards: eval_step(wildcards).runtime["batch_size"],
    shell:
        "softcot evaluate --pair {wildcards.pair} --dataset {wildcards.dataset} --method {wildcards.method}"
        " --settings {params.settings:q} --test {input.test} --models-dir results/models {params.artefact}"
        " --predictions {output.predictions} --metrics {output.metrics}"
        " --batch-size {resources.batch_size} --threads {threads} {params.local} 2> {log}"
