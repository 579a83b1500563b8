"""Simulated distributed DP-SGD under Byzantine attack: one config in, one :class:`Result` out.

The protocol of one step, as in the reference experiments (LPD-EPFL DifferentialByzantine,
``train.py``; Guerraoui et al. 2021, "Differential privacy and Byzantine resilience in SGD: do
they add up?", Algorithm 1), with n workers of which f are declared and f_real are Byzantine:

1. **sample** — each of the h = n − f_real honest workers draws its own mini-batch of b distinct
   samples, uniformly at random from its data (``data_split="shared"``: the whole training set,
   as in the reference, where all workers read one shuffled loader; ``"partition"``: a disjoint
   shard of ⌊N/n⌋ samples per worker). Draws are independent across workers and steps, from the
   run's seeded generator. (The reference walks through one shuffled epoch, so its batches of one
   step are disjoint; independent uniform draws are what the privacy accountant assumes.)
2. **gradients** — ``clip_mode="per_sample"``: the per-sample gradients of all h·b samples in
   ONE ``torch.func`` call on the stacked batches, each clipped to norm C and averaged per worker
   (Abadi et al. 2016; :func:`dpbr_lib.privacy.clipped_mean_gradients`, in chunks of samples for
   large h·b·d); ``"batch"``: each worker's batch gradient, from one call vectorized over the
   workers (:func:`dpbr_lib.privacy.worker_mean_gradients`), clipped to C (the reference's; no
   DP guarantee); ``"none"``: that batch gradient as it is.
3. **privacy** — ``"gaussian"``: N(0, σ²I) added to each honest gradient, σ from (ε, δ) and the
   sensitivity Δ = 2C/b (:func:`dpbr_lib.privacy.gaussian_sigma`); ``"sparsify"``: top-k or
   random-k coordinates kept; ``"none"``.
4. **attack** — the f_real Byzantine gradients, built from what the server receives (the honest
   gradients after step 3) and, if ``attack_search``, line-searched against the rule.
5. **aggregate** — the rule with the declared f on the n stacked gradients.
6. **update** — server SGD with momentum (``torch.optim.SGD``, dampening 0) and the reference's
   hyperbolic learning-rate decay lr_s = lr / (s′/T + 1), s′ the step rounded down to a multiple
   of ``lr_decay_delta`` and T = ``lr_decay`` (its defaults, T = Δ = 5000, keep lr constant for
   1000 steps).

**Divergence.** If the server's model becomes non-finite (e.g. the plain average of a NaN
attack) or an honest worker sends a non-finite gradient, the step is recorded (its test loss is
NaN), the run stops early and the summary says ``diverged=True`` with ``diverged_step``; it never
raises. The metrics table then ends at that step.

**Privacy accounting.** With ``privacy="gaussian"`` and per-sample clipping the summary's
``epsilon_spent`` is the accountant's ε at δ after the steps done (:func:`dpbr_lib.privacy.
epsilon_spent`, Poisson-subsampled Gaussian). It is fed ``sampling_rate`` q = b/m, m the size of
one worker's data (N shared, ⌊N/n⌋ partitioned), and ``noise_multiplier`` σ/Δ, the noise std in
units of the replace-one sensitivity Δ = 2C/b that calibrated σ. The accountant's neighbouring
relation is add/remove, under which the mean's sensitivity is only C/b; feeding σ/Δ instead of
σ/(C/b) therefore over-states the privacy loss (a safe upper bound), and each worker's ε is the
same since workers share σ, b and m. With ``clip_mode="batch"`` or ``"none"`` one sample can
move a worker's gradient by more than Δ, so no guarantee holds: ``epsilon_spent`` is NaN and
``dp_guarantee`` False.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from dpbr_lib import __version__, aggregators, attacks, data, models, privacy
from dpbr_lib._registry import Registry
from dpbr_lib._validation import check_choice, check_device, check_float, check_int
from dpbr_lib.results import Result

PRIVACY_MODES = ("none", "gaussian", "sparsify")
CLIP_MODES = ("per_sample", "batch", "none")
DATA_SPLITS = ("shared", "partition")
NO_ATTACK = "none"

#: Per-model defaults of the optimiser fields left to ``None``.
#:
#: ``logit``: the reference's values (``reproduce.py``: lr 2, momentum 0.99, MSE loss).
#: ``cnn``: tuned on digits: width 16 (d = 13,706), n = 11, average, no attack, no noise,
#: per-sample clip C = 0.01, b = 50, seed 0, 300 steps; test accuracy at step 50 / 300:
#:
#: ========  =====  ===========  ===========
#: momentum  lr     step 50      step 300
#: ========  =====  ===========  ===========
#: 0.9       2      0.435        0.844
#: 0.9       5      0.786        0.908
#: 0.9       10     0.774        0.933
#: 0.9       20     0.838        0.944
#: 0.9       50     0.911        0.958
#: 0.9       100    0.936        0.969
#: 0.9       200    0.950        0.978
#: 0.5       50     0.827        0.942
#: 0.5       100    0.880        0.958
#: 0.99      0.5    0.312        0.864
#: 0.99      1      0.440        0.897
#: 0.99      2      0.582        0.919
#: 0.99      5      0.747        0.939
#: ========  =====  ===========  ===========
#:
#: With C = 0.01 nearly every per-sample gradient is clipped, so an update moves at most lr·C and
#: large learning rates are normal here. lr 50 / momentum 0.9 is kept rather than the clean best
#: (lr 200): the gain is 2 points at 300 steps, the test loss rises (0.49 → 0.54), and under
#: ALIE (factor 1.5, negative) MDA reaches 0.68 at step 150 with lr 50 against 0.54 with lr 100.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "cnn": {"lr": 50.0, "momentum": 0.9, "loss": "cross_entropy"},
    "logit": {"lr": 2.0, "momentum": 0.99, "loss": "mse"},
}


# --------------------------------------------------------------------------------------------- #
# Losses (per-sample: the model output of one sample as a batch of one)


def _cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, target)


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over classes of (softmax(output) − one_hot(target))², the reference's sigmoid-MSE
    for two classes (see :class:`dpbr_lib.models.Logit`)."""
    classes = torch.arange(output.shape[-1], device=output.device)  # [classes]
    onehot = (target.unsqueeze(-1) == classes).to(output.dtype)  # [B, classes]; vmap-safe
    return (output.softmax(dim=-1) - onehot).square().mean()


