"""DLG iterations per second: :func:`dpbr_lib.inversion.attacks.dlg` against the paper's loop.

One 32x32 colour image (the first offline photo crop, label 0) and the LeNet of Zhu et al. 2019
(:func:`dpbr_lib.inversion.models.build_model` ``"lenet"``, 100 classes, its uniform init). The
attacker sees the image's gradient and runs S L-BFGS steps (lr 1, 20 inner iterations each;
S = 300, DLG's count; quick: 1) from the same seeded draw of the dummy image and soft label:

- ours: ``dlg(model, target, config=DLGConfig(steps=S, tol=0))`` (no early stop), with the
  library's retries: an attempt that ends without a fit (relative distance above ``accept``)
  restarts from a fresh draw, as every caller of ``dlg`` gets it. Its iterations/s counts the
  steps of every attempt. (From this seed's first draw the library's scaled objective, a
  constant multiple of the paper's, ends in a wrong basin after S steps: 5.6 dB, measured, where
  the unscaled loop happens to reach 39.7 dB; the second draw recovers the image.)
- baseline: DLG's loop as the paper gives it (Algorithm 1), written plainly: an L-BFGS closure
  that builds the dummy gradient with ``torch.autograd.grad(..., create_graph=True)``, sums
  ``(g - g*)^2`` over the parameter tensors and calls ``backward``.

Checks: (1) both minimise the same function: equal value and gradient at the common start;
(2) full run only: the same PSNR reached against the original, within 1 dB or both above
30 dB. The two trajectories are not bit-equal (the sums run in another order, a rounding-level
difference that L-BFGS amplifies over hundreds of closure calls), so the PSNRs after S steps
differ slightly even though both recover the image. Each side runs once (S steps take minutes
on 2 cores); iterations/s is S over that wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _harness import Row, Settings, allclose, run_as_script
from torch import nn

from dpbr_lib.inversion import attacks, gradients, images, metrics
from dpbr_lib.inversion import models as inversion_models

TOPIC = "dlg"
CLASSES = 100
FULL_STEPS = 300  # DLG's iterations; the photo is recovered to about 38 dB by then
PSNR_TOLERANCE_DB = 1.0
PSNR_RECOVERED_DB = 30.0


def _start(shape: tuple[int, ...], classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The dummy image and soft label, drawn in the order ``dlg`` draws them."""
    generator = torch.Generator().manual_seed(seed)
    dummy = torch.randn((1, *shape), generator=generator).requires_grad_(True)
    soft = torch.randn((1, classes), generator=generator).requires_grad_(True)
    return dummy, soft


def paper_objective(
    model: nn.Module, target: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """DLG's gradient distance written as in the paper's code: cross-entropy against the
    softmax of the soft label, the dummy gradient with ``create_graph=True``, and the sum over
    parameter tensors of ||dummy grad - shared grad||^2."""
    params = [p for p in model.parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    pieces = [t.view_as(p) for t, p in zip(target.split(sizes), params, strict=True)]

    def distance(dummy: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        logits = model(dummy)  # [1, classes]
        loss = torch.sum(-F.softmax(soft, dim=-1) * F.log_softmax(logits, dim=-1), 1).mean()
        dummy_grads = torch.autograd.grad(loss, params, create_graph=True)
        return sum(((g - t) ** 2).sum() for g, t in zip(dummy_grads, pieces, strict=True))

    return distance


def paper_loop(
    model: nn.Module, target: torch.Tensor, shape: tuple[int, ...], steps: int, seed: int
) -> torch.Tensor:
    """DLG (Zhu et al. 2019, Algorithm 1) as a plain L-BFGS loop; returns the dummy image."""
    dummy, soft = _start(shape, CLASSES, seed)
    distance = paper_objective(model, target)
    optimizer = torch.optim.LBFGS([dummy, soft], lr=1.0)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = distance(dummy, soft)
        value.backward()
        return value

    for _ in range(steps):
        optimizer.step(closure)
    return dummy.detach()


def ours(model: nn.Module, target: torch.Tensor, steps: int, seed: int) -> attacks.Reconstruction:
    config = attacks.DLGConfig(steps=steps, tol=0.0)
    generator = torch.Generator().manual_seed(seed)
    return attacks.dlg(model, target, config=config, generator=generator)


def same_objective(model: nn.Module, target: torch.Tensor, shape: tuple[int, ...]) -> bool:
    """Both sides minimise the same function: equal value and gradient at the common start
    (ours through the library's public pieces, ``observable_gradient`` and ``l2_distance``)."""
    dummy, soft = _start(shape, CLASSES, 0)
    paper = paper_objective(model, target)(dummy, soft)
    mine = attacks.l2_distance(
        gradients.observable_gradient(model, dummy, soft.softmax(dim=-1), create_graph=True),
        target,
    )
    grad_paper = torch.autograd.grad(paper, [dummy, soft])
    grad_mine = torch.autograd.grad(mine, [dummy, soft])
    return allclose(mine, paper) and all(
        allclose(a, b, atol=1e-6 * float(b.abs().max()))
        for a, b in zip(grad_mine, grad_paper, strict=True)
    )


def run(settings: Settings) -> list[Row]:
    steps = 1 if settings.quick else FULL_STEPS
    seed = 0
    model = inversion_models.build_model("lenet", num_classes=CLASSES, input_shape=(3, 32, 32))
    batch = images.load_images(1, source="photos", size=32)
    original = batch.images  # [1, 3, 32, 32]
    target = gradients.observable_gradient(model, original, batch.labels)  # [d]
    shape = tuple(original.shape[1:])
    objective = same_objective(model, target, shape)

    tic = time.perf_counter()
    recovered = ours(model, target, steps, seed)
    t_ours = time.perf_counter() - tic
    reconstructed, attempts = recovered.images, len(recovered.trial_losses)
    ours_steps = steps * attempts  # no early stop (tol 0): every attempt runs all S steps
    tic = time.perf_counter()
    baseline = paper_loop(model, target, shape, steps, seed)
    t_loop = time.perf_counter() - tic
    psnr_ours = float(metrics.psnr(reconstructed.clamp(0, 1), original)[0])
    psnr_loop = float(metrics.psnr(baseline.clamp(0, 1), original)[0])
    reached = (
        abs(psnr_ours - psnr_loop) <= PSNR_TOLERANCE_DB
        or min(psnr_ours, psnr_loop) >= PSNR_RECOVERED_DB
    )
    checked = "objective" if settings.quick else "objective and PSNR"
    return [
        Row(
            TOPIC,
            f"LeNet 3x32x32 d={target.numel()} 1 image, {steps} L-BFGS steps",
            "dlg",
            "paper loop",
            time_s=t_ours / ours_steps,
            baseline_s=t_loop / steps,
            speedup=(t_loop / steps) / (t_ours / ours_steps),
            metric="iterations/s",
            value=ours_steps / t_ours,
            correct=objective if settings.quick else objective and reached,
            target="speedup >= 1",
            met=(t_loop / steps) / (t_ours / ours_steps) >= 1.0,
            note=(
                f"checked: {checked}; PSNR {psnr_ours:.1f} dB (ours, {attempts} attempt(s)) vs "
                f"{psnr_loop:.1f} dB (loop); loop {steps / t_loop:.2f} it/s; time_s is per "
                "iteration"
            ),
        )
    ]


if __name__ == "__main__":
    run_as_script(run, __doc__)
