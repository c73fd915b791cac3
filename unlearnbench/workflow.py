"""What the Snakefile needs at parse time: validated config, paths of one run, the methods' priors."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

from .checkpoints import check_unet_folder, folder_digest, read_json, unet_expectations
from .config import (
    DEFAULT_CONFIG,
    NUM_CLASSES,
    config_hash,
    deep_merge,
    imported_architecture_fix,
    imported_cells,
    imported_model_dir,
    method_params,
    read_yaml,
    validate,
    write_resolved,
)
from .errors import UserError
from .files import DIGESTS
from .method_api import load_method, prior_by_name
from .settings import ModelSettings

# The files of a saved UNet folder (save_pretrained; unet.WEIGHTS_NAME) and the evaluator's weights:
# outputs of the jobs that write them and inputs of the jobs that load them, so that weights lost after their job
# finished get that job redone, not a load error in the next.
UNET_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
EVALUATOR_WEIGHTS = "model.safetensors"

# What the aggregate writes in results/<run>/: metrics.csv, the reports made from it (report.write_reports) and
# their digests (files.DIGESTS).
REPORTS = ("table.csv", "table1.md", "table1.tex", "table2.md", "table2.tex", "comparison.md")
TABLES = ("metrics.csv", *REPORTS, DIGESTS)
# Files of results/<run>/ copied to results/ so `snakemake results/table.csv` works for any config.
PUBLISHED = (*TABLES, "evaluator.json", "original.json")


def load_workflow_config(config: dict, configfiles=()) -> dict:
    """Validate Snakemake's merged config; on bad input print the problems and stop before any job runs.
    `configfiles` (Snakemake's, in order) are re-read only to refuse a key given twice, which Snakemake's own
    reading lets pass, keeping the last value."""
    try:
        for path in configfiles:
            read_yaml(path)
        # Snakemake has merged config/default.yaml with --configfile/--config; merge again so that a
        # config given without the defaults (e.g. `snakemake --configfile x.yaml` from elsewhere) is complete.
        merged = deep_merge(read_yaml(DEFAULT_CONFIG), dict(config))
        merged = validate(merged)  # with numbers given as text (e.g. by --config) made numbers
        check_model_folders(merged)
        check_scored_copies(merged)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    for note in config_notes(merged, configfiles):
        print(f"note: {note}", file=sys.stderr)
    if problem := device_problem(merged):  # the executor is not known yet: jobs may run on GPU nodes
        print(
            f"note: {problem}; a run here stops before its first job, an executor profile runs the jobs where "
            "there is one",
            file=sys.stderr,
        )
    return merged


def device_problem(config: dict) -> str | None:
    """Why the jobs cannot run on this machine's devices, if so (config `device: cuda` without a CUDA device)."""
    if config.get("device") != "cuda":
        return None
    if torch.cuda.is_available():
        return None
    return (
        "the config asks for device: cuda, but torch sees no CUDA device here (torch "
        f"{torch.__version__}, {'built for CUDA ' + torch.version.cuda if torch.version.cuda else 'a CPU-only build'})"
        "; set device: auto (a GPU when there is one) or cpu"
    )


def start_run(config: dict, jobs_run_here: bool = True) -> None:
    """Snakemake's onstart: jobs are about to run (never on a dry run or when nothing is to be done). The folders
    they write must be writable and, when the jobs run on this machine, the device they need must be here; then
    the resolved config they read is written. Nothing is written while the Snakefile is parsed, so a dry run, or a
    run that has nothing to do, works on a read-only results folder."""
    if jobs_run_here and (problem := device_problem(config)):
        print(f"error: {problem}; nothing was run", file=sys.stderr)
        sys.exit(1)
    folders = [Path("results") / config["run_name"], Path("results"), Path("figures") / config["run_name"]]
    blocked = [(folder, why) for folder in folders if (why := unwritable(folder))]
    if blocked:
        shown = "; ".join(f"{folder}/ ({why})" for folder, why in blocked)
        print(
            f"error: the run cannot write its results: {shown}. Make the folder writable (or mount it read-write), "
            f"or set another run_name (config run_name, now {config['run_name']!r}); nothing was run",
            file=sys.stderr,
        )
        sys.exit(1)
    path = resolved_config_path(config)
    try:
        write_resolved(config, path)
    except OSError as exc:
        print(
            f"error: cannot write the run's config to {path} ({exc.strerror}): make "
            f"results/{config['run_name']}/ writable, or set another run_name; nothing was run",
            file=sys.stderr,
        )
        sys.exit(1)


def unwritable(folder: Path) -> str | None:
    """Why the jobs could not write in `folder` (or create it), if so: checked at its nearest existing folder."""
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    try:  # access() tells a read-only mount (EROFS) from missing permissions only through statvfs
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
    except OSError:
        read_only = False
    what = os.strerror(errno.EROFS if read_only else errno.EACCES)
    return what + (f" at {existing}" if existing != folder else "")


SHIPPED_CONFIGS = ("default.yaml", "test.yaml", "paper.yaml")


def config_notes(config: dict, configfiles=()) -> list[str]:
    """What a valid config leaves out that its author likely meant to run (printed, not refused)."""
    notes = [
        skipped_ablation_note(config),
        skipped_finding_note(config),
        *unused_params_notes(config, configfiles),
        *shared_import_notes(config),
    ]
    return [note for note in notes if note]


def shared_import_notes(config: dict) -> list[str]:
    """An imported pattern without {seed} in a run of several seeds: one model is scored once per seed, so its
    spread over seeds is the sampler's alone, while the methods' is also their training's."""
    seeds = config["seeds"]
    if len(seeds) < 2:
        return []
    return [
        f"'imported.{name}' has no {{seed}}: each class's one model is scored for each of the {len(seeds)} seeds "
        f"{seeds}, so its std over seeds is the sampling noise alone (the methods' also comes from their "
        f"training); give one folder per seed, as .../seed{{seed}}/..., to compare like with like"
        for name, pattern in (config.get("imported") or {}).items()
        if "{seed}" not in pattern
    ]


def unused_params_notes(config: dict, configfiles=()) -> list[str]:
    """An overlay's method_params for a method 'methods' leaves out (its author forgot to add it there, likely).
    The shipped configs set the params of every method file, run or not, so only the user's files count (the shipped
    ones are known by their place, config/<name>, in the checkout or in any copy of the workflow)."""
    notes = []
    for path in configfiles:
        if Path(path).name in SHIPPED_CONFIGS and Path(path).resolve().parent.name == "config":
            continue
        named = (read_yaml(path) or {}).get("method_params") or {}
        unused = [name for name in named if name not in config["methods"]]
        if unused:
            it = "it" if len(unused) == 1 else "them"
            notes.append(
                f"{path} sets method_params for {', '.join(unused)}, which 'methods' "
                f"({', '.join(config['methods'])}) leaves out: those params are unused; add {it} to "
                f"'methods' to run {it}"
            )
    return notes


def skipped_finding_note(config: dict) -> str | None:
    """Why `snakemake finding` has nothing to do, if so: the study needs its method's main run of its class."""
    study = config.get("finding")
    if not study or finding_variants(config):
        return None
    where = (
        f"'{study['method']}' is not in 'methods'"
        if study["method"] not in config["methods"]
        else f"class {study['forget_class']} is not in 'forget_classes'"
        if study["forget_class"] not in config["forget_classes"]
        else "every point is the main runs' own value"
    )
    return (
        f"the finding study (snakemake finding) is skipped: {where}; change 'finding' to run it, or set "
        "'finding: null' to drop it without this note"
    )


def skipped_ablation_note(config: dict) -> str | None:
    """Why the ablation figure is left out of this run's targets, if it is: its method is not run, or it has no
    value but the main runs' own."""
    abl = config.get("ablation")
    if not abl:
        return None
    figure = f"the {abl['method']} ablation (figures/{config['run_name']}/psi_ablation.png) is skipped"
    if abl["method"] not in config["methods"]:
        return (
            f"{figure}: it needs {abl['method']}'s main runs and '{abl['method']}' is not in 'methods'; add it "
            "to 'methods' to run the ablation, or set 'ablation: null' to drop it without this note"
        )
    if not ablation_variants(config):
        main = main_param_value(config, abl["method"], abl["param"])
        return (
            f"{figure}: 'ablation.values' = {abl['values']} has no value but the main runs' own "
            f"({abl['param']} = {main}); add the values to compare with it, or set 'ablation: null'"
        )
    return None


def base_checkpoint_files(config: dict) -> list[str]:
    """The files of a user's base.checkpoint, as inputs of train_base: replacing them retrains nothing but reruns
    everything downstream of the original model (Snakemake sees them newer)."""
    checkpoint = config["base"].get("checkpoint")
    if not checkpoint:
        return []
    return sorted(str(p) for sub in ("unet", "unet_ema") for p in (Path(checkpoint) / sub).glob("*") if p.is_file())


def check_model_folders(config: dict) -> None:
    """The models the config names are there: base.checkpoint, and each imported model the run will score (a saved
    UNet folder). Caught before any job runs, not after a cluster job has queued."""
    checkpoint = config["base"].get("checkpoint")
    if checkpoint:
        if not Path(checkpoint).is_dir():
            raise UserError(
                f"'base.checkpoint' = {checkpoint!r} is not a folder (from {Path.cwd()}); point it to "
                "a trained model folder holding unet/ and unet_ema/, or set it to null to train one"
            )
        lacking = [
            f"{sub}/config.json"
            for sub in ("unet", "unet_ema")
            if not (Path(checkpoint) / sub / "config.json").is_file()
        ]
        if lacking:
            raise UserError(
                f"'base.checkpoint' = {checkpoint!r} has no {' and no '.join(lacking)}: it must hold "
                "unet/ and unet_ema/, each a UNet saved with diffusers' save_pretrained (config.json "
                "and its weights)"
            )
    wanted = dict.fromkeys((imported_model_dir(config, name, c, s), name) for name, c, s in imported_cells(config))
    missing = [folder for folder, _ in wanted if not (folder / "config.json").is_file()]
    if missing:
        shown = ", ".join(str(folder / "config.json") for folder in missing[:4])
        shown += f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        # a folder holding the saved UNet in its unet/ (diffusers' pipeline layout) rather than being it
        inside = [folder for folder in missing if (folder / "unet" / "config.json").is_file()]
        hint = f" ({inside[0]} holds unet/config.json: end the pattern with /unet)" if inside else ""
        raise UserError(
            f"'imported' names {len(missing)} model(s) that are not there (from {Path.cwd()}): no {shown}"
            f"{hint}. Each is the folder of a UNet saved with save_pretrained (config.json and its "
            "weights), one per forgotten class in 'forget_classes' (and seed, if the pattern has {seed}). "
            "Fix the pattern, or unlearn the missing classes with that method too; to compare on fewer "
            "classes, set 'forget_classes' to those you have (the tables then cover only them, for "
            "every method)"
        )
    # Their architecture (config.json) and whole weights (the safetensors header) too, without loading them: a
    # mismatch or a file cut short would otherwise fail only in the job that loads it.
    expect = unet_expectations(ModelSettings.parse(config["model"]), NUM_CLASSES[config["dataset"]])
    for folder in [Path(checkpoint) / sub for sub in ("unet", "unet_ema")] if checkpoint else []:
        check_unet_folder(folder, expect)
    for folder, name in wanted:
        check_unet_folder(folder, expect, imported_architecture_fix(name))


def check_scored_copies(config: dict) -> None:
    """A user's model folder (base.checkpoint, an imported model) replaced by files that kept their old times
    (`cp -p`, `rsync -a`, `mv`) looks unchanged to Snakemake, which compares times: the run would keep the scores
    of the model it replaced. The digest the run recorded when it adopted the folder tells (read only then: when a
    file is newer than that record, Snakemake redoes the job anyway)."""
    models = Path("results") / config["run_name"] / "models"
    checks = []  # (user's folder, the run's record of adopting it, that record's keys of its path and digest)
    if checkpoint := config["base"].get("checkpoint"):
        checks += [
            (Path(checkpoint) / sub, models / "original" / "train.json", ("source", "source_digest", sub))
            for sub in ("unet", "unet_ema")
        ]
    checks += [
        (
            imported_model_dir(config, name, c, s),
            models / name / f"class{c}" / f"seed{s}" / "cost.json",
            ("imported_from", "source_digest", None),
        )
        for name, c, s in imported_cells(config)
    ]
    stale = []
    for folder, record_path, (source_key, digest_key, sub) in checks:
        if not record_path.is_file() or not folder.is_dir():
            continue
        newest = max((p.stat().st_mtime for p in folder.rglob("*") if p.is_file()), default=0)
        if newest > record_path.stat().st_mtime:
            continue
        record = read_json(record_path)
        adopted = Path(record.get(source_key) or "")
        digest = record.get(digest_key)
        if sub:  # base.checkpoint: one record for its two folders
            adopted, digest = adopted / sub, (digest or {}).get(sub)
        # another folder than the one adopted changes the jobs' params: Snakemake redoes them itself
        if digest and adopted == folder.resolve() and digest != folder_digest(folder):
            stale.append((folder, record_path))
    if stale:
        shown = "; ".join(f"{folder} (adopted as {record.parent})" for folder, record in stale)
        folders = " ".join(f"{folder}/*" for folder, _ in stale)
        raise UserError(
            f"{len(stale)} model folder(s) changed since this run adopted them, but their files are older "
            f"than the run's record of them (copied keeping their times: cp -p, rsync -a, mv), so Snakemake "
            f"would keep the old scores: {shown}. Run `touch {folders}` to have them scored again "
            "(everything after a changed base.checkpoint reruns), or put back the models that were scored"
        )


def redo_token(output: str, inputs: list[str], state: str) -> str:
    """The `redo` params value of a job that gathers files into one (records into a table, tables into their
    published copies). Snakemake redoes a missing intermediate file only for a job after it that has to run anyway,
    so a record or table removed by a failed or killed job (or by hand) would leave the files made from it standing,
    whatever its job would now give. While `output` exists and an input is missing (or newer: Snakemake evaluates
    the value again when the job starts, once the inputs are remade), the value is a token of that output, which
    makes this job run, and with it the jobs that remake its inputs. The job writes the token to `state` (its `redo`
    output, REDO_RECORD), so that the value stays what Snakemake recorded and nothing reruns again.
    Reads only: nothing is written while the Snakefile is parsed or the jobs are planned."""

    if Path(output).exists():
        made = Path(output).stat().st_mtime_ns
        if any(not Path(path).exists() or Path(path).stat().st_mtime_ns > made for path in inputs):
            return hashlib.sha256(f"{output} {made}".encode()).hexdigest()[:12]
    return Path(state).read_text().strip() if Path(state).is_file() else ""


# The shell command's tail of a job with a `redo` params value and output (redo_token)
REDO_RECORD = "printf '%s\\n' '{params.redo}' > {output.redo}"


def imported_model_files(config: dict, name: str, forget_class: int, seed: int) -> list[str]:
    """The files of an imported model's folder, as inputs of its import job: replacing them reruns its evaluation."""
    folder = imported_model_dir(config, name, forget_class, seed)
    return sorted(str(p) for p in folder.glob("*") if p.is_file())


def workflow_relative(path) -> str:
    """A path as a rule input: relative to the workflow folder when inside it, so that moving the folder does not
    change the jobs' inputs (and rerun them); absolute otherwise (e.g. an installed package's files). Symlinks are
    kept as they are: resolving a linked methods/ folder would change every method job's input, and rerun it."""
    path = Path(os.path.abspath(path))
    cwd = Path.cwd()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)


