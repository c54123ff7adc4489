# Evaluation: one job per (pair, dataset, method) writes one prediction file per seed, so the
# seeds of an example share generation batches. `params.settings` holds exactly what the method
# reads that can change its predictions; the batch size cannot, so it travels as a resource.
# With eval.shards > 1 (the paper preset) the examples are split into that many evaluate_shard
# jobs (each its own SLURM job, with its own resume file) and merge_shards writes the same
# prediction files; the method decides which pair of rules applies (softcot/shards.py).


rule evaluate:
    input:
        unpack(lambda wildcards: eval_step(wildcards).inputs),
    output:
        predictions=[f"results/predictions/{{pair}}/{{dataset}}/{{method}}/seed{seed}.jsonl" for seed in PLAN.seeds],
        metrics=[
            f"results/predictions/{{pair}}/{{dataset}}/{{method}}/seed{seed}.metrics.json" for seed in PLAN.seeds
        ],
    wildcard_constraints:
        method=one_of(PLAN.unsharded_methods()),
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
        mem_mb=step_mem_mb(eval_step),
        runtime=step_minutes(eval_step),
        gpu=GPU_PER_JOB,
        batch_size=lambda wildcards: eval_step(wildcards).runtime["batch_size"],
    shell:
        "softcot evaluate --pair {wildcards.pair} --dataset {wildcards.dataset} --method {wildcards.method}"
        " --settings {params.settings:q} --test {input.test} --models-dir results/models {params.artefact}"
        " --predictions {output.predictions} --metrics {output.metrics}"
        " --batch-size {resources.batch_size} --threads {threads} {params.local} 2> {log}"


rule evaluate_shard:
    input:
        unpack(lambda wildcards: eval_shard_step(wildcards).inputs),
    output:
        "results/predictions/{pair}/{dataset}/{method}/shards/{shard}-of-{shards}.jsonl",
    wildcard_constraints:
        method=one_of(PLAN.sharded_methods()),
        shard=r"\d+",
        shards=r"\d+",
    params:
        settings=lambda wildcards: eval_shard_step(wildcards).settings_json,
        artefact=artefact_argument,
        local=lambda wildcards: PLAN.local_path_arguments(list(eval_shard_step(wildcards).settings["pair"].values())),
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/predictions/{pair}/{dataset}/{method}/shard{shard}-of-{shards}.log",
    benchmark:
        "logs/predictions/{pair}/{dataset}/{method}/shard{shard}-of-{shards}.bench.tsv"
    threads: 4
    resources:
        mem_mb=step_mem_mb(eval_shard_step),
        runtime=step_minutes(eval_shard_step),
        gpu=GPU_PER_JOB,
        batch_size=lambda wildcards: eval_shard_step(wildcards).runtime["batch_size"],
    shell:
        "softcot evaluate --pair {wildcards.pair} --dataset {wildcards.dataset} --method {wildcards.method}"
        " --settings {params.settings:q} --test {input.test} --models-dir results/models {params.artefact}"
        " --shard {wildcards.shard}/{wildcards.shards} --rows {output}"
        " --batch-size {resources.batch_size} --threads {threads} {params.local} 2> {log}"


rule merge_shards:
    input:
        unpack(lambda wildcards: merge_step(wildcards).inputs),
    output:
        predictions=[f"results/predictions/{{pair}}/{{dataset}}/{{method}}/seed{seed}.jsonl" for seed in PLAN.seeds],
        metrics=[
            f"results/predictions/{{pair}}/{{dataset}}/{{method}}/seed{seed}.metrics.json" for seed in PLAN.seeds
        ],
    wildcard_constraints:
        method=one_of(PLAN.sharded_methods()),
    params:
        settings=lambda wildcards: merge_step(wildcards).settings_json,
        artefact=artefact_argument,
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/predictions/{pair}/{dataset}/{method}.log",
    benchmark:
        "logs/predictions/{pair}/{dataset}/{method}.bench.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "softcot merge --pair {wildcards.pair} --dataset {wildcards.dataset} --method {wildcards.method}"
        " --settings {params.settings:q} --test {input.test} --shards {input.shards} {params.artefact}"
        " --predictions {output.predictions} --metrics {output.metrics} > {log} 2>&1"
