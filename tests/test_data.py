"""Datasets: digits split, CIFAR-10 in its official format, clear errors for missing data."""

import numpy as np
import pytest

from unlearnbench.data import CIFAR10_DIR, ImageData, load_cifar10, load_digits, to_float, to_uint8
from unlearnbench.errors import MissingResourceError


def test_digits_split_is_stratified_and_deterministic():
    a, b = load_digits(), load_digits()
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    assert a.train_x.shape[1:] == (1, 8, 8) and a.train_x.dtype == np.uint8
    assert len(a.train_x) + len(a.test_x) == 1797
    assert a.num_classes == 10
    # stratified: each class's share of the test set matches its share of the whole
    whole = np.bincount(np.concatenate([a.train_y, a.test_y])) / 1797
    assert np.allclose(np.bincount(a.test_y) / len(a.test_y), whole, atol=0.01)
    assert to_float(a.train_x).min() >= -1 and to_float(a.train_x).max() <= 1


def test_uint8_round_trip():
    u = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    assert np.array_equal(to_uint8(to_float(u)), u)


def test_cifar10_loader_reads_the_official_format(tmp_path, write_miniature_cifar10):
    expected = write_miniature_cifar10(tmp_path)
    data = load_cifar10(tmp_path, download=False)
    assert data.train_x.shape == (100, 3, 32, 32) and data.test_x.shape == (20, 3, 32, 32)
    assert np.array_equal(data.train_x[:20], expected["data_batch_1"][0])
    assert np.array_equal(data.train_y[80:], expected["data_batch_5"][1])
    assert np.array_equal(data.test_x, expected["test_batch"][0])
    # the official layout is row-major (3, 32, 32): channel planes, not interleaved pixels
    import pickle

    with open(tmp_path / CIFAR10_DIR / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert raw["data"].shape == (20, 3072) and np.array_equal(raw["data"][0, :1024].reshape(32, 32), data.test_x[0, 0])


def test_cifar10_missing_offline_says_where_to_put_it(tmp_path):
    with pytest.raises(MissingResourceError) as err:
        load_cifar10(tmp_path / "nowhere", download=False)
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg and str(tmp_path / "nowhere" / CIFAR10_DIR) in msg and "data_batch_1" in msg


def test_cifar10_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    import unlearnbench.data as data_mod

    def offline(root):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(data_mod, "download_cifar10", offline)
    with pytest.raises(MissingResourceError, match="download failed: Network is unreachable"):
        load_cifar10(tmp_path, download=True)


def test_corrupt_cifar_file_is_reported(tmp_path, write_miniature_cifar10):
    write_miniature_cifar10(tmp_path)
    batch = tmp_path / CIFAR10_DIR / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])  # an interrupted copy
    with pytest.raises(
        MissingResourceError,
        match=f"CIFAR-10 file {batch} is unreadable \\(UnpicklingError: "
        ".*truncated.*Replace it with the one from https://",
    ):
        load_cifar10(tmp_path)
    batch.write_bytes(b"not a pickle")
    with pytest.raises(MissingResourceError, match=f"CIFAR-10 file {batch} is unreadable"):
        load_cifar10(tmp_path)


def test_prepared_data_round_trip_and_missing(tmp_path):
    data = load_digits()
    data.save(tmp_path / "d.npz")
    back = ImageData.load(tmp_path / "d.npz")
    assert np.array_equal(back.train_x, data.train_x) and back.train_y.dtype == np.int64
    with pytest.raises(MissingResourceError, match="prepare_data"):
        ImageData.load(tmp_path / "missing.npz")
