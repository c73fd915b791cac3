# Priors (cached: shared ones once per run, per-class ones once per forget class), unlearning runs, and the
# unlearned models imported from elsewhere (config `imported`), which take the unlearning runs' place.


rule prior_shared:
    input:
        data=DATA, original=ORIGINAL_FILES, required=lambda w: prior_inputs(w.method, prior=w.prior),
        code=lambda w: method_file(w.method),
    output: f"{RUN}/priors/{{method}}/{{prior}}/shared/cost.json"
    params:
        fp=lambda w: fp("method", w.method, w.prior), requires=lambda w: prior_flags(w.method, prior=w.prior),
        original=lambda w, input: os.path.commonpath(input.original),
    log: f"{RUN}/logs/prior/{{method}}_{{prior}}.log"
    benchmark: f"{RUN}/benchmarks/prior/{{method}}_{{prior}}.tsv"  # the whole job's wall time and memory
    threads: THREADS
    resources: gpu=GPU_JOB
    shell:
        "unlearnbench prior --config {CFG} --method {wildcards.method} --prior {wildcards.prior} --data {input.data}"
        " --original {params.original} --requires {params.requires} --out $(dirname {output}) > {log} 2>&1"


rule prior_per_class:
    input:
        data=DATA, original=ORIGINAL_FILES,
        required=lambda w: prior_inputs(w.method, int(w.c), w.prior),
        code=lambda w: method_file(w.method),
    output: f"{RUN}/priors/{{method}}/{{prior}}/class{{c}}/cost.json"
    params:
        fp=lambda w: fp("method", w.method, w.prior), requires=lambda w: prior_flags(w.method, int(w.c), w.prior),
        original=lambda w, input: os.path.commonpath(input.original),
    log: f"{RUN}/logs/prior/{{method}}_{{prior}}_class{{c}}.log"
    benchmark: f"{RUN}/benchmarks/prior/{{method}}_{{prior}}_class{{c}}.tsv"
    threads: THREADS
    resources: gpu=GPU_JOB
    shell:
        "unlearnbench prior --config {CFG} --method {wildcards.method} --prior {wildcards.prior} --data {input.data}"
        " --original {params.original} --forget-class {wildcards.c} --requires {params.requires}"
        " --out $(dirname {output}) > {log} 2>&1"


rule unlearn:
    """One method (or study variant) on one forgotten class, every seed in turn in one process (a process per seed
    would spend as long starting Python and torch as unlearning at digits scale)."""
    input:
        data=DATA, original=ORIGINAL_FILES,
        priors=lambda w: prior_inputs(parse_variant(w.variant)[0], int(w.c)),
        code=lambda w: method_file(parse_variant(w.variant)[0]),
    output:
        cost=expand(f"{MODEL}/cost.json", s=SEEDS, allow_missing=True),
        weights=expand(f"{MODEL}/unet/{{name}}", s=SEEDS, name=UNET_FILES, allow_missing=True),
        # drawn after the timed loop while the model is loaded; the evaluation jobs reuse them if they match
        presample=expand(f"{MODEL}/eval_samples.npz", s=SEEDS, allow_missing=True),
    params:
        fp=lambda w: fp("method", parse_variant(w.variant)[0]),
        method=lambda w: parse_variant(w.variant)[0],
        overrides=lambda w: " ".join(parse_variant(w.variant)[1]),
        priors=lambda w: prior_flags(parse_variant(w.variant)[0], int(w.c)),
        seeds=" ".join(map(str, SEEDS)),
        folders=lambda w: " ".join(f"{RUN}/models/{w.variant}/class{w.c}/seed{s}" for s in SEEDS),
        original=lambda w, input: os.path.commonpath(input.original),
    # not an imported name: its input functions would look for a method file it does not have
    wildcard_constraints: variant="".join(f"(?!{name}/)" for name in IMPORTED) + VARIANT_PATTERN
    log: f"{RUN}/logs/unlearn/{{variant}}_class{{c}}.log"
    # Snakemake's own measure of the whole job (start-up, every seed, presampling): a check on cost.json's RTE
    benchmark: f"{RUN}/benchmarks/unlearn/{{variant}}_class{{c}}.tsv"
    threads: THREADS
    resources: gpu=GPU_JOB
    shell:
        "unlearnbench unlearn --config {CFG} --method {params.method} --forget-class {wildcards.c} --seed {params.seeds}"
        " --data {input.data} --original {params.original} --priors {params.priors} --set {params.overrides}"
        " --out {params.folders} --presample {output.presample} > {log} 2>&1"


rule import_model:
    input:
        data=DATA, original=ORIGINAL_FILES,
        model=lambda w: imported_model_files(config, w.variant, int(w.c), int(w.s)),
    output: cost=f"{MODEL}/cost.json", weights=MODEL_WEIGHTS, presample=f"{MODEL}/eval_samples.npz"
    wildcard_constraints: variant="|".join(IMPORTED) or "(?!)"  # (?!): no name matches when none is imported
    params: fp=lambda w: fp("method", w.variant), original=lambda w, input: os.path.commonpath(input.original)
    log: f"{RUN}/logs/import/{{variant}}_class{{c}}_seed{{s}}.log"
    threads: THREADS
    resources: gpu=GPU_JOB
    shell:
        "unlearnbench import-model --config {CFG} --name {wildcards.variant} --forget-class {wildcards.c}"
        " --seed {wildcards.s} --data {input.data} --original {params.original} --out $(dirname {output.cost})"
        " --presample {output.presample} > {log} 2>&1"
