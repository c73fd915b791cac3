"""Cost benchmark: each method's REAL unlearning code on synthetic data, timed per step and projected.

    unlearnbench benchmark                                   # CPU: tiny preset, fp32
    unlearnbench benchmark --preset paper --precision fp32 bf16 --steps 40 --out benchmark.json   # GPU

It names no method: it runs the config's `methods` (or --methods), each from its file methods/<name>.py, and
compares them with the config's `reference_method`, as the workflow does.

What it runs (no dataset and no trained model needed: costs do not depend on the weights' values):
a randomly initialised UNet of the preset (`paper`: the 35.7M-parameter CIFAR-10 UNet on 32x32x3;
`tiny`: 8x8x1) saved to a temporary folder as the "original" model, synthetic uint8 images of 10
classes, and a `RunContext` built by `stages._context`, exactly as `unlearnbench unlearn` builds it.

Measured, per precision (fp32 = bf16 autocast and TF32 off; tf32; bf16 = bf16 autocast + TF32; channels_last,
compile and determinism as the config sets them in every row: paper.yaml has channels_last on, the rest off):
- each method's unlearning, `warmup + steps` steps with its hyper-parameters as published (the method file's
  DEFAULTS, or --config's method_params) and batch sizes; every step is timed (CUDA events at the
  step boundaries on GPU, so no host synchronisation is added to the loop); the steady-state time
  per step is the median over the steps after the warm-up, and the projected RTE is that times the
  steps of the method's published DEFAULTS (the paper's scale) plus the measured time spent in the
  timed block outside the steps. The projected job RTE is what a real job's timed loop pays: its
  first (cold) step (cuDNN autotuning, torch.compile) and the other warm-up steps at their measured
  times (at least the median each, together), its remaining steps at the steady-state median, plus the
  same time outside the steps. Peak memory: `CostMeter` (NVML process/device peak, torch
  allocator peaks, host RSS), over the whole run as in a real job.
- each method's priors (its file's PRIORS, in the order they require each other), the real prior code on small
  slices: runs of two sizes (the Prior's bench_params), fitted as fixed + marginal x the Prior's units of work
  (Prior.work) and projected to the paper's size (Prior.paper_work); a prior that declares no work is timed and
  reported without a projection.
- the evaluation sampler (`diffusion.sample`, guided, as `stages.generate_samples` calls it):
  image-steps per second (one image-step = one image advanced one step = 2 UNet rows with
  guidance), and the bare guided UNet forward for comparison; FLOPs per step from
  torch.utils.flop_counter, achieved TFLOP/s and the fraction of the chip's dense bf16 peak.
- on GPU, a switch ablation on the reference method and the sampler (channels_last off, deterministic on,
  torch.compile on) against the bf16 row.

The JSON report is written atomically after every section (a killed run leaves the sections done);
a table goes to stdout; `write_markdown` / scripts/benchmark_report.py turn the JSON into markdown.
Nothing is estimated where it can be measured, and a number that cannot be had is null with a reason.

Modules: common (schema, JSON, statistics), instruments (clocks, counters, FLOPs, peaks), workload (timed contexts,
synthetic data, config variants), harness (the measurements), summary (ratios to the reference), render (tables,
merging), driver (main).
"""

from .common import NOISY_FIT, SCHEMA, TIMING_REPEATS, write_json_atomic
from .driver import (
    SWITCH_VARIANTS,
    ReportSink,
    build_config,
    chosen_methods,
    main,
    measure_precision,
    measure_switches,
    run_order,
    sampler_numerics,
    switch_ablation_after,
)
from .harness import PAPER_EVAL, PROFILES, Bench
from .instruments import (
    BF16_DENSE_PEAK_TFLOPS,
    SYNC_WARNING,
    RowCounter,
    StepClock,
    SyncCounter,
    bf16_peak_tflops,
    count_flops,
    count_sync_warnings,
    measured_matmul_tflops,
    sync_debug_mode,
)
from .render import (
    METHOD_HEADER,
    NUMERICS_HEADER,
    PRIOR_HEADER,
    RATIO_HEADER,
    SAMPLER_HEADER,
    SOURCE_HEADER,
    _fmt,
    default_markdown_path,
    merge_reports,
    method_rows,
    numerics_rows,
    print_report,
    prior_rows,
    ratio_rows,
    render_markdown,
    sampler_rows,
    source_rows,
    switch_header,
    switch_rows,
    write_markdown,
)
from .summary import paper_means, ratio_quantities, report_reference, summarize
from .workload import (
    PRECISIONS,
    BenchContext,
    make_context,
    priors_in_order,
    published_steps,
    save_original,
    synthetic_data,
    variant_config,
)

__all__ = [
    "BF16_DENSE_PEAK_TFLOPS",
    "METHOD_HEADER",
    "NOISY_FIT",
    "NUMERICS_HEADER",
    "PAPER_EVAL",
    "PRECISIONS",
    "PRIOR_HEADER",
    "PROFILES",
    "RATIO_HEADER",
    "SAMPLER_HEADER",
    "SCHEMA",
    "SOURCE_HEADER",
    "SWITCH_VARIANTS",
    "SYNC_WARNING",
    "TIMING_REPEATS",
    "Bench",
    "BenchContext",
    "ReportSink",
    "RowCounter",
    "StepClock",
    "SyncCounter",
    "_fmt",
    "bf16_peak_tflops",
    "build_config",
    "chosen_methods",
    "count_flops",
    "count_sync_warnings",
    "default_markdown_path",
    "main",
    "make_context",
    "measure_precision",
    "measure_switches",
    "measured_matmul_tflops",
    "merge_reports",
    "method_rows",
    "numerics_rows",
    "paper_means",
    "print_report",
    "prior_rows",
    "priors_in_order",
    "published_steps",
    "ratio_quantities",
    "ratio_rows",
    "render_markdown",
    "report_reference",
    "run_order",
    "sampler_numerics",
    "sampler_rows",
    "save_original",
    "source_rows",
    "summarize",
    "switch_ablation_after",
    "switch_header",
    "switch_rows",
    "sync_debug_mode",
    "synthetic_data",
    "variant_config",
    "write_json_atomic",
    "write_markdown",
]
