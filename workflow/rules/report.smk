# Tables: one job per table reads every prediction file of its rows and writes reports/{table}.*
# (md for people, csv for machines, json metrics for DVC, and a png when rows have an `x`).

rule table:
    input:
        table_inputs,
    output:
        md="reports/{table}.md",
        csv="reports/{table}.csv",
        json="reports/{table}.json",
    wildcard_constraints:
        table=one_of([name for name in CFG.table_names() if name not in PLOT_TABLES]),
    params:
        spec=lambda wildcards: as_json(table_spec(CFG, wildcards.table)),
    conda:
        "../envs/softcot.yaml"
    log:
        "logs/reports/{table}.log",
    benchmark:
        "logs/reports/{table}.bench.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "softcot table --table {wildcards.table} --settings {params.spec:q}"
        f" --predictions {PREDICTIONS} --prepared data/prepared --out-dir reports > {{log}} 2>&1"


use rule table as table_with_plot with:
    output:
        md="reports/{table}.md",
        csv="reports/{table}.csv",
        json="reports/{table}.json",
        png="reports/{table}.png",
    wildcard_constraints:
        table=one_of(PLOT_TABLES),
