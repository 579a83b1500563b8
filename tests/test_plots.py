"""Figures: hand-made tables with known means go in, the drawn lines, cells and bounds are read
back; then one real end-to-end check: ``dpbr sweep reference --profile smoke`` and ``dpbr plot``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from dpbr_lib import plots, theory
from dpbr_lib.cli import main

SETTINGS = [
    {"rule": "average", "attack": "none", "vn_bound": math.nan},
    {"rule": "mda", "attack": "little", "vn_bound": 0.42},
]
PRIVACY = [
    {"privacy": "none", "epsilon": math.nan},
    {"privacy": "gaussian", "epsilon": 0.2},
]


def results_table() -> pd.DataFrame:
    """2 settings x 2 privacy x 2 b x 2 seeds, steps 0..4; accuracy at even steps.

    A run's accuracy at step s is s/10 + seed/100 (+0.5 for b = 50, mda: -0.2): over seeds 1
    and 2 the mean is s/10 + 0.015 (+ offsets) and the population std is 0.005.
    """
    rows = []
    for i, setting in enumerate(SETTINGS):
        for j, privacy in enumerate(PRIVACY):
            for b in (10, 50):
                for seed in (1, 2):
                    run_id = f"{i}{j}{b}{seed}"
                    for step in range(5):
                        offset = (0.5 if b == 50 else 0.0) - (0.2 if i == 1 else 0.0)
                        accuracy = step / 10 + seed / 100 + offset if step % 2 == 0 else math.nan
                        rows.append({
                            "run_id": run_id, "step": step, "seed": seed, "batch_size": b,
                            "rule": setting["rule"], "attack": setting["attack"],
                            "vn_bound": setting["vn_bound"], **privacy,
                            "sparsify_ratio": math.nan, "sparsify_mode": "topk",
                            "test_accuracy": accuracy,
                            "train_loss": 2.0 - step / 10 + seed / 10,
                            "vn_ratio": 0.1 * (1 + seed), "vn_ratio_noisy": 1.0 + seed,
                        })
    return pd.DataFrame(rows)


def summaries_table() -> pd.DataFrame:
    frame = results_table()
    last = frame[frame["step"] == 4].copy()
    return last.rename(columns={"test_accuracy": "final_accuracy"})


def _lines(ax) -> dict[str, np.ndarray]:
    return {line.get_label(): np.asarray(line.get_ydata(), dtype=float) for line in ax.lines}


def test_labels_follow_the_reference_legend():
    frame = pd.DataFrame({
        "rule": ["average", "mda", "nnm+krum", "trimmed_mean"],
        "attack": ["none", "little", "empire", "little"],
        "privacy": ["none", "gaussian", "sparsify", "sparsify"],
        "epsilon": [None, 0.2, None, None],
        "sparsify_ratio": [None, None, 0.1, 0.5],
        "sparsify_mode": ["topk", "topk", "topk", "randk"],
    })
    assert list(plots.setting_labels(frame)) == [
        "Average (no attack)", "MDA (little)", "NNM+Krum (empire)", "Trimmed mean (little)"
    ]
    assert list(plots.privacy_labels(frame)) == [
        "no privacy", "ε = 0.2", "keep 10% (top-k)", "keep 50% (random-k)"
    ]
    order = plots.privacy_order(frame)
    assert order.iloc[0] < order.iloc[1] < order.iloc[3] < order.iloc[2]


def test_mean_std_over_seeds():
    curves = plots.mean_std(results_table(), "test_accuracy", ["rule", "privacy", "batch_size"])
    panel = curves[(curves["rule"] == "average") & (curves["privacy"] == "none")
                   & (curves["batch_size"] == 10)]
    assert list(panel["step"]) == [0, 2, 4]  # NaN steps dropped
    np.testing.assert_allclose(panel["mean"], [0.015, 0.215, 0.415])
    np.testing.assert_allclose(panel["std"], 0.005)  # population std of {s + .01, s + .02}
    assert set(panel["count"]) == {2}
    smoothed = plots.mean_std(results_table(), "train_loss", ["run_id"], smooth=2)
    first = smoothed[smoothed["run_id"] == "00101"]
    np.testing.assert_allclose(first["mean"], [2.1, 2.05, 1.95, 1.85, 1.75])


def test_resilience_figure_draws_a_panel_per_privacy_setting_and_b():
    fig = plots.resilience_figure(results_table(), "gaussian", smooth=1)
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 2 * 2  # (ε = 0.2) x {accuracy, loss} rows, b ∈ {10, 50} columns
    assert [ax.get_title() for ax in axes] == [
        "ε = 0.2, b = 10", "ε = 0.2, b = 50", "ε = 0.2, b = 10", "ε = 0.2, b = 50"
    ]
    lines = _lines(axes[1])  # accuracy at b = 50
    np.testing.assert_allclose(lines["Average (no attack)"], [0.515, 0.715, 0.915])
    np.testing.assert_allclose(lines["MDA (little)"], [0.315, 0.515, 0.715])
    assert len(axes[1].collections) == 2  # the ± std bands
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["Average (no attack)", "MDA (little)"]
    none = plots.resilience_figure(results_table(), "none")
    assert [ax.get_title() for ax in none.axes][:2] == ["no privacy, b = 10", "no privacy, b = 50"]
    with pytest.raises(ValueError, match="No run with privacy='sparsify'"):
        plots.resilience_figure(results_table(), "sparsify")
    with pytest.raises(ValueError, match="'privacy' parameter must be one of"):
        plots.resilience_figure(results_table(), "dp")


def test_heatmap_cells_are_the_means_over_seeds():
    fig = plots.heatmap_figure(summaries_table())
    ax = next(a for a in fig.axes if a.get_title() == "MDA (little)")
    cells = ax.images[0].get_array()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["no privacy", "ε = 0.2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "50"]
    np.testing.assert_allclose(cells, [[0.215, 0.715], [0.215, 0.715]])
    with pytest.raises(ValueError, match="missing \\['final_accuracy'\\]"):
        plots.heatmap_figure(results_table())


def test_vn_ratio_figure_draws_the_bound_of_rules_that_have_one():
    fig = plots.vn_ratio_figure(results_table(), smooth=1)
    assert len(fig.axes) == 2 * 2
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert lines[0].get_label() == "MDA (little)"  # average has no κ
    np.testing.assert_allclose(lines[0].get_ydata(), 2.5)  # mean of 1 + seed over seeds 1, 2
    np.testing.assert_allclose(lines[1].get_ydata(), 0.25)  # before noise
    np.testing.assert_allclose(lines[2].get_ydata(), 0.42)  # κ
    assert ax.get_yscale() == "log"


def test_min_converging_batch_and_the_batch_vs_dim_figure():
    rows = []
    for d, accuracies in ((1000, {10: 0.2, 50: 0.6, 250: 0.9}), (10000, {10: 0.1, 50: 0.3,
                                                                       250: 0.4})):
        for b, accuracy in accuracies.items():
            for seed, shift in ((1, -0.05), (2, 0.05)):
                rows.append({"rule": "mda", "attack": "none", "privacy": "gaussian",
                             "epsilon": 0.5, "sparsify_ratio": math.nan, "sparsify_mode": "topk",
                             "n": 11, "f": 5, "delta": 1e-6, "clip": 0.01, "d": d,
                             "batch_size": b, "seed": seed, "final_accuracy": accuracy + shift})
    summaries = pd.DataFrame(rows)
    best = plots.min_converging_batch(summaries, threshold=0.5).set_index("d")
    assert best.loc[1000, "min_batch_size"] == 50
    assert math.isnan(best.loc[10000, "min_batch_size"])
    assert set(best["max_batch_tried"]) == {250}

    fig = plots.batch_vs_dim_figure(summaries, threshold=0.5)
    ax = fig.axes[0]
    by_label = {line.get_label(): line for line in ax.get_lines()}
    root = by_label["√d bound (MDA)"]
    expected = theory.min_batch_size(np.asarray(root.get_xdata()), 11, 5, 0.5, 1e-6, 0.01,
                                     gar="mda")
    np.testing.assert_allclose(root.get_ydata(), expected)
    flat = by_label["constant-batch bound (MDA)"]
    np.testing.assert_allclose(flat.get_ydata(),
                               theory.min_batch_size_constant(11, 5, 0.5, 1e-6, 0.01, gar="mda"))
    measured = next(line for label, line in by_label.items() if label.startswith("MDA"))
    np.testing.assert_allclose(measured.get_xdata(), [1000, 10000])
    np.testing.assert_allclose(measured.get_ydata(), [50, np.nan])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


def test_draw_checks_figure_names():
    with pytest.raises(ValueError, match=r"Unknown figure 'curves'\. Valid names: batch_vs_dim"):
        plots.draw(["curves"], results_table(), summaries_table())
    with pytest.raises(ValueError, match="holds no run"):
        plots.draw(["heatmap"], pd.DataFrame(), pd.DataFrame())


@pytest.fixture
def one_thread():
    """The inline sweep trains in this process: one torch thread, as a pool worker would."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sweep_and_plot_commands_end_to_end(tmp_path, capsys, one_thread):
    results, out = tmp_path / "results", tmp_path / "figures"
    code = main(["sweep", "reference", "--profile", "smoke", "--executor", "inline",
                 "--results", str(results), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Average (no attack)" in printed and "6 runs of reference/smoke" in printed
    assert main(["plot", "reference", "--results", str(results), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [
        "reference-heatmap.png", "reference-resilience_gaussian.png",
        "reference-resilience_none.png", "reference-vn_ratio.png",
    ]
    assert all(p.stat().st_size > 10_000 for p in out.glob("*.png"))


def test_commands_reject_unknown_presets_and_profiles(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["sweep", "refrence"])
    assert info.value.code == 2
    assert "invalid choice: 'refrence'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "reference", "--profile", "huge"])
    assert "(choose from 'quick', 'paper', 'smoke')" in capsys.readouterr().err
    assert main(["plot", "reference", "--results", str(tmp_path)]) == 2
    assert "No result file" in capsys.readouterr().err