def suite_code(*modules: str) -> list[str]:
    """The source files of the suite's modules ("metrics": every file of the package; "unlearnbench.report": one)
    as rule inputs, so that editing the code that computes a result reruns the jobs that computed it."""

    files = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec.submodule_search_locations:
            files += sorted(p for folder in spec.submodule_search_locations for p in Path(folder).glob("*.py"))
        else:
            files.append(Path(spec.origin))
    return [workflow_relative(p) for p in files]


def resolved_config_path(config: dict) -> str:
    """results/<run>/configs/<config_hash>.yaml, the file every job of this config reads.

    Named by content: reading the Snakefile again with another config (a dry run, too) writes a new file and
    never rewrites the one that running jobs read. The hash is the metrics records' provenance `config_hash`.
    """

    return str(Path("results") / config["run_name"] / "configs" / f"{config_hash(config)}.yaml")


# Config sections each stage's results depend on: a rule reruns when its fingerprint changes
# (Snakemake's params trigger), so changing e.g. the sampler re-evaluates without retraining anything.
_BASE = ["dataset", "data", "diffusion", "model", "base", "deterministic"]
STAGE_SECTIONS = {
    "data": ["dataset", "data"],
    "base": _BASE,
    "evaluator": ["dataset", "data", "evaluator", "deterministic"],
    "method": _BASE,  # + the method's own params and the sections its unlearn() or prior declares
    "evaluate": [*_BASE, "sampler", "evaluator", "evaluation", "fid"],
    # the tables' and figures' layout: which columns, in what order, against which reference
    "report": ["methods", "imported", "forget_classes", "seeds", "reference_method"],
    # beyond the paper (stages/robustness.py, attacks.py); a dotted name is one key of a section
    "extra_evaluator": ["dataset", "data", "evaluator", "deterministic", "base.hflip", "robustness.evaluators"],
    "robustness_score": [
        *_BASE,
        "sampler",
        "evaluator",
        "evaluation",
        "fid",
        "robustness.evaluators",
        "robustness.precision_recall_k",
    ],
    "attack": [*_BASE, "sampler", "evaluator", "scale", "robustness.evaluators", "robustness.attacks"],
}


