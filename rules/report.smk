# Aggregation into the paper's tables, publication under results/, and figures.
MAIN_RECORDS = expand(f"{RUN}/metrics/{{variant}}/class{{c}}/seed{{s}}.json", variant=["original", *METHODS], c=CLASSES, s=SEEDS)
ABLATION_RECORDS = expand(f"{RUN}/metrics/{{variant}}/class{config['ablation']['forget_class']}/seed{{s}}.json",
                          variant=ABLATION, s=SEEDS) if ABLATION else []
# the ablation table's: its variants' and the main run's of the same class
ABLATION_TABLE_RECORDS = ABLATION_RECORDS + expand(
    f"{RUN}/metrics/{config['ablation']['method']}/class{config['ablation']['forget_class']}/seed{{s}}.json", s=SEEDS) if ABLATION else []


rule aggregate:
    input: records=MAIN_RECORDS, code=REPORT_CODE
    output: [f"{RUN}/{name}" for name in TABLES]
    # not from `input`: Snakemake compares no params derived from it
    params: remake=lambda w: remake_marker(f"{RUN}/metrics.csv", MAIN_RECORDS, f"{RUN}/.remake/aggregate")
    log: f"{RUN}/logs/aggregate.log"
    shell: "{CLI} aggregate --config {CFG} --records {input.records} --out-dir {RUN} > {log} 2>&1"


rule copy_evaluator_record:
    input: f"{EVALUATOR}/evaluator.json"
    output: f"{RUN}/evaluator.json"
    shell: "cp {input} {output}"


rule publish:
    """results/<name>: copies of the latest run's tables and records (results/<run>/<name> stay)."""
    input: [f"{RUN}/{name}" for name in PUBLISHED]
    output: [f"results/{name}" for name in PUBLISHED]
    localrule: True
    shell: "cp {input} results/"  # a shell call: a `run:` block costs seconds of Snakefile re-import


rule ablation_table:
    input:
        records=ABLATION_TABLE_RECORDS,
        code=REPORT_CODE,
    output: f"{RUN}/ablation.csv"
    params: remake=lambda w: remake_marker(f"{RUN}/ablation.csv", ABLATION_TABLE_RECORDS, f"{RUN}/.remake/ablation")
    log: f"{RUN}/logs/ablation_table.log"
    shell: "{CLI} aggregate-ablation --config {CFG} --records {input.records} --out {output} > {log} 2>&1"


rule figures:
    input:
        expand("results/{name}", name=PUBLISHED),  # the tables the figures draw, published with them (not stale)
        f"{FIGS}/cost.png", f"{FIGS}/per_class.png",
        expand(f"{FIGS}/samples_class{{c}}.png", c=CLASSES),
        [f"{FIGS}/psi_ablation.png"] if ABLATION else [],


rule figure_summary:
    input: metrics=f"{RUN}/metrics.csv", code=FIGURES_CODE
    output: f"{FIGS}/cost.png", f"{FIGS}/per_class.png"
    log: f"{RUN}/logs/figures_summary.log"
    shell: "{CLI} figures --config {CFG} --metrics {input.metrics} --out-dir {FIGS} --kind summary > {log} 2>&1"


rule figure_samples:
    input:
        samples=lambda w: [f"{RUN}/samples/original/seed{SEEDS[0]}.npz"]
        + [f"{RUN}/samples/{m}/class{w.c}/seed{SEEDS[0]}.npz" for m in METHODS],
        code=FIGURES_CODE,
    output: f"{FIGS}/samples_class{{c}}.png"
    log: f"{RUN}/logs/figures_samples_class{{c}}.log"
    shell:
        "{CLI} figures --config {CFG} --samples {input.samples} --forget-class {wildcards.c}"
        " --out {output} --kind samples > {log} 2>&1"


rule figure_ablation:
    input: table=f"{RUN}/ablation.csv", code=FIGURES_CODE
    output: f"{FIGS}/psi_ablation.png"
    log: f"{RUN}/logs/figures_ablation.log"
    shell: "{CLI} figures --config {CFG} --metrics {input.table} --out {output} --kind ablation > {log} 2>&1"
