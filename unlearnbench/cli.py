"""Command-line entry points: each workflow rule is one `unlearnbench <command>` call.

The suite's modules are imported inside `run`, by the command that needs them: `validate-config` and `publish` run
at every workflow start and import no torch; a job imports only its stage's code."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from .errors import UserError
from .job_errors import cannot_write, out_of_memory, out_of_memory_advice, unexpected_error


def _pairs(items):
    """['name=path', ...] -> {name: path}."""
    out = {}
    for item in items or []:
        name, eq, path = item.partition("=")
        if not (name and eq and path):
            raise UserError(f"{item!r}: expected name=path (e.g. <prior>=results/<run>/priors/<method>/<prior>/shared)")
        out[name] = path
    return out


def _per_class(args, *flags) -> list[dict]:
    """--forget-class 0 3 --out a b -> [{0: 'a', 3: 'b'}]: one value of each flag per forget class."""
    out = []
    for flag in flags:
        values = getattr(args, flag)
        if len(values) != len(args.forget_class):
            raise UserError(
                f"{args.command}: {len(args.forget_class)} --forget-class values but {len(values)} "
                f"--{flag}; give one per forget class, in the same order"
            )
        out.append(dict(zip(args.forget_class, values)))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unlearnbench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name, help_):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", required=True, help="resolved run config (results/<run>/configs/<hash>.yaml)")
        return s

    s = sub.add_parser(
        "publish", help="copy a run's tables into a folder (results/), each checked to be as the aggregate wrote it"
    )
    s.add_argument("files", nargs="+")
    s.add_argument("--to", required=True)

    s = sub.add_parser("validate-config", help="validate config files (default.yaml + the given ones)")
    s.add_argument("files", nargs="*")
    s.add_argument("--write", help="write the resolved config here")
    s.add_argument(
        "--jobs-elsewhere",
        action="store_true",
        help="the jobs run on other machines (an executor profile): skip the check of this one's device",
    )

    s = cmd("prepare-data", "load the dataset and write it as uint8 arrays")
    s.add_argument("--out", required=True)

    s = cmd("train-base", "train (or adopt) the original class-conditional DDPM")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--without-class", type=int, help="Retrain: the same recipe without this class's images")

    s = cmd("train-evaluator", "train the evaluation classifier")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--extra", metavar="NAME", help="the extra evaluator NAME of robustness.evaluators instead")

    s = cmd("prior", "compute one prior of a method")
    s.add_argument("--method", required=True)
    s.add_argument("--prior", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--original", required=True)
    s.add_argument("--forget-class", type=int)
    s.add_argument("--requires", nargs="*", default=[], metavar="NAME=DIR")
    s.add_argument("--out", required=True)

    s = cmd("unlearn", "run one method on one forget class, once per seed (one process: imports and data load once)")
    s.add_argument("--method", required=True)
    s.add_argument("--forget-class", type=int, required=True)
    s.add_argument("--seed", type=int, nargs="+", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--original", required=True)
    s.add_argument("--priors", nargs="*", default=[], metavar="NAME=DIR")
    s.add_argument("--set", nargs="*", default=[], metavar="PARAM=VALUE", help="override method parameters (ablations)")
    s.add_argument("--out", nargs="+", required=True, help="one folder per --seed, in the same order")
    s.add_argument(
        "--presample",
        nargs="+",
        help="also draw the evaluation samples of each unlearned model into "
        "these npz, one per --seed (outside RTE); `evaluate --presampled` reuses them when they still match",
    )

    s = cmd("import-model", "adopt an unlearned model made outside the suite (config `imported`) for evaluation")
    s.add_argument("--name", required=True)
    s.add_argument("--forget-class", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--original", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--presample", help="also draw its evaluation samples into this npz, as `unlearn --presample`")

    s = cmd("sample", "generate evaluation images of a model")
    s.add_argument("--model", required=True, help="a UNet folder (unet/ or unet_ema/)")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--forget-class", type=int, help="omit for the original model (all classes)")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)

    s = cmd("fid-reference", "feature statistics of the real images of the remaining classes, per forget class")
    s.add_argument("--data", required=True)
    s.add_argument("--evaluator", required=True)
    s.add_argument("--forget-class", type=int, nargs="+", required=True)
    s.add_argument("--out", nargs="+", required=True, help="one npz per forget class, in the same order")

    s = cmd("score", "metrics of one model from its samples, per forget class")
    for a in ("--samples", "--evaluator", "--method", "--variant"):
        s.add_argument(a, required=True)
    s.add_argument("--cost")
    s.add_argument("--forget-class", type=int, nargs="+", required=True)
    s.add_argument("--reference", nargs="+", required=True, help="one per forget class, in the same order")
    s.add_argument("--out", nargs="+", required=True, help="one per forget class, in the same order")
    s.add_argument("--seed", type=int, required=True)

    s = cmd(
        "evaluate",
        "sample models, then score them from the saved samples (one model per forget class given: "
        "the per-class flags take one value per --forget-class, in the same order)",
    )
    for a in ("--data", "--evaluator", "--method", "--variant"):
        s.add_argument(a, required=True)
    for a in ("--model", "--samples", "--reference", "--out"):
        s.add_argument(a, nargs="+", required=True)
    s.add_argument("--cost", nargs="+")
    s.add_argument("--forget-class", type=int, nargs="+", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument(
        "--presampled", nargs="+", help="samples drawn by the unlearning jobs, reused when they match the config"
    )

    s = cmd("evaluate-guidance", "sample and score one model at each of several guidance weights (the sweep)")
    for a in ("--model", "--data", "--evaluator", "--method", "--variant"):
        s.add_argument(a, required=True)
    s.add_argument("--cost")
    s.add_argument("--weights", type=float, nargs="+", required=True, metavar="W")
    s.add_argument(
        "--forget-class",
        type=int,
        nargs="+",
        required=True,
        help="the class the model forgot; for the original (variant original) every class it is scored for",
    )
    s.add_argument("--reference", nargs="+", required=True, help="one per forget class, in the same order")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--samples", nargs="+", required=True, help="one npz per weight, in the same order")
    s.add_argument("--out", nargs="+", required=True, help="one record per weight and class, weight by weight")

    s = cmd("summarize-original", "results/original.json")
    for a in ("--samples", "--evaluator", "--out"):
        s.add_argument(a, required=True)
    s.add_argument("--records", nargs="+", required=True)

    s = cmd(
        "score-robustness",
        "the forgotten class of a model's samples under every evaluator, and its distance "
        "to the real class (one record per forget class)",
    )
    for a in ("--data", "--evaluator", "--method"):
        s.add_argument(a, required=True)
    s.add_argument("--extra-evaluators", nargs="*", default=[], metavar="NAME=DIR")
    s.add_argument("--samples", nargs="+", required=True, help="one per forget class (the original's: one for all)")
    s.add_argument("--forget-class", type=int, nargs="+", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", nargs="+", required=True, help="one per forget class, in the same order")

    s = cmd("attack", "relearning, benign fine-tuning and partial-diffusion attacks on unlearned models")
    for a in ("--data", "--evaluator", "--method"):
        s.add_argument(a, required=True)
    s.add_argument("--noise-aware", help="the noise-aware evaluator's folder (ua_noise_aware at every point)")
    s.add_argument("--model", nargs="+", required=True, help="one UNet folder per forget class, in the same order")
    s.add_argument("--forget-class", type=int, nargs="+", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--out", nargs="+", required=True, help="one per forget class, in the same order")

    s = cmd("aggregate-robustness", "robustness.csv and robustness.md from the robustness records")
    s.add_argument("--scores", nargs="+", required=True)
    s.add_argument("--attacks", nargs="*", default=[])
    s.add_argument("--records", nargs="+", required=True, help="the main metrics records of the methods and Retrain")
    s.add_argument("--out-dir", required=True)

    s = cmd("denoiser-norms", "the finding study's check: the size of a model's noise predictions per label")
    s.add_argument("--model", required=True, help="a UNet folder")
    s.add_argument("--data", required=True)
    s.add_argument("--forget-class", type=int, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--variant", required=True)
    s.add_argument("--out", required=True)

    s = cmd("aggregate-finding", "the finding study's records and denoiser norms: finding.csv and .md")
    s.add_argument("--records", nargs="+", required=True)
    s.add_argument("--norms", nargs="+", required=True)
    s.add_argument("--out-dir", required=True)

    s = cmd("aggregate", "metrics.csv, table.csv and the paper's tables")
    s.add_argument("--records", nargs="+", required=True)
    s.add_argument("--out-dir", required=True)

    s = cmd("aggregate-ablation", "the ablation runs' metrics, with the main run, as one CSV")
    s.add_argument("--records", nargs="+", required=True)
    s.add_argument("--out", required=True)

    s = cmd("aggregate-guidance", "the main models' metrics at every guidance weight: guidance.csv and .md")
    s.add_argument("--records", nargs="+", required=True, help="records of every weight (the main run's included)")
    s.add_argument("--out-dir", required=True)

    s = cmd("figures", "render figures from aggregated results and saved samples (no model is run)")
    s.add_argument(
        "--kind", required=True, choices=["summary", "samples", "ablation", "guidance", "finding", "robustness"]
    )
    s.add_argument(
        "--metrics",
        help="metrics.csv (summary), ablation.csv (ablation), guidance.csv (guidance), robustness.csv (robustness)",
    )
    s.add_argument("--samples", nargs="*", help="samples npz: the original's first, then one per method")
    s.add_argument("--forget-class", type=int)
    s.add_argument("--out-dir", help="summary: folder of cost.png and per_class.png")
    s.add_argument("--out", help="samples/ablation/guidance: the PNG to write")

    s = sub.add_parser("benchmark", help="cost benchmark of each method's unlearning (synthetic data)")
    s.add_argument("--preset", default=None, help="tiny or paper (default: paper on GPU, tiny on CPU)")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--methods", nargs="*", default=None, help="default: the config's methods")
    s.add_argument("--config", default=None, help="config whose method params/performance switches to use")
    s.add_argument(
        "--precision", nargs="*", default=None, help="any of fp32, tf32, bf16 (default: fp32 bf16 on GPU, fp32 on CPU)"
    )
    s.add_argument("--out", default=None, help="write the JSON report here")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None, help="default: the GPU if there is one")
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    s.add_argument(
        "--switches",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the speed-switch ablation (default: on GPU only)",
    )
    s.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no further switch-ablation row after this many seconds "
        "(default: $UNLEARNBENCH_BENCHMARK_BUDGET_S, else none)",
    )
    return p


def _presample(config: dict, args, seed: int, out, presample) -> None:
    """--presample: the evaluation samples of the model just saved in `out`, drawn while this process runs."""
    if presample:
        from .data import ImageData
        from .stages import generate_samples

        generate_samples(
            config, Path(out) / "unet", presample, seed, args.forget_class, ImageData.load(args.data).num_classes
        )


def _per_seed(args) -> list[tuple[int, str, str | None]]:
    """unlearn's (seed, --out, --presample) triples: one of each per seed."""
    presample = args.presample or [None] * len(args.seed)
    if not (len(args.out) == len(presample) == len(args.seed)):
        raise UserError(
            f"unlearn: {len(args.seed)} --seed values need as many --out folders and --presample files "
            f"(got {len(args.out)} and {len(args.presample or [])})"
        )
    return list(zip(args.seed, args.out, presample))


