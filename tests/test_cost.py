"""CostMeter: RTE covers only timed() blocks; NVML paths (per-process, device fallback,
failures) are exercised with a fake pynvml on a CPU device via `gpu_index`."""

import json
import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from unlearnbench.cost import CostMeter, device_name

KEYS = {
    "rte_s",
    "rte_min",
    "gpu_peak_gb",
    "gpu_peak_source",
    "gpu_null_reason",
    "torch_peak_allocated_gb",
    "torch_peak_reserved_gb",
    "host_rss_peak_gb",
    "device",
    "device_name",
    "units",
}


class FakeNVML:
    """Just enough of pynvml: one device whose used memory and process list tests set."""

    def __init__(self, used=1_000_000_000, processes=(), init_error=None):
        self.used = used
        self.processes = list(processes)
        self.init_error = init_error
        self.samples = 0
        self.shutdowns = 0
        self.sampled = threading.Event()

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index):
        assert index == 0
        return "handle0"

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self.samples += 1
        self.sampled.set()
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.processes]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=self.used, total=80_000_000_000, free=0)

    def wait_samples(self, n=2, timeout=5.0):
        """Block until the background sampler has read NVML n more times."""
        target, end = self.samples + n, time.monotonic() + timeout
        while self.samples < target and time.monotonic() < end:
            time.sleep(0.002)
        assert self.samples >= target, "sampler thread did not run"


def run_stage(fake, spike, relax):
    """A stage whose memory spikes and comes back down before exit: the peak must survive."""
    with CostMeter("cpu", sample_interval_s=0.005, nvml=fake, gpu_index=0) as meter:
        with meter.timed():
            spike(fake)
            fake.wait_samples()
            relax(fake)
    return meter.result()


def test_cpu_meter_nulls_and_rte(monkeypatch):
    import unlearnbench.cost as cost

    now = [100.0]  # a scripted clock: the blocks' lengths are exact, whatever else the machine runs
    clock = {k: getattr(time, k) for k in dir(time) if not k.startswith("_")}
    monkeypatch.setattr(cost, "time", SimpleNamespace(**{**clock, "perf_counter": lambda: now[0]}))

    def elapse(seconds):
        now[0] += seconds

    with CostMeter("cpu", sample_interval_s=0.01) as meter:
        elapse(7.0)  # setup: not RTE
        with meter.timed():
            elapse(0.1)
        elapse(3.0)  # between the blocks: not RTE either
        with meter.timed():
            elapse(0.05)
    r = meter.result()
    assert set(r) == KEYS
    assert r["rte_s"] == pytest.approx(0.15)
    assert r["rte_min"] == pytest.approx(r["rte_s"] / 60)
    assert r["gpu_peak_gb"] is None and r["gpu_peak_source"] is None
    assert r["gpu_null_reason"] == "device is cpu"
    assert r["torch_peak_allocated_gb"] is None and r["torch_peak_reserved_gb"] is None
    assert 0 < r["host_rss_peak_gb"] < 1e3
    assert r["device"] == "cpu" and r["device_name"] == device_name("cpu") != ""
    assert r["units"] == {"time": "s/min", "memory": "GB = 1e9 bytes"}
    json.loads(json.dumps(r, allow_nan=False))


def test_timed_not_nestable_and_exception_still_counts():
    with CostMeter("cpu") as meter:
        with pytest.raises(ValueError):
            with meter.timed():
                time.sleep(0.02)
                raise ValueError
        with pytest.raises(RuntimeError):
            with meter.timed(), meter.timed():
                pass
    assert meter.result()["rte_s"] >= 0.02


def test_nvml_process_figure():
    fake = FakeNVML(processes=[(12345, 7_000_000_000), (os.getpid(), 500_000_000)])

    def spike(f):
        f.processes[1] = (os.getpid(), 2_500_000_000)
        f.used += 2_000_000_000

    def relax(f):
        f.processes[1] = (os.getpid(), 600_000_000)
        f.used -= 2_000_000_000

    r = run_stage(fake, spike, relax)
    assert r["gpu_peak_source"] == "nvml_process"
    assert r["gpu_peak_gb"] == pytest.approx(2.5)
    assert r["gpu_null_reason"] is None
    assert r["torch_peak_allocated_gb"] is None  # no torch CUDA on a CPU device
    assert fake.shutdowns == 1
    json.dumps(r, allow_nan=False)


