# Data preparation: pinned raw files (mirror or download, hash-verified) -> data/prepared/{dataset}/{split}.jsonl.
# `params.settings` holds only what changes a dataset's prepared files (softcot/data/datasets.yaml),
# so editing e.g. data.asdiv_aug reruns ASDiv-Aug and nothing else. The mirror is no param: every
# file it supplies is verified against its pinned hash, so it cannot change a result.

rule prepare_split:
    output:
        "data/prepared/{dataset}/{split}.jsonl",
    wildcard_constraints:
        # ASDiv-Aug's two splits come from one build (rule prepare_asdiv_aug).
        dataset="gsm8k|aqua|strategyqa|date",
    params:
        settings=data_settings,
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/data/{dataset}/{split}.log",
    benchmark:
        "logs/data/{dataset}/{split}.bench.tsv"
    resources:
        mem_mb=2000,
        runtime=15,
    shell:
        "softcot prepare --dataset {wildcards.dataset} --split {wildcards.split} --out {output}"
        " --settings {params.settings:q} > {log} 2>&1"


rule prepare_asdiv_aug:
    output:
        train="data/prepared/asdiv-aug/train.jsonl",
        test="data/prepared/asdiv-aug/test.jsonl",
        stats="data/prepared/asdiv-aug/stats.json",
    params:
        settings=as_json(result_settings(CFG.raw["data"], "asdiv-aug")),
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/data/asdiv-aug/train+test.log",
    benchmark:
        "logs/data/asdiv-aug/train+test.bench.tsv"
    resources:
        mem_mb=2000,
        runtime=15,
    shell:
        "(softcot prepare --dataset asdiv-aug --split train --out {output.train} --settings {params.settings:q}"
        " && softcot prepare --dataset asdiv-aug --split test --out {output.test} --settings {params.settings:q})"
        " > {log} 2>&1"