def config_value(config: dict, name: str):
    """config[name], or for a dotted name ("robustness.attacks") the key inside its section (None where absent)."""
    value = config
    for key in name.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def fingerprint(config: dict, stage: str, method: str | None = None, prior: str | None = None) -> str:
    """Hash of what a stage's result depends on: its sections (for a method's stage, plus those it declares)
    and the method's params (for a prior that declares its params, only those)."""

    sections = list(STAGE_SECTIONS[stage])
    if method in (config.get("imported") or {}):  # no method file: what it depends on is its folders' pattern
        return config_hash({**{k: config_value(config, k) for k in sections}, "imported": config["imported"][method]})
    if method:
        module = load_method(method)
        sections += prior_by_name(module, prior).sections if prior else module.SECTIONS
    part = {k: config_value(config, k) for k in sections}
    if method:  # the params in effect (scale rules applied): restating a value, or a rule's, reruns nothing
        params = method_params(config, method, module)
        declared = prior_by_name(module, prior).params if prior else None
        if declared is not None:
            params = {k: v for k, v in params.items() if k in declared}
        part["method_params"] = params
    return config_hash(part)


def variant_name(method: str, param: str | None = None, value=None) -> str:
    if param is None:
        return method
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = int(value) if float(value).is_integer() else value
    return f"{method}-{param}={value}"


