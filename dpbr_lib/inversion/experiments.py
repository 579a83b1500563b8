"""The reconstructions of the paper companion, each one function returning tables and images.

- :func:`single_batch`: one image or one batch, its gradient inverted (the seed's
  ``dlg/single_batch_main.py``).
- :func:`from_batch`: one selected image out of a batch of a chosen size (``dlg/main.py``): the
  attack inverts the batch's gradient and the selected original is scored against its matched
  reconstruction.
- :func:`batch100`: 100 images, one per class, by Inverting Gradients on ResNet32-10 (Geiping et
  al. 2020's notebook "ResNet32-10 - Recovering 100 CIFAR-100 images"; ``quick``: a ConvNet).
- :func:`defense_curves`: PSNR / SSIM against ε, σ and the keep-ratio, per attack and seed, with
  :func:`failure_levels` the level at which each attack fails.
- :func:`krum_vs_average`: what the server can invert when Krum forwards one worker's gradient
  versus when it averages all of them.

Run lengths come from a named :class:`Profile` (``smoke``: seconds, that it runs; ``quick``: a
CPU in minutes; ``paper``: the papers' iteration counts). Seeds fix the model weights, the dummy
draws, the noise and which images are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dpbr_lib import aggregators, privacy
from dpbr_lib._registry import Registry
from dpbr_lib._validation import check_device, check_int
from dpbr_lib.inversion.attacks import ATTACKS, CONFIGS, DLGConfig, IGConfig, Reconstruction
from dpbr_lib.inversion.defenses import NO_DEFENSE, TRAINING_CLIP, Defense, training_sigma
from dpbr_lib.inversion.images import ImageSet, load_images
from dpbr_lib.inversion.metrics import FAIL_PSNR_DB, FAIL_SSIM, label_accuracy, score
from dpbr_lib.inversion.models import build_model, check_images_fit

NUM_CLASSES = 100  # CIFAR-100, or the 100 photo-crop classes offline


@dataclass(frozen=True)
class Profile:
    """Run lengths and grids of one profile."""

    name: str
    dlg: DLGConfig  # DLG / iDLG in single-batch and from-batch
    ig: IGConfig  # IG in single-batch, from-batch and krum
    batch100: IGConfig  # IG in the 100-image case
    batch100_model: str  # "resnet32-10" (the paper) or "convnet" (CPU)
    defense_dlg: DLGConfig  # DLG / iDLG inside the defense curves
    defense_ig: IGConfig  # IG inside the defense curves
    seeds: tuple[int, ...]  # seeds of the defense curves
    epsilons: tuple[float, ...]  # ε grid (analytic Gaussian mechanism, δ = 1e-6)
    sigmas: tuple[float, ...]  # fixed-σ grid
    keep_ratios: tuple[float, ...]  # sparsification grid (top-k and random-k)


PROFILES = Registry[Profile]("profile")
PROFILES.register(
    "paper",
    Profile(
        name="paper",
        dlg=DLGConfig(steps=300),  # Zhu et al. 2019: 300 L-BFGS iterations
        ig=IGConfig(iterations=24_000, restarts=4, tv=1e-2),
        batch100=IGConfig(iterations=24_000, restarts=4, tv=1e-2),  # Geiping et al. notebook
        batch100_model="resnet32-10",
        defense_dlg=DLGConfig(steps=300),
        defense_ig=IGConfig(iterations=24_000, restarts=4, tv=1e-2),
        seeds=(0, 1, 2, 3, 4),
        epsilons=(1.0, 10.0, 1e2, 1e3, 1e4, 1e6, 1e8, 1e10, 1e12),
        sigmas=(1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0),
        keep_ratios=(0.5, 0.3, 0.1, 0.03, 0.01),
    ),
)
PROFILES.register(
    "quick",
    Profile(
        name="quick",
        dlg=DLGConfig(steps=300, patience=20),
        ig=IGConfig(iterations=500, restarts=1, tv=1e-2),
        # TV 1e-1 (not the paper's 1e-2): 26.7 dB instead of 12.2 dB mean PSNR in 1000 steps
        batch100=IGConfig(iterations=1000, restarts=1, tv=1e-1, log_every=50),
        batch100_model="convnet",
        defense_dlg=DLGConfig(steps=100, patience=10, retries=1),
        defense_ig=IGConfig(iterations=300, restarts=1, tv=1e-2),
        seeds=(2, 3),  # the coffee and rocket crops: undefended DLG passes 30 dB in 100 steps
        epsilons=(1e2, 1e5, 1e8, 1e11),  # b = 1, d ≈ 85k: DLG needs a huge ε to see anything
        sigmas=(1e-3, 1e-2, 1e-1),
        keep_ratios=(0.3, 0.1, 0.03),
    ),
)
PROFILES.register(
    "smoke",
    Profile(
        name="smoke",  # seconds: checks that everything runs (book builds, CI), not quality
        dlg=DLGConfig(steps=5),
        ig=IGConfig(iterations=20, restarts=1, log_every=5),
        batch100=IGConfig(iterations=3, restarts=1, log_every=1),
        batch100_model="convnet",
        defense_dlg=DLGConfig(steps=3),
        defense_ig=IGConfig(iterations=10, restarts=1, log_every=5),
        seeds=(0,),
        epsilons=(1e4,),
        sigmas=(1e-2,),
        keep_ratios=(0.1,),
    ),
)


@dataclass
class Experiment:
    """One reconstruction: the originals, what came back, and one scored row per original."""

    name: str
    originals: ImageSet
    reconstruction: Reconstruction
    table: pd.DataFrame  # per original: psnr, ssim, mse, label, recovered label, failed, ...
    model: str
    profile: str
    caption: str

    def matched_images(self) -> torch.Tensor:
        """Reconstructions reordered so that row i is matched to original i."""
        order = torch.as_tensor(self.table["match"].to_numpy(copy=True))
        return self.reconstruction.images[order]


def default_model(attack: str) -> str:
    """The network each attack is run on by default: DLG's LeNet, or the CPU ConvNet for IG."""
    return "convnet" if attack == "ig" else "lenet"


