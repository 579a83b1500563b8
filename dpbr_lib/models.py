"""Networks of the experiments: a small CNN sized for the input, and logistic regression.

No BatchNorm anywhere: it mixes the samples of a batch, so a per-sample gradient (and hence
per-sample clipping for DP-SGD, Abadi et al. 2016) would not exist. The CNN has no normalisation
layer; it trains well at the sizes used here.

Initialisation is seeded: the modules are built on the ``meta`` device (no global random number is
drawn) and their parameters are then filled from a ``torch.Generator`` with PyTorch's default
scheme (He-uniform weights with a = √5, biases uniform in ±1/√fan_in), so the same seed gives the
same network and library code never touches the global random state.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from dpbr_lib._registry import Registry
from dpbr_lib._validation import check_int


class CNN(nn.Module):
    """Two 3×3 conv blocks (ReLU, 2×2 max-pool) and a two-layer classifier.

    Channels ``width`` then ``2·width``, hidden layer ``4·width``: the dimension d grows as about
    ``18·width² + 8·width²·(H/4)(W/4)``, so ``width`` moves d over three orders of magnitude
    (digits 1×8×8: width 4 → d ≈ 1.1·10³, 16 → 1.4·10⁴, 128 → 8.3·10⁵; see
    :func:`count_parameters`). Works for 1×8×8, 1×28×28 and 3×32×32 inputs (any H, W ≥ 4).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> None:
        super().__init__()
        channels, height, breadth = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),  # [B, w, H, W]
            nn.ReLU(),
            nn.MaxPool2d(2),  # [B, w, H/2, W/2]
            nn.Conv2d(width, 2 * width, 3, padding=1),  # [B, 2w, H/2, W/2]
            nn.ReLU(),
            nn.MaxPool2d(2),  # [B, 2w, H/4, W/4]
        )
        flat = 2 * width * (height // 4) * (breadth // 4)
        self.classifier = nn.Sequential(
            nn.Flatten(),  # [B, 2w·(H/4)·(W/4)]
            nn.Linear(flat, 4 * width),  # [B, 4w]
            nn.ReLU(),
            nn.Linear(4 * width, num_classes),  # [B, classes]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # [B, classes]


class Logit(nn.Module):
    """Logistic regression: one affine map of the flattened input to the class logits.

    The reference's ``simples-logit`` (one linear layer and a sigmoid, trained with MSE on the
    binary phishing set). Here the map has ``num_classes`` outputs and the loss applies softmax;
    with two classes softmax(z)₁ = sigmoid(z₁ − z₀), so the MSE loss of
    :mod:`dpbr_lib.training` equals the reference's (sigmoid − label)² exactly, over a
    parameterisation with two weight vectors instead of one. ``width`` is ignored.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 0) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))  # [B, classes]


Builder = Callable[[tuple[int, ...], int, int], nn.Module]
MODELS: Registry[Builder] = Registry("model")
MODELS.register("cnn", CNN)
MODELS.register("logit", Logit)

#: Input ranks each model accepts (the CNN needs (C, H, W) images).
_INPUT_RANKS = {"cnn": (3,), "logit": (1, 2, 3)}


def names() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return MODELS.names()


def check_model(name: str, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> None:
    """Raise ``ValueError`` if ``build_model`` would reject these arguments (no work done)."""
    MODELS.get(name)
    check_int("num_classes", num_classes, low=2)
    check_int("width", width, low=1)
    shape = tuple(input_shape)
    if len(shape) not in _INPUT_RANKS[name] or any(int(s) < 1 for s in shape):
        raise ValueError(
            f"The 'input_shape' parameter must have rank {_INPUT_RANKS[name]} for model {name!r}. "
            f"Got {shape} instead."
        )
    if name == "cnn" and min(shape[1:]) < 4:
        raise ValueError(
            f"The 'input_shape' parameter must be at least 4×4 for the CNN. Got {shape} instead."
        )


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int = 16,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """A freshly initialised model ``name`` (see :func:`names`), float32 on the CPU.

    The initial parameters are drawn from ``generator`` if given, else from a new generator
    seeded with ``seed``.
    """
    check_model(name, input_shape, num_classes, width)
    if generator is None:
        generator = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    with torch.device("meta"):
        model = MODELS.get(name)(tuple(input_shape), num_classes, width)
    model = model.to_empty(device="cpu")
    initialise(model, generator)
    return model


def initialise(model: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default init of every Conv/Linear layer, drawn from ``generator``."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    fan_in = module.weight[0].numel()
                    bound = 1.0 / math.sqrt(fan_in)
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def count_parameters(model: nn.Module) -> int:
    """d: the number of trainable parameters (the length of a flat gradient)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