# The record each model-making command writes last: there, the --out folder holds a finished result. The workflow
# never meets one (Snakemake deletes a job's outputs before redoing it); a command typed by hand would overwrite it.
FINISHED_RECORD = {
    "train-base": "train.json",
    "train-evaluator": "evaluator.json",
    "prior": "cost.json",
    "unlearn": "cost.json",
    "import-model": "cost.json",
}


def _refuse_finished(command: str, out) -> None:
    for folder in out if isinstance(out, list) else [out]:
        record = Path(folder) / FINISHED_RECORD[command] if command in FINISHED_RECORD and folder else None
        if record and record.exists():
            raise UserError(
                f"{folder} holds a finished result ({record}): {command} would replace it. Write "
                "elsewhere, or delete that folder first (the workflow redoes a job by itself when its "
                "inputs change)"
            )


# The sample sets (npz) each command writes, by flag. Each has a PNG grid beside it that is no declared output, so
# Snakemake leaves an old one when it redoes the job; it goes first, lest a failed job leave a picture of the
# model it replaced.
SAMPLE_OUTPUTS = {
    "unlearn": "presample",
    "import-model": "presample",
    "sample": "out",
    "evaluate": "samples",
    "evaluate-guidance": "samples",
}


def _drop_stale_grids(command: str, args) -> None:
    paths = getattr(args, SAMPLE_OUTPUTS[command], None) if command in SAMPLE_OUTPUTS else None
    for path in [paths] if isinstance(paths, str) else paths or []:
        Path(path).with_suffix(".png").unlink(missing_ok=True)


