# Evaluation: samples saved once per model (npz + PNG grid) and scored from the saved file;
# FID reference statistics cached per forget class (one job: the real images' features are computed once).
REFERENCE_CLASSES = sorted(set(CLASSES) | ({config["ablation"]["forget_class"]} if ABLATION else set())
                           | ({config["finding"]["forget_class"]} if finding_variants(config) else set()))


rule fid_reference:
    input: data=DATA, evaluator=EVALUATOR_FILES, code=METRICS_CODE
    output: expand(f"{RUN}/fid_reference/class{{c}}.npz", c=REFERENCE_CLASSES)
    params:
        fp=fp("evaluate"), classes=" ".join(map(str, REFERENCE_CLASSES)),
        evaluator=lambda w, input: os.path.commonpath(input.evaluator),
    log: f"{RUN}/logs/fid_reference.log"
    threads: THREADS
    shell:
        "unlearnbench fid-reference --config {CFG} --data {input.data} --evaluator {params.evaluator}"
        " --forget-class {params.classes} --out {output} > {log} 2>&1"


rule sample_original:
    input: data=DATA, original=ORIGINAL_FILES
    output: f"{RUN}/samples/original/seed{{s}}.npz"
    params: fp=fp("evaluate"), original=lambda w, input: os.path.commonpath(input.original)
    log: f"{RUN}/logs/sample/original_seed{{s}}.log"
    threads: THREADS
    resources: gpu=GPU_JOB
    shell:
        "unlearnbench sample --config {CFG} --model {params.original}/unet_ema --seed {wildcards.s}"
        " --data {input.data} --out {output} > {log} 2>&1"


rule score_original:
    """The original model's metrics for every forget class, from one sample set, in one job."""
    input:
        samples=f"{RUN}/samples/original/seed{{s}}.npz",
        evaluator=EVALUATOR_FILES,
        references=expand(f"{RUN}/fid_reference/class{{c}}.npz", c=CLASSES), cost=f"{ORIGINAL}/train.json",
        code=METRICS_CODE,
    output: expand(f"{RUN}/metrics/original/class{{c}}/seed{{s}}.json", c=CLASSES, allow_missing=True)
    params:
        fp=fp("evaluate"), classes=" ".join(map(str, CLASSES)),
        evaluator=lambda w, input: os.path.commonpath(input.evaluator),
    log: f"{RUN}/logs/score/original_seed{{s}}.log"
    threads: THREADS
    shell:
        "unlearnbench score --config {CFG} --samples {input.samples} --evaluator {params.evaluator}"
        " --reference {input.references} --cost {input.cost} --method original --variant original"
        " --forget-class {params.classes} --seed {wildcards.s} --out {output} > {log} 2>&1"


rule evaluate_method:
    """Every forgotten class of one method (or imported model) and seed, in one process (a job per model would spend
    more on starting Python and torch than on scoring): each model's samples (npz + PNG), reused from its unlearning
    job when they match the config, then its metrics from the saved samples."""
    input:
        data=DATA, evaluator=EVALUATOR_FILES, code=METRICS_CODE,
        cost=expand(f"{MAIN_MODEL}/cost.json", c=CLASSES, allow_missing=True),
        weights=expand(f"{MAIN_MODEL}/unet/{{name}}", c=CLASSES, name=UNET_FILES, allow_missing=True),
        presampled=expand(f"{MAIN_MODEL}/eval_samples.npz", c=CLASSES, allow_missing=True),
        reference=expand(f"{RUN}/fid_reference/class{{c}}.npz", c=CLASSES),
    output:
        samples=expand(f"{RUN}/samples/{{method}}/class{{c}}/seed{{s}}.npz", c=CLASSES, allow_missing=True),
        records=expand(f"{RUN}/metrics/{{method}}/class{{c}}/seed{{s}}.json", c=CLASSES, allow_missing=True),
    params:
        fp=lambda w: fp("evaluate", w.method), classes=" ".join(map(str, CLASSES)),
        models=lambda w: " ".join(f"{RUN}/models/{w.method}/class{c}/seed{w.s}/unet" for c in CLASSES),
        evaluator=lambda w, input: os.path.commonpath(input.evaluator),
    wildcard_constraints: method=f"(?!original){NAME_PATTERN}"
    log: f"{RUN}/logs/evaluate/{{method}}_seed{{s}}.log"
    threads: THREADS
    resources: gpu=GPU_JOB
    shell:
        "unlearnbench evaluate --config {CFG} --model {params.models} --data {input.data} --samples {output.samples}"
        " --evaluator {params.evaluator} --reference {input.reference} --cost {input.cost} --method {wildcards.method}"
        " --variant {wildcards.method} --forget-class {params.classes} --seed {wildcards.s} --out {output.records}"
        " --presampled {input.presampled} > {log} 2>&1"


rule evaluate_unlearned:
    """A study's model (an ablation or finding point: one param changed, one class): its samples, reused from its
    unlearning job when they match the config, then its metrics from the saved samples."""
    wildcard_constraints: variant=STUDY_VARIANT_PATTERN
    input:
        data=DATA, cost=f"{MODEL}/cost.json", weights=MODEL_WEIGHTS, presampled=f"{MODEL}/eval_samples.npz",
        evaluator=EVALUATOR_FILES,
        reference=f"{RUN}/fid_reference/class{{c}}.npz",
        code=METRICS_CODE,
    output:
        samples=f"{RUN}/samples/{{variant}}/class{{c}}/seed{{s}}.npz",
        record=f"{RUN}/metrics/{{variant}}/class{{c}}/seed{{s}}.json",
    params:
        fp=lambda w: fp("evaluate", parse_variant(w.variant)[0]), method=lambda w: parse_variant(w.variant)[0],
        evaluator=lambda w, input: os.path.commonpath(input.evaluator),
    log: f"{RUN}/logs/evaluate/{{variant}}_class{{c}}_seed{{s}}.log"
    threads: THREADS
    resources: gpu=GPU_JOB
    shell:
        "unlearnbench evaluate --config {CFG} --model $(dirname {input.cost})/unet --data {input.data}"
        " --samples {output.samples} --evaluator {params.evaluator} --reference {input.reference}"
        " --cost {input.cost} --method {params.method} --variant {wildcards.variant} --forget-class {wildcards.c}"
        " --seed {wildcards.s} --out {output.record} --presampled {input.presampled} > {log} 2>&1"


rule summarize_original:
    input:
        samples=f"{RUN}/samples/original/seed{SEEDS[0]}.npz",
        evaluator=EVALUATOR_FILES,
        records=expand(f"{RUN}/metrics/original/class{{c}}/seed{SEEDS[0]}.json", c=CLASSES), code=METRICS_CODE,
    output: f"{RUN}/original.json"
    params: evaluator=lambda w, input: os.path.commonpath(input.evaluator)
    log: f"{RUN}/logs/summarize_original.log"
    shell:
        "unlearnbench summarize-original --config {CFG} --samples {input.samples} --evaluator {params.evaluator}"
        " --records {input.records} --out {output} > {log} 2>&1"
