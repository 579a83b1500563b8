"""The experiment functions, failure levels, Krum vs average, figures and one CLI run."""

import json
import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from dpbr_lib.cli import main
from dpbr_lib.inversion import experiments as ex
from dpbr_lib.inversion import plots
from dpbr_lib.inversion.attacks import DLGConfig, IGConfig
from dpbr_lib.inversion.defenses import training_sigma

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


#: A profile short enough for tests (the attacks' quality is tested in test_inversion_attacks).
TINY = replace(
    ex.PROFILES.get("quick"),
    name="tiny",
    dlg=DLGConfig(steps=3),
    ig=IGConfig(iterations=20, restarts=1, log_every=5),
    batch100=IGConfig(iterations=3, restarts=1, log_every=1),
    defense_dlg=DLGConfig(steps=3),
    defense_ig=IGConfig(iterations=60, restarts=1, log_every=20),
    seeds=(0,),
    epsilons=(1e6,),
    sigmas=(1.0,),
    keep_ratios=(0.1,),
)


def test_failure_levels_walk_from_weak_to_strong_defense():
    rows = [("dlg", "none", math.nan, 40.0, 0.99)]
    rows += [("dlg", "epsilon", e, p, 0.9) for e, p in [(1e6, 30.0), (1e4, 14.0), (1e2, 16.0)]]
    rows += [("dlg", "sigma", s, p, q) for s, p, q in [(1e-3, 25, 0.8), (1e-2, 20, 0.1), (1, 9, 0)]]
    rows += [("dlg", "topk", r, 30.0, 0.9) for r in (0.3, 0.1)]
    curves = pd.DataFrame(rows, columns=["attack", "defense", "level", "psnr", "ssim"])
    levels = ex.failure_levels(curves).set_index("defense")
    assert levels.loc["epsilon", "fails_at"] == 1e4  # largest ε (weakest) that fails
    assert levels.loc["sigma", "fails_at"] == 1e-2  # SSIM 0.1 < 0.2 counts as failing
    assert math.isnan(levels.loc["topk", "fails_at"])
    assert levels.loc["epsilon", "weakest_level"] == 1e6
    assert not levels["fails_undefended"].any()


def test_defense_curves_rows_and_training_sigma():
    curves = ex.defense_curves(attacks=("ig",), profile=TINY, source="photos")
    assert list(curves["defense"]) == ["none", "epsilon", "sigma", "topk", "randk"]
    eps = curves[curves["defense"] == "epsilon"].iloc[0]
    assert eps["training_sigma"] == training_sigma(1e6)
    assert eps["noise_std"] > 0 and curves.loc[0, "noise_std"] == 0
    undefended, noisy = curves.loc[0, "psnr"], curves[curves["defense"] == "sigma"]["psnr"].iloc[0]
    assert undefended > noisy  # σ = 1 on a gradient of norm ~4 drowns it
    assert set(ex.failure_levels(curves)["defense"]) == {"epsilon", "sigma", "topk", "randk"}
    fig = plots.plot_defense_curves(curves)
    assert isinstance(fig, Figure) and len(fig.axes) >= 4


def test_krum_forwards_one_workers_gradient_and_leaks_more_than_the_average():
    profile = replace(TINY, ig=IGConfig(iterations=300, restarts=1, log_every=50))
    summary, experiments = ex.krum_vs_average(workers=5, byzantine=1, profile=profile,
                                              source="photos")
    krum, average = summary.set_index("rule").loc["krum"], summary.set_index("rule").loc["average"]
    assert krum["images_in_gradient"] == 1 and average["images_in_gradient"] == 5
    assert 0 <= krum["picked_worker"] == average["picked_worker"] < 5
    # measured: 17.3 dB for the picked worker's image alone, 15.3 dB inside the average
    assert krum["psnr_picked_worker"] > average["psnr_picked_worker"] + 1
    assert isinstance(plots.plot_krum(summary, experiments), Figure)


def test_from_batch_marks_the_selected_image_and_plots():
    result = ex.from_batch(batch_size=3, index=2, attack="ig", profile=TINY, source="photos")
    assert result.table["selected"].tolist() == [False, False, True]
    assert sorted(result.table["match"]) == [0, 1, 2]
    assert "image 2" in result.caption and "crops of scikit-image" in result.caption
    assert len(plots.plot_reconstruction(result).axes) == 6
    assert isinstance(plots.plot_loss(result.reconstruction), Figure)


def test_batch100_uses_one_image_per_class_and_says_so():
    result = ex.batch100(profile=TINY, num_images=12, source="photos")
    assert result.table["label"].tolist() == list(range(12))
    assert "one per class" in result.caption and "initial weights" in result.caption
    assert len(plots.plot_reconstruction(result, max_images=4).axes) == 2 * 16


def test_cli_single_batch_writes_figures_table_and_summary(tmp_path):
    code = main(["reconstruct", "single-batch", "--out", str(tmp_path), "--attack", "ig",
                 "--source", "photos", "--start", "3", "--quiet", "--threads", "1"])
    assert code == 0
    summary = json.loads((tmp_path / "single-batch.json").read_text())
    assert summary["profile"] == "quick" and summary["psnr_mean"] > 15  # IG, 500 iterations
    table = pd.read_csv(tmp_path / "single-batch.csv")
    assert table.loc[0, "recovered_label"] == 3
    for name in ("single-batch.png", "single-batch-loss.png"):
        assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.parametrize("experiment", [ex.single_batch, ex.defense_curves])
def test_a_bad_device_fails_before_any_attack(experiment):
    with pytest.raises(ValueError, match="'device' parameter"):
        experiment(profile=TINY, device="tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_reconstruction_matches_the_cpu_one():
    runs = {
        device: ex.single_batch(attack="ig", batch_size=2, profile=TINY, device=device)
        for device in ("cpu", "cuda")
    }
    assert runs["cuda"].reconstruction.images.device.type == "cpu"  # scored and drawn on the CPU
    cpu, gpu = runs["cpu"].table, runs["cuda"].table
    assert gpu["psnr"].to_numpy() == pytest.approx(cpu["psnr"].to_numpy(), abs=0.5)
