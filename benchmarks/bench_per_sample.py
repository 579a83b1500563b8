"""Per-sample clipped gradients of all honest workers of one step: torch.func vs loop vs Opacus.

The step of the reference setting: n = 11 workers, f = 5 Byzantine, so h = 6 honest workers,
each with a batch of b in {10, 50, 500} samples (quick: b = 10, digits only), clip C = 0.01.
Output: each worker's mean of its b per-sample gradients clipped to norm C, ``Tensor[h, d]``.
Models: the
digits CNN (1x8x8 inputs, width 16, d = 13,706) and the MNIST-size CNN (1x28x28, width 16,
d = 105,866), from :func:`dpbr_lib.models.build_model`; inputs are N(0, 1) images and random
labels (the cost does not depend on the pixels).

- ours: :func:`dpbr_lib.training.honest_gradients` (one ``torch.func.vmap(grad(...))`` call
  over the h * b stacked samples, then :func:`dpbr_lib.privacy.per_sample_clip`);
- loop: one forward and ``torch.autograd.grad`` per sample, clipped and summed in Python;
- Opacus: ``GradSampleModule`` (forward/backward hooks fill ``p.grad_sample``) on the whole
  h * b batch with a summed loss, then the same clipping.

Results must agree to 1e-5 of the gradient scale before timing. Targets: ours >= 10x the loop
at b = 50; ours no slower than Opacus.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _harness import Row, Settings, allclose, compare, run_as_script
from torch import nn

from dpbr_lib import models, privacy, training

TOPIC = "per_sample"
HONEST = 6  # n = 11, f = 5
CLIP = 0.01
TARGET_LOOP = 10.0  # at b = 50
TARGET_OPACUS = 1.0
MODELS = {"digits CNN 1x8x8": (1, 8, 8), "MNIST-size CNN 1x28x28": (1, 28, 28)}


def models_for(settings: Settings) -> dict[str, tuple[int, int, int]]:
    """Both CNNs; the digits CNN only in the quick run."""
    return dict(list(MODELS.items())[:1]) if settings.quick else MODELS


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_step(
    shape: tuple[int, ...], b: int, seed: int = 0
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model and one step's batches ``x: [h, b, *shape]``, ``y: [h, b]``."""
    model = models.build_model("cnn", shape, 10, width=16, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(HONEST, b, *shape, generator=generator)  # [h, b, C, H, W]
    y = torch.randint(0, 10, (HONEST, b), generator=generator)  # [h, b]
    return model, x, y


def ours(model: nn.Module, loss_fn: Loss, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return training.honest_gradients(model, loss_fn, x, y, CLIP, "per_sample")  # [h, d]


def loop(model: nn.Module, loss_fn: Loss, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One forward/backward per sample, as a training loop without vectorization does."""
    params = [p for p in model.parameters() if p.requires_grad]
    h, b = y.shape
    workers = []
    for w in range(h):
        total = None
        for i in range(b):
            loss = loss_fn(model(x[w, i : i + 1]), y[w, i : i + 1])
            g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])  # [d]
            g = g * min(1.0, CLIP / float(g.norm()))
            total = g if total is None else total + g
        workers.append(total / b)
    return torch.stack(workers)  # [h, d]


def opacus_module(model: nn.Module) -> nn.Module:
    from opacus import GradSampleModule

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GradSampleModule(copy.deepcopy(model), loss_reduction="sum")


def opacus(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients from Opacus's hooks, clipped and averaged per worker."""
    h, b = y.shape
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.grad_sample = None
        p.grad = None
    out = module(x.reshape(h * b, *x.shape[2:]))  # [h * b, classes]
    with warnings.catch_warnings():  # "full backward hook ... no inputs require gradients"
        warnings.simplefilter("ignore", UserWarning)
        F.cross_entropy(out, y.reshape(h * b), reduction="sum").backward()
    per_sample = torch.cat([p.grad_sample.reshape(h * b, -1) for p in params], dim=1)  # [hb, d]
    return privacy.per_sample_clip(per_sample, CLIP).view(h, b, -1).mean(dim=1)  # [h, d]


def batched_backward(model: nn.Module, loss_fn: Loss, x: torch.Tensor, y: torch.Tensor) -> None:
    """One forward/backward of the h * b samples with no per-sample gradient: a lower bound on
    the cost of any per-sample method (the same convolutions, no per-sample weight gradient)."""
    params = [p for p in model.parameters() if p.requires_grad]
    torch.autograd.grad(loss_fn(model(x.flatten(0, 1)), y.flatten()), params)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to 1e-5 of the gradients' scale (entries are about C / sqrt(d) here)."""
    return allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def run(settings: Settings) -> list[Row]:
    batches = (10,) if settings.quick else (10, 50, 500)
    loss_fn = training.LOSSES.get("cross_entropy")
    rows: list[Row] = []
    for label, shape in models_for(settings).items():
        for b in batches:
            model, x, y = make_step(shape, b)
            d = models.count_parameters(model)
            case = f"{label} d={d} h={HONEST} b={b}"
            method = ("torch.func", lambda m=model, x=x, y=y: ours(m, loss_fn, x, y))
            rows.append(
                compare(
                    TOPIC,
                    case,
                    method,
                    ("loop", lambda m=model, x=x, y=y: loop(m, loss_fn, x, y)),
                    settings,
                    target=TARGET_LOOP if b == 50 else None,
                    check=close,
                )
            )
            rows.append(
                compare(
                    TOPIC,
                    case,
                    (
                        "floor: batched fwd+bwd",
                        lambda m=model, x=x, y=y: batched_backward(m, loss_fn, x, y),
                    ),
                    ("loop", lambda m=model, x=x, y=y: loop(m, loss_fn, x, y)),
                    settings,
                    check=None,
                    note="no per-sample gradients: the most any per-sample method can gain",
                )
            )
            module = opacus_module(model)
            rows.append(
                compare(
                    TOPIC,
                    case,
                    method,
                    ("opacus", lambda m=module, x=x, y=y: opacus(m, x, y)),
                    settings,
                    target=TARGET_OPACUS,
                    check=close,
                )
            )
    return rows


if __name__ == "__main__":
    run_as_script(run, __doc__)
