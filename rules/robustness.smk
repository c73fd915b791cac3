# Beyond the paper's evaluation (config `robustness`; docs/robustness.md; not a default target:
# snakemake --cores all robustness): extra evaluators, Retrain, the forgotten class under every evaluator and its
# distance to the real class, attacks that try to bring it back; robustness.csv and .md, and their figures.
from unlearnbench.files import DIGESTS
from unlearnbench.workflow import attacked_model, attacked_model_records, noise_aware_evaluator

ROBUST = config.get("robustness") or {}
EXTRA_EVALUATORS = list(ROBUST.get("evaluators") or {})
NOISE_AWARE = noise_aware_evaluator(config)
RETRAIN = ["retrain"] if ROBUST.get("retrain") else []
ATTACK_SEEDS = (ROBUST.get("attacks") or {}).get("seeds") or []
EXTRA_EVALUATOR = f"{RUN}/robustness/evaluators/{{name}}/{{file}}"
EXTRA_EVALUATOR_FILES = expand(EXTRA_EVALUATOR, name=EXTRA_EVALUATORS, file=["evaluator.json", EVALUATOR_WEIGHTS])
RETRAIN_MODEL = f"{RUN}/retrain/class{{c}}"  # Retrain's folder: unet/, unet_ema/ (sampled), train.json
SCORE = f"{RUN}/robustness/scores/{{method}}/class{{c}}/seed{{s}}.json"
ATTACK = f"{RUN}/robustness/attacks/{{method}}/class{{c}}/seed{{s}}.json"
SCORES = expand(SCORE, method=["original", *METHODS, *RETRAIN], c=CLASSES, s=SEEDS)
ATTACKS = expand(ATTACK, method=[*METHODS, *RETRAIN], c=CLASSES, s=ATTACK_SEEDS)
ROBUSTNESS_RECORDS = expand(f"{RUN}/metrics/{{method}}/class{{c}}/seed{{s}}.json", method=[*METHODS, *RETRAIN],
                            c=CLASSES, s=SEEDS)
ROBUSTNESS_TABLES = [f"{RUN}/robustness/{name}" for name in ("robustness.csv", "robustness.md")]
ROBUSTNESS_FIGURES = [f"{FIGS}/robustness_{name}.png" for name in ("relearning", "partial_diffusion", "noise_aware")]


rule robustness:
    """`snakemake robustness`: beyond the paper's evaluation, published under results/, with its figures."""
    input: ["results/robustness.csv", "results/robustness.md", *ROBUSTNESS_FIGURES] if ROBUST else []


rule train_extra_evaluator:
    input: data=DATA
    output: expand(EXTRA_EVALUATOR, file=["evaluator.json", EVALUATOR_WEIGHTS], allow_missing=True)
    params: fp=fp("extra_evaluator"), folder=lambda w: f"{RUN}/robustness/evaluators/{w.name}"
    log: f"{RUN}/logs/robustness/evaluator_{{name}}.log"
    threads: THREADS
    resources: gpu=GPU_JOB
    shell:
        "unlearnbench train-evaluator --config {CFG} --extra {wildcards.name} --data {input.data}"
        " --out {params.folder} > {log} 2>&1"


rule retrain:
    """Retrain: the base recipe on every class but {c} (the unlearning literature's gold standard)."""
    input: data=DATA
    output:
        weights=expand(f"{RETRAIN_MODEL}/{{sub}}/{{name}}", sub=("unet", "unet_ema"), name=UNET_FILES, allow_missing=True),
        record=f"{RETRAIN_MODEL}/train.json",
    params: fp=fp("base"), folder=RETRAIN_MODEL
    log: f"{RUN}/logs/robustness/retrain_class{{c}}.log"
    benchmark: f"{RUN}/benchmarks/retrain_class{{c}}.tsv"
    threads: THREADS
    resources: gpu=GPU_JOB
    shell:
        "unlearnbench train-base --config {CFG} --data {input.data} --without-class {wildcards.c}"
        " --out {params.folder} > {log} 2>&1"


rule evaluate_retrain:
    """Retrain's models evaluated as every method's are (one process per seed: samples, then metrics)."""
    input:
        data=DATA, evaluator=EVALUATOR_FILES, code=METRICS_CODE,
        cost=expand(f"{RETRAIN_MODEL}/train.json", c=CLASSES),
        reference=expand(f"{RUN}/fid_reference/class{{c}}.npz", c=CLASSES),
    output:
        samples=expand(f"{RUN}/samples/retrain/class{{c}}/seed{{s}}.npz", c=CLASSES, allow_missing=True),
        records=expand(f"{RUN}/metrics/retrain/class{{c}}/seed{{s}}.json", c=CLASSES, allow_missing=True),
    params:
        fp=fp("evaluate"), classes=" ".join(map(str, CLASSES)), evaluator=lambda w, input: os.path.commonpath(input.evaluator),
        models=" ".join(f"{RUN}/retrain/class{c}/unet_ema" for c in CLASSES),
    log: f"{RUN}/logs/evaluate/retrain_seed{{s}}.log"
    threads: THREADS
    resources: gpu=GPU_JOB
    shell:
        "unlearnbench evaluate --config {CFG} --model {params.models} --data {input.data} --samples {output.samples}"
        " --evaluator {params.evaluator} --reference {input.reference} --cost {input.cost} --method retrain"
        " --variant retrain --forget-class {params.classes} --seed {wildcards.s} --out {output.records} > {log} 2>&1"


