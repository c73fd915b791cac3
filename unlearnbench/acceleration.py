"""GPU speed switches of config `performance` that are not set elsewhere: torch.compile, in one place.

The other switches live where they act: `training.setup_runtime` (TF32, cuDNN autotuning when
`deterministic: false`), `runtime.autocast` and `sample(autocast_dtype=...)` (bf16 autocast),
`training.prepare_model` (channels_last). docs/performance.md describes all of them.

`maybe_compile(model, performance, device)` compiles the model's forward IN PLACE (`nn.Module.compile`),
so the object, its type, `named_parameters()` names, `state_dict()` keys and `save_pretrained` stay
exactly as without compilation: SA's Fisher/EWC dicts and SalUn's masks, which are keyed by
parameter name, keep matching. `copy.deepcopy` of a compiled module (e.g. `make_ema`) gives an
eager copy (`nn.Module.__getstate__` drops the compiled forward), which is correct, only not compiled.

Compilation is lazy: the first forward of each new input shape compiles (tens of seconds for the
paper UNet), so inside a timed unlearning loop it counts towards RTE. `dynamic=False` makes each
batch shape its own static graph instead of a slower dynamic-shape one; a loop has one or two shapes.
"""

from __future__ import annotations

import torch

from .settings import Performance, Runtime

# Passed to torch.compile. mode=None is inductor's default (no CUDA graphs, no autotuning sweep:
# "max-autotune" compiles for many minutes, longer than a 1,000-step unlearning run takes).
COMPILE_KWARGS = {"dynamic": False}


def compiles(performance: Performance, device, *, sampling: bool = False) -> bool:
    """Whether a model prepared for this job is compiled: `compile` everywhere, `compile_sampling` only where the
    model just samples (the evaluation sets, whose cost is not RTE); never off CUDA."""
    return torch.device(device).type == "cuda" and (performance.compile or (sampling and performance.compile_sampling))


def is_compiled(model: torch.nn.Module) -> bool:
    return getattr(model, "_compiled_call_impl", None) is not None


def maybe_compile(
    model: torch.nn.Module,
    performance: Performance,
    device,
    *,
    force: bool = False,
    sampling: bool = False,
    **compile_kwargs,
):
    """Compile `model`'s forward in place when `compiles(performance, device, sampling=sampling)`.

    Returns the same object (so `model = maybe_compile(model, ...)` and a bare call both work).
    No effect on CPU, like every `performance` switch, unless `force=True` (tests: check that a
    compiled model computes what the eager one does, e.g. with `backend="aot_eager"`).
    Idempotent: a model that is already compiled is returned untouched.
    """
    if not (force or compiles(performance, device, sampling=sampling)):
        return model
    if is_compiled(model):
        return model
    model.compile(**{**COMPILE_KWARGS, **compile_kwargs})
    return model


def effective_switches(runtime: Runtime, device, *, sampling: bool = False) -> dict:
    """What actually applies on this device (for reports): every switch is off on CPU. `sampling`: for a job that
    only samples (compile_sampling counts there)."""
    device = torch.device(device)
    perf = runtime.performance
    on_gpu = device.type == "cuda"
    return {
        "bf16_autocast": perf.bf16 and on_gpu,
        "tf32": perf.tf32 and on_gpu,
        "channels_last": perf.channels_last and on_gpu,
        "compile": compiles(perf, device, sampling=sampling),
        "deterministic": runtime.deterministic,
        "cudnn_benchmark": on_gpu and not runtime.deterministic,
    }


def switches_that_ran(runtime: Runtime, device, used_bf16: bool) -> dict:
    """effective_switches, less bf16 autocast where the job's code never entered it (runtime.bf16_uses): a method
    whose loop is not wrapped in ctx.autocast() ran fp32, and its cost must not be labelled bf16."""
    switches = effective_switches(runtime, device)
    return {**switches, "bf16_autocast": switches["bf16_autocast"] and used_bf16}


def switches_label(switches: dict) -> str:
    """The speed switches in effect as one report cell, e.g. 'bf16_autocast+tf32+channels_last', or 'none'."""
    return "+".join(name for name, on in switches.items() if on and name != "deterministic") or "none"
