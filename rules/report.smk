# Aggregation into the paper's tables, publication under results/, and figures.
MAIN_RECORDS = expand(f"{RUN}/metrics/{{variant}}/class{{c}}/seed{{s}}.json", variant=["original", *METHODS], c=CLASSES, s=SEEDS)
ABLATION_RECORDS = expand(f"{RUN}/metrics/{{variant}}/class{config['ablation']['forget_class']}/seed{{s}}.json",
                          variant=ABLATION, s=SEEDS) if ABLATION else []
# the ablation table's: its variants' and the main run's of the same class
ABLATION_TABLE_RECORDS = ABLATION_RECORDS + expand(
    f"{RUN}/metrics/{config['ablation']['method']}/class{config['ablation']['forget_class']}/seed{{s}}.json", s=SEEDS) if ABLATION else []


rule aggregate:
    input: records=MAIN_RECORDS, code=REPORT_CODE
    output: tables=[f"{RUN}/{name}" for name in TABLES], redo=redo_state("aggregate")
    # not from `input`: Snakemake compares no params derived from it
    params:
        redo=redo_when_lost("aggregate", f"{RUN}/metrics.csv", MAIN_RECORDS), fp=fp("report"),
        out_dir=lambda w, output: os.path.dirname(output.tables[0]),
    log: f"{RUN}/logs/aggregate.log"
    # joined, not added: `snakemake --lint` takes a string plus a name for a path composition
    shell:
        " && ".join(["unlearnbench aggregate --config {CFG} --records {input.records} --out-dir {params.out_dir}"
                     " > {log} 2>&1", REDO_RECORD])


rule copy_evaluator_record:
    input: f"{EVALUATOR}/evaluator.json"
    output: f"{RUN}/evaluator.json"
    log: f"{RUN}/logs/copy_evaluator_record.log"
    shell: "cp {input} {output} > {log} 2>&1"


rule publish:
    """results/<name>: copies of the latest run's tables and records (results/<run>/<name> stay), each as its job
    wrote it; redone, with what they are made from, when one of the run's is gone (a failed aggregate deletes them)."""
    input: [f"{RUN}/{name}" for name in PUBLISHED]
    output:
        published=[report(f"results/{name}", caption="../report/table.rst", category="Tables") if name == "table.csv"
                   else f"results/{name}" for name in PUBLISHED],
        redo=redo_state("publish"),
    params: redo=redo_when_lost("publish", f"results/{PUBLISHED[0]}", [f"{RUN}/{name}" for name in PUBLISHED])
    log: f"{RUN}/logs/publish.log"
    localrule: True
    # tee: a refused table's message (what to do) also reaches the terminal without the workflow profile; Snakemake's
    # shells run under pipefail, so the refusal still fails the job
    shell: " && ".join(["unlearnbench publish {input} --to results 2>&1 | tee {log}", REDO_RECORD])


rule ablation_table:
    input:
        records=ABLATION_TABLE_RECORDS,
        code=REPORT_CODE,
    output: table=f"{RUN}/ablation.csv", redo=redo_state("ablation")
    params: redo=redo_when_lost("ablation", f"{RUN}/ablation.csv", ABLATION_TABLE_RECORDS)
    log: f"{RUN}/logs/ablation_table.log"
    shell:
        " && ".join(["unlearnbench aggregate-ablation --config {CFG} --records {input.records} --out {output.table}"
                     " > {log} 2>&1", REDO_RECORD])


rule figures:
    input:
        expand("results/{name}", name=PUBLISHED),  # the tables the figures draw, published with them (not stale)
        f"{FIGS}/cost.png", f"{FIGS}/per_class.png",
        expand(f"{FIGS}/samples_class{{c}}.png", c=CLASSES),
        [f"{FIGS}/psi_ablation.png"] if ABLATION else [],


rule figure_summary:
    input: metrics=f"{RUN}/metrics.csv", code=FIGURES_CODE
    output:
        report(f"{FIGS}/cost.png", caption="../report/cost.rst", category="Figures"),
        report(f"{FIGS}/per_class.png", caption="../report/per_class.rst", category="Figures"),
    params: fp=fp("report"), out_dir=lambda w, output: os.path.commonpath(output)  # fp: the methods' order, colours
    log: f"{RUN}/logs/figures_summary.log"
    shell:
        "unlearnbench figures --config {CFG} --metrics {input.metrics} --out-dir {params.out_dir} --kind summary"
        " > {log} 2>&1"


rule figure_samples:
    input:
        samples=lambda w: [f"{RUN}/samples/original/seed{SEEDS[0]}.npz"]
        + [f"{RUN}/samples/{m}/class{w.c}/seed{SEEDS[0]}.npz" for m in METHODS],
        code=FIGURES_CODE,
    output: report(f"{FIGS}/samples_class{{c}}.png", caption="../report/samples.rst", category="Samples", labels={"forgotten class": "{c}"})
    params: fp=fp("report")  # the methods' order and colours
    log: f"{RUN}/logs/figures_samples_class{{c}}.log"
    shell:
        "unlearnbench figures --config {CFG} --samples {input.samples} --forget-class {wildcards.c}"
        " --out {output} --kind samples > {log} 2>&1"


rule figure_ablation:
    input: table=f"{RUN}/ablation.csv", code=FIGURES_CODE
    output: report(f"{FIGS}/psi_ablation.png", caption="../report/ablation.rst", category="Figures")
    params: fp=fp("report")  # the methods' order and colours
    log: f"{RUN}/logs/figures_ablation.log"
    shell: "unlearnbench figures --config {CFG} --metrics {input.table} --out {output} --kind ablation > {log} 2>&1"
