import os
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("UNLEARNBENCH_QUIET", "1")
os.environ.setdefault("UNLEARNBENCH_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def tiny_config():
    """The default config with the tiny test overlay, validated."""
    from unlearnbench.config import load_config

    return load_config(ROOT / "config" / "test.yaml", methods_dir=ROOT / "methods")


@pytest.fixture
def write_miniature_cifar10():
    """A writer of CIFAR-10 in its official python format (data_batch_1..5, test_batch) with `per_batch` random
    images each, every class equally often; it returns {file name: (images, labels)}."""
    import numpy as np

    from unlearnbench.data import CIFAR10_DIR, CIFAR10_TEST, CIFAR10_TRAIN, write_cifar_batch

    def write(root: Path, per_batch: int = 20) -> dict:
        rng = np.random.default_rng(0)
        expected = {}
        for name in CIFAR10_TRAIN + CIFAR10_TEST:
            images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
            labels = rng.permutation(np.arange(per_batch) % 10)
            write_cifar_batch(root / CIFAR10_DIR / name, images, labels)
            expected[name] = (images, labels)
        return expected

    return write


@pytest.fixture
def method_workdir(tmp_path, tiny_config, monkeypatch):
    """make(files, shipped=False, **adopt) -> config: tmp_path as the working directory of a workflow copy, its
    methods/ holding `files` ({name: source}; beside the shipped methods if `shipped`), and an untrained original
    adopted there (`adopt`: adopted_original's options)."""

    def make(files: dict, shipped: bool = False, **adopt) -> dict:
        monkeypatch.chdir(tmp_path)  # methods/ of the working directory, as in a user's workflow copy
        if shipped:
            shutil.copytree(ROOT / "methods", tmp_path / "methods")
        else:
            (tmp_path / "methods").mkdir()
        for name, source in files.items():
            (tmp_path / "methods" / f"{name}.py").write_text(source)
        from tiny_original import adopted_original

        adopted_original(tmp_path, tiny_config, **adopt)
        return tiny_config

    return make
