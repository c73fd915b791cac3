# Guidance sweep (not a default target: snakemake --cores all guidance): every main model
# sampled and scored again at each weight of guidance_sweep, one job per model for all its weights (a process
# per weight and model would cost more than the sampling on digits); the sampler's own weight is the main
# evaluation. Records and samples: guidance/w<w>/metrics/..., guidance/w<w>/samples/... (as under the run).
SWEEP_WEIGHTS = guidance_labels(config)
SWEEP = f"{RUN}/guidance"
SWEEP_RECORDS = [f"{SWEEP}/w{w}/metrics/{v}/class{c}/seed{s}.json"
                 for w in SWEEP_WEIGHTS for v in ["original", *METHODS] for c in CLASSES for s in SEEDS]


if SWEEP_WEIGHTS:  # else no rule: their outputs would be empty, and the table is the main run's alone
    rule sweep_original:
        """The original model: one sample set per weight, scored for every forget class (as score_original)."""
        input:
            data=DATA, original=ORIGINAL_FILES, evaluator=EVALUATOR_FILES, cost=f"{ORIGINAL}/train.json",
            references=expand(f"{RUN}/fid_reference/class{{c}}.npz", c=CLASSES), code=METRICS_CODE,
        output:  # weight by weight, as the command reads them
            samples=[f"{SWEEP}/w{w}/samples/original/seed{{s}}.npz" for w in SWEEP_WEIGHTS],
            records=[f"{SWEEP}/w{w}/metrics/original/class{c}/seed{{s}}.json" for w in SWEEP_WEIGHTS for c in CLASSES],
        params:
            fp=fp("evaluate"), classes=" ".join(map(str, CLASSES)), weights=" ".join(SWEEP_WEIGHTS),
            original=lambda w, input: os.path.commonpath(input.original),
            evaluator=lambda w, input: os.path.commonpath(input.evaluator),
        log: f"{RUN}/logs/guidance/original_seed{{s}}.log"
        threads: THREADS
        resources: gpu=GPU_JOB
        shell:
            "unlearnbench evaluate-guidance --config {CFG} --weights {params.weights}"
            " --model {params.original}/unet_ema --data {input.data} --evaluator {params.evaluator}"
            " --reference {input.references} --cost {input.cost}"
            " --method original --variant original --forget-class {params.classes} --seed {wildcards.s}"
            " --samples {output.samples} --out {output.records} > {log} 2>&1"


    rule sweep_unlearned:
        input:
            data=DATA, cost=f"{MODEL}/cost.json", weights=MODEL_WEIGHTS, evaluator=EVALUATOR_FILES,
            reference=f"{RUN}/fid_reference/class{{c}}.npz", code=METRICS_CODE,
        output:
            samples=[f"{SWEEP}/w{w}/samples/{{variant}}/class{{c}}/seed{{s}}.npz" for w in SWEEP_WEIGHTS],
            records=[f"{SWEEP}/w{w}/metrics/{{variant}}/class{{c}}/seed{{s}}.json" for w in SWEEP_WEIGHTS],
        params:
            fp=lambda w: fp("evaluate", parse_variant(w.variant)[0]), method=lambda w: parse_variant(w.variant)[0],
            weights=" ".join(SWEEP_WEIGHTS), evaluator=lambda w, input: os.path.commonpath(input.evaluator),
        log: f"{RUN}/logs/guidance/{{variant}}_class{{c}}_seed{{s}}.log"
        threads: THREADS
        resources: gpu=GPU_JOB
        shell:
            "unlearnbench evaluate-guidance --config {CFG} --weights {params.weights}"
            " --model $(dirname {input.cost})/unet --data {input.data} --evaluator {params.evaluator}"
            " --reference {input.reference} --cost {input.cost}"
            " --method {params.method} --variant {wildcards.variant} --forget-class {wildcards.c} --seed {wildcards.s}"
            " --samples {output.samples} --out {output.records} > {log} 2>&1"


rule guidance:
    """`snakemake guidance`: the sweep's tables and figure (not a default target: it samples every model again)."""
    input: f"{RUN}/guidance.csv", f"{FIGS}/guidance.png"


rule guidance_table:
    input: records=MAIN_RECORDS + SWEEP_RECORDS, code=REPORT_CODE
    output: tables=[f"{RUN}/guidance.csv", f"{RUN}/guidance.md"], redo=redo_state("guidance")
    params:
        redo=redo_when_lost("guidance", f"{RUN}/guidance.csv", MAIN_RECORDS + SWEEP_RECORDS),
        out_dir=lambda w, output: os.path.dirname(output.tables[0]),
    log: f"{RUN}/logs/guidance/table.log"
    shell:
        " && ".join(["unlearnbench aggregate-guidance --config {CFG} --records {input.records}"
                     " --out-dir {params.out_dir} > {log} 2>&1", REDO_RECORD])


rule figure_guidance:
    input: table=f"{RUN}/guidance.csv", code=FIGURES_CODE
    output: report(f"{FIGS}/guidance.png", caption="../report/guidance.rst", category="Figures")
    log: f"{RUN}/logs/figures_guidance.log"
    shell: "unlearnbench figures --config {CFG} --metrics {input.table} --out {output} --kind guidance > {log} 2>&1"
