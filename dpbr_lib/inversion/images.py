"""Images to attack: CIFAR-100 when it is on disk, else offline pictures that ship with the wheels.

Sources (``source=``):

- ``"cifar100"``: torchvision's CIFAR-100 test split read from ``data_dir`` (never downloaded);
  with ``distinct_labels`` the images are taken in order from ``start``, skipping repeated
  classes, as the 100-image notebook of Geiping et al. 2020 does (it starts at index 25).
- ``"photos"``: square crops of scikit-image's bundled colour photographs (astronaut, chelsea,
  coffee, rocket, hubble_deep_field, immunohistochemistry, retina, motorcycle_left), tiled at
  three scales (whole, 2×2 and 3×3 grids of squares of side min(H, W)/k) and resized to
  ``size``×``size`` with anti-aliasing. Every crop is its own class: labels 0, 1, 2, ... — a
  stand-in for "one image per class" (the first 100 crops give the 100 classes of the
  100-image case). Captions say so.
- ``"digits"``: scikit-learn's 8×8 handwritten digits (values 0..16 → [0, 1]), upscaled
  bilinearly to ``size`` and repeated over the colour channels; labels are the digits.
- ``"auto"``: ``"cifar100"`` when ``data_dir`` holds it, else ``"photos"``.

Images are ``float32`` in [0, 1], shape ``[B, C, H, W]``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dpbr_lib._validation import check_choice, check_int

SOURCES = ("auto", "cifar100", "photos", "digits")
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "motorcycle_left",
)
_CROP_GRIDS = (1, 2, 3)  # squares of side min(H, W)/k, k = 1, 2, 3
PHOTO_CLASSES = 100  # the first 100 crops, labels 0..99 (the tiling gives more)


@dataclass(frozen=True)
class ImageSet:
    """A batch of images with labels and a caption naming where they come from."""

    images: torch.Tensor  # [B, C, H, W] in [0, 1]
    labels: torch.Tensor  # [B] int64
    source: str  # "cifar100", "photos" or "digits"
    names: tuple[str, ...]  # one short description per image
    caption: str  # for figure captions

    def __len__(self) -> int:
        return self.images.shape[0]


def _photo(name: str) -> np.ndarray:
    from skimage import data

    if name == "motorcycle_left":
        return data.stereo_motorcycle()[0]
    return getattr(data, name)()


@functools.lru_cache(maxsize=4)
def _photo_crops(size: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    """All crops, ordered by scale then photo then position: ``[N, 3, size, size]`` in [0, 1]."""
    crops, names = [], []
    photos = {name: torch.from_numpy(_photo(name)[..., :3]) for name in PHOTOS}
    for k in _CROP_GRIDS:
        for name, photo in photos.items():
            height, width = photo.shape[:2]
            side = min(height, width) // k
            rows, cols = height // side, width // side
            top0, left0 = (height - rows * side) // 2, (width - cols * side) // 2
            grid = photo[top0 : top0 + rows * side, left0 : left0 + cols * side]
            squares = (
                grid.reshape(rows, side, cols, side, 3).permute(0, 2, 4, 1, 3)
                .reshape(rows * cols, 3, side, side).float() / 255.0
            )  # [rows*cols, 3, side, side]
            small = torch.nn.functional.interpolate(
                squares, size=(size, size), mode="bilinear", antialias=True
            )  # [rows*cols, 3, size, size]
            crops.append(small.clamp(0, 1))
            names += [
                f"{name} {k}x{k} crop ({r},{c})" if k > 1 else name
                for r in range(rows)
                for c in range(cols)
            ]
    return torch.cat(crops), tuple(names)


def _from_photos(n: int, size: int, start: int) -> ImageSet:
    _check_available(n, start, PHOTO_CLASSES, "photos", "classes (crops of the bundled photos)")
    crops, names = _photo_crops(size)
    images = crops[start : start + n].clone()  # [n, 3, size, size]
    labels = torch.arange(start, start + n)
    caption = (
        f"{n} offline image(s): {size}×{size} crops of scikit-image's bundled photos; "
        "each crop is its own class (label = crop index), a stand-in for CIFAR-100"
    )
    return ImageSet(images, labels, "photos", names[start : start + n], caption)


def _from_digits(n: int, size: int, start: int, distinct: bool) -> ImageSet:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target
    index = _select(labels, n, start, distinct, "digits")
    small = torch.from_numpy(images[index] / 16.0).float().unsqueeze(1)  # [n, 1, 8, 8]
    big = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear")
    big = big.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()  # [n, 3, size, size]
    caption = f"{n} offline image(s): scikit-learn's 8×8 digits upscaled to {size}×{size}"
    names = tuple(f"digit {labels[i]} (#{i})" for i in index)
    return ImageSet(big, torch.as_tensor(labels[index], dtype=torch.long), "digits", names, caption)


def _cifar100(data_dir: str | Path | None):  # -> torchvision.datasets.CIFAR100 | None
    if data_dir is None:
        return None
    from torchvision.datasets import CIFAR100

    try:
        return CIFAR100(str(data_dir), train=False, download=False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted."
        return None


def _from_cifar(dataset, n: int, size: int, start: int, distinct: bool) -> ImageSet:
    labels = np.asarray(dataset.targets)
    index = _select(labels, n, start, distinct, "cifar100")
    images = torch.from_numpy(dataset.data[index]).permute(0, 3, 1, 2).float() / 255.0
    if size != images.shape[-1]:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear")
    names = tuple(f"{dataset.classes[labels[i]]} (#{i})" for i in index)
    caption = f"{n} CIFAR-100 test image(s)" + (", one per class" if distinct else "")
    return ImageSet(
        images.clamp(0, 1), torch.as_tensor(labels[index], dtype=torch.long), "cifar100", names,
        caption,
    )


def _check_available(n: int, start: int, available: int, source: str, what: str) -> None:
    if start + n > available:
        raise ValueError(
            f"The 'n' parameter asks for {n} image(s) from index {start}, but the {source!r} "
            f"source has only {available} {what}. Choose n <= {max(available - start, 0)}."
        )


def _select(labels: np.ndarray, n: int, start: int, distinct: bool, source: str) -> np.ndarray:
    """Indices of ``n`` images from ``start`` on, skipping repeated labels when ``distinct``."""
    if not distinct:
        _check_available(n, start, len(labels), source, "images")
        return np.arange(start, start + n)
    tail = labels[start:]
    _, first = np.unique(tail, return_index=True)  # first occurrence of each class
    _check_available(n, 0, len(first), source, f"distinct classes from index {start}")
    return start + np.sort(first)[:n]


def load_images(
    n: int,
    *,
    source: str = "auto",
    data_dir: str | Path | None = None,
    size: int = 32,
    channels: int = 3,
    start: int = 0,
    distinct_labels: bool = True,
) -> ImageSet:
    """``n`` images of ``size``×``size`` (see the module docstring for the sources).

    Raises ``ValueError`` before loading anything heavy when the source cannot give ``n``
    images (e.g. more than the 100 photo crops, or more distinct classes than exist).
    """
    n = check_int("n", n, low=1)
    size = check_int("size", size, low=4)
    channels = check_int("channels", channels, low=1, high=3)
    start = check_int("start", start, low=0)
    source = check_choice("source", source, SOURCES)
    if channels not in (1, 3):
        raise ValueError(f"The 'channels' parameter must be 1 or 3. Got {channels} instead.")
    if source in ("auto", "cifar100"):
        dataset = _cifar100(data_dir)
        if dataset is not None:
            out = _from_cifar(dataset, n, size, start, distinct_labels)
        elif source == "cifar100":
            raise ValueError(
                f"The 'data_dir' parameter must hold torchvision's CIFAR-100 (cifar-100-python/)."
                f" Got {data_dir!r}; nothing is downloaded. Use source='photos' offline."
            )
        else:
            source = "photos"
    if source == "photos":
        out = _from_photos(n, size, start)
    elif source == "digits":
        out = _from_digits(n, size, start, distinct_labels)
    if channels == 1:
        grey = out.images.mean(dim=1, keepdim=True)  # [B, 1, H, W]
        out = ImageSet(grey, out.labels, out.source, out.names, out.caption + " (greyscale)")
    return out
