"""Gradient inversion: DLG, iDLG and Inverting Gradients.

The server (the attacker) holds the model θ and one shared gradient g* (``target``, flat
``Tensor[d]``). It draws dummy images x̂ (and, for DLG, dummy soft labels ŷ) and optimises them
until their gradient matches g*:

- **DLG**, Zhu et al. 2019, "Deep leakage from gradients", Algorithm 1:
  min_{x̂, ŷ} ‖∇θ CE(f(x̂), softmax(ŷ)) − g*‖², by L-BFGS (lr 1, 300 iterations in their code),
  x̂ and ŷ drawn from N(0, 1). Two changes that keep the minimiser: the distance is rescaled to
  1000·‖g − g*‖²/‖g*‖² (DLG's own scale: ‖g*‖² is 200–950 for its LeNet on 32×32 images, while
  a gradient clipped to C = 0.01 has 1e-4 and torch's L-BFGS tests curvature against an absolute
  1e-10), and L-BFGS's own stopping tolerances are near zero (torch's 1e-7 and 1e-9 stop it on
  the flat start of a saturated sigmoid net). A run that ends above ``accept`` (relative
  distance; DLG's known failure from a bad draw: a flat start or a slow wrong basin) is retried
  from a fresh draw, up to ``retries`` times, and the attempt of least distance kept.
- **iDLG**, Zhao et al. 2020, "iDLG: improved deep leakage from gradients": the label
  is read from the last layer's weight gradient — with non-negative features h,
  ∂CE/∂W_c = (p_c − y_c)·h, so only the true class's row is negative — then DLG on x̂ alone. For a
  batch of B distinct labels the B most negative row sums are taken (Yin et al. 2021, "See
  through gradients", restore batch labels the same way from the rows' minima).
- **Inverting Gradients**, Geiping et al. 2020, their objective and ``inversefed``'s defaults:
  min_x 1 − ⟨∇θL(x, y), g*⟩ / (‖∇θL(x, y)‖‖g*‖) + α·TV(x), by Adam (lr 0.1) on the *sign* of
  the gradient of x, x boxed to the data range after every step, lr × 0.1 at 3/8, 5/8 and 7/8 of
  the iterations, several restarts keeping the one of least gradient distance. Like inversefed the
  dummy lives in the model's normalised coordinates (its :class:`~.models.Normalize` layer).

A diverging run (a NaN or Inf loss, a known failure of DLG with L-BFGS) is detected at the step
where it happens and restarted from a fresh draw (DLG: learning rate × ``retry_lr_factor``); when
every attempt diverges :class:`DivergenceError` is raised — never a NaN image.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from tqdm import tqdm

from dpbr_lib._registry import Registry
from dpbr_lib._validation import check_float, check_int
from dpbr_lib.inversion.defenses import NO_DEFENSE, Defense
from dpbr_lib.inversion.gradients import check_target, observable_gradient, parameter_slices
from dpbr_lib.inversion.models import Normalize, last_linear


class DivergenceError(RuntimeError):
    """Every attempt of a reconstruction ended in a NaN/Inf loss."""


@dataclass(frozen=True)
class DLGConfig:
    """L-BFGS gradient matching (DLG, iDLG). Defaults: Zhu et al. 2019's code."""

    steps: int = 300  # optimizer.step calls (DLG: 300 iterations)
    lr: float = 1.0  # L-BFGS step size (DLG and iDLG code: 1)
    max_iter: int = 20  # L-BFGS inner iterations per step (torch default, as in DLG)
    history_size: int = 100  # L-BFGS memory (torch default)
    tol: float = 5e-9  # stop once ‖g − g*‖² < tol·‖g*‖² (iDLG's 1e-6 at ‖g*‖² ≈ 200)
    tolerance_grad: float = 1e-12  # L-BFGS's own tests (torch: 1e-7), on the normalised loss
    tolerance_change: float = 1e-14  # (torch: 1e-9); see the module docstring
    patience: int | None = None  # stop after this many steps without 0.1 % improvement
    retries: int = 3  # fresh attempts after a divergence or a failed fit
    retry_lr_factor: float = 0.5  # lr multiplier after each divergence
    accept: float = 1e-4  # an attempt ending above this ‖g − g*‖²/‖g*‖² is retried
    log_every: int = 10  # record the loss / update the progress bar every k steps

    def __post_init__(self) -> None:
        check_int("steps", self.steps, low=1)
        check_float("lr", self.lr, low=0.0, low_open=True)
        check_int("max_iter", self.max_iter, low=1)
        check_int("history_size", self.history_size, low=1)
        check_float("tol", self.tol, low=0.0)
        check_float("tolerance_grad", self.tolerance_grad, low=0.0)
        check_float("tolerance_change", self.tolerance_change, low=0.0)
        if self.patience is not None:
            check_int("patience", self.patience, low=1)
        check_int("retries", self.retries, low=0)
        check_float("retry_lr_factor", self.retry_lr_factor, low=0.0, high=1.0, low_open=True)
        check_float("accept", self.accept, low=0.0)
        check_int("log_every", self.log_every, low=1)


