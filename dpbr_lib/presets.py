"""Named experiment grids: the reference experiments of Guerraoui et al. 2021 and their extensions.

The reference is LPD-EPFL's DifferentialByzantine ``reproduce.py`` (the experiments of Guerraoui,
Gupta, Pinot, Rouault & Stephan 2021, "Differential privacy and Byzantine resilience in SGD: do
they add up?", PODC, Section 6): n = 11 workers, f = 5 declared Byzantine, gradient clip
C = 0.01, δ = 1e-6, 1,000 steps, test accuracy every 50 steps, 5 seeds (``tools/jobs.py``:
seeds 1..5); rules/attacks {average without attack, MDA ("brute") vs *a little is enough*
(factor 1.5, negative), MDA vs *fall of empires* (factor 1.1)}; ε ∈ {none, 0.1, 0.2, 0.5};
b ∈ {10, 25, 50, 100, 250, 500}; the logistic model ``simples-logit`` on LIBSVM phishing with
MSE loss, lr 2 and momentum 0.99.

Every preset is a frozen :class:`Preset` over the one default :data:`REFERENCE`, and every
profile a frozen :class:`Profile` over the one default :data:`PAPER` (the reference's sizes):

- ``paper``: the full grid on MNIST (or phishing for ``logit``), meant for a large machine;
- ``quick``: digits (offline), fewer steps, one seed, fewer ε/b values; each ≤ 5 minutes on 2
  cores with the default process pool. Measured (``time dpbr sweep NAME --profile quick``, a
  2-core machine shared with other jobs, load average 5-7): reference 193 s, sparsification
  168 s, rules 238 s, batch_vs_dim 185 s, logit 96 s of wall time;
- ``smoke``: seconds, for the notebooks' tests (a handful of 20-step runs; about 4 s inline
  with one torch thread).

``get(name).grid(profile)`` is the grid :func:`dpbr_lib.sweep.run` takes, ``.seeds(profile)``
its seeds, and ``.sweep(profile, results_dir, ...)`` runs it.

The CNN keeps the reference's n, f, C, δ and steps but not its lr 2 / momentum 0.99, which were
tuned for the logistic model: its optimiser comes from ``dpbr_lib.training.MODEL_DEFAULTS``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from dpbr_lib._registry import Registry
from dpbr_lib._validation import check_choice

PROFILES = ("quick", "paper", "smoke")

# --------------------------------------------------------------------------------------------- #
# The reference's pieces


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


#: ``reproduce.py``'s ``params_common`` that do not change across profiles (our field names).
REFERENCE_FIXED = _frozen({"n": 11, "f": 5, "clip": 0.01, "delta": 1e-6})

#: ``reproduce.py``'s (gar, attack) loop: average is run without any Byzantine worker
#: (``nb-real-byz`` 0), MDA (``brute``) against the two attacks with all 5 Byzantine.
NO_ATTACK = _frozen({"rule": "average", "attack": "none"})
LITTLE = _frozen({"attack": "little", "attack_factor": 1.5, "attack_negative": True})
EMPIRE = _frozen({"attack": "empire", "attack_factor": 1.1})
REFERENCE_SETTINGS: tuple[Mapping[str, Any], ...] = (
    NO_ATTACK,
    _frozen({"rule": "mda", **LITTLE}),
    _frozen({"rule": "mda", **EMPIRE}),
)

#: The rules the reference could not run next to MDA (``rules`` preset).
ROBUST_RULES = ("mda", "krum", "median", "trimmed_mean", "bulyan", "nnm+krum")
#: f of the ``rules`` preset: Bulyan needs n ≥ 4f + 3 and Krum n ≥ 2f + 3 (El Mhamdi et al.
#: 2018; Blanchard et al. 2017), so at the reference's n = 11 every rule runs only for f ≤ 2.
RULES_F = 2


# --------------------------------------------------------------------------------------------- #
# Profiles


@dataclass(frozen=True)
class Profile:
    """The sizes of a grid. Defaults: the reference's full grid (``reproduce.py``)."""

    dataset: str = "mnist"  # the CNN's paper data set (the reference ran phishing, logit only)
    steps: int = 1000  # nb-steps
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)  # tools/jobs.py: seeds 1..5
    batch_sizes: tuple[int, ...] = (10, 25, 50, 100, 250, 500)  # b
    epsilons: tuple[float | None, ...] = (None, 0.1, 0.2, 0.5)  # per-step ε; None: no noise
    keep_ratios: tuple[float, ...] = (0.5, 0.1, 0.01)  # sparsification: kept fraction
    sparsify_modes: tuple[str, ...] = ("randk", "topk")  # sparsification: which coordinates
    widths: tuple[int, ...] = (16,)  # CNN width(s); batch_vs_dim varies it to vary d
    eval_every: int = 50  # evaluation-delta