def _config(attack: str, profile: Profile, kind: str = "run") -> DLGConfig | IGConfig:
    if CONFIGS[attack] is IGConfig:
        return profile.defense_ig if kind == "defense" else profile.ig
    return profile.defense_dlg if kind == "defense" else profile.dlg


def _resolve(attack: str, profile: str | Profile) -> Profile:
    ATTACKS.get(attack)  # unknown attack: error listing the registry's names
    return profile if isinstance(profile, Profile) else PROFILES.get(profile)


def _invert(
    attack: str,
    model_name: str,
    images: ImageSet,
    *,
    seed: int,
    config: DLGConfig | IGConfig,
    defense: Defense = NO_DEFENSE,
    known_labels: bool = False,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> tuple[Reconstruction, pd.DataFrame]:
    """Share the gradient of ``images`` under ``defense``, invert it, score every original.

    The model, the images and the attack live on ``device`` (default the CPU); the draws come
    from a CPU generator, so every device starts from the same model, noise and dummies. The
    reconstruction comes back on the CPU."""
    device = check_device("device", device)
    model = build_model(
        model_name, num_classes=NUM_CLASSES, input_shape=tuple(images.images.shape[1:]), seed=seed
    ).to(device)
    pixels, classes = images.images.to(device), images.labels.to(device)
    check_images_fit(model, pixels)
    generator = torch.Generator().manual_seed(seed)
    target = defense.share(model, pixels, classes, generator)  # [d]
    labels = classes if known_labels and attack != "idlg" else None
    rec = ATTACKS.get(attack)(
        model, target, num_images=len(images), labels=labels, config=config, defense=defense,
        generator=generator, progress=progress,
    ).cpu()
    scores = score(rec.images, images.images, reconstructed_labels=rec.labels, labels=images.labels)
    table = pd.DataFrame(
        {
            "attack": attack,
            "model": model_name,
            "seed": seed,
            "defense": defense.label(),
            "image": np.arange(len(images)),
            "name": list(images.names),
            "label": images.labels.numpy(),
            "recovered_label": rec.labels.detach().cpu().numpy()[scores["order"]],
            "label_accuracy": label_accuracy(rec.labels, images.labels),
            "psnr": scores["psnr"],
            "ssim": scores["ssim"],
            "mse": scores["mse"],
            "failed": scores["failed"],
            "match": scores["order"],
            "gradient_distance": rec.loss,
            "diverged_attempts": rec.diverged,
            "retried_attempts": rec.retried,
            "seconds": rec.seconds,
        }
    )
    return rec, table


def single_batch(
    *,
    attack: str = "dlg",
    batch_size: int = 1,
    profile: str | Profile = "quick",
    model: str | None = None,
    source: str = "auto",
    data_dir: str | Path | None = None,
    image_size: int = 32,
    start: int = 0,
    seed: int = 0,
    known_labels: bool = False,
    defense: Defense = NO_DEFENSE,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> Experiment:
    """Invert the gradient of one batch of ``batch_size`` images (default: one image, DLG)."""
    prof = _resolve(attack, profile)
    batch_size = check_int("batch_size", batch_size, low=1)
    images = load_images(batch_size, source=source, data_dir=data_dir, size=image_size, start=start)
    model_name = model or default_model(attack)
    rec, table = _invert(
        attack, model_name, images, seed=seed, config=_config(attack, prof), defense=defense,
        known_labels=known_labels, progress=progress, device=device,
    )
    caption = (
        f"{attack.upper()} on {model_name}, {prof.name} profile, seed {seed}: {images.caption}."
    )
    return Experiment("single-batch", images, rec, table, model_name, prof.name, caption)


def from_batch(
    *,
    batch_size: int = 4,
    index: int = 0,
    attack: str = "ig",
    profile: str | Profile = "quick",
    model: str | None = None,
    source: str = "auto",
    data_dir: str | Path | None = None,
    image_size: int = 32,
    start: int = 0,
    seed: int = 0,
    known_labels: bool = False,
    defense: Defense = NO_DEFENSE,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> Experiment:
    """Image ``index`` out of a batch of ``batch_size``: the batch gradient is inverted and the
    table's ``selected`` column marks the chosen original (scored against its matched guess)."""
    prof = _resolve(attack, profile)
    batch_size = check_int("batch_size", batch_size, low=1)
    index = check_int("index", index, low=0, high=batch_size - 1)
    images = load_images(batch_size, source=source, data_dir=data_dir, size=image_size, start=start)
    model_name = model or default_model(attack)
    rec, table = _invert(
        attack, model_name, images, seed=seed, config=_config(attack, prof), defense=defense,
        known_labels=known_labels, progress=progress, device=device,
    )
    table["selected"] = table["image"] == index
    caption = (
        f"{attack.upper()} on {model_name}, {prof.name} profile, seed {seed}: image {index} "
        f"({images.names[index]}) out of a batch of {batch_size}; {images.caption}."
    )
    return Experiment("from-batch", images, rec, table, model_name, prof.name, caption)


def batch100(
    *,
    profile: str | Profile = "quick",
    model: str | None = None,
    source: str = "auto",
    data_dir: str | Path | None = None,
    image_size: int = 32,
    start: int = 0,
    seed: int = 0,
    known_labels: bool = True,
    num_images: int = 100,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> Experiment:
    """Inverting Gradients on 100 images, one per class (labels given, as in the notebook).

    Geiping et al.'s network is ResNet32-10 *trained* for 10 epochs; offline there is no
    CIFAR-100 to train on, so the network keeps its seeded initial weights (caption says so).
    """
    prof = _resolve("ig", profile)
    num_images = check_int("num_images", num_images, low=1, high=NUM_CLASSES)
    images = load_images(num_images, source=source, data_dir=data_dir, size=image_size, start=start)
    model_name = model or prof.batch100_model
    rec, table = _invert(
        "ig", model_name, images, seed=seed, config=prof.batch100, known_labels=known_labels,
        progress=progress, device=device,
    )
    caption = (
        f"Inverting Gradients, {num_images} images (one per class) on {model_name} at its seeded "
        f"initial weights, {prof.name} profile ({prof.batch100.iterations} iterations × "
        f"{prof.batch100.restarts} restart(s), TV {prof.batch100.tv:g}), seed {seed}: "
        f"{images.caption}."
    )
    return Experiment("batch100", images, rec, table, model_name, prof.name, caption)


# --------------------------------------------------------------------------------------------- #
# Defense curves


DEFENSE_FAMILIES = ("none", "epsilon", "sigma", "topk", "randk")


def defense_grid(profile: Profile, clip: float = TRAINING_CLIP) -> list[tuple[str, float, Defense]]:
    """(family, level, Defense) for every level of the profile's grids, undefended first."""
    grid: list[tuple[str, float, Defense]] = [("none", math.nan, NO_DEFENSE)]
    grid += [("epsilon", e, Defense(clip=clip, epsilon=e)) for e in profile.epsilons]
    grid += [("sigma", s, Defense(sigma=s)) for s in profile.sigmas]
    for mode in ("topk", "randk"):
        grid += [(mode, r, Defense(keep_ratio=r, sparsify_mode=mode)) for r in profile.keep_ratios]
    return grid


def defense_curves(
    *,
    attacks: tuple[str, ...] = ("dlg", "idlg", "ig"),
    profile: str | Profile = "quick",
    seeds: tuple[int, ...] | None = None,
    epsilons: tuple[float, ...] | None = None,
    sigmas: tuple[float, ...] | None = None,
    keep_ratios: tuple[float, ...] | None = None,
    clip: float = TRAINING_CLIP,
    source: str = "auto",
    data_dir: str | Path | None = None,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """Reconstruction quality of each attack against each defense level, one row per run.

    Every run attacks one image (seed s attacks image s) on the attack's default network. ε is
    per-sample clipping at ``clip`` plus analytic-Gaussian noise for δ = 1e-6 and b = 1; the
    ``training_sigma`` column is the σ that ε means for the Byzantine-resilient training
    (C = 0.01, δ = 1e-6, b = 50, :func:`~dpbr_lib.inversion.defenses.training_sigma`).
    """
    if not attacks:
        raise ValueError("The 'attacks' parameter must name at least one attack. Got ().")
    for attack in attacks[1:]:
        ATTACKS.get(attack)  # unknown attack: error listing the registry's names
    prof = _resolve(attacks[0], profile)
    prof = replace(
        prof,
        seeds=prof.seeds if seeds is None else tuple(seeds),
        epsilons=prof.epsilons if epsilons is None else tuple(epsilons),
        sigmas=prof.sigmas if sigmas is None else tuple(sigmas),
        keep_ratios=prof.keep_ratios if keep_ratios is None else tuple(keep_ratios),
    )
    grid = defense_grid(prof, clip)  # validates every level before any run
    check_device("device", device)
    images = {s: load_images(1, source=source, data_dir=data_dir, start=s) for s in prof.seeds}
    rows = []
    for attack in attacks:
        config = _config(attack, prof, "defense")
        for family, level, defense in grid:
            for seed in prof.seeds:
                _, table = _invert(
                    attack, default_model(attack), images[seed], seed=seed, config=config,
                    defense=defense, progress=progress, device=device,
                )
                row = table.iloc[0].to_dict()  # one image per run
                row |= {"attack": attack, "defense": family, "level": level}
                row["noise_std"] = defense.noise_std(1)
                row["training_sigma"] = training_sigma(level) if family == "epsilon" else math.nan
                rows.append(row)
    columns = [
        "attack", "defense", "level", "seed", "psnr", "ssim", "mse", "label_accuracy", "failed",
        "noise_std", "training_sigma", "gradient_distance", "diverged_attempts",
        "retried_attempts", "seconds",
    ]
    return pd.DataFrame(rows)[columns]


#: For each defense family, whether a *larger* level is a *stronger* defense.
STRONGER_WHEN_LARGER = {"epsilon": False, "sigma": True, "topk": False, "randk": False}


def failure_levels(curves: pd.DataFrame) -> pd.DataFrame:
    """Per attack and defense family, the weakest level at which the attack fails.

    "Fails" at a level: the seed-mean PSNR is below :data:`~.metrics.FAIL_PSNR_DB` (15 dB) or the
    seed-mean SSIM below :data:`~.metrics.FAIL_SSIM` (0.2). Levels are walked from the weakest
    defense to the strongest; ``fails_at`` is NaN if the attack never fails on the grid, and
    ``fails_undefended`` flags an attack that fails even without a defense.
    """
    means = curves.groupby(["attack", "defense", "level"], dropna=False)[["psnr", "ssim"]].mean()
    means["failed"] = (means["psnr"] < FAIL_PSNR_DB) | (means["ssim"] < FAIL_SSIM)
    rows = []
    for attack in curves["attack"].unique():
        base = means.loc[attack]
        undefended = bool(base.loc["none"]["failed"].any()) if "none" in base.index else False
        for family, larger in STRONGER_WHEN_LARGER.items():
            if family not in base.index.get_level_values(0):
                continue
            levels = base.loc[family].sort_index(ascending=larger)  # weakest first
            failing = levels[levels["failed"]]
            first = failing.index[0] if len(failing) else math.nan
            rows.append(
                {
                    "attack": attack,
                    "defense": family,
                    "fails_at": first,
                    "psnr_at_failure": failing["psnr"].iloc[0] if len(failing) else math.nan,
                    "ssim_at_failure": failing["ssim"].iloc[0] if len(failing) else math.nan,
                    "weakest_level": levels.index[0],
                    "psnr_at_weakest": levels["psnr"].iloc[0],
                    "fails_undefended": undefended,
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- #
# Krum forwards one worker's gradient; averaging mixes all of them


def krum_vs_average(
    *,
    workers: int = 8,
    byzantine: int = 2,
    attack: str = "ig",
    profile: str | Profile = "quick",
    source: str = "auto",
    data_dir: str | Path | None = None,
    start: int = 0,
    seed: int = 0,
    defense: Defense = NO_DEFENSE,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> tuple[pd.DataFrame, dict[str, Experiment]]:
    """Each of ``workers`` honest workers shares the gradient of one image; the server inverts
    the aggregate. Krum (Blanchard et al. 2017) outputs one worker's gradient unchanged, so the
    server inverts a single image; the average is the gradient of the whole batch of ``workers``
    images, inverted as a batch. Returns a summary table (``psnr_picked_worker``: how well the
    image of the worker Krum picked is recovered under each rule) and the two experiments.
    """
    prof = _resolve(attack, profile)
    workers = check_int("workers", workers, low=1)
    krum = aggregators.get("krum")
    krum.check(workers, byzantine)
    average = aggregators.get("average")
    images = load_images(workers, source=source, data_dir=data_dir, start=start)
    model_name = default_model(attack)
    device = check_device("device", device)
    model = build_model(model_name, num_classes=NUM_CLASSES, seed=seed).to(device)
    check_images_fit(model, images.images)
    generator = torch.Generator().manual_seed(seed)
    per_worker = privacy.flat_per_sample_gradients(
        model, F.cross_entropy, images.images.to(device), images.labels.to(device)
    )  # [n, d]: worker i's gradient of its one image
    if defense.clip is not None:
        per_worker = privacy.per_sample_clip(per_worker, defense.clip)
    shared = defense.protect(per_worker, 1, generator)  # [n, d], noise drawn per worker
    forwarded = krum(shared, byzantine)  # [d], one of the rows
    picked = int(torch.cdist(forwarded[None], shared).argmin())  # which worker it is
    config = _config(attack, prof)
    experiments, rows = {}, []
    for rule, aggregate, subset in (
        ("krum", forwarded, [picked]),
        ("average", average(shared, byzantine), list(range(workers))),
    ):
        originals = ImageSet(
            images.images[subset], images.labels[subset], images.source,
            tuple(images.names[i] for i in subset), images.caption,
        )
        rec = ATTACKS.get(attack)(
            model, aggregate, num_images=len(subset), config=config, defense=defense,
            generator=generator, progress=progress,
        ).cpu()
        scores = score(rec.images, originals.images)
        table = pd.DataFrame(
            {
                "rule": rule, "image": subset, "name": list(originals.names),
                "psnr": scores["psnr"], "ssim": scores["ssim"], "mse": scores["mse"],
                "failed": scores["failed"], "match": scores["order"],
            }
        )
        caption = (
            f"{rule}: {attack.upper()} on the aggregate of {workers} workers (one image each), "
            f"{'Krum forwarded worker ' + str(picked) if rule == 'krum' else 'all averaged'}."
        )
        experiments[rule] = Experiment(rule, originals, rec, table, model_name, prof.name, caption)
        rows.append(
            {
                "rule": rule, "workers": workers, "byzantine": byzantine,
                "images_in_gradient": len(subset),
                "picked_worker": picked,
                "psnr_picked_worker": float(table.loc[table["image"] == picked, "psnr"].iloc[0]),
                "psnr_mean": scores["psnr"].mean(), "psnr_max": scores["psnr"].max(),
                "ssim_mean": scores["ssim"].mean(),
                "label_accuracy": label_accuracy(rec.labels, originals.labels),
                "seconds": rec.seconds,
            }
        )
    return pd.DataFrame(rows), experiments