def parse_variant(variant: str) -> tuple[str, list[str]]:
    """'safemax-lambda=50' -> ('safemax', ['lambda=50'])."""
    if "-" not in variant:
        return variant, []
    method, override = variant.split("-", 1)
    return method, [override]


def method_priors(method: str) -> list:

    return load_method(method).PRIORS


def prior_dir(run_dir: str, method: str, prior, forget_class=None) -> str:
    scope = "shared" if prior.scope == "shared" else f"class{forget_class}"
    return f"{run_dir}/priors/{method}/{prior.name}/{scope}"


def prior_folders(run_dir: str, method: str, forget_class=None, prior: str | None = None) -> dict[str, str]:
    """{prior name: its folder} of the priors a job reads: those `prior` requires (a prior job), else all the
    method's (an unlearning job), for `forget_class`."""
    priors = method_priors(method)
    names = next(p.requires for p in priors if p.name == prior) if prior else [p.name for p in priors]
    return {p.name: prior_dir(run_dir, method, p, forget_class) for p in priors if p.name in names}


def prior_arguments(folders: dict[str, str]) -> str:
    """'<name>=<folder> ...', as `unlearnbench unlearn --priors` and `prior --requires` read them."""
    return " ".join(f"{name}={folder}" for name, folder in folders.items())


