# The finding study (config `finding`; not a default target: snakemake --cores all finding): the method with one
# param changed per point, on one forgotten class, each seed; every model's metrics, and the size of its noise
# predictions per label (denoiser_norms). docs/safemax-finding.md reads its table and figure.
FINDING = finding_variants(config)
FINDING_CLASS = config["finding"]["forget_class"] if FINDING else None
FINDING_POINTS = ["original", config["finding"]["method"], *FINDING] if FINDING else []
FINDING_RECORDS = [f"{RUN}/metrics/{v}/class{FINDING_CLASS}/seed{s}.json" for v in FINDING_POINTS for s in SEEDS]
# the weights of a finding point's model (class FINDING_CLASS), as declared by its unlearn job
FINDING_MODEL_WEIGHTS = [f"{RUN}/models/{{variant}}/class{FINDING_CLASS}/seed{{s}}/unet/{f}" for f in UNET_FILES]
FINDING_NORMS = [f"{RUN}/finding/norms/{v}/seed{s}.json" for v in FINDING_POINTS for s in SEEDS]


rule finding:
    """`snakemake finding`: the finding study's table and figure."""
    input: [f"{RUN}/finding.csv", f"{FIGS}/finding.png"] if FINDING else []


if FINDING:
    rule denoiser_norms_original:
        input: data=DATA, original=ORIGINAL_FILES
        output: f"{RUN}/finding/norms/original/seed{{s}}.json"
        params:
            fp=fp("evaluate"), forget_class=FINDING_CLASS,
            original=lambda w, input: os.path.commonpath(input.original),
        log: f"{RUN}/logs/finding/norms_original_seed{{s}}.log"
        threads: THREADS
        resources: gpu=GPU_JOB
        shell:
            "unlearnbench denoiser-norms --config {CFG} --model {params.original}/unet_ema --data {input.data}"
            " --forget-class {params.forget_class} --seed {wildcards.s} --variant original --out {output} > {log} 2>&1"


    rule denoiser_norms:
        input: data=DATA, weights=FINDING_MODEL_WEIGHTS
        output: f"{RUN}/finding/norms/{{variant}}/seed{{s}}.json"
        params:
            fp=fp("evaluate"), forget_class=FINDING_CLASS,
            model=lambda w, input: os.path.dirname(input.weights[0]),  # the unet folder of the point's model
        log: f"{RUN}/logs/finding/norms_{{variant}}_seed{{s}}.log"
        threads: THREADS
        resources: gpu=GPU_JOB
        shell:
            "unlearnbench denoiser-norms --config {CFG} --model {params.model} --data {input.data}"
            " --forget-class {params.forget_class} --seed {wildcards.s} --variant {wildcards.variant}"
            " --out {output} > {log} 2>&1"


    rule finding_table:
        input: records=FINDING_RECORDS, norms=FINDING_NORMS, code=REPORT_CODE
        output: tables=[f"{RUN}/finding.csv", f"{RUN}/finding.md"], redo=redo_state("finding")
        params:
            redo=redo_when_lost("finding", f"{RUN}/finding.csv", FINDING_RECORDS + FINDING_NORMS),
            out_dir=lambda w, output: os.path.dirname(output.tables[0]),
        log: f"{RUN}/logs/finding/table.log"
        shell:
            " && ".join(["unlearnbench aggregate-finding --config {CFG} --records {input.records} --norms {input.norms}"
                         " --out-dir {params.out_dir} > {log} 2>&1", REDO_RECORD])


    rule figure_finding:
        input: table=f"{RUN}/finding.csv", code=FIGURES_CODE
        output: report(f"{FIGS}/finding.png", caption="../report/finding.rst", category="Figures")
        log: f"{RUN}/logs/figures_finding.log"
        shell: "unlearnbench figures --config {CFG} --metrics {input.table} --out {output} --kind finding > {log} 2>&1"
