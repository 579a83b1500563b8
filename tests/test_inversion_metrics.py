"""Image metrics: the wrappers equal scikit-image and torchmetrics; matching undoes a shuffle."""

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr

from dpbr_lib.inversion.images import load_images
from dpbr_lib.inversion.metrics import label_accuracy, match, mse, psnr, score, ssim


@pytest.fixture(scope="module")
def pair():
    original = load_images(3, source="photos").images  # [3, 3, 32, 32]
    noise = torch.randn(original.shape, generator=torch.Generator().manual_seed(0))
    return (original + 0.05 * noise).clamp(0, 1), original


def test_psnr_and_ssim_equal_scikit_image_on_a_known_pair(pair):
    rec, ref = pair
    for i in range(3):
        r = rec[i].permute(1, 2, 0).double().numpy()
        o = ref[i].permute(1, 2, 0).double().numpy()
        assert psnr(rec, ref)[i] == pytest.approx(peak_signal_noise_ratio(o, r, data_range=1.0))
        assert ssim(rec, ref)[i] == pytest.approx(
            structural_similarity(o, r, data_range=1.0, channel_axis=-1)
        )


def test_psnr_is_10_log10_of_one_over_mse_and_matches_torchmetrics(pair):
    rec, ref = pair
    by_hand = 10 * np.log10(1.0 / mse(rec, ref))
    np.testing.assert_allclose(psnr(rec, ref), by_hand, rtol=1e-9)
    expected = [float(tm_psnr(rec[i : i + 1], ref[i : i + 1], data_range=1.0)) for i in range(3)]
    np.testing.assert_allclose(psnr(rec, ref), expected, rtol=1e-4)


def test_identical_images_have_ssim_one_and_infinite_psnr(pair):
    _, ref = pair
    assert np.allclose(ssim(ref, ref), 1.0)
    assert all(math.isinf(p) for p in psnr(ref, ref))


def test_match_undoes_a_shuffle_before_scoring(pair):
    rec, ref = pair
    shuffled = rec[[2, 0, 1]]
    order = match(shuffled, ref)
    assert order.tolist() == [1, 2, 0]  # shuffled[1] is rec[0], the guess of original 0
    scored = score(shuffled, ref)
    np.testing.assert_allclose(scored["psnr"], psnr(rec, ref))
    unmatched = score(shuffled, ref, matched=False)
    assert unmatched["psnr"].mean() < scored["psnr"].mean()


def test_label_accuracy_counts_multisets():
    assert label_accuracy(torch.tensor([3, 1, 2]), torch.tensor([1, 2, 3])) == 1.0
    assert label_accuracy(torch.tensor([1, 1, 2]), torch.tensor([1, 2, 2])) == pytest.approx(2 / 3)


def test_metrics_reject_nan_images_and_shape_mismatch(pair):
    rec, ref = pair
    with pytest.raises(ValueError, match="NaN or Inf"):
        psnr(torch.full_like(ref, math.nan), ref)
    with pytest.raises(ValueError, match="one shape"):
        ssim(rec[:2], ref)