@pytest.mark.parametrize("hidden", ["none", "not_available", "pid_absent"])
def test_nvml_hidden_process_falls_back_to_device(hidden):
    own = {
        "none": [(os.getpid(), None)],
        "not_available": [(os.getpid(), 2**64 - 1)],
        "pid_absent": [(1, 9_000_000_000)],
    }[hidden]
    fake = FakeNVML(used=10_000_000_000, processes=own)

    def spike(f):
        f.used += 3_250_000_000

    def relax(f):
        f.used -= 3_000_000_000

    r = run_stage(fake, spike, relax)
    assert r["gpu_peak_source"] == "nvml_device_above_baseline"
    assert r["gpu_peak_gb"] == pytest.approx(3.25)
    assert r["gpu_null_reason"] is None


def test_nvml_init_failure_gives_null_with_reason():
    fake = FakeNVML(init_error=RuntimeError("Driver Not Loaded"))
    with CostMeter("cpu", nvml=fake, gpu_index=0) as meter:
        pass
    r = meter.result()
    assert r["gpu_peak_gb"] is None and r["gpu_peak_source"] is None
    assert r["gpu_null_reason"] == "NVML init failed: Driver Not Loaded"
    assert fake.shutdowns == 0


def test_sampler_error_is_recorded_not_raised():
    fake = FakeNVML()
    with CostMeter("cpu", sample_interval_s=0.005, nvml=fake, gpu_index=0) as meter:
        fake.wait_samples(1)

        def broken(handle):
            raise RuntimeError("GPU is lost")

        fake.nvmlDeviceGetMemoryInfo = broken
        time.sleep(0.03)
    r = meter.result()
    assert r["gpu_peak_gb"] is None
    assert r["gpu_null_reason"] == "NVML sampling failed: GPU is lost"
    assert fake.shutdowns == 1


def test_missing_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with CostMeter("cpu", gpu_index=0) as meter:
        pass
    r = meter.result()
    assert r["gpu_peak_gb"] is None
    assert r["gpu_null_reason"] == "pynvml not installed"


def test_sampler_thread_stops():
    def samplers():
        return [t for t in threading.enumerate() if t.name == "CostMeter-sampler"]

    with CostMeter("cpu", sample_interval_s=0.005):
        assert len(samplers()) == 1 and samplers()[0].daemon
    assert samplers() == []


def test_cost_record_written_atomically(tmp_path, monkeypatch):
    """The one JSON writer every stage uses for cost.json and the metric rows."""
    from unlearnbench import checkpoints

    with CostMeter("cpu") as meter:
        with meter.timed():
            pass
    path = tmp_path / "job" / "cost.json"
    checkpoints.write_json(path, meter.result())
    assert json.loads(path.read_text()) == meter.result()
    assert [p.name for p in path.parent.iterdir()] == ["cost.json"]

    # A failed write leaves the old file intact and no temporary file behind.
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.os, "replace", failing_replace)
    with pytest.raises(OSError):
        checkpoints.write_json(path, {"rte_s": 1.0})
    assert json.loads(path.read_text())["device"] == "cpu"
    assert [p.name for p in path.parent.iterdir()] == ["cost.json"]
    monkeypatch.undo()
    with pytest.raises(ValueError):  # strict JSON on request
        checkpoints.write_json(tmp_path / "nan.json", {"rte_s": float("nan")}, allow_nan=False)
    assert list(tmp_path.glob("*nan.json*")) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_of_ordinary_new_files(tmp_path, umask):
    """The atomic writers go through mkstemp, which makes files private (0600): on a shared results folder
    collaborators could not read cost.json, metric records, tables or FID statistics."""
    import numpy as np

    from metrics.fid import save_statistics
    from unlearnbench import checkpoints
    from unlearnbench.files import atomic_output

    previous = os.umask(umask)
    try:
        checkpoints.write_json(tmp_path / "cost.json", {"rte_s": 1.0})
        with atomic_output(tmp_path / "table.csv") as tmp:
            tmp.write_text("a,b\n")
        save_statistics(tmp_path / "class0.npz", np.zeros(2), np.eye(2), n=2)
        (tmp_path / "plain.txt").write_text("")  # the reference: an ordinary new file
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {name: 0o666 & ~umask for name in ("cost.json", "table.csv", "class0.npz", "plain.txt")}