PAPER = Profile()
QUICK = dataclasses.replace(
    PAPER, dataset="digits", steps=150, seeds=(1,), batch_sizes=(10, 50), eval_every=25
)
SMOKE = dataclasses.replace(
    QUICK, steps=20, batch_sizes=(10,), epsilons=(None, 0.5), keep_ratios=(0.1,),
    sparsify_modes=("topk",), eval_every=10,
)


# --------------------------------------------------------------------------------------------- #
# Presets


@dataclass(frozen=True)
class Preset:
    """A named grid: what varies (``settings``, the privacy axis, b, width) over fixed fields.

    Defaults: the reference experiment (:data:`REFERENCE`).
    """

    name: str = "reference"
    description: str = (
        "Guerraoui et al. 2021, Section 6 (reproduce.py): average without attack, MDA vs "
        "a little is enough and vs fall of empires, across per-step ε and batch size b, on the CNN."
    )
    privacy: str = "gaussian"  # the privacy axis: "gaussian" (ε values) | "sparsify" (ratios)
    settings: tuple[Mapping[str, Any], ...] = REFERENCE_SETTINGS  # the rule/attack pairs
    fixed: Mapping[str, Any] = field(default_factory=lambda: REFERENCE_FIXED)  # in every run
    model: str = "cnn"
    profiles: Mapping[str, Profile] = field(
        default_factory=lambda: _frozen({"paper": PAPER, "quick": QUICK, "smoke": SMOKE})
    )
    figures: tuple[str, ...] = ("resilience_none", "resilience_gaussian", "heatmap", "vn_ratio")

    def profile(self, name: str) -> Profile:
        """The named profile; an unknown name lists the valid ones."""
        return self.profiles[check_choice("profile", name, list(self.profiles))]

    def seeds(self, profile: str = "quick") -> list[int]:
        return list(self.profile(profile).seeds)

    def privacy_axis(self, profile: str = "quick") -> list[dict[str, Any]]:
        """The privacy settings of the grid, as zipped groups (``privacy`` with its options)."""
        p = self.profile(profile)
        if self.privacy == "sparsify":
            return [
                {"privacy": "sparsify", "sparsify_ratio": ratio, "sparsify_mode": mode}
                for mode in p.sparsify_modes
                for ratio in p.keep_ratios
            ]
        return [
            {"privacy": "none"} if eps is None else {"privacy": "gaussian", "epsilon": eps}
            for eps in p.epsilons
        ]

    def grid(self, profile: str = "quick") -> dict[str, list[Any]]:
        """The grid of ``profile`` for :func:`dpbr_lib.sweep.run` (with :meth:`seeds`)."""
        p = self.profile(profile)
        return {
            "dataset": [p.dataset],
            "model": [self.model],
            "steps": [p.steps],
            "eval_every": [p.eval_every],
            **{key: [value] for key, value in self.fixed.items()},
            "width": list(p.widths),
            "rule/attack": [dict(setting) for setting in self.settings],
            "privacy/option": self.privacy_axis(profile),
            "batch_size": list(p.batch_sizes),
        }

    def sweep(self, profile: str, results_dir: str | Path, **kwargs: Any) -> pd.DataFrame:
        """Run the grid of ``profile`` into ``results_dir`` (``kwargs`` go to sweep.run)."""
        from dpbr_lib import sweep

        return sweep.run(self.grid(profile), self.seeds(profile), results_dir, **kwargs)


REFERENCE = Preset()

SPARSIFICATION = dataclasses.replace(
    REFERENCE,
    name="sparsification",
    description=(
        "The reference grid with gradient sparsification instead of noise: each honest worker "
        "sends only a fraction (keep-ratio) of its coordinates, top-k or random-k."
    ),
    privacy="sparsify",
    profiles=_frozen({
        "paper": PAPER,
        # 3 x 6 sparsifiers x 2 b = 36 runs: the smaller b keep it within 5 minutes
        "quick": dataclasses.replace(QUICK, batch_sizes=(10, 25)),
        # two kept fractions, so that the chapter's explorer has a slider to move
        "smoke": dataclasses.replace(SMOKE, keep_ratios=(0.5, 0.1)),
    }),
    figures=("resilience_sparsify", "heatmap"),
)

