import os
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
