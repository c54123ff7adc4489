# Evaluation: one job per (pair, dataset, method) writes one prediction file per seed, so the
# seeds of an example share generation batches.


def prediction_files(pair, dataset, method):
    return [f"results/predictions/{pair}/{dataset}/{method}/seed{seed}.jsonl" for seed in CFG.seeds]


def eval_inputs(wildcards):
    """Only what the method needs: CoT does not wait for the assistant or a projector."""
    pair = CFG.pair(wildcards.pair)
    kind = CFG.eval_settings(wildcards.method)["kind"]
    inputs = {"test": prepared(wildcards.dataset, "test"), "base": model_dir(pair["base"])}
    if kind in ("assist-cot", "softcot"):
        inputs["assistant"] = model_dir(pair["assistant"])
    if kind == "softcot":
        inputs["projector"] = projector(wildcards.pair, CFG.projector_dataset(wildcards.dataset))
    return inputs


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
        pair_models=lambda wildcards: as_json(CFG.pair(wildcards.pair)),
        projector=lambda wildcards, input: f"--projector {input.projector}" if "projector" in input.keys() else "",
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
        " --settings {params.settings:q} --pair-models {params.pair_models:q} --test {input.test}"
        " --models-dir results/models {params.projector} --threads {threads}"
        " --out-dir results/predictions/{wildcards.pair}/{wildcards.dataset}/{wildcards.method} 2> {log}"
