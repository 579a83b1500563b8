"""Gradient inversion: what a shared gradient gives away, and what the privacy defenses cost it.

Modules, one job each (in dependency order):

- :mod:`.models`      DLG's LeNet, a CPU ConvNet, ResNet32-10 (Geiping et al. 2020)
- :mod:`.images`      CIFAR-100 when on disk, else bundled photos / digits
- :mod:`.gradients`   the shared gradient (optionally per-sample clipped), both sides
- :mod:`.defenses`    clipping + (ε, δ) or fixed-σ noise, sparsification, via dpbr_lib.privacy
- :mod:`.attacks`     DLG, iDLG, Inverting Gradients; divergence detection
- :mod:`.metrics`     MSE, PSNR, SSIM (scikit-image), label accuracy, Hungarian matching
- :mod:`.experiments` single-batch, from-batch, batch100, defense curves, Krum vs average
- :mod:`.plots`       the figures

The names below are the stable entry points; the CLI is ``dpbr reconstruct``.
"""

from dpbr_lib.inversion.attacks import (
    ATTACKS,
    DivergenceError,
    DLGConfig,
    IGConfig,
    Reconstruction,
    dlg,
    idlg,
    infer_labels,
    inverting_gradients,
)
from dpbr_lib.inversion.defenses import NO_DEFENSE, Defense, training_sigma
from dpbr_lib.inversion.experiments import (
    PROFILES,
    Experiment,
    Profile,
    batch100,
    defense_curves,
    failure_levels,
    from_batch,
    krum_vs_average,
    single_batch,
)
from dpbr_lib.inversion.images import ImageSet, load_images
from dpbr_lib.inversion.metrics import FAIL_PSNR_DB, FAIL_SSIM, match, psnr, score, ssim
from dpbr_lib.inversion.models import MODELS, build_model

__all__ = [
    "ATTACKS",
    "FAIL_PSNR_DB",
    "FAIL_SSIM",
    "MODELS",
    "NO_DEFENSE",
    "PROFILES",
    "DLGConfig",
    "Defense",
    "DivergenceError",
    "Experiment",
    "IGConfig",
    "ImageSet",
    "Profile",
    "Reconstruction",
    "batch100",
    "build_model",
    "defense_curves",
    "dlg",
    "failure_levels",
    "from_batch",
    "idlg",
    "infer_labels",
    "inverting_gradients",
    "krum_vs_average",
    "load_images",
    "match",
    "psnr",
    "score",
    "single_batch",
    "ssim",
    "training_sigma",
]
