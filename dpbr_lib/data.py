"""Data sets as in-memory tensors: the embedded default (scikit-learn's digits) and the real ones.

Every loader returns a :class:`Dataset` of float32 image tensors ``[N, C, H, W]`` (or
``[N, features]`` for tabular sets), standardised with the training split's statistics, and int64
labels. The training engine samples mini-batches from these tensors with its own seeded generator,
so no ``DataLoader`` (and no global random state) is involved.

- ``digits`` (default, offline): scikit-learn's ``load_digits``, 1,797 real 8×8 handwritten
  digits (UCI optical recognition set), pixels 0..16 scaled to [0, 1], then standardised; a fixed
  seeded stratified 80/20 train/test split (1,437 / 360).
- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: torchvision's classes with
  ``data_dir`` and ``download``; their own train/test split.
- ``phishing``: the LIBSVM binary *phishing* set (11,055 samples, 68 features), the data set of the
  reference experiments (LPD-EPFL DifferentialByzantine, ``reproduce.py``), read with scikit-learn's
  ``load_svmlight_file`` from ``data_dir/phishing``; seeded stratified 80/20 split (the reference's
  own split is not in its published files).

When files are missing and cannot be downloaded, :class:`DatasetUnavailableError` says where to
put them and that ``digits`` works offline.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from dpbr_lib._registry import Registry
from dpbr_lib._validation import check_int

#: Where the LIBSVM project publishes the phishing set.
PHISHING_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary/phishing"
#: Fraction of the samples kept for testing by the sets without an official split.
TEST_FRACTION = 0.2


class DatasetUnavailableError(FileNotFoundError, ValueError):
    """A data set's files are missing and could not be downloaded (one readable line)."""


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors of one data set, ready for the training engine."""

    name: str
    x_train: torch.Tensor  # [N_train, *input_shape] float32, standardised
    y_train: torch.Tensor  # [N_train] int64 class labels in [0, num_classes)
    x_test: torch.Tensor  # [N_test, *input_shape] float32, train statistics
    y_test: torch.Tensor  # [N_test] int64
    num_classes: int
    input_shape: tuple[int, ...]  # (C, H, W) for images, (features,) for tabular sets

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


@dataclass(frozen=True)
class DatasetInfo:
    """What a config check needs to know about a data set without loading it."""

    train_size: int  # samples in the training split
    input_shape: tuple[int, ...]
    num_classes: int


#: Sizes of each set's training split (digits and phishing: the seeded stratified 80/20 split of
#: :func:`_stratified_split`, the same for every seed; torchvision sets: their official split).
#: ``tests/test_data.py`` checks the digits row against a loaded copy.
INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(1438, (1, 8, 8), 10),
    "mnist": DatasetInfo(60_000, (1, 28, 28), 10),
    "fashion_mnist": DatasetInfo(60_000, (1, 28, 28), 10),
    "cifar10": DatasetInfo(50_000, (3, 32, 32), 10),
    "cifar100": DatasetInfo(50_000, (3, 32, 32), 100),
    "phishing": DatasetInfo(8_844, (68,), 2),  # classes of 4,898 and 6,157 samples
}


def describe(name: str) -> DatasetInfo:
    """Training-split size, input shape and class count of ``name``, without loading it."""
    DATASETS.get(name)
    return INFO[name]


Loader = Callable[[Path | None, bool, int], Dataset]
DATASETS: Registry[Loader] = Registry("data set")


def names() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return DATASETS.names()


def load_dataset(
    name: str = "digits", data_dir: str | Path | None = None, download: bool = False, seed: int = 0
) -> Dataset:
    """Load the data set ``name`` (see :func:`names`) as in-memory tensors.

    ``data_dir`` holds the files of the downloadable sets (default :func:`default_data_dir`);
    ``download`` allows fetching them; ``seed`` fixes the train/test split of the sets that have
    no official one (digits, phishing).
    """
    loader = DATASETS.get(name)
    seed = check_int("seed", seed, low=0)
    if not isinstance(download, bool):
        raise TypeError(f"The 'download' parameter must be a bool. Got {download!r} instead.")
    root = Path(data_dir).expanduser() if data_dir is not None else None
    return loader(root, download, seed)


# --------------------------------------------------------------------------------------------- #
# Helpers


#: Environment variable naming the default data folder (read when a loader needs a folder).
DATA_DIR_VARIABLE = "DPBR_DATA_DIR"


def default_data_dir() -> Path:
    """``$DPBR_DATA_DIR`` if set (so sweep workers on other machines find the files), else
    ``~/.cache/dpbr/data``."""
    value = os.environ.get(DATA_DIR_VARIABLE)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "dpbr" / "data"


def _unavailable(name: str, root: Path, files: str, download: bool, cause: object) -> NoReturn:
    how = (
        f"the download failed ({type(cause).__name__}: {cause})"
        if download
        else "download=False (pass download=True, or --download on the command line, to fetch it)"
    )
    raise DatasetUnavailableError(
        f"Data set {name!r} is not available under {str(root)!r}: {how}. Place {files} in "
        f"{str(root)!r}, or use the embedded offline set 'digits'."
    ) from None


def _stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded stratified split (per class, the same test fraction)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        cut = round(len(members) * test_fraction)
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _standardise(
    x_train: torch.Tensor, x_test: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x − μ)/s with the training split's mean and std over ``dims`` (per channel/feature)."""
    mean = x_train.mean(dim=dims, keepdim=True)
    std = x_train.std(dim=dims, keepdim=True).clamp(min=1e-8)  # constant features stay 0
    return (x_train - mean) / std, (x_test - mean) / std


