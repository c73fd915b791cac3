# Shared paths and input functions for the rules.
from snakemake.utils import min_version, validate

min_version("9.27")
# The suite's own checks ran in the Snakefile (load_workflow_config: every problem named, with what to do); this is
# the same schema through Snakemake's mechanism, which a valid config always passes.
validate(config, "../config/schema.yaml")
from unlearnbench.method_api import method_sources, NAME_PATTERN
from unlearnbench.workflow import prior_folders, prior_arguments, parse_variant, ablation_variants, fingerprint
from unlearnbench.workflow import resolved_config_path, base_checkpoint_files, suite_code, workflow_relative, guidance_labels
from unlearnbench.workflow import imported_model_files, redo_token, finding_variants
from unlearnbench.workflow import UNET_FILES, EVALUATOR_WEIGHTS, TABLES, REDO_RECORD
from unlearnbench.config import evaluated_methods

CFG = resolved_config_path(config)
DATA = f"{RUN}/data.npz"
ORIGINAL = f"{RUN}/models/original"
EVALUATOR = f"{RUN}/evaluator"
# A model's record and its weight files, declared so that weights lost after their job get that job redone
ORIGINAL_FILES = [f"{ORIGINAL}/train.json",
                  *expand(f"{ORIGINAL}/{{sub}}/{{name}}", sub=("unet", "unet_ema"), name=UNET_FILES)]
EVALUATOR_FILES = [f"{EVALUATOR}/evaluator.json", f"{EVALUATOR}/{EVALUATOR_WEIGHTS}"]
MODEL = f"{RUN}/models/{{variant}}/class{{c}}/seed{{s}}"  # an unlearned model's folder
MAIN_MODEL = f"{RUN}/models/{{method}}/class{{c}}/seed{{s}}"  # ... of a main run (a method or imported model)
MODEL_WEIGHTS = expand(f"{MODEL}/unet/{{name}}", name=UNET_FILES, allow_missing=True)
CLASSES = config["forget_classes"]
SEEDS = config["seeds"]
METHODS = evaluated_methods(config)  # the suite's methods, then the imported models
IMPORTED = list(config.get("imported") or {})
ABLATION = ablation_variants(config)
THREADS = config.get("threads", 1)
# A job that trains or samples a network on config `device` holds this many units of the `gpu` resource: the
# SLURM plugin asks sbatch for that many GPUs, and a local run caps GPU jobs at once with `--resources gpu=N`
# (profiles/local-gpu). None where the config says `device: cpu` (a CPU-only cluster rejects --gpus).
GPU_JOB = 0 if config["device"] == "cpu" else 1
# The suite's code that decides a result, as inputs of the cheap jobs that compute it (docs/architecture.md).
METRICS_CODE = suite_code("metrics")
REPORT_CODE = suite_code("unlearnbench.report")
FIGURES_CODE = suite_code("unlearnbench.report", "unlearnbench.figures")


def fp(stage, method=None, prior=None):
    """Params value that changes when the config sections this stage depends on change."""
    return fingerprint(config, stage, method, prior)

STUDY_VARIANT_PATTERN = f"{NAME_PATTERN}-[A-Za-z0-9_]+=[-A-Za-z0-9_.]+"  # a method with one param changed
VARIANT_PATTERN = f"(?!original){NAME_PATTERN}(-[A-Za-z0-9_]+=[-A-Za-z0-9_.]+)?"  # "original" has rules of its own

wildcard_constraints:
    method=NAME_PATTERN,
    variant=VARIANT_PATTERN,
    prior=NAME_PATTERN,
    c="[0-9]+",
    s="[0-9]+",


def method_file(method):
    """methods/<name>.py (and a variant's base file) as inputs: editing a method reruns its priors and unlearning jobs."""
    return [workflow_relative(path) for path in method_sources(method)]


def prior_inputs(method, forget_class=None, prior=None):
    """cost.json of each prior the job reads (workflow.prior_folders): a prior's job is its cost.json."""
    return [f"{folder}/cost.json" for folder in prior_folders(RUN, method, forget_class, prior).values()]


def prior_flags(method, forget_class=None, prior=None):
    return prior_arguments(prior_folders(RUN, method, forget_class, prior))


def redo_state(name):
    """The `redo` output of a job that gathers files (workflow.redo_token): the token it last ran under."""
    return f"{RUN}/.remake/{name}"


def redo_when_lost(name, output, inputs):
    """The `redo` params value of that job: it runs again when `output` exists while one of `inputs` is gone."""
    return lambda w: redo_token(output, inputs, redo_state(name))
