"""Instruments: step clocks, UNet row counters, host-device synchronisation counters, FLOP counting and the chips'
bf16 peaks. None of them adds a host-device synchronisation inside a timed loop."""

from __future__ import annotations

import contextlib
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

from .common import div

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's datasheets (which quote the
# 2:4-sparse figure, twice these). Matched in order against torch.cuda.get_device_name().
BF16_DENSE_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("GH200", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
)
PEAK_SOURCE = (
    "NVIDIA datasheet dense bf16 tensor-core peak (half the quoted sparse figure), matched by device "
    "name; H100 SXM and H200 989.4 TFLOP/s, H100 PCIe 756, A100 312. An assumption: boost clocks "
    "and the SXM power limit; the measured bf16 matmul rate is reported beside it."
)


def bf16_peak_tflops(device: torch.device, name: str) -> tuple[float | None, str]:
    """(dense bf16 peak of the chip, source or the reason it is null)."""
    if device.type != "cuda":
        return None, "no CUDA device: a CPU has no bf16 tensor-core peak to compare with"
    for key, value in BF16_DENSE_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return value, f"{PEAK_SOURCE} (matched '{key}')"
    return None, (
        f"device '{name}' is not in the peak table (unlearnbench/benchmark/instruments.py BF16_DENSE_PEAK_TFLOPS)"
    )


def measured_matmul_tflops(device: torch.device) -> float | None:
    """bf16 8192^3 matmul rate on random data (the practical ceiling the UNet is compared with)."""
    if device.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / 10
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / seconds / 1e12


def count_flops(fn) -> int:
    """FLOPs (2 per multiply-add) of the matmuls, convolutions and attention that fn runs, backward included."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------- step clock
class StepClock:
    """Marks at loop-step boundaries: CUDA events on GPU (recorded, never waited on inside the loop),
    perf_counter on CPU. `loops` holds (desc, marks) per instrumented loop."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.loops: list[tuple[str, list]] = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def new_loop(self, desc: str) -> list:
        marks: list = []
        self.loops.append((desc, marks))
        return marks

    def wrap(self, iterable, desc: str):
        marks = self.new_loop(desc)
        for item in iterable:
            marks.append(self.mark())
            yield item
        marks.append(self.mark())

    def durations(self, marks: list) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(marks, marks[1:])]
        return [b - a for a, b in zip(marks, marks[1:])]

    def find(self, n_steps: int, desc: str | None = None) -> list[float] | None:
        """Durations of the last instrumented loop with n_steps steps (and the given desc, if any)."""
        for name, marks in reversed(self.loops):
            if len(marks) == n_steps + 1 and (desc is None or name == desc):
                return self.durations(marks)
        return None


class RowCounter:
    """Counts the UNet rows (images) each forward call processes, split by whether autograd records it
    (a training forward, followed by a backward in every method here) or not (a target or sampler pass).
    A forward pre-hook: no device work, no synchronisation."""

    def __init__(self):
        self.grad = 0
        self.no_grad = 0

    def hook(self, module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        if torch.is_grad_enabled():
            self.grad += int(x.shape[0])
        else:
            self.no_grad += int(x.shape[0])

    def attach(self, model):
        model.register_forward_pre_hook(self.hook, with_kwargs=True)
        return model


# ---------------------------------------------------------------------------- host-device synchronisations
SYNC_WARNING = "called a synchronizing CUDA operation"  # torch's text under set_sync_debug_mode("warn")


def count_sync_warnings(fn) -> int:
    """Run fn(); count the synchronisation warnings it raised (other warnings are dropped)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return sum(SYNC_WARNING in str(w.message) for w in caught)


@contextlib.contextmanager
def sync_debug_mode():
    """torch.cuda.set_sync_debug_mode("warn") for the block: torch warns at every operation that makes
    the host wait for the GPU (.item(), a copy from pageable memory or to the host, nonzero, ...)."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class SyncCounter:
    """Host-device synchronisations per loop step, counted by torch's sync debug mode on chosen steps.

    The warm-up steps after the first are watched, not the timed ones (the check costs host time). A
    synchronisation inside a loop stops the host from queueing work ahead of the GPU.
    """

    HOW = "torch.cuda.set_sync_debug_mode('warn') on the warm-up steps after the first; warnings counted"

    def __init__(self, device: torch.device, watch_steps=()):
        self.watch_steps = set(watch_steps)
        self.count = self.watched = 0
        self.null_reason = None
        if device.type != "cuda":
            self.null_reason = "no CUDA device: there is no host-device synchronisation to count on CPU"
        elif not self.watch_steps:
            self.null_reason = "no step to watch: needs --warmup >= 2 (warm-up steps after the first are watched)"
        else:
            probe = torch.zeros(1, device=device)
            if self.count_in(lambda: probe.item()) < 1:  # the counter must see a known synchronisation
                self.null_reason = "torch's sync debug mode reported nothing for .item(): cannot count here"

    @staticmethod
    def count_in(fn) -> int:
        with sync_debug_mode():
            return count_sync_warnings(fn)

    def step(self, i: int, fn) -> None:
        if self.null_reason is None and i in self.watch_steps:
            self.count += self.count_in(lambda: fn(i))
            self.watched += 1
        else:
            fn(i)

    def result(self) -> dict:
        return {
            "per_step": div(self.count, self.watched) if self.watched else None,
            "steps_watched": self.watched,
            "how": self.HOW,
            "null_reason": None if self.watched else self.null_reason,
        }