@dataclass(frozen=True)
class IGConfig:
    """Inverting Gradients. Defaults: Geiping et al. 2020's 100-image CIFAR-100 run."""

    iterations: int = 24_000  # Adam steps per restart
    restarts: int = 4  # independent trials; the one of least gradient distance is kept
    lr: float = 0.1  # Adam step size, in normalised pixel units
    tv: float = 1e-2  # weight α of the total-variation prior
    signed: bool = True  # Adam on sign(∇x)
    boxed: bool = True  # project x to [0, 1] after every step
    milestones: tuple[float, ...] = (3 / 8, 5 / 8, 7 / 8)  # lr × gamma at these fractions
    gamma: float = 0.1
    retries: int = 2  # extra trials when a trial diverges
    log_every: int = 100  # record the loss / update the progress bar every k iterations

    def __post_init__(self) -> None:
        check_int("iterations", self.iterations, low=1)
        check_int("restarts", self.restarts, low=1)
        check_float("lr", self.lr, low=0.0, low_open=True)
        check_float("tv", self.tv, low=0.0)
        check_float("gamma", self.gamma, low=0.0, high=1.0, low_open=True)
        for m in self.milestones:
            check_float("milestones", m, low=0.0, high=1.0, low_open=True, high_open=True)
        check_int("retries", self.retries, low=0)
        check_int("log_every", self.log_every, low=1)


@dataclass
class Reconstruction:
    """What an attack recovered, and how the optimisation went."""

    attack: str
    images: torch.Tensor  # [B, C, H, W], finite, clipped to [0, 1]
    labels: torch.Tensor  # [B] recovered (or given) labels
    loss: float  # final distance of the kept trial: ‖g − g*‖²/‖g*‖² (DLG), 1 − cos (IG)
    history: list[tuple[int, float]]  # (iteration, loss) of the kept trial, every log_every
    trial_losses: list[float] = field(default_factory=list)  # NaN for a diverged trial
    diverged: int = 0  # trials that ended in NaN/Inf and were restarted
    retried: int = 0  # DLG attempts that ended above ``accept`` (no fit) and were retried
    seconds: float = 0.0  # wall time of the whole attack

    def cpu(self) -> Reconstruction:
        """The same record with its images and labels on the CPU (for scoring and plots)."""
        return replace(self, images=self.images.cpu(), labels=self.labels.cpu())


