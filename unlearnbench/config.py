"""Load, merge and validate run configs; every input error names the key, the bad value and what is allowed."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import string
from pathlib import Path

import yaml

from .checkpoints import unet_expectations
from .errors import UserError, did_you_mean
from .files import atomic_write_text
from .method_api import (
    NAME_PATTERN,
    REFERENCE_MODELS,
    REFERENCE_ROLES,
    available_methods,
    check_labels,
    load_method,
    param_schema,
)
from .networks import UNET_PRESETS, unet_build_problem
from .scaling import resolve_params
from .schema import NUMBER_TYPES, coerce, key_path, schema_problems, types_of
from .settings import ModelSettings, ScaleSettings

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "config" / "schema.yaml"
DEFAULT_CONFIG = ROOT / "config" / "default.yaml"
NUM_CLASSES = {"digits": 10, "cifar10": 10}
IMAGE_SHAPES = {"digits": (1, 8, 8), "cifar10": (3, 32, 32)}  # (C, H, W)
DATASET_IMAGES = {"digits": 1797, "cifar10": 60000}  # train and test: the bound of any batch (size_settings)
# Config keys that set how much memory a job takes: batch sizes, and counts of images made or read.
SIZE_KEY = re.compile(r"(^|_)batch(_size)?$|^n_|_images$")


class ConfigError(UserError):
    pass


def deep_merge(base: dict, override: dict) -> dict:
    """Recursive dict update, as Snakemake does for --configfile over the Snakefile's configfile."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-4 as a number (YAML 1.1 needs a dot: 1.0e-4, else it is text) and refuses a key
    given twice in one mapping (PyYAML keeps the last silently, so an overlay's first value would be lost unseen)."""

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # left to SafeLoader: a merge (<<) may restate keys, by design
            key = self.construct_object(key_node)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (first on line {first_line[key]}); keep one",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"config file {path} is not valid YAML: {where}{problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file; pass a YAML config") from None
    if data is None:  # as Snakemake refuses it, so that validate-config agrees with the workflow
        raise ConfigError(
            f"config file {path} is empty (or only comments), which Snakemake refuses ('Config file "
            "must be given as JSON or YAML with keys at top level'): put at least one key in it, or "
            "leave the file out"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def validate(config: dict, methods_dir: str | Path | None = None) -> dict:
    """Validate against config/schema.yaml, then the cross-key rules and each method's parameter schema;
    raise ConfigError listing every problem. Returns the config with numbers given as text made numbers."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    config = coerce(config, schema)
    problems = schema_problems(schema, config)
    if not problems:
        config, method_problems = _check_methods(config, methods_dir)
        problems += method_problems + _cross_checks(config)
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    return config


def _check_methods(config: dict, methods_dir) -> tuple[dict, list[str]]:
    """The methods, method_params and the ablation against the method files: names, keys, each value's schema."""
    problems = []
    known = available_methods(methods_dir)
    named = sorted(name for name in known if re.fullmatch(NAME_PATTERN, name) and name not in REFERENCE_MODELS)
    allowed = f"allowed: {', '.join(named)} (a method is a file methods/<name>.py)"
    modules = {}

    def loaded(name):
        """The method's module, or None with the reason among the problems (once): a broken method file is a
        config problem here, not a traceback from inside some rule's input function later."""
        if name not in modules:
            try:
                modules[name] = load_method(name, methods_dir)
            except UserError as exc:
                modules[name] = None
                problems.append(str(exc))
        return modules[name]

    for i, name in enumerate(config["methods"]):
        if name not in known:
            problems.append(f"'methods[{i}]' = {name!r} is not a method; {allowed}")
        else:
            loaded(name)
    if all(modules.get(name) for name in config["methods"]):
        try:
            check_labels(evaluated_methods(config), methods_dir)
        except UserError as exc:
            problems.append(str(exc))
        from matplotlib.colors import is_color_like  # here, not when a job loads a method: 0.1 s

        problems += [
            f"method file methods/{name}.py: COLOR = {modules[name].COLOR!r} is not a matplotlib colour "
            '(e.g. "tab:blue" or "#1f77b4")'
            for name in config["methods"]
            if modules[name].COLOR is not None and not is_color_like(modules[name].COLOR)
        ]
    problems += _imported_problems(config, known)
    reference = config.get("reference_method")
    if reference is not None and reference not in known and reference not in (config.get("imported") or {}):
        problems.append(
            f"'reference_method' = {reference!r} is not a method; {allowed}, or null for no reference"
            f"{did_you_mean([reference], named)}"
        )
    params = dict(config.get("method_params") or {})
    for name, given in params.items():
        if name not in known:  # a typo here would silently leave the method at its defaults
            problems.append(f"unknown method {name!r} under 'method_params'; {allowed}")
            continue
        module = loaded(name)
        if module is None:
            continue
        params[name], found = checked_params(module, given or {}, ("method_params", name))
        problems += found
    config = {**config, "method_params": params}
    if config.get("finding"):
        config, found = _finding_checked(config, known, loaded, allowed)
        problems += found
    if config.get("ablation"):
        config, found = _ablation_checked(config, known, loaded, allowed)
        problems += found
    return config, problems


def _prior_readers(module, param: str) -> list[str]:
    """The priors of a method that read `param`: made once with the main value, so a study cannot vary it."""
    return [p.name for p in module.PRIORS if p.params is None or param in p.params]


def _finding_checked(config: dict, known, loaded, allowed: str) -> tuple[dict, list[str]]:
    """The finding study against its method file: params unlearn() alone reads, values of their schemas, a class the
    run forgets (the study's main point and the original's record are the main run's)."""

    study = config["finding"]
    if study["method"] not in known:
        return config, [f"'finding.method' = {study['method']!r} is not a method; {allowed}"]
    module = loaded(study["method"])
    if module is None:
        return config, []
    problems = []
    schemas = param_schema(module)
    points = []
    for i, point in enumerate(study["points"]):
        ((param, value),) = point.items()
        where = f"'finding.points[{i}]'"
        if param not in module.DEFAULTS:
            problems.append(
                f"{where} changes {param!r}, not a parameter of {study['method']}; allowed: "
                f"{_param_names(module.DEFAULTS)}{did_you_mean([param], module.DEFAULTS)}"
            )
            continue
        if readers := _prior_readers(module, param):
            problems.append(
                f"{where} changes {param!r}, which prior(s) {', '.join(readers)} of {study['method']} "
                "read, made once with the main value: vary a parameter that only unlearn() reads"
            )
            continue
        value = coerce(value, schemas[param])
        points.append({param: value})
        problems += schema_problems(schemas[param], value, ("finding", "points", i, param))
    return {**config, "finding": {**study, "points": points}}, problems


def _ablation_checked(config: dict, known, loaded, allowed: str) -> tuple[dict, list[str]]:
    """The ablation against its method file: a parameter only unlearn() reads, a number, with a main value to
    place the main run on the curve; its values coerced to the parameter's type."""

    abl = config["ablation"]
    if abl.get("method") not in known:  # else the ablation figure would silently be left out
        return config, [f"'ablation.method' = {abl.get('method')!r} is not a method; {allowed}"]
    module = loaded(abl["method"])
    if module is None:  # its problem is listed already
        return config, []
    param = abl.get("param")
    if param not in module.DEFAULTS:
        return config, [
            f"'ablation.param' = {param!r} is not a parameter of {abl['method']}; "
            f"allowed: {_param_names(module.DEFAULTS)}"
        ]
    if readers := _prior_readers(module, param):
        # Priors are made once per method (per class), for its main params: ablation runs reuse them.
        return config, [
            f"'ablation.param' = {param!r} is read by prior(s) {', '.join(readers)} of "
            f"{abl['method']}, which are made once with the main value, not per ablation value: "
            "ablate a parameter that only unlearn() reads (a prior declares what it reads with "
            "Prior(..., params=...))"
        ]
    schemas = param_schema(module)
    kinds = {name: sorted(types_of(item) & NUMBER_TYPES) for name, item in schemas.items()}
    if not kinds[param]:
        return config, [
            f"'ablation.param' = {param!r} is not a number parameter of {abl['method']}: the "
            "ablation figure plots the metrics against a number; allowed: "
            f"{', '.join(sorted(name for name, kind in kinds.items() if kind))}"
        ]
    try:
        main = method_params(config, abl["method"], module)[param]
    except ConfigError:  # an unknown key there: listed already
        return config, []
    if main is None:  # the main run is the curve's point at its own value, so that value must be a number
        return config, [
            f"'ablation.param' = {param!r} is null in {abl['method']}'s main runs (what null means "
            "is not a point on the figure's axis): set a number for it under "
            f"method_params.{abl['method']}.{param}, or ablate another parameter"
        ]
    item = {**schemas[param], "type": kinds[param]}  # less null (grad_clip's)
    values = [coerce(v, item) for v in abl.get("values") or []]
    return (
        {**config, "ablation": {**abl, "values": values}},
        schema_problems({"type": "array", "items": item}, values, ("ablation", "values")),
    )


def _param_names(defaults: dict) -> str:
    return ", ".join(sorted(defaults)) or "none (the method file's DEFAULTS is empty)"


def evaluated_methods(config: dict) -> list[str]:
    """Every name that gets rows in the tables: the methods the suite runs, then the imported models."""
    return [*config["methods"], *(config.get("imported") or {})]


def checked_params(module, given: dict, where: tuple) -> tuple[dict, list[str]]:
    """A method's params as given (config method_params, or `unlearn --set`): the known ones made the types their
    schema asks for, and the problems: unknown names, values outside the method's PARAM_SCHEMA."""

    problems = []
    unknown = sorted(set(given) - set(module.DEFAULTS))
    if unknown:
        problems.append(
            f"unknown key(s) {', '.join(unknown)} under '{key_path(list(where))}'; "
            f"allowed: {_param_names(module.DEFAULTS)}{did_you_mean(unknown, module.DEFAULTS)}"
        )
    schema = {"type": "object", "properties": param_schema(module)}
    known = coerce({k: v for k, v in given.items() if k in module.DEFAULTS}, schema)
    return known, problems + schema_problems(schema, known, where)


def imported_model_dir(config: dict, name: str, forget_class: int, seed: int) -> Path:
    """The folder of the imported model `name` that forgot `forget_class` (for `seed`)."""
    return Path(config["imported"][name].format(forget_class=forget_class, seed=seed))


def imported_cells(config: dict) -> list[tuple[str, int, int]]:
    """(name, forget class, seed) of every imported model the run scores."""
    return [
        (name, c, s) for name in config.get("imported") or {} for c in config["forget_classes"] for s in config["seeds"]
    ]


def imported_architecture_fix(name: str) -> str:
    """What to do about an imported model that is not the config's model (not: describe it in the model section)."""
    return (
        f"An imported model is unlearned from this run's original model, so it has that model's architecture: "
        f"point 'imported.{name}' to models unlearned from it (the model section describes the original; "
        "changing it retrains the original and every method)"
    )


IMPORTED_FIELDS = ("forget_class", "seed")


def _imported_problems(config: dict, known_methods) -> list[str]:
    problems = []
    for name, pattern in (config.get("imported") or {}).items():
        where = f"'imported.{name}' = {pattern!r}"
        if name in known_methods or name in REFERENCE_MODELS:  # its rows would be mistaken for the suite's own
            taken = REFERENCE_ROLES.get(name, "a method file")
            problems.append(
                f"'imported.{name}': {name!r} is the name of {taken}; give the imported models another "
                f"name (e.g. {name}_imported)"
            )
        try:
            fields = {field for _, field, _, _ in string.Formatter().parse(pattern) if field is not None}
        except ValueError as exc:
            problems.append(
                f"{where} is not a folder pattern ({exc}); write {{forget_class}} where the class goes "
                "and double any other brace"
            )
            continue
        if "forget_class" not in fields:  # one folder for every class cannot be a model that forgot one
            problems.append(
                f"{where} lacks {{forget_class}}: a model forgets one class, so each class has its own "
                "folder, e.g. my_models/class{forget_class}/unet"
            )
        unknown = sorted(fields - set(IMPORTED_FIELDS))
        if unknown:
            problems.append(
                f"{where} has unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; allowed: "
                "{forget_class}, {seed}"
            )
    return problems


def _cross_checks(config: dict) -> list[str]:
    problems = []
    n_classes = NUM_CLASSES[config["dataset"]]
    for i, c in enumerate(config["forget_classes"]):
        if c >= n_classes:
            problems.append(
                f"'forget_classes[{i}]' = {c} is out of range; allowed: 0..{n_classes - 1} for {config['dataset']}"
            )
    abl = config.get("ablation")
    if abl and abl.get("forget_class", 0) >= n_classes:
        problems.append(f"'ablation.forget_class' = {abl['forget_class']} is out of range 0..{n_classes - 1}")
    d = config["diffusion"]
    if d["beta_start"] >= d["beta_end"]:
        problems.append(
            f"'diffusion.beta_start' = {d['beta_start']} must be below 'diffusion.beta_end' = {d['beta_end']}"
        )
    if config["sampler"]["steps"] > d["timesteps"]:
        problems.append(
            f"'sampler.steps' = {config['sampler']['steps']} exceeds 'diffusion.timesteps' = {d['timesteps']}"
        )
    bound = DATASET_IMAGES[config["dataset"]]
    for key, value in size_settings(config):
        if re.search(r"batch(_size)?$", key) and value > bound:
            problems.append(
                f"'{key}' = {value:,} exceeds the {bound:,} images of {config['dataset']}: no batch "
                "needs more images than the dataset has; lower it"
            )
    return problems + _robustness_problems(config) + _model_problems(config)


def _robustness_problems(config: dict) -> list[str]:
    robust = config.get("robustness")
    if not robust:
        return []
    problems = [
        f"'robustness.attacks.seeds' has {s}, which is not one of 'seeds' {config['seeds']}: only the models "
        "of the run's seeds exist to attack"
        for s in robust["attacks"]["seeds"]
        if s not in config["seeds"]
    ]
    no_class = [name for name, spec in robust["evaluators"].items() if spec.get("no_class_images")]
    if len(no_class) > 1:
        problems.append(
            f"robustness.evaluators {', '.join(no_class)} all have 'no_class_images': the attacks score "
            "with one noise-aware evaluator; keep it on one"
        )
    return problems


def size_settings(config: dict, method: str | None = None) -> list[tuple[str, int]]:
    """('section.key', value) of each config value that sets a job's memory (SIZE_KEY: batch sizes, image counts),
    largest first: in every section and method_params (with `method`, only that method's, in effect after the
    scale rules)."""
    found = []

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, int) and not isinstance(value, bool) and SIZE_KEY.search(str(key)):
                found.append((f"{prefix}{key}", value))

    walk({k: v for k, v in config.items() if k != "method_params"}, "")
    if method is not None:
        walk({method: method_params(config, method, load_method(method))}, "method_params.")
    else:
        walk({"method_params": config.get("method_params") or {}}, "")
    return sorted(found, key=lambda kv: -kv[1])


def _model_problems(config: dict) -> list[str]:
    """The model section makes a UNet for the dataset's images (else train_base fails with a torch traceback)."""
    model, dataset = config["model"], config["dataset"]
    overrides = model.get("overrides") or {}
    where = f"'model.preset' = {model['preset']!r}"
    if overrides:
        where += f" with 'model.overrides' = {json.dumps(overrides)}"
    try:
        unet = unet_expectations(ModelSettings.parse(config["model"]), NUM_CLASSES[dataset])
    except (ValueError, TypeError) as exc:
        return [
            f"'model.overrides' = {json.dumps(overrides)}: {exc}; its keys and values are those of diffusers' "
            "UNet2DModel (a saved model's config.json), e.g. {dropout: 0.1}"
        ]
    c, h, w = IMAGE_SHAPES[dataset]
    want = {"in_channels": c, "out_channels": c, "sample_size": h}
    differ = [f"{key} {unet[key]!r} (needs {value})" for key, value in want.items() if unet[key] != value]
    if differ:
        fits = [name for name, p in UNET_PRESETS.items() if all(p[key] == value for key, value in want.items())]
        fix = (
            f"correct or remove {', '.join(k for k in want if k in overrides)} in 'model.overrides'"
            if model["preset"] in fits
            else f"use 'model.preset' {' or '.join(repr(f) for f in fits)} for "
            f"{dataset}, or set {', '.join(want)} in 'model.overrides'"
        )
        return [
            f"{where} makes a UNet with {', '.join(differ)}, not one for the {c}x{h}x{w} images of {dataset}; {fix}"
        ]
    problem = unet_build_problem(unet, (c, h, w))
    if problem:
        return [
            f"{where} does not make a UNet that runs on the {c}x{h}x{w} images of {dataset} ({problem}); change "
            "'model.overrides'"
        ]
    return []


def load_config(*paths: str | Path, overrides: dict | None = None, methods_dir=None) -> dict:
    """Default config, then each file in order, then overrides; validated."""
    config = read_yaml(DEFAULT_CONFIG)
    for p in paths:
        config = deep_merge(config, read_yaml(p))
    if overrides:
        config = deep_merge(config, overrides)
    return validate(config, methods_dir)


def config_hash(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def write_resolved(config: dict, path: str | Path) -> bool:
    """Write the resolved config unless identical content is already there (keeps mtimes, so Snakemake does not rerun)."""
    path = Path(path)
    text = yaml.safe_dump(config, sort_keys=False)
    if path.exists() and path.read_text() == text:
        return False

    atomic_write_text(path, text)  # a unique temporary name (cluster jobs may write at once), removed on failure
    return True


def method_params(config: dict, name: str, module, overrides: dict | None = None, *, with_origins: bool = False):
    """A method's effective hyper-parameters: its file's paper-scale DEFAULTS (a variant's CHANGES applied), scaled
    by the rules its SCALED names (unlearnbench/scaling.py, the config's `scale` section), then the config's
    `method_params.<name>`, then `overrides` (an ablation point, `--set`). With `with_origins`, also where each value
    that is not the published default came from."""

    given = (config.get("method_params") or {}).get(name) or {}
    unknown = sorted(set(given) - set(module.DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)} under 'method_params.{name}'; "
            f"allowed: {_param_names(module.DEFAULTS)}{did_you_mean(unknown, module.DEFAULTS)}"
        )
    params, origins = resolve_params(
        module.PUBLISHED_DEFAULTS,
        module.SCALED,
        given,
        overrides or {},
        ScaleSettings.parse(config.get("scale")),
        IMAGE_SHAPES[config["dataset"]],
        config["diffusion"]["loss_reduction"],
        variant=module.VARIANT_CHANGES,
    )
    return (params, origins) if with_origins else params
