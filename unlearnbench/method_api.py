"""The method interface: one file methods/<name>.py per unlearning method, found by its name in the config.

A method file defines
    DEFAULTS: dict                      hyper-parameters (config `method_params.<name>` overrides them)
    PARAM_SCHEMA: dict                  JSON Schema per hyper-parameter (optional; else its default's type)
    PRIORS: list[Prior]                 work done once before unlearning (optional)
    SECTIONS: tuple[str, ...]           evaluation-side config sections unlearn() reads (optional, e.g. "sampler")
    DISPLAY_NAME: str                   what tables and figures call it (optional; else the file's name)
    COLOR: str                          its colour in the figures, a matplotlib colour (optional; else one of
                                        figures.SPARE_COLORS); a variant has its own, never its base's
    CONTROL: bool                       a reference point, not an unlearning method (optional, e.g. FT): its
                                        columns are shown but never marked best
    NOTE: str                           what differs from the published algorithm (optional; printed under the
                                        tables); required of a variant
    SCALED: dict                        {param: scale rule} for the paper-scale DEFAULTS that a smaller config
                                        scales (unlearnbench/scaling.py: steps, batch, ema, pixel_sum_weight)
A variant of a published method (another loss weight, another target) is a file of its own with no code:
    VARIANT_OF = "safemax"; CHANGES = {"retain_weight": 1.0}; DISPLAY_NAME = "SAFEMax+R"; NOTE = "..."
It runs its base's unlearn() and priors with the base's DEFAULTS updated by CHANGES, under its own name, rows and
colour; editing either file reruns its jobs.
    def unlearn(ctx: UnlearnContext) -> torch.nn.Module   (the contexts: unlearnbench/context.py)
        runs the unlearning loop with ctx.run_steps(steps, step_fn, desc=...) (timed: the RTE) and returns
        the model to evaluate.
A prior's `run(ctx: PriorContext)` writes its files into ctx.out_dir; the workflow caches each prior as its
own job: scope "shared" runs once for all forget classes, scope "per_class" once per forget class.
A prior that declares the params it reads (`Prior(..., params=(...))`) reruns only when those change.
What a prior's cost scales with, for the cost benchmark (`unlearnbench benchmark`, which runs every prior of a method
on small slices and projects it to the paper's size; all optional, and a prior without them is still run and timed,
but reported with no projection):
    work: Callable[[PriorContext], float]   units of work its run with this context did (read after the run: the
                                        params and sections it declares, ctx.data, ctx.priors), e.g. images x
                                        sampler steps; the benchmark fits time = fixed + per unit x work
    work_units: str                     what one unit is, e.g. "image-steps"
    paper_work: float                   the units of work of one run at the paper's size
    paper_size: str                     that size in words, e.g. "5,000 images x 1,000 sampler steps"
    bench_params: Callable[[int, PriorContext], dict]
                                        param values of a small benchmark run of size n = 1, 2, ... (its work should
                                        grow with n; the benchmark also gives the forgotten class n batches of
                                        images); without it the benchmark runs the prior with the method's params

Every stage sees the base model's config (dataset, data, diffusion, model, base) and the runtime switches.
The evaluation-side sections (GUARDED_SECTIONS: sampler, evaluation, evaluator, fid) are visible only where
declared (`SECTIONS`, `Prior(..., sections=...)`), and a job reruns when a declared one changes; so changing
the sampler re-evaluates every model but retrains only what draws images with it (SA's replay set).
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jsonschema

from .errors import UserError, did_you_mean
from .scaling import RULES as SCALE_RULES
from .schema import schema_problems

PACKAGE_METHODS_DIR = Path(__file__).resolve().parent.parent / "methods"
# Config sections that shape evaluation, not the base model: a method's stage reads one only if it declares it.
GUARDED_SECTIONS = ("sampler", "evaluation", "evaluator", "fid")
# Keys that describe the whole run, not one stage: a stage has its own share of them as ctx.params,
# ctx.forget_class and ctx.generator (its seed). Reading another method's params or the run's class list would
# make a cached result depend on what its fingerprint does not hold.
RUN_SCOPE_KEYS = {
    "method_params": "ctx.params (its method's params)",
    "methods": None,
    "forget_classes": "ctx.forget_class",
    "seeds": "ctx.generator (seeded by the job's seed)",
    "ablation": None,
    "guidance_sweep": None,
}


@dataclass(frozen=True)
class Prior:
    name: str
    run: Callable
    scope: str = "shared"  # "shared" (all forget classes) or "per_class"
    requires: tuple[str, ...] = ()  # other priors of the same method, made first
    # The method params this prior reads (None: all of them). Declaring them keeps the cached prior when
    # another param changes (tuning SA's lambda must not redo hours of Fisher); the prior then sees only these.
    params: tuple[str, ...] | None = None
    sections: tuple[str, ...] = ()  # GUARDED_SECTIONS it reads, e.g. ("sampler",) for images it generates
    # What its cost scales with, for the cost benchmark's projection to the paper's size (the module docstring).
    work: Callable | None = None  # work(ctx) -> units of work of the run with this context
    work_units: str | None = None  # e.g. "image-steps"
    paper_work: float | None = None  # units of work at the paper's size
    paper_size: str | None = None  # the paper's size in words
    bench_params: Callable | None = None  # bench_params(n, ctx) -> {param: value} of a benchmark run of size n

    def __post_init__(self):
        if self.scope not in ("shared", "per_class"):
            raise ValueError(f"prior {self.name}: scope must be 'shared' or 'per_class', got {self.scope!r}")
        _check_sections(self.sections, f"prior {self.name}")
        _check_work(self)


# The suite's reference models, named in tables and figures beside the methods; no method file may take a name of
# theirs: the base model ("original") and Retrain, trained without the forgotten class ("retrain", config robustness).
REFERENCE_MODELS = {"original": "Original", "retrain": "Retrain"}
REFERENCE_ROLES = {"original": "the base model", "retrain": "Retrain, the base recipe without the forgotten class"}


def _check_work(prior: Prior) -> None:
    """The benchmark fields: callables where callables go, a positive number of paper units, text where text goes."""
    where = f"prior {prior.name}"
    for attr in ("work", "bench_params"):
        if getattr(prior, attr) is not None and not callable(getattr(prior, attr)):
            raise UserError(f"{where}: {attr} must be a function, got {getattr(prior, attr)!r:.80}")
    paper = prior.paper_work
    if paper is not None and (isinstance(paper, bool) or not isinstance(paper, (int, float)) or not paper > 0):
        raise UserError(
            f"{where}: paper_work must be a positive number (units of work at the paper's size), got {paper!r}"
        )
    for attr in ("work_units", "paper_size"):
        value = getattr(prior, attr)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise UserError(f"{where}: {attr} must be a non-empty string, got {value!r}")
    if prior.paper_work is not None and prior.work is None:
        raise UserError(f"{where}: paper_work needs work (the function that counts a run's units of work)")


def _check_sections(sections, where: str) -> None:
    unknown = [s for s in sections if s not in GUARDED_SECTIONS]
    if unknown:
        raise UserError(
            f"{where} declares config sections {unknown}; declarable: {', '.join(GUARDED_SECTIONS)} "
            f"(the base model's sections are always visible)"
        )


def methods_dir(explicit: str | Path | None = None) -> Path:
    """methods/ of the working directory (a user's workflow copy) first, else the installed one."""
    if explicit:
        return Path(explicit)
    local = Path.cwd() / "methods"
    return local if local.is_dir() else PACKAGE_METHODS_DIR


def available_methods(directory: str | Path | None = None) -> list[str]:
    d = methods_dir(directory)
    return sorted(p.stem for p in d.glob("*.py") if not p.stem.startswith("_"))


def load_method(name: str, directory: str | Path | None = None):
    """Import methods/<name>.py and check it offers the interface."""
    path = methods_dir(directory) / f"{name}.py"
    if not path.exists():
        raise UserError(
            f"method {name!r} not found: no file {path}. Available: {', '.join(available_methods(directory))}"
        )
    module_name = f"unlearnbench_methods.{name}"
    if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(path):
        return sys.modules[module_name]
    if not re.fullmatch(NAME_PATTERN, name) or name in REFERENCE_MODELS:
        raise UserError(
            f"method file {path}: {name!r} cannot name a method (lower-case letters, digits and _, "
            f"starting with a letter; not {' or '.join(map(repr, REFERENCE_MODELS))}, the suite's "
            "reference models); rename the file"
        )
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # its own code: a syntax error, a failing import, ... named, not a traceback
            raise UserError(
                f"method file {path} cannot be loaded: {type(exc).__name__}: "
                f"{getattr(exc, 'msg', None) or exc}{_line_in(path, exc)}; fix it, or take {name!r} "
                "out of 'methods'"
            ) from exc
        module.SOURCES = (path,)
        if hasattr(module, "VARIANT_OF"):
            _compose_variant(module, name, path, directory)
        _check_interface(module, name, path)
    except BaseException:
        del sys.modules[module_name]  # never serve a half-initialised method to the next caller
        raise
    return module


def _present_method(name: str, directory=None):
    """The method's module, or None where its file is gone (tables redrawn from another run's metrics.csv)."""
    return load_method(name, directory) if (methods_dir(directory) / f"{name}.py").exists() else None


def method_sources(name: str, directory=None) -> list[Path]:
    """The files a method's results depend on: its own, and a variant's base file(s)."""
    return list(load_method(name, directory).SOURCES)


def method_note(name: str, directory=None) -> str | None:
    """What differs from the published algorithm (a method file's NOTE), for the tables' notes."""
    module = None if name in REFERENCE_MODELS else _present_method(name, directory)
    return module.NOTE if module else None


def method_label(name: str, directory=None) -> str:
    """What tables and figures call a method: its file's DISPLAY_NAME, else its name."""
    if name in REFERENCE_MODELS:
        return REFERENCE_MODELS[name]
    module = _present_method(name, directory)
    return module.DISPLAY_NAME if module else name


def method_color(name: str, directory=None) -> str | None:
    """A method's colour in the figures: its file's COLOR, if it declares one."""
    module = None if name in REFERENCE_MODELS else _present_method(name, directory)
    return module.COLOR if module else None


def is_control(name: str, directory=None) -> bool:
    """Whether a method is a control (CONTROL = True in its file), never marked as the best unlearning method."""
    module = None if name in REFERENCE_MODELS else _present_method(name, directory)
    return bool(module and module.CONTROL)


def check_labels(names, directory=None) -> None:
    """Two methods shown under one name would share the tables' columns: one would overwrite the other."""
    seen: dict[str, str] = {}
    for name in ("original", *names):
        label = method_label(name, directory)
        if seen.get(label, name) != name:
            raise UserError(
                f"methods {seen[label]!r} and {name!r} are both called {label!r} in the tables; give one "
                "of them another DISPLAY_NAME in its file"
            )
        seen[label] = name


def _line_in(path: Path, exc: Exception) -> str:
    """' (line n)': where in the method file its loading failed, if it did there."""
    if isinstance(exc, SyntaxError) and exc.lineno and exc.filename == str(path):
        return f" (line {exc.lineno})"
    lines = [frame.lineno for frame in traceback.extract_tb(exc.__traceback__) if frame.filename == str(path)]
    return f" (line {lines[-1]})" if lines else ""


NAME_PATTERN = "[a-z][a-z0-9_]*"  # method and prior names: they are path parts and Snakemake wildcards


INTERFACE_NAMES = (
    "DEFAULTS",
    "PARAM_SCHEMA",
    "PRIORS",
    "SECTIONS",
    "DISPLAY_NAME",
    "COLOR",
    "CONTROL",
    "NOTE",
    "SCALED",
    "VARIANT_OF",
    "CHANGES",
)
# What a variant takes from the method it varies: a variant file that defines one of these would run other code
# or other defaults than its name says.
VARIANT_INHERITS = ("unlearn", "DEFAULTS", "PARAM_SCHEMA", "PRIORS", "SECTIONS", "SCALED")


def _compose_variant(module, name: str, path: Path, directory) -> None:
    """A variant file (VARIANT_OF, CHANGES, DISPLAY_NAME, NOTE) becomes a method: its base's code and priors, the
    base's DEFAULTS updated by CHANGES."""
    base_name = module.VARIANT_OF
    if not isinstance(base_name, str) or base_name == name:
        raise UserError(f"method file {path}: VARIANT_OF must name another method file, got {base_name!r}")
    own = [attr for attr in VARIANT_INHERITS if attr in vars(module)]
    if own:
        raise UserError(
            f"method file {path} is a variant of {base_name!r} (VARIANT_OF) and also defines "
            f"{', '.join(own)}; a variant takes these from its base and states its differences in "
            "CHANGES = {param: value}; a method with code of its own is a method file without VARIANT_OF"
        )
    if not isinstance(getattr(module, "NOTE", None), str) or not module.NOTE.strip():
        raise UserError(
            f'method file {path} is a variant: give it NOTE = "what differs from {base_name}" (the tables print it)'
        )
    base = load_method(base_name, directory)
    changes = getattr(module, "CHANGES", {})
    if not isinstance(changes, dict) or not changes:
        raise UserError(
            f"method file {path}: CHANGES must be a non-empty dict of {base_name}'s params, e.g. "
            "{'retain_weight': 1.0}"
        )
    unknown = sorted(set(changes) - set(base.DEFAULTS))
    if unknown:
        raise UserError(
            f"method file {path}: CHANGES names {', '.join(unknown)}, which {base_name}'s DEFAULTS lack"
            f"{did_you_mean(unknown, base.DEFAULTS)}"
        )
    for attr in VARIANT_INHERITS:
        setattr(module, attr, getattr(base, attr))
    module.DEFAULTS = {**base.DEFAULTS, **changes}
    module.PUBLISHED_DEFAULTS = base.PUBLISHED_DEFAULTS
    module.VARIANT_CHANGES = {**base.VARIANT_CHANGES, **changes}
    module.CONTROL = getattr(module, "CONTROL", base.CONTROL)
    module.SOURCES = (path, *base.SOURCES)


def _misspelled_interface(module, path: Path) -> None:
    """A misspelled DEFAULTS (or PRIORS, ...) would silently leave the method without it, and fail later with a
    bare KeyError deep in its loop."""

    for attr, value in vars(module).items():
        if attr.startswith("_") or attr in INTERFACE_NAMES or callable(value) or isinstance(value, types.ModuleType):
            continue  # helpers (def prior(...), import control) are not misspelled interface values
        close = difflib.get_close_matches(attr.upper(), INTERFACE_NAMES, n=1, cutoff=0.8)
        if close and not hasattr(module, close[0]):
            raise UserError(
                f"method file {path} defines {attr}, which the suite does not read, and no {close[0]}: "
                f"rename it {close[0]}"
            )


def _check_interface(module, name: str, path: Path) -> None:
    if not callable(getattr(module, "unlearn", None)):
        raise UserError(f"method file {path} must define unlearn(ctx) (see unlearnbench/method_api.py)")
    _misspelled_interface(module, path)
    for attr, example in (("DEFAULTS", '{"lr": 1.0e-4}'), ("PARAM_SCHEMA", '{"lr": {"type": "number"}}')):
        given = getattr(module, attr, {})
        if not isinstance(given, dict) or not all(isinstance(key, str) for key in given):
            raise UserError(
                f"method file {path}: {attr} must be a dict keyed by parameter name, e.g. {attr} = "
                f"{example}; it is {given!r:.80}"
            )
    module.DEFAULTS = dict(getattr(module, "DEFAULTS", {}))
    module.PARAM_SCHEMA = dict(getattr(module, "PARAM_SCHEMA", {}))
    stray = sorted(set(module.PARAM_SCHEMA) - set(module.DEFAULTS))
    if stray:
        raise UserError(f"method file {path}: PARAM_SCHEMA names {', '.join(stray)}, which DEFAULTS lacks")
    _check_param_schema(module, path)
    module.DISPLAY_NAME = getattr(module, "DISPLAY_NAME", name)
    if not isinstance(module.DISPLAY_NAME, str) or not module.DISPLAY_NAME.strip():
        raise UserError(f"method file {path}: DISPLAY_NAME must be a non-empty string, got {module.DISPLAY_NAME!r}")
    module.COLOR = getattr(module, "COLOR", None)  # a variant's own: _compose_variant does not copy its base's
    if module.COLOR is not None and (not isinstance(module.COLOR, str) or not module.COLOR.strip()):
        raise UserError(f"method file {path}: COLOR must be a matplotlib colour name, got {module.COLOR!r}")
    module.CONTROL = getattr(module, "CONTROL", False)
    if not isinstance(module.CONTROL, bool):
        raise UserError(f"method file {path}: CONTROL must be True or False, got {module.CONTROL!r}")
    module.NOTE = getattr(module, "NOTE", None)
    if module.NOTE is not None and (not isinstance(module.NOTE, str) or not module.NOTE.strip()):
        raise UserError(f"method file {path}: NOTE must be a non-empty string, got {module.NOTE!r}")
    if not hasattr(module, "VARIANT_OF"):
        module.PUBLISHED_DEFAULTS = module.DEFAULTS
        module.VARIANT_CHANGES = {}
    module.SCALED = dict(getattr(module, "SCALED", {}))
    for param, rule in module.SCALED.items():
        if param not in module.DEFAULTS or rule not in SCALE_RULES:
            raise UserError(
                f"method file {path}: SCALED[{param!r}] = {rule!r}: SCALED maps params of DEFAULTS to "
                f"scale rules ({', '.join(SCALE_RULES)}; unlearnbench/scaling.py)"
            )
        if rule == "ema" and "steps" not in module.DEFAULTS:  # the rule follows the steps that run
            raise UserError(f"method file {path}: SCALED[{param!r}] = 'ema' needs a 'steps' param in DEFAULTS")
    module.PRIORS = list(getattr(module, "PRIORS", []))
    module.SECTIONS = tuple(getattr(module, "SECTIONS", ()))
    _check_sections(module.SECTIONS, f"method {name} (SECTIONS)")
    priors = {p.name: p for p in module.PRIORS}
    if len(priors) != len(module.PRIORS):
        raise UserError(f"method {name}: two priors share a name in PRIORS")
    for prior in module.PRIORS:
        where = f"method file {path}: prior {prior.name!r}"
        if not re.fullmatch(NAME_PATTERN, prior.name):
            raise UserError(f"{where}: a prior's name is lower-case letters, digits and _, starting with a letter")
        missing = [r for r in prior.requires if r not in priors]
        if missing:
            raise UserError(f"method {name}: prior {prior.name} requires unknown prior(s) {missing}")
        per_class = [r for r in prior.requires if prior.scope == "shared" and priors[r].scope == "per_class"]
        if per_class:
            raise UserError(f"{where} is shared but requires per-class prior(s) {per_class}; make it per_class")
        unknown = [k for k in (prior.params or ()) if k not in module.DEFAULTS]
        if unknown:
            raise UserError(f"{where} declares params {unknown}, which DEFAULTS lacks")
    done: set[str] = set()

    def visit(prior_name: str, chain: tuple[str, ...]) -> None:  # depth-first: a cycle never finishes
        if prior_name in chain:
            raise UserError(
                f"method file {path}: priors require each other in a cycle: {' -> '.join((*chain, prior_name))}"
            )
        if prior_name not in done:
            for required in priors[prior_name].requires:
                visit(required, (*chain, prior_name))
            done.add(prior_name)

    for prior_name in priors:
        visit(prior_name, ())


def _check_param_schema(module, path: Path) -> None:
    """Each PARAM_SCHEMA entry is a JSON Schema, and each default passes its own (else configs would be judged by
    a schema the method itself breaks, or fail inside jsonschema with a traceback)."""

    for key, schema in module.PARAM_SCHEMA.items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise UserError(
                f"method file {path}: PARAM_SCHEMA[{key!r}] = {schema!r} is not a JSON Schema "
                f"({exc.message}); e.g. {{'type': 'number', 'exclusiveMinimum': 0}}"
            ) from None
    problems = schema_problems({"type": "object", "properties": param_schema(module)}, module.DEFAULTS, ("DEFAULTS",))
    if problems:
        raise UserError(f"method file {path}: its DEFAULTS break its PARAM_SCHEMA: {'; '.join(problems)}")


# The schema of the loop parameters most methods have, as the shipped ones check them: a method file writes
# PARAM_SCHEMA = {**LOOP_PARAM_SCHEMA, ...its own...}; entries for keys its DEFAULTS lack are ignored.
LOOP_PARAM_SCHEMA = {
    "steps": {"type": "integer", "minimum": 1},
    "batch_size": {"type": "integer", "minimum": 1},
    "lr": {"type": "number", "exclusiveMinimum": 0},
    "grad_clip": {"type": ["number", "null"], "exclusiveMinimum": 0},  # null: no clipping
}


def param_schema(module) -> dict:
    """JSON Schema of each hyper-parameter: the method's PARAM_SCHEMA, else the type of its default
    (an int default takes whole numbers, a float any number, text text; a None default anything)."""
    inferred = {bool: {"type": "boolean"}, int: {"type": "integer"}, float: {"type": "number"}, str: {"type": "string"}}
    return {
        key: module.PARAM_SCHEMA.get(key, inferred.get(type(default), {})) for key, default in module.DEFAULTS.items()
    }


def prior_by_name(module, name: str) -> Prior:
    for prior in module.PRIORS:
        if prior.name == name:
            return prior
    raise UserError(f"method has no prior {name!r}; it declares {[p.name for p in module.PRIORS]}")