def _dummy(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """A standard-normal leaf to optimise, drawn on the CPU (the same start on every device)."""
    return torch.randn(shape, generator=generator).to(device).requires_grad_(True)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV of inversefed: mean |horizontal diff| + mean |vertical diff|."""
    dx = (x[:, :, :, :-1] - x[:, :, :, 1:]).abs().mean()
    dy = (x[:, :, :-1, :] - x[:, :, 1:, :]).abs().mean()
    return dx + dy


def l2_distance(g: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖g − g*‖² (DLG)."""
    return (g - target).pow(2).sum()


#: DLG's distance is optimised as DLG_SCALE·‖g − g*‖²/‖g*‖² (see the module docstring).
DLG_SCALE = 1000.0


def relative_l2_distance(g: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖g − g*‖² / ‖g*‖²: DLG's distance over a constant, the same for any gradient scale."""
    return l2_distance(g, target) / target.pow(2).sum()


def _scaled_l2_distance(g: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return DLG_SCALE * relative_l2_distance(g, target)


def cosine_distance(g: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − cos(g, g*) over the whole flat gradient (Inverting Gradients' distance)."""
    return 1.0 - (g * target).sum() / (g.norm() * target.norm())


def infer_labels(model: nn.Module, target: torch.Tensor, num_images: int = 1) -> torch.Tensor:
    """iDLG's analytic labels: the ``num_images`` classes whose last-layer weight-gradient rows
    have the most negative sums (for one image, the argmin; distinct labels in a batch)."""
    target = check_target(model, target)
    name, head = last_linear(model)
    num_images = check_int("num_images", num_images, low=1, high=head.out_features)
    rows = target[parameter_slices(model)[f"{name}.weight"]].view_as(head.weight)  # [K, F]
    return torch.argsort(rows.sum(dim=1))[:num_images]  # [B]


def _check_labels(model: nn.Module, labels: torch.Tensor | None, num_images: int) -> None:
    if labels is None:
        return
    classes = last_linear(model)[1].out_features
    if not isinstance(labels, torch.Tensor) or labels.shape != (num_images,) or (
        labels.is_floating_point()
    ):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"The 'labels' parameter must be an integer tensor of shape ({num_images},). "
            f"Got {got} instead."
        )
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(
            f"The 'labels' parameter must hold classes in [0, {classes}). "
            f"Got {labels.tolist()} instead."
        )


def _progress(total: int, desc: str, show: bool) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not show, leave=False, dynamic_ncols=True)


def _matching_loss(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    target: torch.Tensor,
    defense: Defense,
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    create_graph: bool = True,
) -> torch.Tensor:
    dummy = observable_gradient(model, x, labels, clip=defense.clip, create_graph=create_graph)
    return distance(defense.emulate(dummy, target), target)


@contextlib.contextmanager
def _plain_convolutions(enabled: bool):  # -> Iterator[None]
    """Use PyTorch's own CPU convolutions instead of oneDNN's inside the block.

    For one 32×32 image oneDNN's per-call overhead dominates: a DLG closure on the LeNet takes
    about 3.7 ms instead of 5.8 ms (measured, one thread). Restores the previous setting.
    """
    previous = torch.backends.mkldnn.enabled
    if enabled:
        torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def _dlg_attempt(
    model: nn.Module,
    target: torch.Tensor,
    x: torch.Tensor,
    soft: torch.Tensor | None,
    labels: torch.Tensor | None,
    lr: float,
    config: DLGConfig,
    defense: Defense,
    bar: tqdm,
) -> list[tuple[int, float]]:
    """One L-BFGS run from the draw ``x`` (and ``soft``), updated in place; its history of
    relative distances ‖g − g*‖²/‖g*‖², ending at NaN if the run diverged."""
    leaves = [x] if soft is None else [x, soft]
    optimizer = torch.optim.LBFGS(
        leaves, lr=lr, max_iter=config.max_iter, history_size=config.history_size,
        tolerance_grad=config.tolerance_grad, tolerance_change=config.tolerance_change,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        y = labels if soft is None else soft.softmax(dim=-1)  # [B] or [B, K]
        loss = _matching_loss(model, x, y, target, defense, _scaled_l2_distance)
        loss.backward(inputs=leaves)
        return loss.detach()

    history: list[tuple[int, float]] = []
    best, since_best, step = math.inf, 0, 0
    for step in range(config.steps):
        value = float(optimizer.step(closure)) / DLG_SCALE  # L-BFGS synchronises on it anyway
        if not math.isfinite(value):
            return [*history, (step, math.nan)]
        if step % config.log_every == 0:
            history.append((step, value))
            bar.set_postfix(loss=f"{value:.3e}", refresh=False)
            bar.update(step + 1 - bar.n)
        if value < best * (1 - 1e-3):
            best, since_best = value, 0
        else:
            since_best += 1
        if value < config.tol or (config.patience and since_best >= config.patience):
            break
    y = labels if soft is None else soft.detach().softmax(dim=-1)
    final = math.nan
    if bool(torch.isfinite(x).all()):
        final = float(
            _matching_loss(model, x, y, target, defense, relative_l2_distance,
                           create_graph=False).detach()
        )
    return [*history, (step + 1, final)]


def dlg(
    model: nn.Module,
    target: torch.Tensor,
    *,
    num_images: int = 1,
    labels: torch.Tensor | None = None,
    config: DLGConfig | None = None,
    defense: Defense = NO_DEFENSE,
    generator: torch.Generator | None = None,
    progress: bool = False,
    name: str = "dlg",
) -> Reconstruction:
    """DLG (Zhu et al. 2019): L-BFGS on dummy images and soft labels; with ``labels`` given the
    labels are fixed and only the images are optimised (the second stage of iDLG)."""
    config = DLGConfig() if config is None else config
    if not isinstance(config, DLGConfig):
        raise TypeError(f"The 'config' parameter must be a DLGConfig. Got {type(config).__name__}.")
    target = check_target(model, target)
    num_images = check_int("num_images", num_images, low=1)
    _check_labels(model, labels, num_images)
    classes = last_linear(model)[1].out_features
    shape = (num_images, *model.input_shape)
    start, attempts, lr = time.perf_counter(), [], config.lr  # attempts: (loss, x, soft, history)
    with _progress(config.steps, name, progress) as bar:
        for attempt in range(config.retries + 1):
            x = _dummy(shape, generator, target.device)  # [B, C, H, W]
            soft = None
            if labels is None:
                soft = _dummy((num_images, classes), generator, target.device)  # [B, classes]
            bar.reset()
            bar.set_description(f"{name} (attempt {attempt + 1})" if attempt else name)
            with _plain_convolutions(num_images == 1):
                history = _dlg_attempt(model, target, x, soft, labels, lr, config, defense, bar)
            final = history[-1][1]
            attempts.append((final, x.detach(), soft, history))
            if not math.isfinite(final):
                lr *= config.retry_lr_factor  # diverged: a fresh draw with a smaller step
            elif final <= config.accept:
                break  # a fit: keep it
    finite = [a for a in attempts if math.isfinite(a[0])]
    if not finite:
        raise DivergenceError(
            f"{name}: all {len(attempts)} attempt(s) diverged (NaN/Inf gradient distance; "
            f"lr from {config.lr:g} down to {lr / config.retry_lr_factor:g}). "
            "Lower 'lr' or raise 'retries'."
        )
    final, x, soft, history = min(finite, key=lambda a: a[0])
    recovered = labels if soft is None else soft.detach().argmax(dim=-1)
    return Reconstruction(
        name, x.clamp(0, 1), recovered, final, history, [a[0] for a in attempts],
        diverged=len(attempts) - len(finite), retried=len(finite) - 1,
        seconds=time.perf_counter() - start,
    )


def idlg(
    model: nn.Module,
    target: torch.Tensor,
    *,
    num_images: int = 1,
    labels: torch.Tensor | None = None,
    config: DLGConfig | None = None,
    defense: Defense = NO_DEFENSE,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Reconstruction:
    """iDLG (Zhao et al. 2020): labels from :func:`infer_labels`, then DLG on the images only.
    ``labels`` is accepted for a uniform interface and ignored: iDLG always infers them."""
    inferred = infer_labels(model, target, num_images)
    return dlg(
        model, target, num_images=num_images, labels=inferred, config=config, defense=defense,
        generator=generator, progress=progress, name="idlg",
    )


def _normalisation(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) ``[C, 1, 1]`` of the model's first Normalize layer; (0, 1) without one."""
    for module in model.modules():
        if isinstance(module, Normalize):
            return module.mean, module.std
    device = next(model.parameters()).device
    return torch.zeros((), device=device), torch.ones((), device=device)


def inverting_gradients(
    model: nn.Module,
    target: torch.Tensor,
    *,
    num_images: int = 1,
    labels: torch.Tensor | None = None,
    config: IGConfig | None = None,
    defense: Defense = NO_DEFENSE,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Reconstruction:
    """Inverting Gradients (Geiping et al. 2020); labels given, or recovered as in iDLG."""
    config = IGConfig() if config is None else config
    if not isinstance(config, IGConfig):
        raise TypeError(f"The 'config' parameter must be an IGConfig. Got {type(config).__name__}.")
    target = check_target(model, target)
    num_images = check_int("num_images", num_images, low=1)
    _check_labels(model, labels, num_images)
    if labels is None:
        labels = infer_labels(model, target, num_images)
    mean, std = _normalisation(model)
    low, high = -mean / std, (1 - mean) / std  # the box [0, 1] in normalised coordinates
    milestones = sorted({max(1, int(m * config.iterations)) for m in config.milestones})
    shape = (num_images, *model.input_shape)
    start, trials, scores = time.perf_counter(), [], []  # trials: (loss, z, history)
    with _progress(config.iterations, "ig", progress) as bar:
        while len(trials) < config.restarts:
            z = _dummy(shape, generator, target.device)  # [B, C, H, W]
            bar.reset()
            history = _ig_trial(model, target, z, labels, low, high, milestones, config,
                                defense, bar, f"{len(trials) + 1}/{config.restarts}")
            score = math.nan
            if history is not None and bool(torch.isfinite(z).all()):
                score = float(
                    _matching_loss(model, mean + std * z, labels, target, defense,
                                   cosine_distance, create_graph=False).detach()
                )
            scores.append(score)
            if math.isfinite(score):
                trials.append((score, z.detach(), history))
            elif len(scores) - len(trials) > config.retries:
                raise DivergenceError(
                    f"ig: {len(scores) - len(trials)} trial(s) diverged (NaN/Inf loss), more "
                    f"than retries={config.retries}. Lower 'lr' or check the model."
                )
    best_loss, best_z, best_history = min(trials, key=lambda t: t[0])
    return Reconstruction(
        "ig", (mean + std * best_z).clamp(0, 1), labels, best_loss, best_history, scores,
        diverged=len(scores) - len(trials), seconds=time.perf_counter() - start,
    )


def _ig_trial(
    model: nn.Module,
    target: torch.Tensor,
    z: torch.Tensor,
    labels: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    milestones: list[int],
    config: IGConfig,
    defense: Defense,
    bar: tqdm,
    trial: str,
) -> list[tuple[int, float]] | None:
    """One Adam run on ``z`` (normalised coordinates, updated in place); its loss history, or
    ``None`` as soon as a logged loss is NaN/Inf."""
    mean, std = _normalisation(model)
    optimizer = torch.optim.Adam([z], lr=config.lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, config.gamma)
    history = []
    for it in range(config.iterations):
        optimizer.zero_grad()
        loss = _matching_loss(model, mean + std * z, labels, target, defense, cosine_distance)
        if config.tv > 0:
            loss = loss + config.tv * total_variation(z)  # TV of the normalised image
        loss.backward(inputs=[z])
        if config.signed:
            z.grad.sign_()
        optimizer.step()
        schedule.step()
        if config.boxed:
            with torch.no_grad():
                z.copy_(torch.maximum(torch.minimum(z, high), low))  # x in [0, 1]
        if it % config.log_every == 0 or it == config.iterations - 1:
            value = float(loss.detach())  # the only host synchronisation, every log_every steps
            if not math.isfinite(value):
                return None
            history.append((it, value))
            bar.set_postfix(loss=f"{value:.4f}", trial=trial, refresh=False)
            bar.update(it + 1 - bar.n)
    return history


AttackFn = Callable[..., Reconstruction]
ATTACKS = Registry[AttackFn]("gradient inversion attack")
ATTACKS.register("dlg", dlg)
ATTACKS.register("idlg", idlg)
ATTACKS.register("ig", inverting_gradients)

#: The configuration class each attack takes.
CONFIGS: dict[str, type] = {"dlg": DLGConfig, "idlg": DLGConfig, "ig": IGConfig}
