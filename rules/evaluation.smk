# Evaluation: samples saved once per model (npz + PNG grid) and scored from the saved file;
# FID reference statistics cached per forget class.

rule fid_reference:
    input: data=DATA, evaluator=f"{EVALUATOR}/evaluator.json"
    output: f"{RUN}/fid_reference/class{{c}}.npz"
    params: fp=fp("evaluate")
    log: f"{RUN}/logs/fid_reference_class{{c}}.log"
    threads: THREADS
    shell:
        "{CLI} fid-reference --config {CFG} --data {input.data} --evaluator {EVALUATOR}"
        " --forget-class {wildcards.c} --out {output} > {log} 2>&1"


rule sample_original:
    input: data=DATA, model=f"{ORIGINAL}/train.json"
    output: f"{RUN}/samples/original/seed{{s}}.npz"
    params: fp=fp("evaluate")
    log: f"{RUN}/logs/sample/original_seed{{s}}.log"
    threads: THREADS
    shell:
        "{CLI} sample --config {CFG} --model {ORIGINAL}/unet_ema --seed {wildcards.s} --data {input.data}"
        " --out {output} > {log} 2>&1"


rule score_original:
    input:
        samples=f"{RUN}/samples/original/seed{{s}}.npz", evaluator=f"{EVALUATOR}/evaluator.json",
        reference=f"{RUN}/fid_reference/class{{c}}.npz", cost=f"{ORIGINAL}/train.json",
    output: f"{RUN}/metrics/original/class{{c}}/seed{{s}}.json"
    params: fp=fp("evaluate")
    log: f"{RUN}/logs/score/original_class{{c}}_seed{{s}}.log"
    threads: THREADS
    shell:
        "{CLI} score --config {CFG} --samples {input.samples} --evaluator {EVALUATOR} --reference {input.reference}"
        " --cost {input.cost} --method original --variant original --forget-class {wildcards.c} --seed {wildcards.s}"
        " --out {output} > {log} 2>&1"


rule evaluate_unlearned:
    """Sample the unlearned model (npz + PNG), then score it from the saved samples, in one process."""
    input:
        data=DATA, cost=f"{RUN}/models/{{variant}}/class{{c}}/seed{{s}}/cost.json",
        evaluator=f"{EVALUATOR}/evaluator.json", reference=f"{RUN}/fid_reference/class{{c}}.npz",
    output:
        samples=f"{RUN}/samples/{{variant}}/class{{c}}/seed{{s}}.npz",
        record=f"{RUN}/metrics/{{variant}}/class{{c}}/seed{{s}}.json",
    params: fp=lambda w: fp("evaluate", parse_variant(w.variant)[0]), method=lambda w: parse_variant(w.variant)[0]
    log: f"{RUN}/logs/evaluate/{{variant}}_class{{c}}_seed{{s}}.log"
    threads: THREADS
    shell:
        "{CLI} evaluate --config {CFG} --model $(dirname {input.cost})/unet --data {input.data} --samples {output.samples}"
        " --evaluator {EVALUATOR} --reference {input.reference} --cost {input.cost} --method {params.method}"
        " --variant {wildcards.variant} --forget-class {wildcards.c} --seed {wildcards.s} --out {output.record} > {log} 2>&1"


rule summarize_original:
    input:
        samples=f"{RUN}/samples/original/seed{SEEDS[0]}.npz", evaluator=f"{EVALUATOR}/evaluator.json",
        records=expand(f"{RUN}/metrics/original/class{{c}}/seed{SEEDS[0]}.json", c=CLASSES),
    output: f"{RUN}/original.json"
    log: f"{RUN}/logs/summarize_original.log"
    shell:
        "{CLI} summarize-original --config {CFG} --samples {input.samples} --evaluator {EVALUATOR}"
        " --records {input.records} --out {output} > {log} 2>&1"
