# Tables: one job per table reads every prediction file of its rows and writes reports/{table}.*
# (md for people, csv for machines, json metrics for DVC, and a png when rows have an `x`).
import re

from softcot.report import has_plot, input_paths, table_spec

PREDICTIONS = "results/predictions"


def table_targets(name):
    """The report files of table `name`: md, csv, json, and png when its rows have `x`."""
    suffixes = ["md", "csv", "json"] + (["png"] if has_plot(table_spec(CFG, name)) else [])
    return [f"reports/{name}.{suffix}" for suffix in suffixes]


def table_inputs(wildcards):
    """Predictions and metrics per (row, dataset, seed), and the prepared test sets it hashes."""
    return [str(path) for path in input_paths(table_spec(CFG, wildcards.table), PREDICTIONS, "data/prepared")]


def _one_of(names):
    """A wildcard pattern matching exactly `names`; with none it matches nothing."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


PLOT_TABLES = [name for name in CFG.table_names() if has_plot(table_spec(CFG, name))]


rule table:
    input:
        table_inputs,
    output:
        md="reports/{table}.md",
        csv="reports/{table}.csv",
        json="reports/{table}.json",
    wildcard_constraints:
        table=_one_of([name for name in CFG.table_names() if name not in PLOT_TABLES]),
    params:
        spec=lambda wildcards: as_json(table_spec(CFG, wildcards.table)),
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
        table=_one_of(PLOT_TABLES),
