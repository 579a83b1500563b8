"""The networks whose gradients the attacks invert.

- :class:`DLGLeNet`: the LeNet of Zhu et al. 2019 ("Deep leakage from gradients", NeurIPS,
  and their ``models/vision.py``): three 5×5 convolutions with 12 channels, strides
  2, 2, 1, padding 2, sigmoid after each, one linear layer (12·8·8 = 768 inputs for 32×32).
  Weights and biases uniform(−0.5, 0.5) (:func:`dlg_init_`).
- :class:`ConvNet`: a small ReLU ConvNet for Inverting Gradients on a CPU (our choice, smaller
  than Geiping et al.'s 8-layer ConvNet): conv3×3 (w), conv3×3 stride 2 (2w), conv3×3 stride 2
  (4w), linear. No BatchNorm, so per-sample gradients exist.
- :func:`resnet32_10`: the ResNet32-10 of Geiping et al. 2020 ("Inverting gradients", NeurIPS,
  and ``inversefed/nn/models.py``): a CIFAR ResNet with 3 stages of 5 BasicBlocks,
  strides 1, 2, 2, base width 16·10 = 160 (widths 160, 320, 640), 3×3 stem, global average
  pooling, linear head.

Every model takes images in [0, 1], records the ``input_shape`` ``(C, H, W)`` it accepts and
ends in a linear layer whose inputs are non-negative (sigmoid, ReLU or pooled ReLU features),
which the analytic label recovery of iDLG needs. The IG models start with a fixed
:class:`Normalize` layer (CIFAR-100 statistics), as inversefed normalises its data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from dpbr_lib._registry import Registry
from dpbr_lib._validation import check_int

#: CIFAR-100 channel statistics (torchvision's CIFAR100 train split), the IG models' Normalize.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class Normalize(nn.Module):
    """(x − mean) / std per channel, with fixed (non-trainable) buffers."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std  # [B, C, H, W]


def _check_side(name: str, side: int, multiple: int) -> int:
    side = check_int(name, side, low=multiple)
    if side % multiple:
        raise ValueError(
            f"The {name!r} parameter must be a multiple of {multiple} for this model "
            f"(its strided layers divide the image side by {multiple}). Got {side} instead."
        )
    return side


