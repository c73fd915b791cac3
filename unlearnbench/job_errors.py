"""The last line of a failed job's log: what ran out or could not be written, and which setting or file to change
(`unlearnbench.cli.main` prints it after the traceback, so a user reading the log's end knows what to do).

torch and the suite's torch-using modules are imported where a failure needs them: `publish`, a job of its own,
imports this module too and needs no torch (1.7 s to import on 2 CPU cores)."""

from __future__ import annotations

import errno
import traceback
from pathlib import Path


def cannot_write(exc: BaseException) -> str | None:
    """The message for a result that could not be written for want of permission or a writable mount, else None."""
    if not (isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and exc.filename):
        return None
    return (
        f"cannot write {exc.filename} ({exc.strerror}): make its folder writable (or mount it read-write), or "
        "set another run_name; then rerun: only the failed jobs run again"
    )


def out_of_memory(exc: BaseException) -> str | None:
    """'GPU' or 'host' when `exc` is running out of that memory (torch's errors for it), else None."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return "GPU"
    text = str(exc)
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError)
        and ("can't allocate memory" in text or "not enough memory" in text or "DefaultCPUAllocator" in text)
    ):
        return "host"
    return None


def out_of_memory_advice(memory: str, exc: BaseException, args) -> str:
    """What ran out, and the config values of this job that set its size, largest first: what to lower."""
    from .config import size_settings

    what = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    try:
        from .stages import load_run_config

        settings = size_settings(load_run_config(args.config), getattr(args, "method", None))
        sizes = ", ".join(f"{key} = {value:,}" for key, value in settings[:8])
    except Exception:  # the advice must not hide the error: the config may be what is broken
        sizes = ""
    where = (
        f"the sizes in this job's config, largest first: {sizes}"
        if sizes
        else "the batch sizes (method_params.<method>.batch_size and the like, sampler.batch_size, base.batch_size, "
        "evaluator.batch_size) and image counts (evaluation.n_forget, ...)"
    )
    free = "free the GPU of other processes" if memory == "GPU" else "run on a machine with more memory"
    return (
        f"out of {memory} memory ({what}). The job's memory is set by {where}. Lower the largest in your "
        f"config overlay (or through --config), or {free}; then rerun: only the failed jobs run again"
    )


def unexpected_error(exc: BaseException) -> str:
    """One line after the traceback of an error that is no UserError: the method file's line it came from, if
    one of methods/ raised it (most often a bug there), else a suite bug to report."""
    from .method_api import methods_dir

    what = f"{type(exc).__name__}: {exc}".splitlines()[0]
    folder = methods_dir().resolve()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve().parent == folder]
    if frames:
        f = frames[-1]
        return (
            f"methods/{Path(f.filename).name} line {f.lineno} ({f.line}) raised {what}. Fix the method file "
            "(the traceback above shows the calls), then rerun: only the failed jobs run again"
        )
    return (
        f"unexpected {what} (traceback above). If no input of yours caused it, it is a bug of the suite: report "
        "it with this log"
    )