RULES = dataclasses.replace(
    REFERENCE,
    name="rules",
    description=(
        "The reference grid with every robust rule the reference could not run next to MDA "
        f"(Krum, median, trimmed mean, Bulyan, NNM+Krum) at n = 11, f = {RULES_F} (Bulyan's "
        "n ≥ 4f + 3 and Krum's n ≥ 2f + 3 rule out the reference's f = 5)."
    ),
    settings=(
        NO_ATTACK,
        *(_frozen({"rule": rule, **attack})
          for rule in ROBUST_RULES
          for attack in (LITTLE, EMPIRE)),
    ),
    fixed=_frozen({**REFERENCE_FIXED, "f": RULES_F}),
    profiles=_frozen({
        "paper": PAPER,
        # 13 rule/attack pairs: two ε, one b, fewer steps keep it within 5 minutes
        "quick": dataclasses.replace(QUICK, epsilons=(None, 0.5), batch_sizes=(25,)),
        "smoke": SMOKE,
    }),
    figures=("resilience_none", "resilience_gaussian", "heatmap"),
)

#: ε of ``batch_vs_dim``: the largest per-step ε of the reference grid (the least noise).
BATCH_VS_DIM_EPSILON = 0.5
BATCH_VS_DIM = dataclasses.replace(
    REFERENCE,
    name="batch_vs_dim",
    description=(
        "Batch size against model dimension: the CNN at several widths (d from ~10³ to ~10⁶ in "
        f"the paper profile), per-step ε = {BATCH_VS_DIM_EPSILON}, MDA with f = 5 declared and "
        "no attack; the smallest b that still converges is compared with the √d bound of "
        "Guerraoui et al. 2021 and the constant-batch bound (dpbr_lib.theory)."
    ),
    settings=(_frozen({"rule": "mda", "attack": "none"}),),
    profiles=_frozen({
        # MNIST: d = 1,762 (width 2) ... 1,682,954 (width 64); per-sample gradients would need
        # h·b·d floats, 75 GB at width 64 and b = 1000, so they are taken in chunks of samples
        # (privacy.PER_SAMPLE_CHUNK_ELEMENTS, 1 GiB)
        "paper": dataclasses.replace(
            PAPER, epsilons=(BATCH_VS_DIM_EPSILON,), widths=(2, 4, 8, 16, 32, 64),
            batch_sizes=(10, 25, 50, 100, 250, 500, 1000),
        ),
        # digits: d = 116, 322, 1,034; b up to the 1,438 training samples (a worker's share);
        # 100 steps: the b = 1000 runs cost 11,000 per-sample gradients a step
        "quick": dataclasses.replace(
            QUICK, steps=100, epsilons=(BATCH_VS_DIM_EPSILON,), widths=(1, 2, 4),
            batch_sizes=(50, 200, 400, 1000),
        ),
        "smoke": dataclasses.replace(
            SMOKE, epsilons=(BATCH_VS_DIM_EPSILON,), widths=(2, 4), batch_sizes=(10, 50),
        ),
    }),
    figures=("batch_vs_dim", "heatmap_d"),
)

LOGIT = dataclasses.replace(
    REFERENCE,
    name="logit",
    description=(
        "The reference exactly: its logistic model (simples-logit) with MSE loss, lr 2 and "
        "momentum 0.99 (dpbr_lib.training.MODEL_DEFAULTS['logit']), and its clipping of each "
        "worker's batch gradient (clip_mode='batch', so no DP guarantee: epsilon_spent is NaN)."
    ),
    model="logit",
    fixed=_frozen({**REFERENCE_FIXED, "clip_mode": "batch"}),
    profiles=_frozen({
        "paper": dataclasses.replace(PAPER, dataset="phishing"),
        "quick": dataclasses.replace(QUICK, batch_sizes=(10, 50, 250)),
        "smoke": SMOKE,
    }),
)

PRESETS: Registry[Preset] = Registry("preset")
for _preset in (REFERENCE, SPARSIFICATION, RULES, BATCH_VS_DIM, LOGIT):
    PRESETS.register(_preset.name, _preset)


def get(name: str) -> Preset:
    """The preset called ``name``; an unknown name lists the valid ones."""
    return PRESETS.get(name)


def names() -> list[str]:
    return PRESETS.names()


__all__ = [
    "BATCH_VS_DIM",
    "LOGIT",
    "PAPER",
    "PRESETS",
    "QUICK",
    "REFERENCE",
    "RULES",
    "SMOKE",
    "SPARSIFICATION",
    "Preset",
    "Profile",
    "get",
    "names",
]