class DLGLeNet(nn.Module):
    """LeNet of Zhu et al. 2019 (DLG): conv5×5/12 ×3 with sigmoid, one linear layer."""

    def __init__(self, num_classes: int = 100, channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        num_classes = check_int("num_classes", num_classes, low=2)
        channels = check_int("channels", channels, low=1)
        image_size = _check_side("image_size", image_size, 4)
        self.input_shape = (channels, image_size, image_size)
        self.body = nn.Sequential(
            nn.Conv2d(channels, 12, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1),
            nn.Sigmoid(),
        )
        self.fc = nn.Linear(12 * (image_size // 4) ** 2, num_classes)  # 768 for 32×32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))  # [B, num_classes]


def dlg_init_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Every weight and bias uniform(−0.5, 0.5) from ``generator`` (DLG's ``weights_init``)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=generator) - 0.5)
    return model


def default_init_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """PyTorch's default initialisation (``reset_parameters`` of Conv2d and Linear: Kaiming
    uniform with a = √5, bias uniform(±1/√fan_in); BatchNorm 1 and 0), drawn from ``generator``
    instead of the global stream."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight[0].numel())  # 1/√fan_in
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


class ConvNet(nn.Module):
    """Small ReLU ConvNet for CPU runs of Inverting Gradients (see the module docstring)."""

    def __init__(
        self, num_classes: int = 100, channels: int = 3, image_size: int = 32, width: int = 16
    ) -> None:
        super().__init__()
        num_classes = check_int("num_classes", num_classes, low=2)
        channels = check_int("channels", channels, low=1)
        image_size = _check_side("image_size", image_size, 4)
        width = check_int("width", width, low=1)
        self.input_shape = (channels, image_size, image_size)
        self.body = nn.Sequential(
            Normalize(CIFAR100_MEAN[:channels], CIFAR100_STD[:channels]),
            nn.Conv2d(channels, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, kernel_size=3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.fc = nn.Linear(4 * width * (image_size // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))  # [B, num_classes]


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, 6n+2 layers) with a free base width, as in inversefed."""

    def __init__(
        self,
        blocks_per_stage: tuple[int, ...] = (5, 5, 5),
        base_width: int = 160,
        num_classes: int = 100,
        channels: int = 3,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        num_classes = check_int("num_classes", num_classes, low=2)
        stride_total = 2 ** (len(blocks_per_stage) - 1)
        image_size = _check_side("image_size", image_size, stride_total)
        self.input_shape = (channels, image_size, image_size)
        layers: list[nn.Module] = [
            Normalize(CIFAR100_MEAN[:channels], CIFAR100_STD[:channels]),
            nn.Conv2d(channels, base_width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(),
        ]
        width_in = base_width
        for stage, blocks in enumerate(blocks_per_stage):
            width = base_width * 2**stage
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                shortcut = None
                if stride != 1 or width_in != width:
                    shortcut = nn.Sequential(
                        nn.Conv2d(width_in, width, kernel_size=1, stride=stride, bias=False),
                        nn.BatchNorm2d(width),
                    )
                layers.append(BasicBlock(width_in, width, stride=stride, downsample=shortcut))
                width_in = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))  # [B, num_classes]


def resnet32_10(num_classes: int = 100, channels: int = 3, image_size: int = 32) -> CifarResNet:
    """ResNet32-10 of Geiping et al. 2020: 3×5 BasicBlocks (6·5+2 = 32 layers), width 16·10."""
    return CifarResNet((5, 5, 5), 16 * 10, num_classes, channels, image_size)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one named network: its constructor and its weight initialisation."""

    build: Callable[..., nn.Module]
    dlg_uniform_init: bool  # DLG's uniform(−0.5, 0.5); otherwise PyTorch's default init


MODELS = Registry[ModelSpec]("inversion model")
MODELS.register("lenet", ModelSpec(DLGLeNet, dlg_uniform_init=True))
MODELS.register("convnet", ModelSpec(ConvNet, dlg_uniform_init=False))
MODELS.register("resnet32-10", ModelSpec(resnet32_10, dlg_uniform_init=False))


def build_model(
    name: str,
    *,
    num_classes: int = 100,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    seed: int = 0,
) -> nn.Module:
    """Build model ``name`` (one of :data:`MODELS`) for images of ``input_shape``, weights from
    ``seed``, in eval mode (BatchNorm uses its running statistics, as inversefed does)."""
    spec = MODELS.get(name)
    seed = check_int("seed", seed, low=0)
    channels, height, width = input_shape
    if height != width:
        raise ValueError(
            f"The 'input_shape' parameter must have square images (H == W). "
            f"Got {input_shape} instead."
        )
    generator = torch.Generator().manual_seed(seed)
    if spec.dlg_uniform_init:
        model = dlg_init_(spec.build(num_classes, channels, height), generator)
    else:
        model = default_init_(spec.build(num_classes, channels, height), generator)
    return model.eval()


def check_images_fit(model: nn.Module, images: torch.Tensor, name: str = "images") -> None:
    """Raise ``ValueError`` unless ``images`` is ``[B, *model.input_shape]``."""
    expected = tuple(getattr(model, "input_shape", ()))
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"The {name!r} parameter must be a tensor [B, C, H, W]. Got {got}.")
    if expected and tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"The {name!r} parameter has images of shape {tuple(images.shape[1:])}, but the "
            f"model {type(model).__name__} takes {expected}. Build the model for this size."
        )


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """Name and module of the last ``nn.Linear`` (the classifier head iDLG reads labels from)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"The model {type(model).__name__} has no nn.Linear layer.")
    return linears[-1]
