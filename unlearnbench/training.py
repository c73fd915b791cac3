"""Training loop pieces shared by the base model, the evaluator and every unlearning method."""

from __future__ import annotations

import copy
import os
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .acceleration import maybe_compile
from .checkpoints import load_state, require_finite, save_state
from .diffusion import epsilon_loss
from .errors import UserError

# These live in runtime.py (the sampler in diffusion.py needs them too, and training imports diffusion); re-exported
# here (`x as x` marks a re-export) for the stages, the benchmark, tests and method files that import them from training.
from .runtime import autocast as autocast
from .runtime import autocast_dtype as autocast_dtype
from .runtime import bf16_uses as bf16_uses
from .runtime import note_bf16_use as note_bf16_use
from .runtime import to_device
from .settings import Performance, Runtime


# ---------------------------------------------------------------- job setup (device copies, bf16: runtime.py)
def resolve_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise UserError(
            "the config asks for device: cuda, but torch sees no CUDA device "
            "(torch.cuda.is_available() is False). Set device: auto or cpu, or install a CUDA build of torch."
        )
    return torch.device("cpu")


def setup_runtime(runtime: Runtime, threads: int | None = None) -> torch.device:
    """Device, thread count, determinism and the fast-math switches of config `performance`."""
    threads = threads or runtime.threads or int(os.environ.get("UNLEARNBENCH_THREADS", 0)) or 1
    torch.set_num_threads(threads)
    device = resolve_device(runtime.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = runtime.performance.tf32
        torch.backends.cudnn.allow_tf32 = runtime.performance.tf32
    deterministic = runtime.deterministic
    if device.type == "cuda":
        # On CPU every kernel the suite uses is deterministic (the workflow test checks that two runs agree);
        # on CUDA this picks deterministic ones and warns about any that has none. See docs/performance.md.
        # Not called on CPU: it imports torch._inductor, ~3 s of every short job on a slow core.
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    return device


def prepare_model(model, performance: Performance, device: torch.device, *, sampling: bool = False):
    """Move to the device with the config's layout and compile switches (no-ops on CPU); `sampling`: the model
    only samples (performance.compile_sampling applies)."""
    model = model.to(device)
    if device.type == "cuda" and performance.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return maybe_compile(model, performance, device, sampling=sampling)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- optimisation
@torch.no_grad()
def ema_update(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * theta, for every parameter; buffers copied."""
    torch._foreach_lerp_(list(ema_model.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for e, b in zip(ema_model.buffers(), model.buffers()):
        e.copy_(b)


def make_ema(model: torch.nn.Module) -> torch.nn.Module:
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    return ema


def optimizer_step(
    optimizer, loss: torch.Tensor, params, grad_clip: float | None, grad_mask: dict | None = None
) -> None:
    """Backward, clip the full gradient, optionally multiply by a mask (SalUn: {parameter: mask of its shape}), step.
    The clip and the mask are multi-tensor kernels (a few launches, not one per parameter tensor)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in params if p.grad is not None]
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    if grad_mask is not None:
        masked = [p for p in params if p in grad_mask]
        if masked:
            torch._foreach_mul_([p.grad for p in masked], [grad_mask[p] for p in masked])
    optimizer.step()


class BatchStream:
    """Endless shuffled mini-batches of (images in [-1, 1], labels) kept on the device; seeded.

    Each epoch's order (and, with hflip, which images are flipped) is drawn on the CPU generator in one go
    and copied with `to_device`: a batch is then gathered on the device with no host round trip.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        device: torch.device,
        hflip: bool = False,
    ):
        if len(x) == 0:
            raise UserError("no training images for this selection of classes")
        self.x, self.y = x.to(device), y.to(device)  # once: a plain copy (no pinned dataset-sized block kept)
        self.batch_size, self.generator, self.hflip = batch_size, generator, hflip
        self.order, self.flip, self.pos = torch.empty(0, dtype=torch.long), None, 0

    def __iter__(self):
        return self

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "flip": self.flip, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.flip, self.pos = state["order"], state.get("flip"), state["pos"]
        if self.hflip and self.flip is None:  # saved before flips were drawn per epoch: go on with a new epoch
            self.pos = len(self.order)

    def _new_epoch(self) -> None:
        order = torch.randperm(len(self.x), generator=self.generator)
        self.order = to_device(order, self.x.device)
        if self.hflip:
            self.flip = to_device(torch.rand(len(self.x), generator=self.generator) < 0.5, self.x.device)
        self.pos = 0

    def __next__(self):
        parts = []
        need = self.batch_size
        while need > 0:
            if self.pos >= len(self.order):
                self._new_epoch()
            part = slice(self.pos, self.pos + need)
            parts.append((self.order[part], self.flip[part] if self.hflip else None))
            self.pos += len(parts[-1][0])
            need -= len(parts[-1][0])
        idx = torch.cat([i for i, _ in parts])
        x, y = self.x[idx], self.y[idx]
        if self.hflip:
            flip = torch.cat([f for _, f in parts])
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        return x, y


def progress(iterable, desc: str, total: int | None = None):
    """tqdm that stays quiet in tests (UNLEARNBENCH_QUIET=1) and updates sparsely in logs."""
    return tqdm(iterable, desc=desc, total=total, mininterval=5, disable=os.environ.get("UNLEARNBENCH_QUIET") == "1")


def run_in_chunks(start: int, steps: int, every: int, step_fn, save, *, desc: str, meter=None) -> None:
    """step_fn(i) for start <= i < steps, timed by `meter` (the RTE), with save(step) after every `every` steps
    (0: never) outside the timer: the loop of resumable_steps."""
    bar = progress(None, desc, total=steps - start)  # counted by update(): a log then ends at steps/steps
    step = start
    try:
        while step < steps:
            end = min(steps, step + every) if every else steps
            with meter.timed() if meter else nullcontext():
                for i in range(step, end):
                    step_fn(i)
                    bar.update()
            step = end
            if every and step < steps:
                save(step)
    finally:  # closed before an error is printed: else the bar is redrawn after it, as a log's last line
        bar.close()


def global_rng_state() -> dict:
    """torch's global generators (CPU, and CUDA where used): dropout and any torch.rand without a generator."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resumable_steps(
    steps: int,
    step_fn,
    *,
    desc: str,
    meter=None,
    every: int = 0,
    state_path=None,
    state_key=None,
    modules: dict | None = None,
    generator: torch.Generator | None = None,
    streams=(),
    extra: dict | None = None,
    before_save=None,
) -> None:
    """step_fn(i) for i < steps, timed by `meter` (the RTE); the loop of base training and of ctx.run_steps.

    With `every` and `state_path`, every `every` steps (outside the timer; after `before_save(step)`, which may
    refuse non-finite weights) it saves the state_dict of each of `modules`, `generator`, torch's global RNG
    (dropout), the batch `streams`, the plain values of `extra` (updated in place on resume) and the RTE so far,
    under `state_key`; a restarted run of the same key resumes from the last save and ends as an uninterrupted
    run would."""
    modules = modules or {}
    start = 0
    saved = load_state(state_path, state_key) if every and state_path else None
    if saved is not None:
        for name, module in modules.items():
            module.load_state_dict(saved["modules"][name])
        if generator is not None:
            generator.set_state(saved["generator"])
        set_global_rng_state(saved["global_rng"])
        for stream, state in zip(streams, saved["streams"]):
            stream.load_state_dict(state)  # the epoch's order and position, not only its generator
        if extra is not None:
            extra.update(saved["extra"])
        start = saved["step"]
        if meter:
            meter.rte_s += saved["rte_s"]
        print(f"resuming {desc} from step {start} ({state_path})")

    def save(step):
        if before_save:
            before_save(step)
        save_state(
            state_path,
            {
                "step": step,
                "rte_s": meter.rte_s if meter else 0.0,
                "generator": generator.get_state() if generator is not None else None,
                "global_rng": global_rng_state(),
                "modules": {name: m.state_dict() for name, m in modules.items()},
                "streams": [s.state_dict() for s in streams],
                "extra": dict(extra or {}),
            },
            state_key,
        )

    run_in_chunks(start, steps, every if state_path else 0, step_fn, save, desc=desc, meter=meter)