def _from_arrays(
    name: str, x: np.ndarray, y: np.ndarray, input_shape: tuple[int, ...], seed: int
) -> Dataset:
    labels, y_index = np.unique(y, return_inverse=True)
    train, test = _stratified_split(y_index, TEST_FRACTION, seed)
    xt = torch.as_tensor(x, dtype=torch.float32).reshape(len(x), *input_shape)  # [N, *shape]
    dims = (0, 2, 3) if len(input_shape) == 3 else (0,)
    x_train, x_test = _standardise(xt[train], xt[test], dims)
    yt = torch.as_tensor(y_index, dtype=torch.int64)  # [N]
    return Dataset(name, x_train, yt[train], x_test, yt[test], len(labels), input_shape)


# --------------------------------------------------------------------------------------------- #
# Embedded default


@DATASETS.decorator("digits")
def _digits(root: Path | None, download: bool, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data / 16.0  # [1797, 64] in [0, 1]
    # One channel: standardise with one mean and std over all pixels (a per-pixel std would be
    # zero on the always-blank border pixels).
    return _from_arrays("digits", x, bunch.target, (1, 8, 8), seed)


# --------------------------------------------------------------------------------------------- #
# torchvision sets


def _torchvision(name: str, cls_name: str, files: str) -> Loader:
    def load(root: Path | None, download: bool, seed: int) -> Dataset:
        import torchvision

        root = root or default_data_dir()
        cls = getattr(torchvision.datasets, cls_name)
        try:
            train = cls(str(root), train=True, download=download)
            test = cls(str(root), train=False, download=download)
        except (RuntimeError, OSError) as error:  # torchvision: "Dataset not found", URLError
            _unavailable(name, root, files, download, error)
        x_train, x_test = (_images(split.data) for split in (train, test))
        x_train, x_test = _standardise(x_train, x_test, (0, 2, 3))
        y_train, y_test = (
            torch.as_tensor(split.targets, dtype=torch.int64) for split in (train, test)
        )
        num_classes = len(train.classes)
        return Dataset(
            name, x_train, y_train, x_test, y_test, num_classes, tuple(x_train.shape[1:])
        )

    return load


def _images(data: object) -> torch.Tensor:
    """uint8 images ``[N, H, W]`` (MNIST) or ``[N, H, W, C]`` (CIFAR) → float ``[N, C, H, W]``."""
    x = torch.as_tensor(data)
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # [N, C, H, W]
    return x.to(torch.float32) / 255.0


DATASETS.register(
    "mnist", _torchvision("mnist", "MNIST", "the folder 'MNIST/raw' with its 4 files")
)
DATASETS.register(
    "fashion_mnist",
    _torchvision("fashion_mnist", "FashionMNIST", "the folder 'FashionMNIST/raw' with its 4 files"),
)
DATASETS.register(
    "cifar10", _torchvision("cifar10", "CIFAR10", "the extracted folder 'cifar-10-batches-py'")
)
DATASETS.register(
    "cifar100", _torchvision("cifar100", "CIFAR100", "the extracted folder 'cifar-100-python'")
)


# --------------------------------------------------------------------------------------------- #
# LIBSVM phishing


@DATASETS.decorator("phishing")
def _phishing(root: Path | None, download: bool, seed: int) -> Dataset:
    from sklearn.datasets import load_svmlight_file

    root = root or default_data_dir()
    path = root / "phishing"
    if not path.is_file():
        if not download:
            _unavailable(
                "phishing", root, f"the LIBSVM file 'phishing' ({PHISHING_URL})", False, None
            )
        try:
            _fetch(PHISHING_URL, path)
        except OSError as error:  # URLError is an OSError
            _unavailable(
                "phishing", root, f"the LIBSVM file 'phishing' ({PHISHING_URL})", True, error
            )
    x, y = load_svmlight_file(str(path), n_features=68)
    return _from_arrays("phishing", x.toarray(), y.astype(np.int64), (68,), seed)


def _fetch(url: str, path: Path) -> None:
    """Download ``url`` to ``path`` through a temporary file (no partial file on failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                shutil.copyfileobj(response, tmp)
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    Path(tmp.name).replace(path)