ruleorder: evaluate_retrain > evaluate_method


rule score_robustness:
    """A model's forgotten class under every evaluator, and its distance to the real class (all classes, a seed)."""
    input:
        data=DATA, evaluator=EVALUATOR_FILES, extra=EXTRA_EVALUATOR_FILES, code=METRICS_CODE,
        samples=lambda w: [f"{RUN}/samples/original/seed{w.s}.npz"] if w.method == "original"
        else expand(f"{RUN}/samples/{w.method}/class{{c}}/seed{w.s}.npz", c=CLASSES),
    output: expand(SCORE, c=CLASSES, allow_missing=True)
    params:
        fp=fp("robustness_score"), classes=" ".join(map(str, CLASSES)), evaluator=lambda w, input: os.path.commonpath(input.evaluator),
        extra=" ".join(f"{name}={RUN}/robustness/evaluators/{name}" for name in EXTRA_EVALUATORS),
    log: f"{RUN}/logs/robustness/score_{{method}}_seed{{s}}.log"
    threads: THREADS
    shell:
        "unlearnbench score-robustness --config {CFG} --data {input.data} --evaluator {params.evaluator}"
        " --extra-evaluators {params.extra} --samples {input.samples} --forget-class {params.classes}"
        " --method {wildcards.method} --seed {wildcards.s} --out {output} > {log} 2>&1"


rule attack:
    """Relearning, benign fine-tuning and the partial-diffusion probe on a method's (or Retrain's) models."""
    input:
        data=DATA, evaluator=EVALUATOR_FILES, extra=EXTRA_EVALUATOR_FILES, code=METRICS_CODE,
        models=lambda w: attacked_model_records(RUN, w.method, CLASSES, int(w.s)),
    output: expand(ATTACK, c=CLASSES, allow_missing=True)
    params:
        fp=fp("attack"),  # the model itself is an input
        classes=" ".join(map(str, CLASSES)), evaluator=lambda w, input: os.path.commonpath(input.evaluator),
        models=lambda w: " ".join(attacked_model(RUN, w.method, c, int(w.s)) for c in CLASSES),
        noise_aware=f"--noise-aware {RUN}/robustness/evaluators/{NOISE_AWARE}" if NOISE_AWARE else "",
    log: f"{RUN}/logs/robustness/attack_{{method}}_seed{{s}}.log"
    benchmark: f"{RUN}/benchmarks/attack/{{method}}_seed{{s}}.tsv"
    threads: THREADS
    resources: gpu=GPU_JOB
    shell:
        "unlearnbench attack --config {CFG} --data {input.data} --evaluator {params.evaluator} {params.noise_aware}"
        " --model {params.models} --forget-class {params.classes} --method {wildcards.method} --seed {wildcards.s}"
        " --out {output} > {log} 2>&1"


rule robustness_table:
    input: scores=SCORES, attacks=ATTACKS, records=ROBUSTNESS_RECORDS, code=REPORT_CODE
    output: tables=ROBUSTNESS_TABLES, digests=f"{RUN}/robustness/{DIGESTS}", redo=redo_state("robustness")
    params:
        redo=redo_when_lost("robustness", ROBUSTNESS_TABLES[0], SCORES + ATTACKS + ROBUSTNESS_RECORDS),
        fp=fp("report"), folder=lambda w, output: os.path.dirname(output.tables[0]),
    log: f"{RUN}/logs/robustness/table.log"
    shell:  # joined, not added: `snakemake --lint` takes a string plus a name for a path composition
        " && ".join(["unlearnbench aggregate-robustness --config {CFG} --scores {input.scores} --attacks {input.attacks}"
                     " --records {input.records} --out-dir {params.folder} > {log} 2>&1", REDO_RECORD])


rule publish_robustness:
    input: ROBUSTNESS_TABLES
    output:
        published=[report("results/robustness.csv", caption="../report/robustness.rst", category="Robustness"),
                   "results/robustness.md"],
        redo=redo_state("publish_robustness"),
    params: redo=redo_when_lost("publish_robustness", "results/robustness.csv", ROBUSTNESS_TABLES)
    localrule: True
    log: f"{RUN}/logs/robustness/publish.log"
    shell: " && ".join(["unlearnbench publish {input} --to results 2>&1 | tee {log}", REDO_RECORD])


rule figure_robustness:
    input: table=f"{RUN}/robustness/robustness.csv", code=FIGURES_CODE
    output: [report(path, caption="../report/robustness.rst", category="Robustness") for path in ROBUSTNESS_FIGURES]
    params: fp=fp("report"), folder=lambda w, output: os.path.dirname(output[0])
    log: f"{RUN}/logs/robustness/figures.log"
    shell:
        "unlearnbench figures --config {CFG} --metrics {input.table} --out-dir {params.folder} --kind robustness"
        " > {log} 2>&1"
