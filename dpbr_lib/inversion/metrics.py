"""How close a reconstruction is to the private images: MSE, PSNR, SSIM, label accuracy.

PSNR and SSIM come from scikit-image (``skimage.metrics.peak_signal_noise_ratio`` and
``structural_similarity``, Wang et al. 2004, with its default 7×7 uniform window), on images
in [0, 1] (``data_range=1``); reconstructions are clipped to [0, 1] first. A batch comes back in
any order, so reconstructions are first matched to originals by the assignment of least total
MSE (the Hungarian method, ``scipy.optimize.linear_sum_assignment``), as in Geiping et al. 2020's
batch experiments.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

#: The attack *fails* on an image when its PSNR is below this (dB) or its SSIM below
#: :data:`FAIL_SSIM`. A constant mid-grey guess scores about 10-13 dB on natural 32×32 crops and
#: an SSIM near 0; reconstructions above 15 dB and 0.2 start to show the image's layout.
FAIL_PSNR_DB = 15.0
FAIL_SSIM = 0.2


def _check_pair(reconstruction: torch.Tensor, original: torch.Tensor) -> None:
    for name, x in (("reconstruction", reconstruction), ("original", original)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"The {name!r} parameter must be a tensor [B, C, H, W]. Got {got}.")
    if reconstruction.shape != original.shape:
        raise ValueError(
            "The 'reconstruction' and 'original' parameters must have one shape. Got "
            f"{tuple(reconstruction.shape)} and {tuple(original.shape)} instead."
        )
    if not torch.isfinite(reconstruction).all():
        raise ValueError("The 'reconstruction' parameter holds NaN or Inf pixels.")


def _to_numpy(images: torch.Tensor) -> np.ndarray:
    return images.detach().clamp(0, 1).permute(0, 2, 3, 1).double().cpu().numpy()  # [B,H,W,C]


def mse(reconstruction: torch.Tensor, original: torch.Tensor) -> np.ndarray:
    """Per-image mean squared error ``[B]`` (reconstruction clipped to [0, 1])."""
    _check_pair(reconstruction, original)
    diff = reconstruction.detach().clamp(0, 1).double() - original.detach().double()
    return diff.pow(2).flatten(1).mean(dim=1).cpu().numpy()  # [B]


def psnr(reconstruction: torch.Tensor, original: torch.Tensor) -> np.ndarray:
    """Per-image PSNR in dB ``[B]``: 10·log10(1/MSE), by scikit-image (``data_range=1``);
    ``inf`` for an exact copy."""
    _check_pair(reconstruction, original)
    rec, ref = _to_numpy(reconstruction), _to_numpy(original)
    with np.errstate(divide="ignore"):  # MSE = 0 -> inf dB, as scikit-image returns
        return np.array(
            [peak_signal_noise_ratio(o, r, data_range=1.0) for r, o in zip(rec, ref, strict=True)]
        )


def ssim(reconstruction: torch.Tensor, original: torch.Tensor) -> np.ndarray:
    """Per-image SSIM ``[B]`` by scikit-image (colour axis last, ``data_range=1``)."""
    _check_pair(reconstruction, original)
    rec, ref = _to_numpy(reconstruction), _to_numpy(original)
    return np.array(
        [
            structural_similarity(o, r, data_range=1.0, channel_axis=-1)
            for r, o in zip(rec, ref, strict=True)
        ]
    )


def match(reconstruction: torch.Tensor, original: torch.Tensor) -> np.ndarray:
    """Permutation ``p`` such that ``reconstruction[p[i]]`` is matched to ``original[i]``.

    Minimises the total MSE over all one-to-one assignments (Hungarian method).
    """
    _check_pair(reconstruction, original)
    rec = reconstruction.detach().clamp(0, 1).flatten(1).double()  # [B, P]
    ref = original.detach().flatten(1).double()  # [B, P]
    cost = torch.cdist(ref, rec).pow(2) / ref.shape[1]  # [B, B]: MSE(original i, recon j)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return cols[np.argsort(rows)]


def score(
    reconstruction: torch.Tensor,
    original: torch.Tensor,
    *,
    reconstructed_labels: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    matched: bool = True,
) -> dict[str, np.ndarray]:
    """Per-image metrics after optimal matching (``matched=True``).

    Returns arrays of length B: ``mse``, ``psnr``, ``ssim``, ``order`` (the matching permutation,
    ``reconstruction[order[i]]`` ↔ ``original[i]``), ``failed`` (PSNR < :data:`FAIL_PSNR_DB` or
    SSIM < :data:`FAIL_SSIM`) and, when both label tensors are given, ``label_correct``.
    """
    order = match(reconstruction, original) if matched else np.arange(original.shape[0])
    aligned = reconstruction[torch.as_tensor(order)]
    out = {
        "mse": mse(aligned, original),
        "psnr": psnr(aligned, original),
        "ssim": ssim(aligned, original),
        "order": order,
    }
    out["failed"] = (out["psnr"] < FAIL_PSNR_DB) | (out["ssim"] < FAIL_SSIM)
    if reconstructed_labels is not None and labels is not None:
        guessed = reconstructed_labels.detach().cpu()[torch.as_tensor(order)]
        out["label_correct"] = (guessed == labels.detach().cpu()).numpy()
    return out


def label_accuracy(reconstructed: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of the batch's labels recovered, as multisets (order is lost in a batch)."""
    guessed = np.sort(reconstructed.detach().cpu().numpy())
    true = np.sort(labels.detach().cpu().numpy())
    if guessed.shape != true.shape:
        raise ValueError(
            f"The 'reconstructed' and 'labels' parameters must have one length. Got "
            f"{guessed.shape[0]} and {true.shape[0]} instead."
        )
    length = int(max(guessed.max(initial=0), true.max(initial=0))) + 1
    common = np.minimum(np.bincount(guessed, minlength=length), np.bincount(true, minlength=length))
    return float(common.sum()) / len(true)
