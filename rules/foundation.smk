# Data, the original (base) DDPM and the evaluation classifier.
# Every rule reads the resolved config {CFG}; its `fp` param makes it rerun when the sections it uses change.
# A folder argument (the original model's, the evaluator's) is a params value made from the files a rule declares
# in it (os.path.commonpath), not a global: `snakemake --lint` (tests/test_lint.py).

rule prepare_data:
    output: DATA
    params: fp=fp("data")
    log: f"{RUN}/logs/prepare_data.log"
    shell: "unlearnbench prepare-data --config {CFG} --out {output} > {log} 2>&1"


rule train_base:
    input: data=DATA, checkpoint=base_checkpoint_files(config)  # a user's base.checkpoint, if set
    output: ORIGINAL_FILES
    params: fp=fp("base"), out=lambda w, output: os.path.commonpath(output)
    log: f"{RUN}/logs/train_base.log"
    benchmark: f"{RUN}/benchmarks/train_base.tsv"
    threads: THREADS
    resources: gpu=GPU_JOB
    shell: "unlearnbench train-base --config {CFG} --data {input.data} --out {params.out} > {log} 2>&1"


rule train_evaluator:
    input: data=DATA
    output: EVALUATOR_FILES
    params: fp=fp("evaluator"), out=lambda w, output: os.path.commonpath(output)
    log: f"{RUN}/logs/train_evaluator.log"
    threads: THREADS
    resources: gpu=GPU_JOB
    shell: "unlearnbench train-evaluator --config {CFG} --data {input.data} --out {params.out} > {log} 2>&1"
