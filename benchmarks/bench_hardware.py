"""Against the hardware: FLOP rate of the per-sample gradient computation as a fraction of the
machine's matmul rate, both measured in this process.

The matmul rate: a square float32 ``torch.mm`` (N = 2048; quick: 256), 2 N^3 FLOPs per call.
The gradient computation: the step of :mod:`bench_per_sample` (h = 6 honest workers, b samples
each, both CNNs), timed through :func:`dpbr_lib.training.honest_gradients`.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the batched forward and
backward pass of the same h * b samples. That pass does exactly the multiply-adds a per-sample
gradient needs (each sample's weight gradient takes the same products as its share of the
batch gradient; only the final sum over samples is skipped). The vmapped trace itself cannot be
counted: ``torch.func`` turns each per-sample weight gradient into a grouped convolution with
h * b * C groups, and ``FlopCounterMode``'s ``convolution_backward`` formula ignores ``groups``
(torch 2.14: ``conv_backward_flop(..., _groups, ...)``), which over-counts by orders of
magnitude.
"""

from __future__ import annotations

import torch
from _harness import Row, Settings, run_as_script, time_interleaved
from bench_per_sample import HONEST, make_step, models_for, ours
from torch.utils.flop_counter import FlopCounterMode

from dpbr_lib import models, training

TOPIC = "hardware"


def matmul_rate(settings: Settings) -> tuple[float, float, int]:
    """(FLOP/s of a square float32 torch.mm, seconds per call, its size N)."""
    size = 256 if settings.quick else 2048
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)  # [N, N]
    b = torch.randn(size, size, generator=generator)  # [N, N]
    out = torch.empty(size, size)
    (seconds,) = time_interleaved([lambda: torch.mm(a, b, out=out)], settings)
    return 2.0 * size**3 / seconds, seconds, size


def gradient_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of the batched forward + backward of the h * b samples (see the module doc)."""
    loss_fn = training.LOSSES.get("cross_entropy")
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(x.flatten(0, 1)), y.flatten()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def run(settings: Settings) -> list[Row]:
    rate, mm_seconds, size = matmul_rate(settings)
    loss_fn = training.LOSSES.get("cross_entropy")
    batches = (10,) if settings.quick else (10, 50, 500)
    rows = [
        Row(
            TOPIC,
            f"torch.mm {size}x{size} float32",
            "torch.mm",
            time_s=mm_seconds,
            metric="GFLOP/s",
            value=rate / 1e9,
            note="the machine's measured matmul rate, the reference of this topic",
        )
    ]
    for label, shape in models_for(settings).items():
        for b in batches:
            model, x, y = make_step(shape, b)
            flops = gradient_flops(model, x, y)
            timed = [lambda m=model, x=x, y=y: ours(m, loss_fn, x, y)]
            (seconds,) = time_interleaved(timed, settings)
            achieved = flops / seconds
            rows.append(
                Row(
                    TOPIC,
                    f"{label} d={models.count_parameters(model)} h={HONEST} b={b}",
                    "torch.func per-sample gradients",
                    baseline=f"torch.mm {size}",
                    time_s=seconds,
                    baseline_s=flops / rate,
                    speedup=achieved / rate,
                    metric="fraction of mm rate",
                    value=achieved / rate,
                    note=f"{flops / 1e9:.3f} GFLOP at {achieved / 1e9:.2f} GFLOP/s",
                )
            )
    return rows


if __name__ == "__main__":
    run_as_script(run, __doc__)
