"""Bad input fails fast with a clear message; models, images and defenses match their papers."""

import math

import pytest
import torch
import torch.nn.functional as F

from dpbr_lib import privacy
from dpbr_lib.cli import main
from dpbr_lib.inversion import experiments as ex
from dpbr_lib.inversion.attacks import (
    DLGConfig,
    IGConfig,
    cosine_distance,
    dlg,
    inverting_gradients,
    total_variation,
)
from dpbr_lib.inversion.defenses import Defense, training_sigma
from dpbr_lib.inversion.gradients import observable_gradient
from dpbr_lib.inversion.images import load_images
from dpbr_lib.inversion.models import build_model, check_images_fit


@pytest.fixture(scope="module")
def lenet():
    return build_model("lenet", seed=0)


# --------------------------------------------------------------------------------------------- #
# Bad input: errors before any work


def test_batch_larger_than_the_available_images():
    with pytest.raises(ValueError, match=r"'n' parameter asks for 101 image.*only 100"):
        load_images(101, source="photos")
    with pytest.raises(ValueError, match=r"only 10 distinct classes"):
        load_images(11, source="digits")
    with pytest.raises(ValueError, match=r"asks for 101"):
        ex.single_batch(batch_size=101, source="photos")
    with pytest.raises(ValueError, match=r"'index' parameter must be an int in \[0, 3\]"):
        ex.from_batch(batch_size=4, index=4)


def test_image_size_the_model_cannot_take(lenet):
    with pytest.raises(ValueError, match=r"'image_size' parameter must be a multiple of 4"):
        build_model("lenet", input_shape=(3, 30, 30))
    with pytest.raises(ValueError, match=r"multiple of 4"):
        ex.single_batch(image_size=30, source="photos")
    with pytest.raises(ValueError, match=r"square"):
        build_model("convnet", input_shape=(3, 32, 16))
    with pytest.raises(ValueError, match=r"takes \(3, 32, 32\)"):
        check_images_fit(lenet, torch.zeros(1, 3, 28, 28))


def test_unknown_attack_model_and_profile_list_the_registry():
    with pytest.raises(ValueError, match=r"Unknown gradient inversion attack 'gia'.*dlg, idlg, ig"):
        ex.single_batch(attack="gia")
    names = r"Valid names: paper, quick, smoke"
    with pytest.raises(ValueError, match=rf"Unknown profile 'fast'\. {names}"):
        ex.single_batch(profile="fast")
    with pytest.raises(ValueError, match=r"Unknown inversion model 'vgg'"):
        build_model("vgg")


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, math.nan])
def test_keep_ratio_outside_zero_one(ratio):
    with pytest.raises(ValueError, match=r"'keep_ratio' parameter must be a finite number in \(0"):
        Defense(keep_ratio=ratio)


def test_defense_checks_its_arguments():
    with pytest.raises(ValueError, match="needs 'clip'"):
        Defense(epsilon=1.0)
    with pytest.raises(ValueError, match="either 'epsilon' or 'sigma'"):
        Defense(clip=1.0, epsilon=1.0, sigma=0.1)
    with pytest.raises(ValueError, match=r"\(0, 1\) for mechanism='classic'"):
        Defense(clip=1.0, epsilon=2.0, mechanism="classic")
    with pytest.raises(ValueError, match="'sparsify_mode'"):
        Defense(keep_ratio=0.5, sparsify_mode="bottomk")


def test_non_finite_or_misshapen_target_gradient(lenet):
    d = sum(p.numel() for p in lenet.parameters())
    bad = torch.zeros(d)
    bad[5] = math.nan
    for attack in (dlg, inverting_gradients):
        with pytest.raises(ValueError, match=r"must be finite\. Got 1 NaN/Inf coordinate"):
            attack(lenet, bad)
    with pytest.raises(ValueError, match="all zeros"):
        dlg(lenet, torch.zeros(d))
    with pytest.raises(ValueError, match=rf"shape \({d},\)"):
        dlg(lenet, torch.zeros(10))
    with pytest.raises(TypeError, match="DLGConfig"):
        dlg(lenet, torch.ones(d), config=IGConfig())
    with pytest.raises(ValueError, match=r"classes in \[0, 100\)"):
        inverting_gradients(lenet, torch.ones(d), labels=torch.tensor([100]))


def test_configs_check_their_fields():
    with pytest.raises(ValueError, match="'steps'"):
        DLGConfig(steps=0)
    with pytest.raises(ValueError, match="'milestones'"):
        IGConfig(milestones=(0.5, 1.5))


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["reconstruct", "single-batch", "--out", str(tmp_path), "--keep-ratio", "0"]) == 2
    assert "'keep_ratio' parameter must be" in capsys.readouterr().err
    assert main(["reconstruct", "from-batch", "--out", str(tmp_path), "--index", "9"]) == 2
    with pytest.raises(SystemExit):  # argparse: the choices come from the registries
        main(["reconstruct", "single-batch", "--out", str(tmp_path), "--attack", "gia"])
    with pytest.raises(SystemExit):
        main(["reconstruct", "batch100", "--out", str(tmp_path), "--profile", "fast"])


