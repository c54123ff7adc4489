# Tables: one job per table reads every prediction file of its rows and writes reports/{table}.*
# (md for people, csv for machines, json metrics for DVC, and a png plot).


rule table:
    input:
        unpack(table_inputs),
    output:
        md="reports/{table}.md",
        csv="reports/{table}.csv",
        json="reports/{table}.json",
        png="reports/{table}.png",
    wildcard_constraints:
        table=one_of(PLAN.table_names()),
    params:
        spec=lambda wildcards: PLAN.table(wildcards.table).settings_json,
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
        " --predictions results/predictions --prepared data/prepared"
        " --md {output.md} --csv {output.csv} --json {output.json} --png {output.png} > {log} 2>&1"