def run(args) -> int | None:
    if args.command == "validate-config":
        from .config import load_config, write_resolved
        from .workflow import check_model_folders, config_notes, device_problem

        config = load_config(*args.files)
        check_model_folders(config)  # as the Snakefile does, from this folder
        if not args.jobs_elsewhere and (problem := device_problem(config)):  # as a local run does before its jobs
            raise UserError(
                f"{problem}; if the jobs run on other machines (an executor profile), check with --jobs-elsewhere"
            )
        for note in config_notes(config, args.files):
            print(f"note: {note}", file=sys.stderr)
        if args.write:
            write_resolved(config, args.write)
        print(f"config OK: run {config['run_name']}")
        return
    if args.command == "publish":
        from .files import publish

        publish(args.files, args.to)
        return
    if args.command == "benchmark":
        from .benchmark import main as bench_main

        report = bench_main(args)
        if report["errors"]:  # the report keeps the other sections; the exit status must still say it failed
            print(
                f"error: benchmark: {len(report['errors'])} section(s) failed: "
                + "; ".join(e["section"] for e in report["errors"])
                + " (tracebacks above; the report keeps "
                "every other section)",
                file=sys.stderr,
            )
            return 1
        return
    from . import stages

    config = stages.load_run_config(args.config)
    c = args.command
    _refuse_finished(c, getattr(args, "out", None))
    _drop_stale_grids(c, args)
    if c == "prepare-data":
        stages.prepare_data(config, args.out)
    elif c == "train-base":
        stages.train_base(config, args.data, args.out, args.without_class)
    elif c == "train-evaluator" and args.extra:
        stages.train_extra_evaluator(config, args.extra, args.data, args.out)
    elif c == "train-evaluator":
        stages.train_evaluator(config, args.data, args.out)
    elif c == "prior":
        stages.run_prior(
            config,
            args.method,
            args.prior,
            args.data,
            args.original,
            args.out,
            args.forget_class,
            _pairs(args.requires),
        )
    elif c == "unlearn":
        for seed, out, presample in _per_seed(args):
            stages.run_unlearning(
                config,
                args.method,
                args.forget_class,
                seed,
                args.data,
                args.original,
                out,
                _pairs(args.priors),
                stages.parse_overrides(args.set),
            )
            _presample(config, args, seed, out, presample)
    elif c == "import-model":
        stages.import_model(config, args.name, args.forget_class, args.seed, args.data, args.original, args.out)
        _presample(config, args, args.seed, args.out, args.presample)
    elif c == "sample":
        from .data import ImageData

        stages.generate_samples(
            config, args.model, args.out, args.seed, args.forget_class, ImageData.load(args.data).num_classes
        )
    elif c == "fid-reference":
        stages.write_fid_references(config, args.data, args.evaluator, *_per_class(args, "out"))
    elif c == "score":
        references, outs = _per_class(args, "reference", "out")
        stages.score_classes(
            config,
            args.samples,
            args.evaluator,
            references,
            args.seed,
            args.method,
            args.variant,
            args.cost,
            outs,
            args.config,
        )
    elif c == "evaluate":  # several models in one process: the imports and the evaluator are loaded once
        flags = ["model", "samples", "reference", "out"] + [f for f in ("cost", "presampled") if getattr(args, f)]
        per_class = dict(zip(flags, _per_class(args, *flags)))
        for forget_class in args.forget_class:
            value = {
                flag: per_class[flag][forget_class] if flag in per_class else None
                for flag in ("model", "samples", "reference", "out", "cost", "presampled")
            }
            stages.evaluate_model(
                config,
                value["model"],
                args.data,
                value["samples"],
                args.evaluator,
                value["reference"],
                forget_class,
                args.seed,
                args.method,
                args.variant,
                value["cost"],
                value["out"],
                args.config,
                value["presampled"],
            )
    elif c == "evaluate-guidance":
        (references,) = _per_class(args, "reference")
        stages.evaluate_at_weights(
            config,
            args.weights,
            args.model,
            args.data,
            args.evaluator,
            references,
            args.seed,
            args.method,
            args.variant,
            args.cost,
            args.samples,
            args.out,
            args.config,
        )
    elif c == "score-robustness":
        if len(args.samples) == 1:  # the original's one sample set serves every class
            args.samples = args.samples * len(args.forget_class)
        samples, outs = _per_class(args, "samples", "out")
        stages.score_robustness(
            config, args.data, args.evaluator, _pairs(args.extra_evaluators), samples, args.seed, args.method, outs
        )
    elif c == "attack":
        models, outs = _per_class(args, "model", "out")
        stages.attack_models(config, args.data, args.evaluator, args.noise_aware, models, args.seed, args.method, outs)
    elif c == "aggregate-robustness":
        from . import report

        report.aggregate_robustness(config, args.scores, args.attacks, args.records, args.out_dir)
    elif c == "denoiser-norms":
        stages.denoiser_norms(config, args.model, args.data, args.forget_class, args.seed, args.variant, args.out)
    elif c == "aggregate-finding":
        from . import report

        report.aggregate_finding(config, args.records, args.norms, args.out_dir)
    elif c == "summarize-original":
        stages.summarize_original(
            config, args.samples, args.evaluator, args.records, str(Path(args.evaluator) / "evaluator.json"), args.out
        )
    elif c in ("aggregate", "aggregate-ablation", "aggregate-guidance"):
        from . import report

        if c == "aggregate":
            kept = report.aggregate(config, args.records, args.out_dir)
        elif c == "aggregate-ablation":
            kept = report.aggregate_ablation(args.records, args.out)
        else:
            kept = report.aggregate_guidance(config, args.records, args.out_dir)
        if kept:
            print(f"tables kept in {kept}")
    elif c == "figures":
        stages.render_figures(
            config,
            args.kind,
            metrics=args.metrics,
            samples=args.samples,
            forget_class=args.forget_class,
            out_dir=args.out_dir,
            out=args.out,
        )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if memory := out_of_memory(exc):
            print(f"error: {out_of_memory_advice(memory, exc, args)}", file=sys.stderr)
            return 3
        if unwritable := cannot_write(exc):
            print(f"error: {unwritable}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"error: {unexpected_error(exc)}", file=sys.stderr)  # a log's last line says what to do
        return 1
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
