"""Cost of one stage (an unlearning loop or a prior): RTE and peak memory.

RTE is the wall-clock time of the unlearning itself (device synchronised before each clock
read), so only code inside `CostMeter.timed()` counts. Peak GPU memory comes from NVML,
sampled in a background thread: the process's own `usedGpuMemory`, or, where containers or
MIG hide per-process figures, the device's used memory above the baseline read on entry.
torch's allocator peaks and the host RSS peak are recorded alongside. GB = 1e9 bytes.

    with CostMeter(device) as meter:
        model = load(...)            # not timed
        with meter.timed():
            unlearn(model)           # RTE
    checkpoints.write_json(job_dir / "cost.json", meter.result())
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import threading
import time
from typing import Any, Iterator

import psutil
import torch

from unlearnbench.errors import UserError

try:
    import resource
except ImportError:  # Windows
    resource = None

GB = 1e9
UNITS = {"time": "s/min", "memory": "GB = 1e9 bytes"}
SOURCE_PROCESS = "nvml_process"
SOURCE_DEVICE = "nvml_device_above_baseline"
_NOT_AVAILABLE = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE as an unsigned long long


def _gb(n_bytes: float | None) -> float | None:
    return None if n_bytes is None else n_bytes / GB


def device_name(device: str | torch.device) -> str:
    """Human-readable name of the hardware a stage ran on, for provenance."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def _ru_maxrss_bytes() -> int | None:
    """Lifetime peak RSS of this process (KiB on Linux, bytes on macOS)."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class CostMeter:
    """Measures RTE and peak memory of one stage; `result()` is the cost.json record.

    device: the torch device the stage runs on. nvml: a pynvml-like module (default: `import
    pynvml` on entry). gpu_index: NVML index of the GPU to sample; by default the GPU of a
    CUDA `device` (none for other devices). Giving it with a CPU device samples NVML without
    torch, which is how the NVML paths are tested on machines without a GPU.
    """

    def __init__(
        self,
        device: str | torch.device,
        sample_interval_s: float = 0.02,
        *,
        nvml: Any = None,
        gpu_index: int | None = None,
    ):
        device = torch.device(device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError(
                    f"device {device} requested but torch sees no CUDA device; use device: cpu or run on a GPU node"
                )
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.sample_interval_s = sample_interval_s
        self.rte_s = 0.0
        self._nvml = nvml
        self._gpu_index = gpu_index
        self._handle = None  # NVML handle while sampling
        self._nvml_open = False  # nvmlInit succeeded, so nvmlShutdown is owed
        self._nvml_reason: str | None = f"device is {device.type}"
        self._baseline: int | None = None
        self._process_peak: int | None = None
        self._device_peak: int | None = None
        self._rss_peak: int | None = None
        self._ru_entry: int | None = None
        self._ru_exit: int | None = None
        self._torch_peaks: tuple[int, int] | None = None
        self._timing = False
        self.timed_blocks = 0  # how many timed() blocks ran: a stage that timed none has no RTE to report
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _is_cuda(self) -> bool:
        return self.device.type == "cuda"

    # -- context ---------------------------------------------------------------------------
    def __enter__(self) -> "CostMeter":
        if self._is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        if self._is_cuda or self._gpu_index is not None:
            self._start_nvml()
        self._ru_entry = _ru_maxrss_bytes()
        self._sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="CostMeter-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sample()  # the last word, after the loop's final allocations
        self._ru_exit = _ru_maxrss_bytes()
        if self._is_cuda:
            torch.cuda.synchronize(self.device)
            self._torch_peaks = (
                torch.cuda.max_memory_allocated(self.device),
                torch.cuda.max_memory_reserved(self.device),
            )
        self._handle = None
        if self._nvml_open:
            self._nvml_open = False
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Adds the wall-clock time of the block to RTE; may be entered several times."""
        if self._timing:
            raise RuntimeError("CostMeter.timed() blocks must not be nested")
        self._timing = True
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.rte_s += time.perf_counter() - start
            self.timed_blocks += 1
            self._timing = False

    def _sync(self) -> None:
        if self._is_cuda:
            torch.cuda.synchronize(self.device)

    # -- NVML ------------------------------------------------------------------------------
    def _start_nvml(self) -> None:
        """Init NVML, find the handle, read the baseline; on failure record why and go on."""
        if self._nvml is None:
            try:
                import pynvml  # here: optional (NVML bindings), and only on a GPU
            except ImportError:
                self._nvml_reason = "pynvml not installed"
                return
            self._nvml = pynvml
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except Exception as e:
            self._nvml_reason = f"NVML init failed: {e}"
            return
        self._nvml_open = True
        try:
            handle = self._find_handle(nvml)
            self._baseline = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
        except Exception as e:
            self._nvml_reason = f"NVML device lookup failed: {e}"
            return
        self._handle = handle
        self._nvml_reason = None

    def _find_handle(self, nvml: Any) -> Any:
        """NVML handle of the sampled GPU: by torch's UUID (survives CUDA_VISIBLE_DEVICES),
        else by index, mapped through CUDA_VISIBLE_DEVICES when that lists indices."""
        if self._gpu_index is not None:
            return nvml.nvmlDeviceGetHandleByIndex(self._gpu_index)
        index = self.device.index
        with contextlib.suppress(Exception):
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            for candidate in (uuid, "GPU-" + uuid):
                with contextlib.suppress(Exception):
                    return nvml.nvmlDeviceGetHandleByUUID(candidate)
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
        if index < len(visible) and visible[index].isdigit():
            index = int(visible[index])
        return nvml.nvmlDeviceGetHandleByIndex(index)

    def _sample_nvml(self) -> None:
        nvml, handle = self._nvml, self._handle
        try:
            processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception:  # not supported (e.g. MIG): use the device figure
            processes = []
        own = [
            p.usedGpuMemory
            for p in processes
            if p.pid == os.getpid() and p.usedGpuMemory is not None and p.usedGpuMemory != _NOT_AVAILABLE
        ]
        if own:
            self._process_peak = max(self._process_peak or 0, sum(own))
        else:
            above = max(0, int(nvml.nvmlDeviceGetMemoryInfo(handle).used) - self._baseline)
            self._device_peak = max(self._device_peak or 0, above)

    # -- sampling --------------------------------------------------------------------------
    def _sample(self) -> None:
        """One reading of everything; never raises, so the sampler cannot crash the run."""
        if self._handle is not None:
            try:
                self._sample_nvml()
            except Exception as e:
                self._handle = None  # a broken reading would make the peak a guess
                self._nvml_reason = f"NVML sampling failed: {e}"
                self._process_peak = self._device_peak = None
        with contextlib.suppress(Exception):
            rss = psutil.Process().memory_info().rss
            self._rss_peak = max(self._rss_peak or 0, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.sample_interval_s):
            try:
                self._sample()
            except BaseException:  # belt and braces: a sampler must never kill the run
                pass

    # -- result ----------------------------------------------------------------------------
    def _gpu_peak(self) -> tuple[int | None, str | None, str | None]:
        """(bytes, source, null reason): the process's own figure wins over the device's."""
        if self._nvml_reason is not None:
            return None, None, self._nvml_reason
        if self._process_peak is not None:
            return self._process_peak, SOURCE_PROCESS, None
        if self._device_peak is not None:
            return self._device_peak, SOURCE_DEVICE, None
        return None, None, "no NVML reading for this process or device"

    def _host_peak(self) -> int | None:
        """Sampled RSS peak; ru_maxrss catches spikes between samples, but is the lifetime
        peak, so it counts only when it grew during the stage."""
        peak = self._rss_peak
        ru_exit = self._ru_exit if self._ru_exit is not None else _ru_maxrss_bytes()
        if ru_exit is not None and self._ru_entry is not None and ru_exit > self._ru_entry:
            peak = max(peak or 0, ru_exit)
        return peak

    def result(self) -> dict:
        """The cost.json record (docs/architecture.md); nulls, never zeros, for the unknown."""
        gpu_bytes, source, reason = self._gpu_peak()
        allocated, reserved = self._torch_peaks or (None, None)
        if self._is_cuda and self._torch_peaks is None:  # asked for while still running
            allocated = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
        return {
            "rte_s": self.rte_s,
            "rte_min": self.rte_s / 60.0,
            "gpu_peak_gb": _gb(gpu_bytes),
            "gpu_peak_source": source,
            "gpu_null_reason": reason,
            "torch_peak_allocated_gb": _gb(allocated),
            "torch_peak_reserved_gb": _gb(reserved),
            "host_rss_peak_gb": _gb(self._host_peak()),
            "device": str(self.device),
            "device_name": device_name(self.device),
            "units": dict(UNITS),
        }
