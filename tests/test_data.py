"""Data sets: the embedded digits split, the LIBSVM reader, clear errors when files are missing."""

from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from dpbr_lib import data


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load_dataset("digits")


def test_digits_split_is_seeded_stratified_and_standardised(digits):
    ds = digits
    info = data.describe("digits")
    assert ds.input_shape == info.input_shape == (1, 8, 8)
    assert ds.num_classes == info.num_classes == 10
    assert len(ds.y_train) == info.train_size  # the table the config checks use
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert ds.x_train.shape == (info.train_size, 1, 8, 8) and ds.x_train.dtype == torch.float32
    # stratified: every class keeps its share (±1 sample from rounding) in the test split
    train_counts = torch.bincount(ds.y_train, minlength=10).float()
    test_counts = torch.bincount(ds.y_test, minlength=10).float()
    share = test_counts / (train_counts + test_counts)
    assert torch.all((share - data.TEST_FRACTION).abs() < 1 / 170)
    # standardised with the training statistics
    assert abs(float(ds.x_train.mean())) < 1e-5
    assert float(ds.x_train.std()) == pytest.approx(1.0, abs=1e-4)
    # the same seed gives the same split, another seed another one
    other = data.load_dataset("digits", seed=1)
    assert not torch.equal(other.x_test, ds.x_test)


def test_digits_pixels_are_the_scaled_sklearn_images(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = torch.as_tensor(bunch.data / 16.0, dtype=torch.float32)  # [1797, 64] in [0, 1]
    train, test = data._stratified_split(bunch.target, data.TEST_FRACTION, 0)
    assert len(set(train) & set(test)) == 0 and len(train) + len(test) == 1797
    mean, std = raw[train].mean(), raw[train].std()  # one channel: one mean and one std
    ds = digits
    expected = ((raw[test] - mean) / std).reshape(-1, 1, 8, 8)
    torch.testing.assert_close(ds.x_test, expected)
    assert torch.equal(ds.y_test, torch.as_tensor(bunch.target[test]))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100", "phishing"])
def test_missing_files_raise_one_clear_error(tmp_path, name):
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.load_dataset(name, data_dir=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path) in message and "'digits'" in message and "download" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no loader trace
    assert isinstance(info.value, ValueError)  # the CLI turns it into one line and exit 2


def test_default_folder_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_VARIABLE, str(tmp_path))
    assert data.default_data_dir() == tmp_path
    with pytest.raises(data.DatasetUnavailableError, match=str(tmp_path)):
        data.load_dataset("phishing")


def test_failed_download_is_reported_without_a_partial_file(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(data.DatasetUnavailableError, match=r"download failed.*no network"):
        data.load_dataset("phishing", data_dir=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_phishing_reads_a_libsvm_file(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    labels = [0, 1] * 20
    for label in labels:
        features = sorted(rng.choice(np.arange(1, 69), size=5, replace=False))
        pairs = " ".join(f"{j}:{rng.integers(0, 2)}" for j in features)
        lines.append(f"{label} {pairs}")
    (tmp_path / "phishing").write_text("\n".join(lines) + "\n")
    ds = data.load_dataset("phishing", data_dir=tmp_path)
    assert ds.input_shape == (68,) and ds.num_classes == 2
    assert len(ds.y_train) == 32 and len(ds.y_test) == 8  # 80/20 per class of 20
    assert set(ds.y_train.tolist()) == {0, 1}


def test_unknown_name_lists_the_registry():
    with pytest.raises(ValueError, match=r"Unknown data set 'svhn'\. Valid names: cifar10, "):
        data.load_dataset("svhn")
    assert set(data.names()) == set(data.INFO)