def ablation_variants(config: dict) -> list[str]:
    abl = config.get("ablation")
    if not abl or abl["method"] not in config["methods"]:  # the ablation figure needs its method's main runs
        return []
    # The main run already is the point at the method's own value: training it again would count it twice.
    main_value = main_param_value(config, abl["method"], abl["param"])
    return [variant_name(abl["method"], abl["param"], v) for v in abl["values"] if float(v) != float(main_value)]


def finding_variants(config: dict) -> list[str]:
    """The finding study's points (config `finding`): its method with one param changed each, on one class; a
    point equal to the main runs' value is the main run itself."""
    study = config.get("finding")
    if not study or study["method"] not in config["methods"] or study["forget_class"] not in config["forget_classes"]:
        return []  # its main point is the method's main run of that class (skipped_finding_note says so)
    variants = []
    for point in study["points"]:
        ((param, value),) = point.items()
        if value != main_param_value(config, study["method"], param):
            variants.append(variant_name(study["method"], param, value))
    return list(dict.fromkeys(variants))


def guidance_labels(config: dict) -> list[str]:
    """Path labels (w<label>) of the guidance_sweep weights that need evaluations of their own: all but the
    sampler's own weight, whose records are the main run's."""
    main = float(config["sampler"]["guidance_w"])

    def label(w: float) -> str:  # 0.5 -> "0.5", 1.0 -> "1"; a weight that %g would round keeps all its digits
        return f"{w:g}" if float(f"{w:g}") == w else repr(w)

    return [label(float(w)) for w in config.get("guidance_sweep") or [] if float(w) != main]


def main_param_value(config: dict, method: str, param: str):
    """The value of `param` in the method's main runs (its DEFAULTS, then method_params)."""
    return method_params(config, method, load_method(method))[param]


def noise_aware_evaluator(config: dict) -> str | None:
    """The first extra evaluator of robustness.evaluators with a "no class" output (the attacks score with it)."""
    specs = (config.get("robustness") or {}).get("evaluators") or {}
    return next((name for name, spec in specs.items() if spec.get("no_class_images")), None)


def attacked_model(run: str, method: str, forget_class: int, seed: int) -> str:
    """The UNet folder an attack fine-tunes: a method's unlearned model, or Retrain's EMA weights (as evaluated)."""
    if method == "retrain":
        return f"{run}/retrain/class{forget_class}/unet_ema"
    return f"{run}/models/{method}/class{forget_class}/seed{seed}/unet"


def attacked_model_records(run: str, method: str, classes, seed: int) -> list[str]:
    """The record each attacked model's job writes last (its weights are complete): the attack job's inputs."""
    if method == "retrain":
        return [f"{run}/retrain/class{c}/train.json" for c in classes]
    return [f"{run}/models/{method}/class{c}/seed{seed}/cost.json" for c in classes]
