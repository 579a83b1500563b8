"""Privacy in distributed DP-SGD: clipping, the Gaussian mechanism, sparsification, accounting.

A honest worker of Guerraoui et al. 2021 ("Differential privacy and Byzantine resilience in SGD:
do they add up?", PODC 2021) computes per-sample gradients, clips each to L2 norm C (Abadi et al.
2016, "Deep learning with differential privacy", Algorithm 1), averages the b clipped gradients and
adds Gaussian noise calibrated to the L2 sensitivity of that average, Δ = 2C/b (replacing one of
the b samples moves the mean by at most 2C/b). The noise std σ comes from the classic Gaussian
mechanism (Dwork & Roth 2014, Theorem A.1 / Theorem 3.22) or from the analytic Gaussian mechanism
(Balle & Wang 2018, "Improving the Gaussian mechanism for differential privacy", Theorem 8 and
Algorithm 1). The privacy of a whole run is counted by a maintained accountant (dp-accounting's RDP
or PLD accountant, or Opacus's PRV accountant), never by hand-written RDP formulas.

Flat parameter order: every flat vector in this project lists the parameters that require a
gradient, in ``model.named_parameters()`` order, each flattened row-major.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator

import dp_accounting
import torch
from scipy import optimize, stats
from torch import nn

from dpbr_lib import _random
from dpbr_lib._validation import check_choice, check_float, check_int

MECHANISMS = ("classic", "analytic")
SPARSIFY_MODES = ("topk", "randk")
ACCOUNTANTS = ("rdp", "pld", "prv")
_ACCOUNTANT_CLASSES = {
    "rdp": dp_accounting.rdp.RdpAccountant,
    "pld": dp_accounting.pld.PLDAccountant,
}

# --------------------------------------------------------------------------------------------- #
# Flat parameter vectors and per-sample gradients


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def flatten_parameters(model: nn.Module) -> torch.Tensor:
    """Detached copy of the trainable parameters as one ``Tensor[d]`` (named_parameters order)."""
    params = _trainable(model)
    if not params:
        raise ValueError("The 'model' parameter must have at least one trainable parameter.")
    return torch.cat([p.detach().reshape(-1) for p in params.values()])  # [d]


def num_parameters(model: nn.Module) -> int:
    """d, the length of the flat vectors of ``model``."""
    return sum(p.numel() for p in _trainable(model).values())


def unflatten_into(model: nn.Module, flat: torch.Tensor, *, into: str = "grad") -> None:
    """Write a flat ``Tensor[d]`` back into ``model``, as ``.grad`` (``into="grad"``) or as the
    parameter values (``into="param"``), in the order of :func:`flatten_parameters`."""
    check_choice("into", into, ("grad", "param"))
    params = _trainable(model)
    d = sum(p.numel() for p in params.values())
    if not isinstance(flat, torch.Tensor) or flat.dim() != 1 or flat.numel() != d:
        shape = tuple(flat.shape) if isinstance(flat, torch.Tensor) else type(flat).__name__
        raise ValueError(
            f"The 'flat' parameter must be a 1-D tensor of length {d}. Got {shape} instead."
        )
    offset = 0
    with torch.no_grad():
        for p in params.values():
            chunk = flat[offset : offset + p.numel()].view_as(p).to(dtype=p.dtype, device=p.device)
            offset += p.numel()
            if into == "param":
                p.copy_(chunk)
            else:
                p.grad = chunk.clone()


def per_sample_gradient_blocks(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
) -> list[torch.Tensor]:
    """Per-sample gradients of ``loss_fn(model(x_i), y_i)`` as one block ``Tensor[B, d_k]`` per
    trainable parameter, in :func:`flatten_parameters`' order.

    ``torch.func.vmap(grad(...))`` over the batch dimension of a ``functional_call`` of the model:
    each sample is fed as a batch of one, so ``loss_fn`` is any loss with a mean or sum reduction
    (e.g. ``nn.functional.cross_entropy``). Models whose output mixes samples (BatchNorm in train
    mode) have no per-sample gradient; use GroupNorm/LayerNorm.
    """
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError("The 'inputs' parameter must be a tensor with a non-empty batch dim.")
    if not isinstance(targets, torch.Tensor) or targets.shape[:1] != inputs.shape[:1]:
        raise ValueError(
            f"The 'targets' parameter must have the batch size of 'inputs' ({inputs.shape[0]}). "
            f"Got shape {tuple(getattr(targets, 'shape', ()))} instead."
        )
    return _vmapped_gradient_blocks(model, loss_fn, inputs, targets, one_sample_each=True)


def _vmapped_gradient_blocks(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    one_sample_each: bool,
) -> list[torch.Tensor]:
    """``torch.func.vmap(grad(...))`` over dim 0 of ``inputs`` / ``targets`` of the loss of a
    ``functional_call`` of the model, one block ``Tensor[N, d_k]`` per trainable parameter.
    ``one_sample_each``: each slice is one sample, fed as a batch of one (per-sample gradients);
    else each slice is already a batch (one worker's mini-batch gradient)."""
    params = {k: v.detach() for k, v in _trainable(model).items()}
    if not params:
        raise ValueError("The 'model' parameter must have at least one trainable parameter.")
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    buffers = dict(model.named_buffers())

    def slice_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if one_sample_each:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        return loss_fn(torch.func.functional_call(model, (p, frozen, buffers), (x,)), y)

    grads = torch.func.vmap(torch.func.grad(slice_loss), in_dims=(None, 0, 0))(
        params, inputs, targets
    )  # name -> [N, *shape]
    count = inputs.shape[0]
    return [grads[k].reshape(count, -1) for k in params]  # [N, d_k] each


def flat_per_sample_gradients(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """Per-sample gradients ``Tensor[B, d]``, one row per sample: the blocks of
    :func:`per_sample_gradient_blocks` side by side."""
    return torch.cat(per_sample_gradient_blocks(model, loss_fn, inputs, targets), dim=1)  # [B, d]


#: Per-sample gradient entries (h · chunk · d floats) that :func:`clipped_mean_gradients` holds
#: at once: 2^28 float32 = 1 GiB. Larger batches are processed in chunks of samples.
PER_SAMPLE_CHUNK_ELEMENTS = 1 << 28


def _check_worker_batches(inputs: object, targets: object) -> tuple[int, int]:
    if not isinstance(targets, torch.Tensor) or targets.dim() != 2:
        raise ValueError(
            "The 'targets' parameter must be a tensor of shape (h, b). "
            f"Got {tuple(getattr(targets, 'shape', ()))} instead."
        )
    h, b = targets.shape
    if not isinstance(inputs, torch.Tensor) or inputs.shape[:2] != targets.shape:
        raise ValueError(
            f"The 'inputs' parameter must be a tensor of shape (h, b, ...) = ({h}, {b}, ...). "
            f"Got {tuple(getattr(inputs, 'shape', ()))} instead."
        )
    return h, b


def clipped_mean_gradients(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    clip: float,
) -> torch.Tensor:
    """Each group's mean of its per-sample gradients clipped to norm C, ``Tensor[h, d]``, from
    ``inputs: [h, b, ...]`` and ``targets: [h, b]`` (h workers of b samples each):
    (1/b) sum_i g_i · min(1, C/‖g_i‖), Abadi et al. 2016, Algorithm 1, before the noise.

    Equal to ``per_sample_clip(flat_per_sample_gradients(...).view(h, b, d), C).mean(1)``, but
    the ``[h·b, d]`` matrix is never built: the norms are combined from the per-parameter blocks
    and each worker's scaled rows are summed with one batched matrix product per parameter.
    Samples are processed in chunks so that at most :data:`PER_SAMPLE_CHUNK_ELEMENTS` gradient
    entries are held at once (the paper's largest CNN at b = 1000 would otherwise need 75 GB).
    """
    clip = check_float("clip", clip, low=0.0, low_open=True)
    h, b = _check_worker_batches(inputs, targets)
    d = num_parameters(model)
    chunk = max(1, min(b, PER_SAMPLE_CHUNK_ELEMENTS // max(1, h * d)))
    total: torch.Tensor | None = None
    for start in range(0, b, chunk):
        x, y = inputs[:, start : start + chunk], targets[:, start : start + chunk]
        c = y.shape[1]
        blocks = per_sample_gradient_blocks(
            model, loss_fn, x.reshape(h * c, *x.shape[2:]), y.reshape(h * c)
        )  # [h·c, d_k] each
        norms = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(block, dim=1) for block in blocks]), dim=0
        )  # [h·c], each per-sample gradient's norm
        weights = ((clip / norms).clamp(max=1.0) / b).view(h, 1, c)  # [h, 1, c]
        part = torch.cat(
            [torch.bmm(weights, block.view(h, c, -1)).squeeze(1) for block in blocks], dim=1
        )  # [h, d]
        total = part if total is None else total + part
    assert total is not None
    return total


def worker_mean_gradients(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """Each group's mini-batch gradient ``Tensor[h, d]`` of ``loss_fn`` (a mean over the b
    samples) from ``inputs: [h, b, ...]`` and ``targets: [h, b]``: one ``torch.func.vmap`` over
    the h workers, so no per-sample gradient is formed (what the unclipped and the batch-clipped
    modes need). Equal to the mean over b of :func:`flat_per_sample_gradients`."""
    _check_worker_batches(inputs, targets)
    blocks = _vmapped_gradient_blocks(model, loss_fn, inputs, targets, one_sample_each=False)
    return torch.cat(blocks, dim=1)  # [h, d]


# --------------------------------------------------------------------------------------------- #
# Clipping and sensitivity


def _clip_rows(g: torch.Tensor, clip: float) -> torch.Tensor:
    norms = torch.linalg.vector_norm(g, dim=-1, keepdim=True)  # [..., 1]
    scale = (clip / norms).clamp(max=1.0)  # min(1, C/||g||); a zero row has scale 1
    return g * scale


def per_sample_clip(per_sample: torch.Tensor, clip: float) -> torch.Tensor:
    """Scale each per-sample gradient to L2 norm at most C: g_i · min(1, C/‖g_i‖).

    Abadi et al. 2016, Algorithm 1 ("clip gradient": g / max(1, ‖g‖/C)). ``per_sample`` is
    ``Tensor[B, d]`` or batched over leading dims, ``Tensor[..., B, d]`` (e.g. workers × samples);
    the norm is over the last dim. This is the clipping that gives the Δ = 2C/b of
    :func:`sensitivity`.
    """
    clip = check_float("clip", clip, low=0.0, low_open=True)
    if not isinstance(per_sample, torch.Tensor) or per_sample.dim() < 2:
        raise ValueError(
            "The 'per_sample' parameter must be a tensor of shape (..., B, d). "
            f"Got {tuple(getattr(per_sample, 'shape', ()))} instead."
        )
    return _clip_rows(per_sample, clip)  # [..., B, d]


def clip_batch_gradient(g: torch.Tensor, clip: float) -> torch.Tensor:
    """Clip the mini-batch gradient ``Tensor[..., d]`` (already averaged) to L2 norm at most C.

    What the reference code does (LPD-EPFL DifferentialByzantine clips the averaged gradient of each
    worker, then adds noise with Δ = 2C/b); kept to reproduce its figures. It gives NO differential
    privacy guarantee: after clipping the mean, one sample can still move it by up to 2C (not
    2C/b), so the noise is b times too small for the claimed (ε, δ).
    """
    clip = check_float("clip", clip, low=0.0, low_open=True)
    if not isinstance(g, torch.Tensor) or g.dim() < 1:
        raise ValueError("The 'g' parameter must be a tensor of shape (..., d).")
    return _clip_rows(g, clip)  # [..., d]


def sensitivity(clip: float, batch_size: int) -> float:
    """L2 sensitivity Δ = 2C/b of the mean of b per-sample-clipped gradients.

    Guerraoui et al. 2021 (replace-one neighbouring batches: two clipped gradients
    differ by at most 2C, divided by b in the mean).
    """
    clip = check_float("clip", clip, low=0.0, low_open=True)
    batch_size = check_int("batch_size", batch_size, low=1)
    return 2.0 * clip / batch_size


# --------------------------------------------------------------------------------------------- #
# Gaussian mechanism


def _classic_sigma(epsilon: float, delta: float, sens: float) -> float:
    # Dwork & Roth 2014, Theorem A.1: sigma >= c*Delta/eps with c^2 > 2 ln(1.25/delta), eps < 1.
    return sens * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def _analytic_sigma(epsilon: float, delta: float, sens: float) -> float:
    """Balle & Wang 2018, Algorithm 1 (analytic Gaussian mechanism) with Theorem 8's condition.

    δ₀ = Φ(0) − e^ε Φ(−√(2ε)). If δ ≥ δ₀, v* = sup{v ≥ 0 : B⁺(v) ≤ δ} with
    B⁺(v) = Φ(√(εv)) − e^ε Φ(−√(ε(v+2))) and α = √(1+v*/2) − √(v*/2); else
    u* = inf{u ≥ 0 : B⁻(u) ≤ δ} with B⁻(u) = Φ(−√(εu)) − e^ε Φ(−√(ε(u+2))) and
    α = √(1+u*/2) + √(u*/2). Then σ = α·Δ/√(2ε). Roots by Brent's method; the e^ε Φ(·) term is
    evaluated in log space so large ε does not overflow.
    """
    cdf, logcdf = stats.norm.cdf, stats.norm.logcdf

    def tail(x: float) -> float:  # e^eps * Phi(-sqrt(eps * x))
        return math.exp(epsilon + logcdf(-math.sqrt(epsilon * x)))

    delta0 = cdf(0.0) - tail(2.0)
    if delta >= delta0:

        def b_plus(v: float) -> float:
            return cdf(math.sqrt(epsilon * v)) - tail(v + 2.0) - delta

        hi = 1.0
        while b_plus(hi) <= 0.0:  # B+ increases in v
            hi *= 2.0
        v = optimize.brentq(b_plus, 0.0, hi, xtol=1e-14, rtol=1e-14)
        alpha = math.sqrt(1.0 + v / 2.0) - math.sqrt(v / 2.0)
    else:

        def b_minus(u: float) -> float:
            return cdf(-math.sqrt(epsilon * u)) - tail(u + 2.0) - delta

        hi = 1.0
        while b_minus(hi) > 0.0:  # B- decreases in u
            hi *= 2.0
        u = optimize.brentq(b_minus, 0.0, hi, xtol=1e-14, rtol=1e-14)
        alpha = math.sqrt(1.0 + u / 2.0) + math.sqrt(u / 2.0)
    return alpha * sens / math.sqrt(2.0 * epsilon)


def gaussian_sigma(
    epsilon: float, delta: float, sensitivity: float, mechanism: str = "classic"
) -> float:
    """Noise std σ that makes x ↦ x + N(0, σ² I) (ε, δ)-DP for an L2 sensitivity Δ.

    - ``"classic"``: σ = Δ·√(2 ln(1.25/δ))/ε, Dwork & Roth 2014, Theorem A.1 (Theorem 3.22);
      the proof needs ε ∈ (0, 1).
    - ``"analytic"``: the smallest σ of Balle & Wang 2018, Theorem 8 (exact condition
      Φ(Δ/2σ − εσ/Δ) − e^ε Φ(−Δ/2σ − εσ/Δ) ≤ δ), computed by their Algorithm 1; any ε > 0.
    """
    epsilon = check_float("epsilon", epsilon, low=0.0, low_open=True)
    delta = check_float("delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)
    sens = check_float("sensitivity", sensitivity, low=0.0, low_open=True)
    check_choice("mechanism", mechanism, MECHANISMS)
    if mechanism == "classic":
        if epsilon >= 1.0:
            raise ValueError(
                "The 'epsilon' parameter must be in (0, 1) for mechanism='classic' "
                f"(Dwork & Roth 2014, Theorem A.1). Got {epsilon!r} instead; "
                "use mechanism='analytic' for epsilon >= 1."
            )
        return _classic_sigma(epsilon, delta, sens)
    return _analytic_sigma(epsilon, delta, sens)


def add_gaussian_noise(
    g: torch.Tensor, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """g + N(0, σ² I), drawn from ``generator`` (a new tensor; ``g`` is not modified)."""
    sigma = check_float("sigma", sigma, low=0.0)
    if not isinstance(g, torch.Tensor) or not g.is_floating_point():
        raise TypeError("The 'g' parameter must be a floating-point torch.Tensor.")
    device = _random.draw_device(g, generator)
    noise = torch.randn(g.shape, generator=generator, dtype=g.dtype, device=device)
    return g + sigma * noise.to(g.device)  # g.shape


# --------------------------------------------------------------------------------------------- #
# Sparsification


def sparsify(
    g: torch.Tensor,
    ratio: float,
    mode: str = "topk",
    generator: torch.Generator | None = None,
    *,
    rescale: bool = False,
) -> torch.Tensor:
    """Keep k = max(1, ⌈ratio·d⌉) coordinates per row of ``g`` (``Tensor[..., d]``), zero the rest.

    - ``"topk"``: the k coordinates of largest |value| (ties broken by ``torch.topk``).
    - ``"randk"``: k coordinates drawn uniformly without replacement, independently for every row,
      from ``generator`` (the k smallest of d uniform keys per row).

    ``rescale=True`` multiplies random-k by d/k so that E[sparsify(g)] = g (unbiased); the default
    ``False`` keeps the kept values unchanged, as plain masking does (the published reference code,
    LPD-EPFL DifferentialByzantine, contains no sparsifier, so there is no choice of its to
    follow). ``rescale`` is ignored for top-k.
    """
    ratio = check_float("ratio", ratio, low=0.0, high=1.0, low_open=True)
    check_choice("mode", mode, SPARSIFY_MODES)
    if not isinstance(g, torch.Tensor) or g.dim() < 1 or g.shape[-1] == 0:
        raise ValueError("The 'g' parameter must be a tensor of shape (..., d) with d >= 1.")
    d = g.shape[-1]
    k = max(1, math.ceil(round(ratio * d, 6)))  # round: 0.7 * 10 is 7.000000000000001
    if mode == "topk":
        scores = g.abs().nan_to_num(nan=math.inf)  # [..., d]; a NaN coordinate counts as large
    else:
        scores = torch.rand(g.shape, generator=generator, device=_random.draw_device(g, generator))
        scores = scores.to(g.device)  # [..., d]
    index = scores.topk(k, dim=-1).indices  # [..., k]
    mask = torch.zeros(g.shape, dtype=torch.bool, device=g.device).scatter_(-1, index, True)
    out = torch.where(mask, g, torch.zeros((), dtype=g.dtype, device=g.device))  # [..., d]
    if mode == "randk" and rescale:
        out = out * (d / k)
    return out


# --------------------------------------------------------------------------------------------- #
# Accounting of a whole run


@contextlib.contextmanager
def _quiet_accountant() -> Iterator[None]:
    """dp-accounting logs (through absl) every RDP order it drops as non-convergent; the
    remaining orders still give a valid bound, so those warnings are silenced here."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_run(steps: int, sampling_rate: float) -> tuple[int, float]:
    steps = check_int("steps", steps, low=0)
    q = check_float("sampling_rate", sampling_rate, low=0.0, high=1.0, low_open=True)
    return steps, q


def _dp_event(steps: int, q: float, noise_multiplier: float) -> dp_accounting.DpEvent:
    step = dp_accounting.GaussianDpEvent(noise_multiplier)
    if q < 1.0:
        step = dp_accounting.PoissonSampledDpEvent(q, step)
    return dp_accounting.SelfComposedDpEvent(step, steps)


def epsilon_spent(
    steps: int,
    sampling_rate: float,
    noise_multiplier: float,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Total ε at ``delta`` of ``steps`` Poisson-subsampled Gaussian steps (Abadi et al. 2016).

    ``noise_multiplier`` is the noise std over the add/remove sensitivity of the clipped sum, C
    (equivalently σ/(C/b) for noise σ on the mean), and ``sampling_rate`` q = b/N (Poisson
    sampling). Passing σ/Δ with the replace-one Δ = 2C/b of :func:`sensitivity` halves the
    multiplier, so the ε reported is an over-estimate (safe side). Accountants, all maintained:

    - ``"rdp"``: dp-accounting ``RdpAccountant`` (Mironov 2017; Mironov, Talwar & Zhang 2019), the
      same numbers as Opacus's ``RDPAccountant``;
    - ``"pld"``: dp-accounting ``PLDAccountant`` (privacy loss distributions, tighter);
    - ``"prv"``: Opacus ``PRVAccountant`` (Gopi, Lee & Wutschitz 2021), needs ``opacus``.
    """
    steps, q = _check_run(steps, sampling_rate)
    noise_multiplier = check_float("noise_multiplier", noise_multiplier, low=0.0, low_open=True)
    delta = check_float("delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)
    check_choice("accountant", accountant, ACCOUNTANTS)
    if steps == 0:
        return 0.0
    if accountant == "prv":
        from opacus.accountants import PRVAccountant

        prv = PRVAccountant()
        prv.history = [(noise_multiplier, q, steps)]
        return float(prv.get_epsilon(delta=delta))
    acc = _ACCOUNTANT_CLASSES[accountant]()
    with _quiet_accountant():
        acc.compose(_dp_event(steps, q, noise_multiplier))
        return float(acc.get_epsilon(delta))


def noise_multiplier_for(
    target_epsilon: float,
    delta: float,
    steps: int,
    sampling_rate: float,
    accountant: str = "rdp",
) -> float:
    """Smallest noise multiplier σ/Δ whose run of ``steps`` reaches at most ``target_epsilon``.

    dp-accounting's ``calibrate_dp_mechanism`` (Brent's method over the accountant of
    :func:`epsilon_spent`, tolerance 1e-6 in σ); ``accountant`` is ``"rdp"`` or ``"pld"``.
    """
    target_epsilon = check_float("target_epsilon", target_epsilon, low=0.0, low_open=True)
    delta = check_float("delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)
    steps, q = _check_run(steps, sampling_rate)
    steps = check_int("steps", steps, low=1)
    check_choice("accountant", accountant, ("rdp", "pld"))
    fresh = _ACCOUNTANT_CLASSES[accountant]
    with _quiet_accountant():
        return float(
            dp_accounting.calibrate_dp_mechanism(
                fresh,
                lambda s: _dp_event(steps, q, s),
                target_epsilon,
                delta,
                dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
            )
        )