# ---------------------------------------------------------------- base model
_DIVERGED_BASE = "Lower 'base.lr' or set 'base.grad_clip' (with 'performance.bf16' on, try it off); nothing was saved."


def train_diffusion(
    model,
    schedule,
    stream: BatchStream,
    *,
    steps: int,
    lr: float,
    grad_clip: float | None,
    ema_decay: float,
    cond_dropout: float,
    reduction: str,
    generator: torch.Generator,
    warmup_steps: int = 0,
    state_path: Path | None = None,
    checkpoint_every: int = 0,
    state_key: str | None = None,
    amp=nullcontext,
    meter=None,
):
    """Train the class-conditional DDPM; resumes from `state_path` when a checkpoint of the same `state_key`
    (what defines the run) is there. Stops with DivergedError when the weights are no longer finite."""
    ema = make_ema(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup_steps) if warmup_steps else 1.0
    )
    log = {"losses": []}  # (step, loss) every 100 steps, saved with the state: a resumed run keeps the earlier ones
    model.train()

    def train_step(i):
        x0, y = next(stream)
        with amp():
            loss = epsilon_loss(
                model, schedule, x0, y, reduction=reduction, cond_dropout=cond_dropout, generator=generator
            )
        optimizer_step(optimizer, loss, model.parameters(), grad_clip)
        sched.step()
        ema_update(ema, model, ema_decay)
        if i % 100 == 0:
            log["losses"].append((i, loss.detach()))  # read at saves and at the end: .item() would wait for the GPU

    def before_save(step):
        require_finite(model, f"base training diverged by step {step}", _DIVERGED_BASE)
        log["losses"] = [(i, float(value)) for i, value in log["losses"]]

    resumable_steps(
        steps,
        train_step,
        desc="base training",
        meter=meter,
        every=checkpoint_every if state_path else 0,
        state_path=state_path,
        state_key=state_key,
        modules={"model": model, "ema": ema, "optimizer": optimizer, "scheduler": sched},
        generator=generator,
        streams=[stream],
        extra=log,
        before_save=before_save,
    )
    require_finite(model, "base training ended with non-finite weights", _DIVERGED_BASE)
    require_finite(ema, "base training's EMA weights are not finite", _DIVERGED_BASE)
    return model, ema, [(step, float(loss)) for step, loss in log["losses"]]


# ---------------------------------------------------------------- evaluator
def train_classifier(
    model,
    train_x,
    train_y,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    device: torch.device,
    hflip: bool = False,
):
    """Cross-entropy training with Adam and a cosine schedule; returns the model in eval mode."""
    model.to(device).train()
    stream = BatchStream(train_x, train_y, batch_size, generator, device, hflip)
    steps = epochs * max(1, len(train_x) // batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in progress(range(steps), "evaluator training"):
        x, y = next(stream)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer_step(optimizer, loss, model.parameters(), None)
        sched.step()
    return model.eval()


@torch.no_grad()
def classifier_accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i : i + batch_size].to(device)).argmax(1).cpu() == y[i : i + batch_size]).sum().item()
    return 100.0 * correct / len(x)
