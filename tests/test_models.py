"""Models: sizes (the dimension d as a function of width), seeded init, per-sample gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dpbr_lib import models, privacy


def cnn_dimension(input_shape: tuple[int, int, int], classes: int, w: int) -> int:
    """d of the CNN counted by hand from its layers (3×3 convs, two 2×2 pools, 4w hidden)."""
    c, h, width = input_shape
    conv1 = c * 9 * w + w
    conv2 = w * 9 * 2 * w + 2 * w
    fc1 = 2 * w * (h // 4) * (width // 4) * 4 * w + 4 * w
    fc2 = 4 * w * classes + classes
    return conv1 + conv2 + fc1 + fc2


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("width", [2, 16])
def test_cnn_is_sized_for_the_input(shape, width):
    model = models.build_model("cnn", shape, 10, width=width)
    out = model(torch.zeros(3, *shape))
    assert out.shape == (3, 10)
    assert models.count_parameters(model) == cnn_dimension(shape, 10, width)
    assert models.count_parameters(model) == privacy.num_parameters(model)


def test_width_spans_three_orders_of_magnitude_of_d():
    d = {w: cnn_dimension((1, 8, 8), 10, w) for w in (4, 128)}
    assert 1e3 <= d[4] < 2e3 and 5e5 <= d[128] < 1e6  # digits: d ≈ 10³ … 10⁶


def test_logit_is_one_affine_map():
    model = models.build_model("logit", (68,), 2)
    assert models.count_parameters(model) == 69 * 2
    x = torch.randn(5, 68, generator=torch.Generator().manual_seed(0))
    linear = model.linear
    torch.testing.assert_close(model(x), x @ linear.weight.T + linear.bias)
    image_model = models.build_model("logit", (1, 8, 8), 10)
    assert image_model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_init_is_seeded_and_leaves_the_global_generator_alone():
    state = torch.get_rng_state()
    a = models.build_model("cnn", (1, 8, 8), 10, seed=3)
    b = models.build_model("cnn", (1, 8, 8), 10, seed=3)
    c = models.build_model("cnn", (1, 8, 8), 10, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    pa, pb, pc = (privacy.flatten_parameters(m) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(
        privacy.flatten_parameters(models.build_model("cnn", (1, 8, 8), 10, generator=g)), pa
    )


def test_init_follows_pytorch_default_bounds():
    model = models.build_model("cnn", (1, 8, 8), 10, width=8)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)  # He-uniform with a = sqrt(5): gain·sqrt(3/fan_in)
            assert float(module.weight.detach().abs().max()) <= bound + 1e-7
            assert float(module.bias.detach().abs().max()) <= bound + 1e-7
            assert float(module.weight.detach().abs().max()) > 0.5 * bound  # really drawn, not zero


def test_no_batch_norm_and_per_sample_gradients_match_single_backward():
    model = models.build_model("cnn", (1, 8, 8), 10, width=2)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 1, 8, 8, generator=gen), torch.tensor([0, 3, 9, 3])
    loss = nn.functional.cross_entropy
    per_sample = privacy.flat_per_sample_gradients(model, loss, x, y)  # [4, d]
    for i in range(4):
        model.zero_grad()
        loss(model(x[i : i + 1]), y[i : i + 1]).backward()
        flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(per_sample[i], flat)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"Unknown model 'resnet'\. Valid names: cnn, logit"):
        models.build_model("resnet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"'input_shape'.*rank"):
        models.build_model("cnn", (68,), 2)
    with pytest.raises(ValueError, match="'width'"):
        models.build_model("cnn", (1, 8, 8), 10, width=0)
    with pytest.raises(ValueError, match="'num_classes'"):
        models.build_model("logit", (68,), 1)
