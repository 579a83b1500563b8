"""Defenses a worker applies to its gradient before sharing it, through :mod:`dpbr_lib.privacy`.

One :class:`Defense` composes, in this order (noise then masking, so sparsification is
post-processing and keeps the DP guarantee):

1. per-sample clipping to norm C (``clip``; Abadi et al. 2016, Algorithm 1), mean over the batch;
2. Gaussian noise N(0, σ²I) with σ either from (ε, δ) and the sensitivity Δ = 2C/b
   (``epsilon``; :func:`dpbr_lib.privacy.gaussian_sigma`, classic: Dwork & Roth 2014,
   Theorem A.1, ε < 1; analytic: Balle & Wang 2018, any ε) or fixed (``sigma``);
3. top-k or random-k sparsification keeping ``keep_ratio`` of the coordinates
   (:func:`dpbr_lib.privacy.sparsify`).

The attacker knows the protocol: its dummy gradient goes through the deterministic parts (the
same clipping, the support of a sparsified gradient; :meth:`Defense.emulate`), never the noise.

:func:`training_sigma` is the σ that the same ε means for the Byzantine-resilient training
(Guerraoui et al. 2021), with that training's defaults C = 0.01, δ = 1e-6, b = 50.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dpbr_lib import privacy
from dpbr_lib._validation import check_choice, check_float, check_int
from dpbr_lib.inversion.gradients import observable_gradient

#: The defaults of the Byzantine-resilient DP training (clip C, δ, batch size b).
TRAINING_CLIP = 0.01
TRAINING_DELTA = 1e-6
TRAINING_BATCH = 50


def training_sigma(
    epsilon: float,
    *,
    delta: float = TRAINING_DELTA,
    clip: float = TRAINING_CLIP,
    batch_size: int = TRAINING_BATCH,
    mechanism: str = "analytic",
) -> float:
    """σ = gaussian_sigma(ε, δ, 2C/b) of the training side, per worker and step.

    ``mechanism="classic"`` is the paper's Gaussian mechanism (ε < 1 only); the default
    ``"analytic"`` (Balle & Wang 2018) is valid for every ε and is the smaller σ.
    """
    return privacy.gaussian_sigma(
        epsilon, delta, privacy.sensitivity(clip, batch_size), mechanism=mechanism
    )


@dataclass(frozen=True)
class Defense:
    """What a worker does to its gradient before sharing it (all fields optional)."""

    clip: float | None = None  # per-sample clipping norm C; None: no clipping
    epsilon: float | None = None  # (ε, δ)-DP noise calibrated to 2C/b; needs clip
    delta: float = TRAINING_DELTA  # δ of the (ε, δ) guarantee
    mechanism: str = "analytic"  # "classic" (ε < 1) or "analytic" Gaussian mechanism
    sigma: float | None = None  # fixed noise std, instead of epsilon
    keep_ratio: float | None = None  # fraction of coordinates kept, in (0, 1]
    sparsify_mode: str = "topk"  # "topk" or "randk"

    def __post_init__(self) -> None:
        if self.clip is not None:
            check_float("clip", self.clip, low=0.0, low_open=True)
        if self.epsilon is not None:
            check_float("epsilon", self.epsilon, low=0.0, low_open=True)
            if self.clip is None:
                raise ValueError(
                    "The 'epsilon' parameter needs 'clip' (the sensitivity is 2C/b). "
                    f"Got epsilon={self.epsilon!r} with clip=None."
                )
            if self.sigma is not None:
                raise ValueError(
                    "Give either 'epsilon' or 'sigma', not both. "
                    f"Got epsilon={self.epsilon!r} and sigma={self.sigma!r}."
                )
        check_float("delta", self.delta, low=0.0, high=1.0, low_open=True, high_open=True)
        check_choice("mechanism", self.mechanism, privacy.MECHANISMS)
        if self.epsilon is not None:
            self.noise_std(1)  # privacy.gaussian_sigma's own checks (e.g. classic needs ε < 1)
        if self.sigma is not None:
            check_float("sigma", self.sigma, low=0.0)
        if self.keep_ratio is not None:
            check_float("keep_ratio", self.keep_ratio, low=0.0, high=1.0, low_open=True)
        check_choice("sparsify_mode", self.sparsify_mode, privacy.SPARSIFY_MODES)

    def noise_std(self, batch_size: int) -> float:
        """σ of the Gaussian noise for a batch of ``batch_size`` samples (0 without noise)."""
        batch_size = check_int("batch_size", batch_size, low=1)
        if self.epsilon is not None:
            sens = privacy.sensitivity(self.clip, batch_size)  # type: ignore[arg-type]
            return privacy.gaussian_sigma(self.epsilon, self.delta, sens, self.mechanism)
        return float(self.sigma or 0.0)

    def label(self) -> str:
        """Short description for tables and legends."""
        parts = []
        if self.clip is not None:
            parts.append(f"C={self.clip:g}")
        if self.epsilon is not None:
            parts.append(f"ε={self.epsilon:g}")
        if self.sigma is not None:
            parts.append(f"σ={self.sigma:g}")
        if self.keep_ratio is not None:
            parts.append(f"{self.sparsify_mode} keep={self.keep_ratio:g}")
        return ", ".join(parts) or "none"

    def share(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The gradient ``Tensor[d]`` the worker sends for its batch under this defense."""
        g = observable_gradient(model, images, labels, clip=self.clip)  # [d]
        return self.protect(g, images.shape[0], generator)

    def protect(
        self, g: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Noise then sparsification on an already (clipped and) averaged gradient ``[d]``."""
        sigma = self.noise_std(batch_size)
        if sigma > 0:
            g = privacy.add_gaussian_noise(g, sigma, generator)  # [d]
        if self.keep_ratio is not None:
            g = privacy.sparsify(g, self.keep_ratio, self.sparsify_mode, generator)  # [d]
        return g

    def emulate(self, dummy: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The attacker's side: mask ``dummy`` to the support of a sparsified ``target``."""
        if self.keep_ratio is None:
            return dummy
        return dummy * (target != 0)  # [d]


NO_DEFENSE = Defense()