# --------------------------------------------------------------------------------------------- #
# Models, images, defenses


def test_dlg_lenet_is_the_papers(lenet):
    convs = [m for m in lenet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (12, (5, 5), (2, 2), (2, 2)), (12, (5, 5), (2, 2), (2, 2)), (12, (5, 5), (1, 1), (2, 2)),
    ]
    assert sum(isinstance(m, torch.nn.Sigmoid) for m in lenet.modules()) == 3
    assert lenet.fc.in_features == 768  # 12·8·8 for 32×32
    weights = torch.cat([p.flatten() for p in lenet.parameters()])
    assert weights.min() >= -0.5 and weights.max() < 0.5  # uniform(−0.5, 0.5)
    again = torch.cat([p.flatten() for p in build_model("lenet", seed=0).parameters()])
    assert torch.equal(weights, again)


def test_resnet32_10_has_32_layers_and_width_160():
    model = build_model("resnet32-10", input_shape=(3, 8, 8))  # 8×8 keeps the forward cheap
    convs3 = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert len(convs3) + 1 == 32  # 1 stem + 3 stages × 5 blocks × 2 convs, + the linear head
    assert sorted({c.out_channels for c in convs3}) == [160, 320, 640]
    assert model.fc.in_features == 640
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 100)


def test_offline_images_are_in_range_with_distinct_labels():
    photos = load_images(100, source="photos")
    assert photos.images.shape == (100, 3, 32, 32)
    assert 0 <= photos.images.min() and photos.images.max() <= 1
    assert photos.labels.tolist() == list(range(100))
    assert "crops of scikit-image" in photos.caption
    digits = load_images(10, source="digits", size=32)
    assert digits.images.shape == (10, 3, 32, 32)
    assert sorted(digits.labels.tolist()) == list(range(10))
    assert load_images(1, source="auto").source == "photos"  # no CIFAR-100 offline
    with pytest.raises(ValueError, match="'data_dir' parameter must hold"):
        load_images(1, source="cifar100", data_dir="/nonexistent")


def test_share_is_the_privacy_pipeline_by_hand(lenet):
    images = load_images(3, source="photos")
    defense = Defense(clip=0.5, epsilon=10.0, keep_ratio=0.1, sparsify_mode="randk")
    shared = defense.share(lenet, images.images, images.labels, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    per_sample = privacy.flat_per_sample_gradients(lenet, F.cross_entropy, images.images,
                                                   images.labels)
    mean = privacy.per_sample_clip(per_sample, 0.5).mean(dim=0)
    sigma = privacy.gaussian_sigma(10.0, 1e-6, privacy.sensitivity(0.5, 3), "analytic")
    by_hand = privacy.sparsify(privacy.add_gaussian_noise(mean, sigma, generator), 0.1, "randk",
                               generator)
    torch.testing.assert_close(shared, by_hand)
    assert defense.noise_std(3) == sigma


def test_training_sigma_uses_the_training_defaults():
    expected = privacy.gaussian_sigma(0.5, 1e-6, 2 * 0.01 / 50, mechanism="analytic")
    assert training_sigma(0.5) == expected
    assert training_sigma(0.5, mechanism="classic") == pytest.approx(
        2 * 0.01 / 50 * math.sqrt(2 * math.log(1.25 / 1e-6)) / 0.5
    )


def test_observable_gradient_is_the_batch_gradient_and_its_clipped_mean(lenet):
    images = load_images(2, source="photos")
    lenet.zero_grad()
    F.cross_entropy(lenet(images.images), images.labels).backward()
    autograd = torch.cat([p.grad.flatten() for p in lenet.parameters()])
    torch.testing.assert_close(observable_gradient(lenet, images.images, images.labels), autograd)
    per_sample = privacy.flat_per_sample_gradients(lenet, F.cross_entropy, images.images,
                                                   images.labels)
    torch.testing.assert_close(per_sample.mean(0), autograd, rtol=1e-4, atol=1e-6)
    clipped = observable_gradient(lenet, images.images, images.labels, clip=1e-3)
    torch.testing.assert_close(clipped, (per_sample / per_sample.norm(dim=1, keepdim=True)
                                         * 1e-3).mean(0), rtol=1e-4, atol=1e-9)


def test_cosine_distance_and_total_variation_by_hand():
    a, b = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 0.0])
    assert float(cosine_distance(a, b)) == pytest.approx(0.5)  # 1 − 1/(√2·√2)
    x = torch.tensor([[[[0.0, 1.0], [1.0, 3.0]]]])  # one 2×2 image
    # horizontal |0−1|, |1−3| → mean 1.5; vertical |0−1|, |1−3| → mean 1.5
    assert float(total_variation(x)) == pytest.approx(3.0)
