"""`unlearnbench benchmark` on CPU (tiny preset, 2 steps, the three published methods), its markdown report, and
acceleration.maybe_compile. GPU fields must be null with a reason: no GPU number is ever made up. The benchmark
names no method: a method file's priors, steps and name reach it only through the file (a method made here in a
temporary folder is benchmarked like the shipped ones)."""

import io
import json
import math

import pytest
import torch

from unlearnbench import benchmark
from unlearnbench.acceleration import effective_switches, is_compiled, maybe_compile
from unlearnbench.cli import main as cli_main
from unlearnbench.method_api import load_method, prior_by_name
from unlearnbench.settings import Performance, Runtime

METHODS = ["safemax", "salun", "sa"]
PRIORS = {"sa.generated", "sa.fisher", "salun.mask"}
# What the paper's step counts and prior sizes were before the method files declared them (the old PAPER_STEPS and
# PAPER_PRIOR_SIZES of the benchmark): the projections must stay in these units.
PAPER_STEPS = {"safemax": 1000, "salun": 1000, "sa": 20000}
PAPER_PRIOR_UNITS = {
    "sa.generated": ("image-steps", 5000 * 1000),
    "sa.fisher": ("image-timesteps", 5000 * 1000),
    "salun.mask": ("images", 5000),
}


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "benchmark.json"
    rc = cli_main(
        [
            "benchmark",
            "--preset",
            "tiny",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--methods",
            *METHODS,
            "--precision",
            "fp32",
            "bf16",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def report(report_path):
    return json.loads(report_path.read_text())


def test_report_structure(report):
    assert report["schema"] == benchmark.SCHEMA
    assert report["complete"] is True and report["interrupted"] is False
    assert report["preset"] == "tiny" and report["device"] == "cpu"
    assert report["image_shape"] == [1, 8, 8] and _positive(report["parameters"])
    assert report["settings"]["steps"] == 2 and report["settings"]["warmup"] == 1
    assert list(report["runs"]) == ["fp32"]  # bf16 asked for, but it has no effect on CPU ...
    assert any("bf16" in s["what"] and "CPU" in s["why"] for s in report["skipped"])  # ... so it says why
    printed = io.StringIO()
    benchmark.print_report(report, printed)
    assert "skipped: precision bf16: no CUDA device" in printed.getvalue()  # on the console too, not only the JSON
    assert report["versions"]["torch"] and report["versions"]["python"]
    assert set(report["paper_means"]) == {"sa", "salun", "safemax"}
    assert report["settings"]["reference_method"] == "safemax"  # the default config's
    assert report["labels"] == {"safemax": "SAFEMax", "salun": "SalUn", "sa": "SA"}  # the files' DISPLAY_NAMEs
    for key in ("forward_per_image", "forward_backward_per_image", "guided_step_per_image"):
        assert _positive(report["flops"][key])
    # A backward costs about two forwards; guidance doubles the rows of a sampler step.
    assert 2.5 < report["flops"]["forward_backward_per_image"] / report["flops"]["forward_per_image"] < 3.5
    assert report["flops"]["guided_step_per_image"] == pytest.approx(2 * report["flops"]["forward_per_image"], rel=0.01)


def test_methods_timed_and_projected(report):
    methods = report["runs"]["fp32"]["methods"]
    assert list(methods) == METHODS
    for name, entry in methods.items():
        assert entry["params"]["steps"] == 3  # warm-up + timed steps, the method's real loop
        assert entry["step"]["n"] == 2 and entry["timing"].startswith("per-step marks")
        for key in ("mean_s", "median_s", "min_s", "max_s"):
            assert _positive(entry["step"][key]), (name, key)
        assert _positive(entry["first_step_s"])
        # the paper's steps: the method file's published DEFAULTS
        assert entry["projected_steps"] == PAPER_STEPS[name] == load_method(name).PUBLISHED_DEFAULTS["steps"]
        assert entry["projected_steps_source"] == "published DEFAULTS"
        assert entry["projected_rte_min"] == pytest.approx(entry["projected_rte_s"] / 60)
        assert entry["projection_step_statistic"] == "median_s"
        assert entry["projected_rte_s"] == pytest.approx(
            entry["step"]["median_s"] * entry["projected_steps"] + entry["timed_outside_steps_s"]
        )
        # A real job's timed loop: its first step and the other warm-up steps as measured (at least the median each,
        # together), the rest at the median step, plus the time outside the steps.
        assert entry["job_steps_as_measured"] == 1 and entry["warmup_after_first_s"] == 0.0  # --warmup 1
        cold = entry["first_step_s"] + entry["warmup_after_first_s"]
        job_s = (
            max(cold, entry["job_steps_as_measured"] * entry["step"]["median_s"])
            + (entry["projected_steps"] - entry["job_steps_as_measured"]) * entry["step"]["median_s"]
            + entry["timed_outside_steps_s"]
        )
        assert entry["projected_job_rte_s"] == pytest.approx(job_s, rel=1e-12)
        assert entry["projected_job_rte_min"] == pytest.approx(entry["projected_job_rte_s"] / 60)
        assert entry["projected_job_rte_min"] >= entry["projected_rte_min"]
        if cold > entry["step"]["median_s"]:  # the cold step's extra time is what the job adds
            assert entry["projected_job_rte_s"] - entry["projected_rte_s"] == pytest.approx(
                cold - entry["step"]["median_s"], rel=1e-6, abs=1e-9
            )
        assert _positive(entry["flops_per_step"]) and _positive(entry["achieved_tflops"])
        assert entry["unet_rows_per_step"]["with_grad"] > 0
        cost = entry["cost"]
        assert _positive(cost["rte_s"]) and _positive(cost["host_rss_peak_gb"])
        # GPU fields: null, with the reason
        assert cost["gpu_peak_gb"] is None and cost["gpu_null_reason"]
        assert cost["torch_peak_allocated_gb"] is None
        assert entry["fraction_of_bf16_peak"] is None and entry["fraction_of_measured_matmul"] is None
        assert entry["host_syncs"]["per_step"] is None and "CUDA" in entry["host_syncs"]["null_reason"]
    # The paper's batch structure: SA and SalUn do about twice SAFEMax's UNet work per step.
    flops = {m: e["flops_per_step"] for m, e in methods.items()}
    assert flops["sa"] == pytest.approx(2 * flops["safemax"], rel=0.05)
    assert flops["salun"] == pytest.approx(7 / 3 * flops["safemax"], rel=0.05)


def test_priors_and_sampler(report):
    run = report["runs"]["fp32"]
    assert set(run["priors"]) == PRIORS
    for name, entry in run["priors"].items():
        method, prior = name.split(".")
        declared = prior_by_name(load_method(method), prior)
        assert (
            (entry["units"], entry["paper_units"])
            == PAPER_PRIOR_UNITS[name]
            == (declared.work_units, declared.paper_work)
        )
        assert entry["paper_size"] == declared.paper_size and entry["scope"] == declared.scope
        for key in ("per_unit_s", "units_per_s", "projected_s", "projected_min"):
            assert _positive(entry[key]), (name, key)
        assert entry["null_reason"] is None
        # two runs of the real prior, the second doing more work; the projection: per unit x the paper's units plus
        # the fixed part once
        small, large = entry["runs"]
        assert 0 < small["work"] < large["work"] and small["size"] < large["size"]
        assert entry["projected_s"] == pytest.approx(
            entry["per_unit_s"] * entry["paper_units"] + max(entry["fixed_s"], 0)
        )
        assert entry["cost"]["gpu_peak_gb"] is None and entry["cost"]["gpu_null_reason"]
    s = run["sampler"]
    assert s["batch_images"] == 20 and s["unet_rows_per_step"] == 40 and s["guidance_w"] == 2.0
    for key in ("per_step_s", "image_steps_per_s", "achieved_tflops", "projected_eval_sampling_min_per_job"):
        assert _positive(s[key]), key
    assert _positive(s["guided_forward"]["image_steps_per_s"])
    assert s["fraction_of_bf16_peak"] is None
    assert s["host_syncs"]["per_call"] is None and "CUDA" in s["host_syncs"]["null_reason"]
    assert run["eps_rel_error_vs_fp32"] == pytest.approx(0.0, abs=1e-5)
    assert run["switches"] == {
        "bf16_autocast": False,
        "tf32": False,
        "channels_last": False,
        "compile": False,
        "deterministic": True,
        "cudnn_benchmark": False,
    }


def test_gpu_fields_null_with_reason(report):
    gpu = report["gpu"]
    assert gpu["bf16_dense_peak_tflops"] is None and "CUDA" in gpu["peak_null_reason"]
    assert gpu["measured_bf16_matmul_tflops"] is None
    assert report["switches"] is None  # the switch ablation needs a GPU


def test_summary_ratios(report):
    s = report["summary"]["fp32"]
    rte = {m: e["projected_rte_min"] for m, e in report["runs"]["fp32"]["methods"].items()}
    priors = report["runs"]["fp32"]["priors"]
    sa_priors = priors["sa.generated"]["projected_min"] + priors["sa.fisher"]["projected_min"]
    assert s["rte_sa_over_safemax"] == pytest.approx(rte["sa"] / rte["safemax"])
    assert s["rte_salun_over_safemax"] == pytest.approx(rte["salun"] / rte["safemax"])
    assert s["rte_sa_with_priors_over_safemax"] == pytest.approx((rte["sa"] + sa_priors) / rte["safemax"])
    # The priors are shared by the 10 forget classes: amortised, each class is charged a tenth of them.
    assert s["sa_priors_projected_min"] == pytest.approx(sa_priors) and s["sa_priors_shared_by_classes"] == 10
    assert s["rte_sa_with_amortised_priors_over_safemax"] == pytest.approx(
        (rte["sa"] + sa_priors / 10) / rte["safemax"]
    )
    assert (
        s["rte_sa_over_safemax"] < s["rte_sa_with_amortised_priors_over_safemax"] < s["rte_sa_with_priors_over_safemax"]
    )
    assert s["paper_rte_sa_over_safemax"] == pytest.approx(174.37 / 5.82, rel=0.01)
    assert s["gpu_saving_safemax_vs_sa_pct"] is None  # no GPU memory on CPU
    assert s["paper_gpu_saving_safemax_vs_sa_pct"] == pytest.approx(45.1, abs=0.1)
    assert s["paper_gpu_saving_safemax_vs_salun_pct"] == pytest.approx(59.1, abs=0.1)


def test_json_is_strict(report_path):
    json.loads(report_path.read_text(), parse_constant=lambda c: pytest.fail(f"non-finite JSON value {c}"))


def test_markdown_report(report_path, tmp_path):
    import runpy

    from unlearnbench.config import ROOT

    out = tmp_path / "cpu.md"
    script = runpy.run_path(str(ROOT / "scripts" / "benchmark_report.py"))  # the script, in this process
    assert script["main"]([str(report_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "# Cost benchmark:" in text and "NOT comparable with the paper" in text
    for needle in (
        "| safemax |",
        "| salun |",
        "| sa |",
        "sa.generated",
        "salun.mask",
        "RTE SA / SAFEMax",
        "paper RTE min",
        "torch",
        "Evaluation sampler",
        "proj. job RTE min",
        "first step s",
        "priors amortised over the 10 classes",
        "all priors charged to one class",
    ):
        assert needle in text, needle
    report = json.loads(report_path.read_text())
    row = next(r for r in benchmark.method_rows(report, "fp32") if r[0] == "sa")
    job_col = benchmark.METHOD_HEADER.index("proj. job RTE min")
    assert row[job_col] == benchmark._fmt(report["runs"]["fp32"]["methods"]["sa"]["projected_job_rte_min"], 2)
    del report["runs"]["fp32"]["methods"]["sa"]["projected_job_rte_min"]  # a run from before it was recorded
    row = next(r for r in benchmark.method_rows(report, "fp32") if r[0] == "sa")
    assert row[job_col] == "not measured"
    # The paper's SAFEMax RTE mean sits beside the measured row.
    assert "5.82" in text
    default = benchmark.default_markdown_path(json.loads(report_path.read_text()), root=tmp_path)
    assert default.parent == tmp_path / "docs" / "benchmarks" and default.name.startswith("cpu-")


def test_markdown_side_by_side_precisions(report_path, tmp_path):
    """Two precisions render side by side (a GPU report's layout), from a copy with a second run."""
    r = json.loads(report_path.read_text())
    r["runs"]["bf16"] = json.loads(json.dumps(r["runs"]["fp32"]))
    for entry in r["runs"]["bf16"]["methods"].values():  # the copy twice as fast
        entry["step"]["mean_s"] /= 2
    r["summary"] = benchmark.summarize(r["runs"], r["paper_means"], benchmark.report_reference(r))
    path = tmp_path / "two.json"
    path.write_text(json.dumps(r))
    text = benchmark.render_markdown(json.loads(path.read_text()))
    side = text.split("## Precisions side by side", 1)[1].split("\n## ", 1)[0]
    assert "speed-up bf16 vs fp32" in side
    rows = {
        line.split("|")[1].strip(): line.split("|")[-2].strip()
        for line in side.splitlines()
        if line.startswith("| ") and not line.startswith("| method")
    }
    assert rows == {m: "2.00" for m in ("safemax", "salun", "sa")}


def test_peak_table():
    cuda = torch.device("cuda")
    assert benchmark.bf16_peak_tflops(cuda, "NVIDIA H100 80GB HBM3")[0] == pytest.approx(989.4)
    assert benchmark.bf16_peak_tflops(cuda, "NVIDIA H100 PCIe")[0] == pytest.approx(756.0)
    assert benchmark.bf16_peak_tflops(cuda, "NVIDIA H200")[0] == pytest.approx(989.4)
    assert benchmark.bf16_peak_tflops(cuda, "NVIDIA A100-SXM4-80GB")[0] == pytest.approx(312.0)
    value, why = benchmark.bf16_peak_tflops(cuda, "Some Future GPU")
    assert value is None and "not in the peak table" in why
    assert benchmark.bf16_peak_tflops(torch.device("cpu"), "cpu")[0] is None


def test_a_method_the_paper_lacks_is_projected_to_its_defaults_steps(tmp_path):
    """FT (or a user's method) is not in the paper: like every method, its projection uses its file's published
    DEFAULTS' steps; with the reference method not run, there are no ratios, and the notes say why."""
    out = tmp_path / "ft.json"
    assert (
        cli_main(
            [
                "benchmark",
                "--preset",
                "tiny",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--methods",
                "finetune",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    entry = report["runs"]["fp32"]["methods"]["finetune"]
    steps = load_method("finetune").PUBLISHED_DEFAULTS["steps"]
    assert entry["projected_steps"] == steps and entry["projected_steps_source"] == "published DEFAULTS"
    assert entry["projected_rte_s"] == pytest.approx(entry["step"]["median_s"] * steps + entry["timed_outside_steps_s"])
    assert entry["projected_job_rte_s"] == pytest.approx(  # --warmup 0: the first step is the one as measured
        max(entry["first_step_s"], entry["step"]["median_s"])
        + (steps - 1) * entry["step"]["median_s"]
        + entry["timed_outside_steps_s"]
    )
    row = benchmark.method_rows(report, "fp32")[0]
    assert row[0] == "finetune" and row[benchmark.METHOD_HEADER.index("paper RTE min")] == "-"
    assert report["summary"] == {"fp32": {}} and benchmark.ratio_rows(report) == []
    assert any(n.startswith("no ratios: the reference method (safemax") for n in report["notes"])


# A method the suite does not ship, with two priors: one whose cost the benchmark can project (its work, its paper
# size, the params of a small run), declared after the one that requires it, and one that declares none of that.
UNSHIPPED_METHOD = '''"""A method made for the test: a prior that times a small computation and writes a file, and an unlearn()
that reads the priors' files."""
import torch

from unlearnbench.method_api import Prior
from unlearnbench.training import optimizer_step

DISPLAY_NAME = "Mine"
DEFAULTS = {"steps": 500, "batch_size": 16, "lr": 1.0e-4, "grad_clip": 1.0, "products": 4}


def gram(ctx):
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(ctx.seed)) / 16
    with ctx.meter.timed():
        for _ in range(ctx.params["products"]):
            x = torch.tanh(x @ x)
    (ctx.out_dir / "gram.txt").write_text(f"{float(x.abs().mean()):.6f}")


def note(ctx):
    (ctx.out_dir / "note.txt").write_text("gram " + (ctx.priors["gram"] / "gram.txt").read_text())


PRIORS = [
    Prior("note", note, requires=("gram",), params=()),
    Prior("gram", gram, params=("products",), work=lambda ctx: ctx.params["products"], work_units="products",
          paper_work=1000, paper_size="1,000 products of 256 x 256 matrices",
          bench_params=lambda n, ctx: {"products": 10 * n}),
]


def unlearn(ctx):
    p = ctx.params
    weight = float((ctx.priors["note"] / "note.txt").read_text().split()[1])
    assert weight == float((ctx.priors["gram"] / "gram.txt").read_text()) > 0
    model = ctx.load_original(ema=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    forget = ctx.batches([ctx.forget_class], p["batch_size"])

    def step(_):
        with ctx.autocast():
            loss = -weight * ctx.epsilon_loss(model, *next(forget))
        optimizer_step(optimizer, loss, model.parameters(), p["grad_clip"])

    ctx.run_steps(p["steps"], step, desc="mine")
    return model
'''


def test_a_method_that_is_not_shipped_is_benchmarked_with_its_priors(tmp_path, monkeypatch):
    """A new method file with PRIORS runs through `unlearnbench benchmark` as the shipped ones do: its priors in the
    order they require each other, timed and (where the Prior says what its work is) projected to the paper's size,
    its steps from its DEFAULTS, its name from its file."""
    import shutil

    from unlearnbench.config import ROOT

    shutil.copytree(ROOT / "methods", tmp_path / "methods")  # the config's methods stay where the config finds them
    (tmp_path / "methods" / "mine.py").write_text(UNSHIPPED_METHOD)
    monkeypatch.chdir(tmp_path)  # methods/ of the working directory: a user's workflow copy
    out = tmp_path / "mine.json"
    assert (
        cli_main(
            [
                "benchmark",
                "--preset",
                "tiny",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--methods",
                "mine",
                "--precision",
                "fp32",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["complete"] is True and report["labels"] == {"mine": "Mine"}
    run = report["runs"]["fp32"]
    assert [k for k in report["section_s"] if k.startswith("fp32")] == [
        "fp32 mine.gram",
        "fp32 mine.note",
        "fp32 mine",
        "fp32 sampler",
    ]  # the required prior first
    gram, note = run["priors"]["mine.gram"], run["priors"]["mine.note"]
    assert (gram["units"], gram["paper_units"], gram["scope"]) == ("products", 1000, "shared")
    assert [(r["size"], r["params"], r["work"]) for r in gram["runs"]] == [
        (1, {"products": 10}, 10.0),
        (8, {"products": 80}, 80.0),
    ]
    assert _positive(gram["per_unit_s"]) and gram["null_reason"] is None
    assert gram["projected_s"] == pytest.approx(gram["per_unit_s"] * 1000 + max(gram["fixed_s"], 0))
    assert gram["projected_min"] == pytest.approx(gram["projected_s"] / 60)
    # No work declared: run and timed, not projected, and the report says why.
    assert len(note["runs"]) == 1 and _positive(note["warmup_run_wall_s"]) and note["rte_s"] >= 0
    assert note["projected_min"] is None and "declares no work" in note["null_reason"]
    entry = run["methods"]["mine"]
    assert entry["projected_steps"] == 500 and _positive(entry["projected_rte_min"])
    text = benchmark.render_markdown(report)
    assert "| mine.gram | products |" in text and "1,000 products of 256 x 256 matrices" in text
    assert "| mine.note | - | - | - (its Prior declares no work" in text


def test_bad_arguments():
    assert cli_main(["benchmark", "--preset", "huge"]) == 2
    assert cli_main(["benchmark", "--precision", "fp8"]) == 2


# ---------------------------------------------------------------- acceleration.maybe_compile
class _Net(torch.nn.Module):
    """A small stand-in for the UNet (compiling the UNet itself takes tens of seconds on 2 cores)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


def test_maybe_compile_off_or_cpu_is_a_no_op():
    torch.manual_seed(0)
    model = _Net()
    assert maybe_compile(model, Performance(compile=False), "cuda") is model and not is_compiled(model)
    assert maybe_compile(model, Performance(compile=True), "cpu") is model and not is_compiled(model)
    assert maybe_compile(model, Performance(), "cuda") is model and not is_compiled(model)
    assert effective_switches(Runtime(performance=Performance(compile=True, bf16=True)), "cpu")["compile"] is False


def test_compile_sampling_compiles_only_models_that_just_sample():
    """performance.compile_sampling: the evaluation samples' UNet is compiled on a GPU, the unlearning loop's (RTE)
    is not; `compile` still compiles both; nothing is compiled off CUDA."""
    from unlearnbench.acceleration import compiles

    sampling_only = Performance(compile_sampling=True)
    assert compiles(sampling_only, "cuda", sampling=True) and not compiles(sampling_only, "cuda")
    assert not compiles(sampling_only, "cpu", sampling=True)
    everywhere = Performance(compile=True)
    assert compiles(everywhere, "cuda") and compiles(everywhere, "cuda", sampling=True)
    assert effective_switches(Runtime(performance=sampling_only), "cuda", sampling=True)["compile"] is True
    assert effective_switches(Runtime(performance=sampling_only), "cuda")["compile"] is False
    model = _Net()
    assert maybe_compile(model, sampling_only, "cuda") is model and not is_compiled(model)  # an unlearning job's


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # autocast("cuda") on a machine without one
def test_a_cost_record_says_bf16_only_where_the_jobs_code_entered_it():
    """performance.bf16 on a GPU allows bf16; a method whose loop never enters ctx.autocast() ran fp32, and its
    cost row must not say bf16 (it would be compared with bf16 methods as if it were one)."""
    from unlearnbench.acceleration import switches_label, switches_that_ran
    from unlearnbench.diffusion import Schedule, sample
    from unlearnbench.training import autocast, bf16_uses

    perf = Performance(bf16=True, tf32=True)
    runtime = Runtime(performance=perf)
    assert switches_label(switches_that_ran(runtime, "cuda", True)) == "bf16_autocast+tf32"
    assert switches_label(switches_that_ran(runtime, "cuda", False)) == "tf32"
    assert switches_label(switches_that_ran(runtime, "cpu", True)) == "none"
    before = bf16_uses()
    with autocast(Performance(bf16=False), torch.device("cuda")), autocast(perf, torch.device("cpu")):
        pass
    assert bf16_uses() == before  # fp32 either way: not counted
    with autocast(perf, torch.device("cuda")):
        pass
    assert bf16_uses() == before + 1
    eps_fn = lambda x, t, y: 0 * x  # noqa: E731
    eps_fn.image_shape = (1, 2, 2)
    sample(None, Schedule(10, 1e-4, 0.02), torch.arange(2), steps=2, eps_fn=eps_fn)
    assert bf16_uses() == before + 1  # an fp32 sampler
    from unlearnbench.networks import build_unet

    sample(build_unet("tiny", 10), Schedule(10, 1e-4, 0.02), torch.arange(2), steps=1, autocast_dtype=torch.bfloat16)
    assert bf16_uses() == before + 2  # the sampler's bf16 passes (SA's replay set, an unlearn() that samples)


def test_maybe_compile_in_place_keeps_names_and_matches_eager():
    """In-place compilation: same object, same parameter names and state_dict keys (SA's Fisher and SalUn's
    masks are keyed by them), same outputs and gradients; a deep copy (make_ema) is an eager module."""
    import copy

    torch.manual_seed(0)
    model = _Net()
    names, keys = [n for n, _ in model.named_parameters()], list(model.state_dict())
    x = torch.randn(4, 1, 8, 8)
    eager = model(x)
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = maybe_compile(model, Performance(compile=True), "cpu", force=True, backend="eager")
    assert out is model and is_compiled(model)
    assert maybe_compile(model, Performance(compile=True), "cpu", force=True, backend="eager") is model
    assert [n for n, _ in model.named_parameters()] == names and list(model.state_dict()) == keys
    compiled = model(x)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)
    assert not is_compiled(copy.deepcopy(model))


def test_sync_warnings_counted_and_others_ignored():
    import warnings

    def loop_with_two_syncs():
        warnings.warn(benchmark.SYNC_WARNING)
        warnings.warn("an unrelated warning")
        warnings.warn(benchmark.SYNC_WARNING)  # the same line twice still counts twice

    assert benchmark.count_sync_warnings(loop_with_two_syncs) == 2
    assert benchmark.count_sync_warnings(lambda: None) == 0


def test_sync_counter_runs_every_step_and_says_why_it_cannot_count_on_cpu():
    counter = benchmark.SyncCounter(torch.device("cpu"), watch_steps=range(1, 3))
    ran = []
    for i in range(4):
        counter.step(i, ran.append)
    assert ran == [0, 1, 2, 3]
    result = counter.result()
    assert result["per_step"] is None and result["steps_watched"] == 0 and "CUDA" in result["null_reason"]


def test_a_timeout_keeps_the_finished_half_of_a_switch_row(tmp_path, monkeypatch):
    """`timeout --signal=INT` in a switch row's sampler (compilation can take minutes): the JSON keeps the row
    with its method measured and says it was interrupted, and the section's time says it has no result."""
    calls = []
    real_sampler = benchmark.Bench.sampler

    def sampler(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # fp32 row, switch row "bf16", then the "bf16 + compile" row
            raise KeyboardInterrupt
        return real_sampler(self, *args, **kwargs)

    monkeypatch.setattr(benchmark.Bench, "sampler", sampler)
    out = tmp_path / "b.json"
    from unlearnbench.cli import build_parser

    args = build_parser().parse_args(
        [
            "benchmark",
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--methods",
            "safemax",
            "--precision",
            "fp32",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--switches",
        ]
    )  # the ablation's flag, as typed
    with pytest.raises(KeyboardInterrupt):
        benchmark.main(args)
    saved = json.loads(out.read_text())
    assert saved["interrupted"] is True and saved["complete"] is False
    variants = saved["switches"]["variants"]
    assert [v["name"] for v in variants] == ["bf16", "bf16 + compile"]
    assert "error" not in variants[0] and variants[0]["sampler"]
    assert _positive(variants[1]["method"]["step"]["mean_s"]) and "sampler" not in variants[1]
    assert variants[1]["error"].startswith("interrupted")
    assert "switch bf16 + compile sampler (interrupted)" in saved["section_s"]
    assert "switch bf16 + compile sampler" not in saved["section_s"]
    assert benchmark.switch_rows(saved)[1][-1].startswith("interrupted")


def test_a_failing_prior_loses_only_what_needs_it(tmp_path, monkeypatch, capsys):
    """One GPU run, one try: SA's Fisher raising skips SA (its unlearning needs it) with the error kept, the other
    methods and the sampler are still measured, the report is marked incomplete and the command exits non-zero."""
    real_run_prior = benchmark.Bench.run_prior

    def broken_fisher(self, method, prior, cfg, tag, priors):
        if (method, prior.name) == ("sa", "fisher"):
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nsecond line")
        return real_run_prior(self, method, prior, cfg, tag, priors)

    monkeypatch.setattr(benchmark.Bench, "run_prior", broken_fisher)
    out = tmp_path / "b.json"
    rc = cli_main(
        [
            "benchmark",
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--methods",
            *METHODS,
            "--precision",
            "fp32",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--threads",
            "1",
        ]
    )
    err = capsys.readouterr().err
    saved = json.loads(out.read_text())
    assert rc == 1 and "1 section(s) failed: fp32 sa.fisher" in err and "broken_fisher" in err  # its traceback
    assert saved["complete"] is False and saved["interrupted"] is False
    assert saved["errors"] == [
        {"section": "fp32 sa.fisher", "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    ]
    run = saved["runs"]["fp32"]
    assert set(run["methods"]) == {"safemax", "salun"} and set(run["priors"]) == {"sa.generated", "salun.mask"}
    assert _positive(run["sampler"]["image_steps_per_s"])
    assert {"what": "fp32 sa", "why": "its prior failed (see errors)"} in saved["skipped"]
    assert "fp32 sa.fisher" in saved["section_s"] and "fp32 sa" not in saved["section_s"]
    md = benchmark.render_markdown(saved)
    assert "## Failed sections" in md and "- fp32 sa.fisher: `RuntimeError: CUDA error" in md
    assert "- fp32 sa: its prior failed" in md


def test_a_failing_switch_row_is_an_error_of_the_run(tmp_path, monkeypatch, capsys):
    """A switch-ablation row that raises (torch.compile failing, say) keeps its error in its row and in the
    report's errors, with its traceback; the rows after it still run, and the command exits non-zero."""
    real_run_method = benchmark.Bench.run_method

    def run_method(self, method, cfg, priors):
        if (cfg.get("performance") or {}).get("compile"):
            raise RuntimeError("inductor: no working C++ compiler\nsecond line")
        return real_run_method(self, method, cfg, priors)

    monkeypatch.setattr(benchmark.Bench, "run_method", run_method)
    out = tmp_path / "b.json"
    rc = cli_main(
        [
            "benchmark",
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--methods",
            "safemax",
            "--precision",
            "fp32",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--switches",
        ]
    )
    err = capsys.readouterr().err
    saved = json.loads(out.read_text())
    assert rc == 1 and "1 section(s) failed: switch bf16 + compile" in err and "in run_method" in err
    assert saved["complete"] is False
    assert saved["errors"] == [
        {"section": "switch bf16 + compile", "error": "RuntimeError: inductor: no working C++ compiler"}
    ]
    variants = {v["name"]: v for v in saved["switches"]["variants"]}
    assert variants["bf16 + compile"]["error"] == saved["errors"][0]["error"]
    assert "method" not in variants["bf16 + compile"]
    later = [v for name, v in variants.items() if name not in ("bf16", "bf16 + compile")]
    assert later and all(_positive(v["method"]["step"]["mean_s"]) and "error" not in v for v in later)
    assert "- switch bf16 + compile: `RuntimeError: inductor" in benchmark.render_markdown(saved)


def test_each_method_runs_right_after_its_priors_safemax_first(report):
    """A time limit cuts the end of a row: SAFEMax (no prior) first, each prior just before its method."""
    assert [k for k in report["section_s"] if k.startswith("fp32")] == [
        "fp32 safemax",
        "fp32 salun.mask",
        "fp32 salun",
        "fp32 sa.generated",
        "fp32 sa.fisher",
        "fp32 sa",
        "fp32 sampler",
    ]
    for entry in report["runs"]["fp32"]["priors"].values():  # each prior's warm-up run's wall time, kept apart
        assert _positive(entry["warmup_run_wall_s"])


def test_the_switch_ablation_follows_the_bf16_row():
    assert benchmark.switch_ablation_after(["bf16", "fp32"]) == "bf16"
    assert benchmark.switch_ablation_after(["fp32", "bf16", "tf32"]) == "bf16"
    assert benchmark.switch_ablation_after(["fp32", "tf32"]) == "tf32"


def _as_other_run(report: dict, precision: str, started: str) -> dict:
    """A copy of `report` whose only row is `precision` (the fp32 row relabelled) with its own steps and dates."""
    other = json.loads(json.dumps(report))
    other["runs"] = {precision: other["runs"]["fp32"]}
    other["settings"].update(steps=7, warmup=2)
    other.update(
        started=started,
        finished=started,
        complete=False,
        interrupted=True,
        switches={"method": "safemax", "variants": [{"name": "bf16", "change": {}}]},
    )
    return other


def test_runs_of_one_device_merge_into_one_report_that_names_its_sources(report_path, report, tmp_path):
    import runpy

    from unlearnbench.config import ROOT

    second = tmp_path / "second.json"
    second.write_text(json.dumps(_as_other_run(report, "bf16", "2099-01-01T00:00:00+00:00")))
    merged = benchmark.merge_reports([report, json.loads(second.read_text())], ["first.json", "second.json"])
    assert list(merged["runs"]) == ["fp32", "bf16"] and merged["switches"]["variants"][0]["name"] == "bf16"
    assert [s["name"] for s in merged["sources"]] == ["first.json", "second.json"]
    assert [(s["precisions"], s["steps"], s["switch_ablation"]) for s in merged["sources"]] == [
        (["fp32"], 2, False),
        (["bf16"], 7, True),
    ]
    assert merged["complete"] is False and merged["interrupted"] is True
    assert merged["started"] == report["started"] and merged["finished"] == "2099-01-01T00:00:00+00:00"
    assert set(merged["summary"]) == {"fp32", "bf16"}
    assert merged["summary"]["bf16"]["rte_sa_over_safemax"] == merged["summary"]["fp32"]["rte_sa_over_safemax"]
    assert "first.json: fp32 safemax" in merged["section_s"] and "second.json: fp32 safemax" in merged["section_s"]

    out = tmp_path / "merged.md"
    script = runpy.run_path(str(ROOT / "scripts" / "benchmark_report.py"))
    assert script["main"]([str(report_path), str(second), "--out", str(out)]) == 0
    text = out.read_text()
    assert (
        "measured by those runs" in text and "Merged from these runs" in text and "| steps | per run, below |" in text
    )
    assert (
        "| benchmark.json | fp32 | 2 after 1 |" in text
        and "| second.json | bf16 + switch ablation | 7 after 2 |" in text
    )
    assert "speed-up bf16 vs fp32" in text


def test_runs_that_are_not_comparable_are_not_merged(report_path, report, tmp_path, capsys):
    import runpy

    from unlearnbench.config import ROOT

    with pytest.raises(ValueError, match="precision fp32 is in more than one run"):
        benchmark.merge_reports([report, report])
    older = _as_other_run(report, "bf16", report["started"])
    older["schema"] = "unlearnbench-benchmark/1"
    with pytest.raises(ValueError, match="schema unlearnbench-benchmark/1.*different versions of the benchmark"):
        benchmark.merge_reports([report, older])
    other_reference = _as_other_run(report, "bf16", report["started"])
    other_reference["settings"]["reference_method"] = "sa"
    with pytest.raises(ValueError, match="differ in reference_method"):
        benchmark.merge_reports([report, other_reference])
    other = _as_other_run(report, "bf16", report["started"])
    other["device_name"] = "another GPU"
    with pytest.raises(ValueError, match="differ in device_name"):
        benchmark.merge_reports([report, other])
    two = [_as_other_run(report, p, report["started"]) for p in ("bf16", "tf32")]
    with pytest.raises(ValueError, match="both have a switch ablation"):
        benchmark.merge_reports(two)
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps(other))
    script = runpy.run_path(str(ROOT / "scripts" / "benchmark_report.py"))
    assert script["main"]([str(report_path), str(bad), "--out", str(tmp_path / "x.md")]) == 2
    assert "differ in device_name" in capsys.readouterr().err and not (tmp_path / "x.md").exists()


def test_the_committed_device_reports_are_what_their_json_renders(root):
    """docs/benchmarks: no table is written by hand; each markdown is its JSON(s) rendered (merged if several)."""
    folder = root / "docs" / "benchmarks"
    reports = [md for md in folder.glob("*.md") if md.name != "README.md"]
    for md in reports:
        jsons = sorted(folder.glob(md.stem + ".json")) or sorted(folder.glob(md.stem + "-*.json"))
        assert jsons, f"{md.name} has no JSON beside it"
        loaded = [json.loads(j.read_text()) for j in jsons]
        assert md.read_text() == benchmark.render_markdown(benchmark.merge_reports(loaded, [j.name for j in jsons]))


def test_sampler_numerics_compare_each_row_with_its_reference():
    ref = torch.ones(4, 3, 2, 2)
    rows = benchmark.sampler_numerics(
        {
            "fp32": ref,
            "bf16": ref * 1.01,
            "switch bf16": ref * 1.01,
            "switch bf16 + compile": ref * 1.01 + 0.02,
            "tf32": ref,
        }
    )
    got = {(r["row"], r["reference"]): (round(r["rel_diff"], 6), round(r["max_abs_diff"], 6)) for r in rows}
    assert got == {
        ("bf16", "fp32"): (0.01, 0.01),
        ("switch bf16", "bf16"): (0.0, 0.0),
        ("switch bf16 + compile", "bf16"): (round(0.02 / 1.01, 6), 0.02),
        ("tf32", "fp32"): (0.0, 0.0),
    }
    assert benchmark.sampler_numerics({"switch bf16": ref}) == []  # no reference row: nothing to compare


def test_on_cpu_every_switch_row_samples_exactly_the_fp32_images(tmp_path):
    """The switches do nothing on CPU, so each ablation row's probe images equal the fp32 row's bit for bit: the
    comparison the GPU run makes (compile against eager, say) is wired to the rows it names."""
    out = tmp_path / "b.json"
    rc = cli_main(
        [
            "benchmark",
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--methods",
            "safemax",
            "--precision",
            "fp32",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--switches",
        ]
    )
    saved = json.loads(out.read_text())
    assert rc == 0
    rows = saved["sampler_numerics"]
    assert [(r["row"], r["reference"]) for r in rows] == [
        (f"switch {name}", "fp32") for name, _ in benchmark.SWITCH_VARIANTS
    ]
    assert all(r["rel_diff"] == 0.0 and r["max_abs_diff"] == 0.0 for r in rows)
    assert "## Sampler numerics" in benchmark.render_markdown(saved)


def _gpu_script(root, out, **env):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(root / "scripts" / "gpu_benchmark.sh")], env=env, capture_output=True, text=True, timeout=600
    )


def test_gpu_script_runs_end_to_end_on_the_tiny_preset(root, tmp_path):
    """The device gets one try at scripts/gpu_benchmark.sh: its CPU smoke test runs the same lines."""
    proc = _gpu_script(
        root, tmp_path, PRESET="tiny", STEPS="1", WARMUP="0", UNLEARNBENCH_BENCHMARK_BUDGET_S="5", SWITCHES="0"
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["complete"] is True and report["preset"] == "tiny"
    assert report["settings"]["precisions"] == ["bf16", "fp32"] and report["settings"]["switch_ablation"] is False
    assert report["settings"]["command"].endswith("--no-switches")
    # No --methods: the config's (the default config on the tiny preset), the reference first, then those with fewer
    # priors (a time limit cuts the costlier ones)
    from unlearnbench.config import load_config

    assert sorted(report["settings"]["methods"]) == sorted(load_config()["methods"])
    assert (
        list(report["runs"]["fp32"]["methods"])
        == report["settings"]["methods"]
        == ["safemax", "safemax_r", "salun", "sa"]
    )
    log = (tmp_path / "benchmark.log").read_text()
    assert "== benchmark exit status 0" in log and "complete: True" in log and "python " in log
    (markdown,) = tmp_path.glob("cpu-*.md")
    assert markdown.name == benchmark.default_markdown_path(report).name
    assert "SAFEMax" in markdown.read_text()


def test_gpu_script_without_jsonschema_or_wheels_says_what_to_do(root, tmp_path):
    import venv

    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False)  # a Python without jsonschema, as on the device image
    proc = _gpu_script(root, tmp_path / "out", PYTHON=str(bare / "bin" / "python"), WHEELS=str(tmp_path / "none"))
    assert proc.returncode == 1
    assert "run 'bash scripts/gpu_benchmark.sh --fetch-wheels'" in proc.stderr and "carry" in proc.stderr


def test_a_fit_swamped_by_noise_is_null_with_its_reason(report):
    """A two-point fit whose larger run was not slower gives no rate (never a negative one), and the tables say why."""
    import copy

    assert benchmark.Bench._linear((1, 8), (0.30, 0.25)) == (None, None)
    per_unit, fixed = benchmark.Bench._linear((1, 8), (0.1, 0.8))
    assert per_unit == pytest.approx(0.1) and fixed == pytest.approx(0.0)
    noisy = copy.deepcopy(report)
    prior = noisy["runs"]["fp32"]["priors"]["salun.mask"]
    prior.update(
        per_unit_s=None, units_per_s=None, projected_s=None, projected_min=None, null_reason=benchmark.NOISY_FIT
    )
    noisy["runs"]["fp32"]["sampler"].update(image_steps_per_s=None, null_reason=benchmark.NOISY_FIT)
    mask_row = next(r for r in benchmark.prior_rows(noisy, "fp32") if r[0] == "salun.mask")
    assert mask_row[3] == f"- ({benchmark.NOISY_FIT})"
    sampler_row = next(r for r in benchmark.sampler_rows(noisy) if r[0] == "fp32")
    assert sampler_row[2] == f"- ({benchmark.NOISY_FIT})"


def test_paper_config_runs_fp32_and_its_bf16_overlay_changes_only_the_precision(root):
    """The references ran in fp32: config/paper.yaml too (bf16 and TF32 off); config/paper-bf16.yaml, its speed overlay,
    turns both on under a run_name of its own (results never mixed with the fp32 run's) and changes nothing else."""
    from unlearnbench.config import load_config

    paper = load_config(root / "config" / "paper.yaml", methods_dir=root / "methods")
    fast = load_config(
        root / "config" / "paper.yaml", root / "config" / "paper-bf16.yaml", methods_dir=root / "methods"
    )
    assert paper["performance"]["bf16"] is False and paper["performance"]["tf32"] is False
    assert fast["performance"]["bf16"] is True and fast["performance"]["tf32"] is True
    assert paper["run_name"] == "paper" and fast["run_name"] == "paper-bf16"
    differ = {k for k in paper.keys() | fast.keys() if paper.get(k) != fast.get(k)}
    assert differ == {"run_name", "performance"}
    assert {k for k in paper["performance"] if paper["performance"][k] != fast["performance"][k]} == {"bf16", "tf32"}
    assert "not yet measured" in (root / "config" / "paper-bf16.yaml").read_text().lower()
