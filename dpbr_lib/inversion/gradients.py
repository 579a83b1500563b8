"""The gradient a worker shares, and the same map on the attacker's dummy data.

Both sides use one function, :func:`observable_gradient`: the flat gradient ``Tensor[d]`` of the
mean cross-entropy of a batch, in :mod:`dpbr_lib.privacy`'s flat order (``named_parameters``,
trainable only), optionally with each per-sample gradient clipped to norm C before the mean
(Abadi et al. 2016, Algorithm 1). Labels are class indices ``[B]`` or class probabilities
``[B, K]`` (DLG's soft labels: cross-entropy against softmax(ŷ), Zhu et al. 2019, Algorithm 1).
With ``create_graph=True`` the result stays differentiable in the images (and soft labels):
the attacks' second-order gradients flow through it, clipping included, since
``torch.func``'s per-sample gradients compose with autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpbr_lib import privacy


def parameter_slices(model: nn.Module) -> dict[str, slice]:
    """Where each trainable parameter sits in the flat vectors (privacy's flat order)."""
    slices, offset = {}, 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            slices[name] = slice(offset, offset + p.numel())
            offset += p.numel()
    return slices


def observable_gradient(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    clip: float | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """∇θ (1/B) Σ_i CE(f(x_i), y_i) as ``Tensor[d]``; with ``clip``, (1/B) Σ_i clip_C(∇θ CE_i)."""
    if clip is None:
        params = [p for p in model.parameters() if p.requires_grad]
        loss = F.cross_entropy(model(images), labels)
        grads = torch.autograd.grad(loss, params, create_graph=create_graph)
        return torch.cat([g.reshape(-1) for g in grads])  # [d]
    return privacy.clipped_mean_gradients(
        model, F.cross_entropy, images.unsqueeze(0), labels.unsqueeze(0), clip
    )[0]  # [d]


def check_target(model: nn.Module, target: object, name: str = "target") -> torch.Tensor:
    """A shared gradient must be a finite 1-D float tensor of the model's length d."""
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not isinstance(target, torch.Tensor) or not target.is_floating_point():
        raise TypeError(
            f"The {name!r} parameter must be a floating-point torch.Tensor of shape ({d},). "
            f"Got {type(target).__name__} instead."
        )
    if target.dim() != 1 or target.numel() != d:
        raise ValueError(
            f"The {name!r} parameter must have shape ({d},) for this model. "
            f"Got {tuple(target.shape)} instead."
        )
    bad = int((~torch.isfinite(target)).sum())
    if bad:
        raise ValueError(
            f"The {name!r} parameter must be finite. Got {bad} NaN/Inf coordinate(s) of {d}; "
            "a non-finite gradient cannot be inverted."
        )
    if not bool(target.any()):
        raise ValueError(f"The {name!r} parameter is all zeros: there is nothing to invert.")
    return target.detach()
