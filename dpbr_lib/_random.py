"""Random draws across devices."""

from __future__ import annotations

import torch


def draw_device(like: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    """Where a random draw for ``like`` happens: on ``generator``'s device (a CPU generator gives
    a GPU tensor the same draws as on the CPU; the caller moves the draw to ``like.device``),
    or on ``like``'s without a generator."""
    return like.device if generator is None else generator.device
