"""Figures of the reconstructions: originals beside reconstructions, loss curves, defense curves.

Every function returns a :class:`matplotlib.figure.Figure` and draws nothing else; the CLI
saves them, notebooks display them.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from dpbr_lib.inversion.attacks import Reconstruction
from dpbr_lib.inversion.defenses import training_sigma
from dpbr_lib.inversion.experiments import STRONGER_WHEN_LARGER, Experiment, failure_levels
from dpbr_lib.inversion.metrics import FAIL_PSNR_DB, FAIL_SSIM

_AXIS_LABELS = {
    "epsilon": "ε (per-sample clipping + analytic Gaussian noise, δ = 1e-6)",
    "sigma": "noise σ (fixed, on the unclipped gradient)",
    "topk": "keep-ratio (top-k sparsification)",
    "randk": "keep-ratio (random-k sparsification)",
}
_THRESHOLDS = {"psnr": FAIL_PSNR_DB, "ssim": FAIL_SSIM}


def _show(ax, image, title: str | None = None) -> None:  # image: Tensor[C, H, W] in [0, 1]
    pixels = image.detach().cpu().permute(1, 2, 0).numpy()
    ax.imshow(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=7)


def plot_reconstruction(experiment: Experiment, *, max_images: int = 16) -> Figure:
    """Originals (top) above their matched reconstructions (bottom), PSNR over each guess.

    Batches of more than ``max_images`` are shown as two square grids side by side.
    """
    originals, guesses = experiment.originals.images, experiment.matched_images()
    table = experiment.table
    n = originals.shape[0]
    selected = table["selected"].to_numpy() if "selected" in table else np.zeros(n, bool)
    if n <= max_images:
        width = max(6.0, 1.5 * n)
        fig = Figure(figsize=(width, 3.4), layout="constrained")
        axes = np.atleast_2d(fig.subplots(2, n, squeeze=False))
        for i in range(n):
            mark = " (selected)" if selected[i] else ""
            _show(axes[0, i], originals[i], f"#{i} label {int(table['label'].iloc[i])}{mark}")
            psnr, ssim = table["psnr"].iloc[i], table["ssim"].iloc[i]
            _show(axes[1, i], guesses[i], f"{psnr:.1f} dB, SSIM {ssim:.2f}")
        axes[0, 0].text(-0.15, 0.5, "original", transform=axes[0, 0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=8)
        axes[1, 0].text(-0.15, 0.5, "reconstruction", transform=axes[1, 0].transAxes,
                        rotation=90, va="center", ha="right", fontsize=8)
    else:
        side = math.ceil(math.sqrt(n))
        width = 12.0
        fig = Figure(figsize=(width, 6.6), layout="constrained")
        left, right = fig.subfigures(1, 2)
        for sub, images, title in (
            (left, originals, "originals"),
            (right, guesses, f"reconstructions (mean PSNR {table['psnr'].mean():.1f} dB)"),
        ):
            sub.suptitle(title, fontsize=9)
            axes = sub.subplots(side, side)
            for k, ax in enumerate(np.ravel(axes)):
                if k < n:
                    _show(ax, images[k])
                else:
                    ax.set_axis_off()
    fig.suptitle(_wrap(experiment.caption, int(width * 13)), fontsize=8)
    return fig


def _wrap(text: str, width: int = 110) -> str:
    return "\n".join(textwrap.wrap(text, width))


def plot_loss(
    reconstructions: Reconstruction | Sequence[Reconstruction], *, title: str = ""
) -> Figure:
    """Gradient-matching loss against iterations (log scale), one line per reconstruction."""
    if isinstance(reconstructions, Reconstruction):
        reconstructions = [reconstructions]
    fig = Figure(figsize=(5.0, 3.2), layout="constrained")
    ax = fig.subplots()
    for rec in reconstructions:
        steps, losses = zip(*rec.history, strict=True) if rec.history else ((), ())
        ax.plot(steps, losses, marker=".", label=f"{rec.attack} (final {rec.loss:.2e})")
    ax.set_yscale("log")
    ax.set_xlabel("iteration (L-BFGS step for DLG/iDLG, Adam step for IG)")
    ax.set_ylabel("gradient distance (+ TV for IG)")
    ax.legend(fontsize=8)
    ax.set_title(title or "reconstruction loss", fontsize=9)
    return fig


def plot_defense_curves(
    curves: pd.DataFrame,
    *,
    metric: str = "psnr",
    epsilons_for_training: Sequence[float] = (0.1, 1.0, 10.0),
) -> Figure:
    """One panel per defense family: ``metric`` (seed mean ± std) against the level, per attack.

    The failure threshold is a dashed line, each attack's undefended value a faint line and its
    failure level a dotted vertical line. On the ε panel a second axis shows the σ that ε means
    for the Byzantine-resilient training (:func:`~.defenses.training_sigma`: C = 0.01, δ = 1e-6,
    b = 50); on the σ panel dash-dotted lines mark that training σ at a few ε (the training
    gradient has norm at most C = 0.01; the attacked gradients here are unclipped).
    """
    families = [f for f in STRONGER_WHEN_LARGER if f in set(curves["defense"])]
    columns = min(2, max(1, len(families)))
    rows = math.ceil(max(1, len(families)) / columns)
    fig = Figure(figsize=(5.6 * columns, 3.9 * rows), layout="constrained")
    axes = np.ravel(fig.subplots(rows, columns, squeeze=False))
    failures = failure_levels(curves)
    for ax, family in zip(axes, families, strict=False):
        _defense_panel(ax, curves, family, metric, failures, epsilons_for_training)
    for ax in axes[len(families) :]:
        ax.set_axis_off()
    fig.suptitle(
        f"{metric.upper()} of the reconstruction against the defense (seed mean ± std; faint: "
        f"undefended; dotted: where the attack fails, PSNR < {FAIL_PSNR_DB:g} dB or SSIM < "
        f"{FAIL_SSIM:g})",
        fontsize=8,
    )
    return fig


def _defense_panel(ax, curves, family, metric, failures, epsilons_for_training) -> None:
    rows = curves[curves["defense"] == family]
    for attack, group in rows.groupby("attack", sort=False):
        stats = group.groupby("level")[metric].agg(["mean", "std"]).sort_index()
        line = ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), marker="o",
                           capsize=2, label=attack)
        color = line[0].get_color()
        base = curves[(curves["attack"] == attack) & (curves["defense"] == "none")][metric]
        if len(base):
            ax.axhline(base.mean(), color=color, lw=0.8, alpha=0.4)
        fail = failures[(failures["attack"] == attack) & (failures["defense"] == family)]
        if len(fail) and not math.isnan(fail["fails_at"].iloc[0]):
            ax.axvline(fail["fails_at"].iloc[0], color=color, ls=":", lw=1.4)
    ax.axhline(_THRESHOLDS[metric], color="k", ls="--", lw=0.8, label="fails below")
    levels = np.sort(rows["level"].unique())
    low, high = levels[0] / 2, levels[-1] * 2
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ax.set_xticks(levels, [f"{level:.3g}" for level in levels])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(_AXIS_LABELS[family], fontsize=8)
    ax.set_ylabel(metric.upper())
    if family == "epsilon":
        twin = ax.twinx()
        grid = np.logspace(np.log10(low), np.log10(high), 50)
        twin.plot(grid, [training_sigma(e) for e in grid], color="gray", lw=1)
        twin.set_yscale("log")
        twin.set_ylabel("σ of the training at this ε (C=0.01, b=50)", fontsize=7, color="gray")
    if family == "sigma":
        for eps in epsilons_for_training:
            sigma = training_sigma(eps)
            if low <= sigma <= high:
                ax.axvline(sigma, color="gray", ls="-.", lw=0.8)
                ax.annotate(f"training σ at ε={eps:g}", (sigma, 0.98),
                            xycoords=("data", "axes fraction"), fontsize=6, rotation=90,
                            va="top", ha="right", color="gray")
    ax.legend(fontsize=7)


def plot_krum(summary: pd.DataFrame, experiments: dict[str, Experiment]) -> Figure:
    """Krum's forwarded gradient vs the average: originals above reconstructions, per rule."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    widths = [len(e.originals) + 1 for e in experiments.values()]
    subs = fig.subfigures(1, len(experiments), width_ratios=widths)
    for sub, (rule, exp) in zip(np.atleast_1d(subs), experiments.items(), strict=True):
        n = len(exp.originals)
        axes = sub.subplots(2, n, squeeze=False)
        guesses = exp.matched_images()
        for i in range(n):
            _show(axes[0, i], exp.originals.images[i], f"worker {int(exp.table['image'].iloc[i])}")
            _show(axes[1, i], guesses[i], f"{exp.table['psnr'].iloc[i]:.1f} dB")
        row = summary[summary["rule"] == rule].iloc[0]
        sub.suptitle(f"{rule}: {int(row['images_in_gradient'])} image(s) in the gradient, "
                     f"mean PSNR {row['psnr_mean']:.1f} dB", fontsize=8)
    return fig