LOSSES: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry("loss")
LOSSES.register("cross_entropy", _cross_entropy)
LOSSES.register("mse", _mse)


# --------------------------------------------------------------------------------------------- #
# Configuration


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. Build with ``TrainConfig.from_dict`` (unknown keys are
    errors); ``None`` fields are resolved when the object is created, and every value is checked
    then, before any work. ``to_dict()`` gives the resolved config that :func:`config_hash`
    hashes."""

    # data and model
    dataset: str = "digits"  # data set name, see dpbr_lib.data.names(); digits works offline
    model: str = "cnn"  # network, see dpbr_lib.models.names()
    width: int = 16  # CNN width (channels of the first conv); d = 13,706 on digits
    loss: str | None = None  # "cross_entropy" | "mse"; None: the model's default
    # distributed setting
    n: int = 11  # workers in total (reference: 11)
    f: int = 5  # declared Byzantine workers, the rule's f (reference: 5)
    f_real: int | None = None  # actual Byzantine workers ≤ f; None: f, or 0 if attack="none"
    batch_size: int = 50  # b, samples per honest worker and step
    data_split: str = "shared"  # "shared": every worker samples the whole train set; "partition"
    # gradients and privacy
    clip: float = 0.01  # C, L2 clipping threshold (reference: 0.01)
    clip_mode: str = "per_sample"  # "per_sample" (DP-SGD) | "batch" (reference, no DP) | "none"
    privacy: str = "none"  # "none" | "gaussian" | "sparsify"
    epsilon: float | None = None  # per-step ε of the Gaussian mechanism (privacy="gaussian")
    delta: float = 1e-6  # per-step δ of the Gaussian mechanism and δ of the accountant
    mechanism: str = "classic"  # "classic" (Dwork & Roth, ε < 1) | "analytic" (Balle & Wang)
    accountant: str = "rdp"  # accountant of the run's total ε: "rdp" | "pld" | "prv"
    sparsify_ratio: float | None = None  # kept fraction of coordinates (privacy="sparsify")
    sparsify_mode: str = "topk"  # "topk" | "randk" (privacy="sparsify")
    # robust aggregation and attack
    rule: str = "average"  # aggregation rule, see dpbr_lib.aggregators.names(); "nnm+krum" too
    attack: str = NO_ATTACK  # Byzantine attack, see dpbr_lib.attacks.names(); "none": honest
    attack_factor: float | None = None  # factor of little/empire; None: the attack's default
    attack_negative: bool = False  # little: send μ − z·s (reference: True)
    attack_search: bool = False  # line-search the factor against the rule (attack_factor None)
    # optimisation
    steps: int = 1000  # training steps (reference: 1000)
    lr: float | None = None  # server lr; None: the model's (cnn 50, tuned; logit 2, reference)
    momentum: float | None = None  # server SGD momentum; None: the model's (cnn 0.9, logit 0.99)
    lr_decay: int = 5000  # hyperbolic half-decay time T of the lr (reference: 5000); 0: none
    lr_decay_delta: int = 5000  # steps between two lr updates (reference: 5000)
    eval_every: int = 50  # test accuracy/loss every this many steps (reference: 50)
    seed: int = 0  # seeds model init, sampling, noise and attacks (one torch.Generator each)

    # -- construction --------------------------------------------------------------------- #

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A checked config from a plain dict; unknown keys raise and list the valid ones."""
        if not isinstance(values, dict):
            raise TypeError(f"The 'config' parameter must be a dict. Got {type(values).__name__}.")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(
                f"Unknown config key(s) {', '.join(map(repr, unknown))}. "
                f"Valid keys: {', '.join(valid)}."
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (checked again)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def column_types(cls) -> dict[str, type]:
        """Python type of every field, ``Optional`` removed (Parquet column types)."""
        hints = typing.get_type_hints(cls)
        out = {}
        for name, hint in hints.items():
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            out[name] = args[0] if args else hint
        return out

    def __post_init__(self) -> None:
        _resolve_and_check(self)

    # -- derived quantities ---------------------------------------------------------------- #

    @property
    def honest(self) -> int:
        """h = n − f_real, the honest workers."""
        return self.n - int(self.f_real)  # type: ignore[arg-type]

    def worker_data_size(self) -> int:
        """m, the samples one worker draws its batches from."""
        size = data.describe(self.dataset).train_size
        return size if self.data_split == "shared" else size // self.n

    def sensitivity(self) -> float:
        """Δ = 2C/b of a worker's averaged clipped gradient."""
        return privacy.sensitivity(self.clip, self.batch_size)

    def sigma(self) -> float:
        """Noise std σ of the Gaussian mechanism (0 without Gaussian privacy)."""
        if self.privacy != "gaussian":
            return 0.0
        return privacy.gaussian_sigma(self.epsilon, self.delta, self.sensitivity(), self.mechanism)  # type: ignore[arg-type]

    def aggregator(self, generator: torch.Generator | None = None) -> aggregators.Aggregator:
        options = {}
        if generator is not None and "generator" in aggregators.get(self.rule).options:
            options["generator"] = generator
        return aggregators.get(self.rule, **options)


def _set(config: TrainConfig, name: str, value: Any) -> None:
    object.__setattr__(config, name, value)  # resolution inside a frozen dataclass


def _resolve_and_check(c: TrainConfig) -> None:
    """Resolve ``None`` defaults and check every field and cross-field rule (before any work)."""
    # names first: the other checks look things up by them
    _set(c, "dataset", check_choice("dataset", c.dataset, data.names()))
    _set(c, "model", check_choice("model", c.model, models.names()))
    aggregators.get(c.rule)  # unknown rule: ValueError listing the rules
    check_choice("attack", c.attack, [NO_ATTACK, *attacks.names()])
    check_choice("privacy", c.privacy, PRIVACY_MODES)
    check_choice("clip_mode", c.clip_mode, CLIP_MODES)
    check_choice("data_split", c.data_split, DATA_SPLITS)
    check_choice("mechanism", c.mechanism, privacy.MECHANISMS)
    check_choice("accountant", c.accountant, privacy.ACCOUNTANTS)
    check_choice("sparsify_mode", c.sparsify_mode, privacy.SPARSIFY_MODES)
    for name in ("attack_negative", "attack_search"):
        if not isinstance(getattr(c, name), bool):
            raise TypeError(f"The {name!r} parameter must be a bool. Got {getattr(c, name)!r}.")
    defaults = MODEL_DEFAULTS[c.model]
    for name in ("lr", "momentum", "loss"):
        if getattr(c, name) is None:
            _set(c, name, defaults[name])
    check_choice("loss", c.loss, LOSSES.names())

    # numbers
    _set(c, "width", check_int("width", c.width, low=1))
    _set(c, "n", check_int("n", c.n, low=1))
    _set(c, "f", check_int("f", c.f, low=0))
    if c.f_real is None:
        _set(c, "f_real", 0 if c.attack == NO_ATTACK else c.f)
    _set(c, "f_real", check_int("f_real", c.f_real, low=0))
    _set(c, "batch_size", check_int("batch_size", c.batch_size, low=1))
    _set(c, "clip", check_float("clip", c.clip, low=0.0, low_open=True))
    _set(
        c, "delta", check_float("delta", c.delta, low=0.0, high=1.0, low_open=True, high_open=True)
    )
    _set(c, "steps", check_int("steps", c.steps, low=1))
    _set(c, "lr", check_float("lr", c.lr, low=0.0, low_open=True))
    _set(c, "momentum", check_float("momentum", c.momentum, low=0.0, high=1.0, high_open=True))
    _set(c, "lr_decay", check_int("lr_decay", c.lr_decay, low=0))
    _set(c, "lr_decay_delta", check_int("lr_decay_delta", c.lr_decay_delta, low=1))
    _set(c, "eval_every", check_int("eval_every", c.eval_every, low=1))
    _set(c, "seed", check_int("seed", c.seed, low=0))

    # workers
    if c.f_real > c.f:
        raise ValueError(
            f"The 'f_real' parameter must be at most f = {c.f} (the rule only tolerates f "
            f"Byzantine workers). Got f_real = {c.f_real} instead."
        )
    if c.f_real >= c.n:
        raise ValueError(f"At least one worker must be honest: f_real = {c.f_real}, n = {c.n}.")
    if c.attack == NO_ATTACK and c.f_real > 0:
        raise ValueError(
            f"attack='none' means no Byzantine worker, but f_real = {c.f_real}; set an attack "
            "or f_real = 0."
        )
    if c.attack != NO_ATTACK and c.f_real == 0:
        raise ValueError(f"attack={c.attack!r} needs f_real >= 1 Byzantine worker. Got 0.")
    aggregators.get(c.rule).check(c.n, c.f)

    # data and model
    info = data.describe(c.dataset)
    models.check_model(c.model, info.input_shape, info.num_classes, c.width)
    share = c.worker_data_size()
    if c.batch_size > share:
        where = "the training set" if c.data_split == "shared" else f"1/{c.n} of the training set"
        raise ValueError(
            f"The 'batch_size' parameter must be at most a worker's data share, {share} samples "
            f"({where} of {c.dataset!r}). Got {c.batch_size} instead."
        )

    # privacy
    if c.privacy == "gaussian":
        if c.epsilon is None:
            raise ValueError("privacy='gaussian' needs 'epsilon' (the per-step ε), e.g. 0.2.")
        _set(c, "epsilon", check_float("epsilon", c.epsilon, low=0.0, low_open=True))
        if c.clip_mode == "none":
            raise ValueError(
                "privacy='gaussian' needs clipping: clip_mode 'per_sample' or 'batch'."
            )
        c.sigma()  # classic mechanism: ε < 1, else ValueError naming 'analytic'
    elif c.epsilon is not None:
        raise ValueError(
            f"'epsilon' = {c.epsilon!r} is set but privacy = {c.privacy!r}; use "
            "privacy='gaussian' or leave epsilon None."
        )
    if c.privacy == "sparsify":
        if c.sparsify_ratio is None:
            raise ValueError("privacy='sparsify' needs 'sparsify_ratio' in (0, 1], e.g. 0.1.")
        _set(
            c,
            "sparsify_ratio",
            check_float("sparsify_ratio", c.sparsify_ratio, low=0.0, high=1.0, low_open=True),
        )
    elif c.sparsify_ratio is not None:
        raise ValueError(
            f"'sparsify_ratio' = {c.sparsify_ratio!r} is set but privacy = {c.privacy!r}; use "
            "privacy='sparsify' or leave sparsify_ratio None."
        )

    # attack options
    if c.attack_factor is not None:
        _set(c, "attack_factor", check_float("attack_factor", c.attack_factor))
    if c.attack_search and c.attack_factor is not None:
        raise ValueError(
            f"attack_search=True line-searches the factor: leave attack_factor None "
            f"(got {c.attack_factor})."
        )
    if c.attack != NO_ATTACK:
        accepted = inspect.signature(attacks.get(c.attack).fn).parameters
        for name, option, used in (
            ("attack_factor", "factor", c.attack_factor is not None),
            ("attack_negative", "negative", c.attack_negative),
            ("attack_search", "factor", c.attack_search),
        ):
            if used and option not in accepted:
                raise ValueError(f"The {c.attack!r} attack has no {option!r}: unset {name!r}.")
    elif c.attack_factor is not None or c.attack_negative or c.attack_search:
        raise ValueError("attack_factor/attack_negative/attack_search need an attack.")


def field_help() -> dict[str, str]:
    """The comment after each field of :class:`TrainConfig` (the CLI's help texts)."""
    source = inspect.getsource(TrainConfig)
    pattern = re.compile(r"^    (\w+): [^=]+=.*?#\s*(.*)$", re.MULTILINE)
    return dict(pattern.findall(source))


# --------------------------------------------------------------------------------------------- #
# Per-step pieces

#: Columns of ``Result.metrics``, one row per step (row 0: the initial model's evaluation).
METRIC_COLUMNS = (
    "step",  # updates done when the row's test metrics were taken (row s: the s-th update)
    "train_loss",  # mean loss of the honest batches, at the parameters before the update
    "test_accuracy",  # every eval_every steps and at the end, NaN otherwise
    "test_loss",
    "honest_norm",  # mean ‖g_i‖ of the honest gradients before noise
    "honest_deviation",  # mean ‖g_i − ḡ‖ before noise
    "vn_ratio",  # √(Σ‖g_i − ḡ‖²/(h − 1)) / ‖ḡ‖ before noise
    "honest_norm_noisy",  # the same three after privacy (what the server receives)
    "honest_deviation_noisy",
    "vn_ratio_noisy",
    "vn_bound",  # the rule's κ(n, f) (NaN if none is known); compare with vn_ratio_noisy
    "cosine",  # cos(ḡ before noise, aggregate)
    "aggregate_norm",
    "learning_rate",
    "time_gradients",  # seconds: sampling, forward, per-sample gradients, clipping
    "time_privacy",  # noise or sparsification
    "time_attack",
    "time_aggregation",
    "time_evaluation",  # test set pass
)


def spread(gradients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean norm, mean distance to the mean and empirical VN ratio of ``Tensor[h, d]``.

    The VN ratio √E‖G − g‖² / ‖g‖ of Guerraoui et al. 2021 (a rule is resilient while it stays
    below the rule's κ(n, f), see :mod:`dpbr_lib.aggregators.bounds`), estimated from one round:
    √(1/(h−1) Σ‖g_i − ḡ‖²) / ‖ḡ‖ (unbiased variance; ‖ḡ‖ over-estimates ‖g‖ by the variance/h
    term, so the ratio is slightly optimistic at small h); NaN for h = 1.
    """
    h = gradients.shape[0]
    mean = gradients.mean(dim=0)  # [d]
    distances = torch.linalg.vector_norm(gradients - mean, dim=1)  # [h]
    norms = torch.linalg.vector_norm(gradients, dim=1)  # [h]
    if h > 1:
        ratio = distances.square().sum().div(h - 1).sqrt() / torch.linalg.vector_norm(mean)
    else:
        ratio = gradients.new_full((), math.nan)
    return norms.mean(), distances.mean(), ratio


def learning_rate(config: TrainConfig, step: int) -> float:
    """The reference's hyperbolic decay: lr / (s′/T + 1), s′ = s rounded down to a multiple of
    ``lr_decay_delta``, for the 0-based update index s; constant lr if T = 0."""
    if config.lr_decay == 0:
        return config.lr  # type: ignore[return-value]
    held = step - step % config.lr_decay_delta
    return config.lr / (held / config.lr_decay + 1.0)  # type: ignore[operator]


#: The random streams that draw on the run's device (noise, sparsification masks, attacks);
#: the others (initialisation, data split, batch sampling, the rules' shuffles) stay on the CPU,
#: so a GPU run starts from the CPU run's model and sees the same batches.
DEVICE_STREAMS = ("privacy", "attack")


def _generators(seed: int, device: torch.device | None = None) -> dict[str, torch.Generator]:
    """Independent streams derived from one seed (numpy SeedSequence spawning)."""
    streams = ("model", "sampling", "privacy", "attack", "rule", "split")
    states = np.random.SeedSequence(seed).spawn(len(streams))
    device = torch.device("cpu") if device is None else device
    return {
        name: torch.Generator(device if name in DEVICE_STREAMS else "cpu").manual_seed(
            int(s.generate_state(1, dtype=np.uint64)[0] >> 1)
        )
        for name, s in zip(streams, states, strict=True)
    }


@functools.lru_cache(maxsize=4)
def _cached_dataset(name: str, data_dir: str | None, download: bool) -> data.Dataset:
    return data.load_dataset(name, data_dir=data_dir, download=download)


class WorkerData:
    """Index pools of the honest workers and their batch sampler (no loop over workers)."""

    def __init__(self, config: TrainConfig, train_size: int, generator: torch.Generator) -> None:
        h, b = config.honest, config.batch_size
        if config.data_split == "shared":
            self.pools = torch.arange(train_size).expand(h, -1)  # [h, N]
        else:
            share = train_size // config.n
            order = torch.randperm(train_size, generator=generator)[: share * config.n]
            self.pools = order.view(config.n, share)[:h]  # [h, N/n]; Byzantine shards unused
        self.batch_size = b

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """Indices ``[h, b]``: per worker b distinct samples, uniformly from its pool."""
        keys = torch.rand(self.pools.shape, generator=generator)  # [h, m]
        local = keys.topk(self.batch_size, dim=1).indices  # [h, b], a uniform b-subset per row
        return self.pools.gather(1, local)  # [h, b]


def honest_gradients(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    clip: float,
    clip_mode: str,
) -> torch.Tensor:
    """Each honest worker's clipped gradient ``Tensor[h, d]`` from its batch ``x: [h, b, ...]``.

    ``per_sample`` mode: one vectorized per-sample gradient call over the h·b stacked samples,
    clipped and averaged per worker from the per-parameter blocks
    (:func:`dpbr_lib.privacy.clipped_mean_gradients`). The other modes need no per-sample
    gradient: one call vectorized over the workers gives each worker's batch gradient
    (:func:`dpbr_lib.privacy.worker_mean_gradients`), clipped as a whole in the ``batch`` mode.
    """
    if clip_mode == "per_sample":
        return privacy.clipped_mean_gradients(model, loss_fn, x, y, clip)  # [h, d]
    gradients = privacy.worker_mean_gradients(model, loss_fn, x, y)  # [h, d]
    if clip_mode == "batch":
        return privacy.clip_batch_gradient(gradients, clip)  # [h, d]
    return gradients


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int = 2048,
) -> tuple[float, float]:
    """(accuracy, mean loss) on ``x: [N, ...]``, in chunks of ``chunk`` samples."""
    correct, total_loss = 0, 0.0
    for start in range(0, len(y), chunk):
        out = model(x[start : start + chunk])  # [B, classes]
        target = y[start : start + chunk]
        correct += int((out.argmax(dim=1) == target).sum())
        total_loss += float(loss_fn(out, target)) * len(target)
    return correct / len(y), total_loss / len(y)


def _parameters_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# --------------------------------------------------------------------------------------------- #
# The run


def train(
    config: TrainConfig | dict[str, Any],
    progress: bool = False,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    device: str | torch.device | None = None,
) -> Result:
    """Run one simulated distributed training and return its record.

    ``config`` is a :class:`TrainConfig` or a dict for :meth:`TrainConfig.from_dict` (checked
    before any work). ``progress`` shows a tqdm bar over steps. ``data_dir``/``download`` locate
    the downloadable data sets; they do not change the numbers, so they are not in the config.
    ``device`` (default the CPU; ``"auto"``: a GPU when there is one) is where the model, the
    data and the step's tensors live. It is not in the config either: the same config and seed
    give the same numbers on one device, and on another the same run up to floating-point
    rounding and the device's own random streams (:data:`DEVICE_STREAMS`); the summary records it.
    """
    config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    device = check_device("device", device)
    start = time.perf_counter()
    gens = _generators(config.seed, device)
    dataset = _cached_dataset(config.dataset, None if data_dir is None else str(data_dir), download)
    x_train, y_train = dataset.x_train.to(device), dataset.y_train.to(device)
    x_test, y_test = dataset.x_test.to(device), dataset.y_test.to(device)
    model = models.build_model(
        config.model,
        dataset.input_shape,
        dataset.num_classes,
        config.width,
        generator=gens["model"],
    ).to(device)
    d = models.count_parameters(model)
    loss_fn = LOSSES.get(config.loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    aggregator = config.aggregator(gens["rule"])
    attack = None if config.attack == NO_ATTACK else attacks.get(config.attack)
    attack_kw = _attack_options(config, attack, gens["attack"])
    kappa = aggregator.bound(config.n, config.f)
    sigma = config.sigma()
    workers = WorkerData(config, len(dataset.y_train), gens["split"])

    rows: list[dict[str, float]] = []
    accuracy, test_loss = evaluate(model, loss_fn, x_test, y_test)
    rows.append(_empty_row(0) | {"test_accuracy": accuracy, "test_loss": test_loss})
    diverged_step: int | None = None

    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, disable=not progress, desc=f"{config.rule}/{config.attack}")
    for s in range(config.steps):
        row = _empty_row(s + 1)
        tic = time.perf_counter()
        index = workers.sample(gens["sampling"]).to(device)  # [h, b]
        x, y = x_train[index], y_train[index]  # [h, b, ...], [h, b]
        with torch.no_grad():
            row["train_loss"] = float(loss_fn(model(x.flatten(0, 1)), y.flatten()))
        clean = honest_gradients(model, loss_fn, x, y, config.clip, config.clip_mode)  # [h, d]
        toc = time.perf_counter()
        row["time_gradients"] = toc - tic

        if config.privacy == "gaussian":
            sent = privacy.add_gaussian_noise(clean, sigma, gens["privacy"])  # [h, d]
        elif config.privacy == "sparsify":
            sent = privacy.sparsify(
                clean, config.sparsify_ratio, config.sparsify_mode, gens["privacy"]
            )  # [h, d]
        else:
            sent = clean
        tic = time.perf_counter()
        row["time_privacy"] = tic - toc

        if not bool(torch.isfinite(sent).all()):  # an honest worker diverged: stop, never raise
            diverged_step = s + 1
            row["test_loss"], row["test_accuracy"] = math.nan, math.nan
            rows.append(row)
            break
        if attack is not None:
            byzantine = attack(sent, config.f_real, **attack_kw)  # [f_real, d]
        else:
            byzantine = sent.new_empty((0, d))  # [0, d]
        toc = time.perf_counter()
        row["time_attack"] = toc - tic

        aggregate = aggregator(torch.cat([sent, byzantine]), config.f)  # [d]
        tic = time.perf_counter()
        row["time_aggregation"] = tic - toc

        lr = learning_rate(config, s)
        for group in optimizer.param_groups:
            group["lr"] = lr
        privacy.unflatten_into(model, aggregate, into="grad")
        optimizer.step()
        row.update(_statistics(clean, sent, aggregate, kappa, lr))

        finite = _parameters_finite(model)
        if not finite or (s + 1) % config.eval_every == 0 or s + 1 == config.steps:
            toc = time.perf_counter()
            row["test_accuracy"], row["test_loss"] = evaluate(model, loss_fn, x_test, y_test)
            row["time_evaluation"] = time.perf_counter() - toc
            bar.set_postfix(accuracy=f"{row['test_accuracy']:.3f}")
        rows.append(row)
        bar.update(1)
        if not finite:
            diverged_step = s + 1
            break
    bar.close()

    metrics = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    metrics["step"] = metrics["step"].astype("int64")
    summary = _summary(config, metrics, d, sigma, kappa, diverged_step, time.perf_counter() - start)
    summary["device"] = device.type
    return Result(
        config=config.to_dict(),
        seed=config.seed,
        version=__version__,
        metrics=metrics,
        summary=summary,
    )


def _attack_options(
    config: TrainConfig, attack: attacks.Attack | None, generator: torch.Generator
) -> dict[str, Any]:
    if attack is None:
        return {}
    accepted = inspect.signature(attack.fn).parameters
    options: dict[str, Any] = {}
    if config.attack_factor is not None:
        options["factor"] = config.attack_factor
    if config.attack_negative:
        options["negative"] = True
    if config.attack_search:
        options["aggregator"] = config.aggregator()
    if "declared_f" in accepted:
        options["declared_f"] = config.f
    if "generator" in accepted:
        options["generator"] = generator
    return options


def _empty_row(step: int) -> dict[str, float]:
    row = dict.fromkeys(METRIC_COLUMNS, math.nan)
    row["step"] = step
    for key in METRIC_COLUMNS:
        if key.startswith("time_"):
            row[key] = 0.0
    return row


def _statistics(
    clean: torch.Tensor,
    sent: torch.Tensor,
    aggregate: torch.Tensor,
    kappa: float | None,
    lr: float,
) -> dict[str, float]:
    norm, deviation, ratio = spread(clean)
    norm_noisy, deviation_noisy, ratio_noisy = spread(sent)
    mean = clean.mean(dim=0)  # [d]
    cosine = F.cosine_similarity(mean, aggregate, dim=0)
    values = torch.stack(
        [
            norm,
            deviation,
            ratio,
            norm_noisy,
            deviation_noisy,
            ratio_noisy,
            cosine,
            torch.linalg.vector_norm(aggregate),
        ]
    ).tolist()
    keys = (
        "honest_norm",
        "honest_deviation",
        "vn_ratio",
        "honest_norm_noisy",
        "honest_deviation_noisy",
        "vn_ratio_noisy",
        "cosine",
        "aggregate_norm",
    )
    out = dict(zip(keys, values, strict=True))
    out["vn_bound"] = math.nan if kappa is None else float(kappa)
    out["learning_rate"] = lr
    return out


def _summary(
    config: TrainConfig,
    metrics: pd.DataFrame,
    d: int,
    sigma: float,
    kappa: float | None,
    diverged_step: int | None,
    wall_time: float,
) -> dict[str, Any]:
    evaluated = metrics.dropna(subset=["test_accuracy"])
    last = metrics.iloc[-1]
    steps_done = int(last["step"])
    window = metrics["train_loss"].iloc[-config.eval_every :]
    dp = config.privacy == "gaussian"
    guarantee = dp and config.clip_mode == "per_sample"
    sensitivity = config.sensitivity()
    q = config.batch_size / config.worker_data_size()
    epsilon_spent = (
        privacy.epsilon_spent(steps_done, q, sigma / sensitivity, config.delta, config.accountant)
        if guarantee
        else math.nan
    )
    times = {k: float(metrics[k].sum()) for k in METRIC_COLUMNS if k.startswith("time_")}
    return {
        "final_accuracy": float(last["test_accuracy"]),
        "final_test_loss": float(last["test_loss"]),
        "final_train_loss": float(window.mean()) if window.notna().any() else math.nan,
        "best_accuracy": float(evaluated["test_accuracy"].max()),
        "steps_done": steps_done,
        "diverged": diverged_step is not None,
        "diverged_step": -1 if diverged_step is None else diverged_step,
        "d": d,
        "honest": config.honest,
        "vn_bound": math.nan if kappa is None else float(kappa),
        "sigma": sigma,
        "sensitivity": sensitivity,
        "noise_multiplier": sigma / sensitivity if dp else math.nan,
        "sampling_rate": q,
        "dp_guarantee": guarantee,
        "epsilon_spent": epsilon_spent,
        "wall_time": wall_time,
        "time_per_step": wall_time / max(steps_done, 1),
        **times,
    }
