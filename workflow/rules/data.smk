# Data preparation: pinned raw files (mirror or download, hash-verified) -> data/prepared/{dataset}/{split}.jsonl.
# `params.settings` holds only what changes a dataset's prepared files (softcot/data/datasets.yaml),
# so editing e.g. data.asdiv_aug reruns ASDiv-Aug and nothing else. The mirror is no param: every
# file it supplies is verified against its pinned hash, so it cannot change a result.


rule prepare_split:
    output:
        "data/prepared/{dataset}/{split}.jsonl",
    wildcard_constraints:
        dataset=one_of(datasets_built_per_split()),
    params:
        settings=prepare_settings,
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


# Datasets whose one build writes both splits (catalog: joint_build), e.g. ASDiv-Aug.
rule prepare_joint:
    output:
        train="data/prepared/{dataset}/train.jsonl",
        test="data/prepared/{dataset}/test.jsonl",
        stats="data/prepared/{dataset}/stats.json",
    wildcard_constraints:
        dataset=one_of(datasets_built_jointly()),
    params:
        settings=prepare_settings,
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/data/{dataset}/train+test.log",
    benchmark:
        "logs/data/{dataset}/train+test.bench.tsv"
    resources:
        mem_mb=2000,
        runtime=15,
    shell:
        "(softcot prepare --dataset {wildcards.dataset} --split train --out {output.train}"
        " --stats {output.stats} --settings {params.settings:q}"
        " && softcot prepare --dataset {wildcards.dataset} --split test --out {output.test}"
        " --stats {output.stats} --settings {params.settings:q}) > {log} 2>&1"
