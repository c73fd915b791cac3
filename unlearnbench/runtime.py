"""Device copies and bf16 autocast, shared by the sampler (diffusion.py) and the training loops (training.py).

It imports neither of them (runtime <- diffusion <- training), so both can use it at module level. The job's
setup (device, threads, determinism, compile, seeds) stays in training.py.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .settings import Performance


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """Copy a host tensor to the GPU inside a loop without making the host wait.

    From pageable memory a host-to-GPU copy first waits for the GPU's queued work; from pinned memory with
    non_blocking it is queued like a kernel (the caching host allocator keeps the block until it has run,
    then caches it for reuse: one-time copies of whole datasets use a plain `.to`). Elsewhere a plain `.to`.
    """
    device = torch.device(device)
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def autocast_dtype(performance: Performance, device: torch.device):
    """torch.bfloat16 when performance.bf16 is on and the device is CUDA, else None (fp32)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" and performance.bf16 else None


_bf16_uses = 0  # bf16 autocasts entered in this process (each job is one): what ran, not what the config allows


def bf16_uses() -> int:
    """How many times the suite's bf16 autocast was entered so far (autocast(), the sampler): a cost record says
    bf16 only for a job whose code used it (a method file that never wraps its passes runs fp32)."""
    return _bf16_uses


def note_bf16_use() -> None:
    global _bf16_uses
    _bf16_uses += 1


def autocast(performance: Performance, device: torch.device):
    """bf16 autocast when performance.bf16 is on and the device is CUDA; otherwise a no-op."""
    dtype = autocast_dtype(performance, device)
    if dtype is None:
        return nullcontext()
    note_bf16_use()
    return torch.autocast("cuda", dtype=dtype)
