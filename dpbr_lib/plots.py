"""Figures of the experiments, drawn from the tables of :mod:`dpbr_lib.results`.

Inputs are ``results = load_results(folder)`` (one row per run and step, config columns beside
the metrics) and ``summaries = load_summaries(folder)`` (one row per run). Every function returns
a :class:`matplotlib.figure.Figure` (built without pyplot, so nothing is shown and no global
state is touched); :func:`draw` gives a preset's figures by name.

- :func:`resilience_figure`: the seed's three figures — Byzantine resilience of the CNN without
  privacy, with Gaussian noise, with gradient sparsification: test accuracy and training loss
  against steps, mean ± std over seeds, a panel per (ε or keep-ratio, b), a line per rule/attack
  (as ``reproduce.py`` of LPD-EPFL's DifferentialByzantine plots Guerraoui et al. 2021's runs);
- :func:`heatmap_figure`: final accuracy over (privacy setting or d, b), one panel per rule/attack;
- :func:`vn_ratio_figure`: the empirical variance-to-norm ratio of what the server receives
  against the rule's bound κ(n, f), over steps;
- :func:`batch_vs_dim_figure`: the smallest converging b against d, with the √d bound
  (:func:`dpbr_lib.theory.min_batch_size`) and the constant-batch bound
  (:func:`dpbr_lib.theory.min_batch_size_constant`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dpbr_lib._registry import Registry
from dpbr_lib._validation import check_choice, check_float, check_int

RULE_NAMES = {
    "average": "Average",
    "mda": "MDA",
    "krum": "Krum",
    "multi_krum": "Multi-Krum",
    "median": "Median",
    "trimmed_mean": "Trimmed mean",
    "bulyan": "Bulyan",
    "geometric_median": "Geometric median",
    "centered_clipping": "Centered clipping",
}
#: Final test accuracy at or above which a run counts as converged (10 classes: chance is 0.1).
CONVERGED_ACCURACY = 0.5
METRIC_NAMES = {
    "test_accuracy": "Test accuracy",
    "train_loss": "Training loss",
    "test_loss": "Test loss",
    "vn_ratio_noisy": "VN ratio (received)",
    "vn_ratio": "VN ratio (before noise)",
}


# --------------------------------------------------------------------------------------------- #
# Labels


def rule_name(rule: str) -> str:
    """``"nnm+krum"`` → ``"NNM+Krum"``, ``"mda"`` → ``"MDA"``."""
    *pre, base = rule.split("+")
    return "+".join([*(p.upper() for p in pre), RULE_NAMES.get(base, base.replace("_", " "))])


def setting_labels(frame: pd.DataFrame) -> pd.Series:
    """The legend entry of each row: ``"MDA (little)"``, ``"Average (no attack)"``."""
    _require(frame, ("rule", "attack"), "setting_labels")
    attack = frame["attack"].where(frame["attack"] != "none", "no attack")
    return frame["rule"].map(rule_name) + " (" + attack + ")"


def privacy_labels(frame: pd.DataFrame) -> pd.Series:
    """``"no privacy"``, ``"ε = 0.2"`` or ``"keep 10% (top-k)"`` per row."""
    _require(frame, ("privacy",), "privacy_labels")

    def label(row: pd.Series) -> str:
        if row["privacy"] == "gaussian":
            return f"ε = {float(row['epsilon']):g}"
        if row["privacy"] == "sparsify":
            mode = {"topk": "top-k", "randk": "random-k"}.get(row["sparsify_mode"])
            return f"keep {100 * float(row['sparsify_ratio']):g}% ({mode})"
        return "no privacy"

    return frame.apply(label, axis=1).astype(str)


def privacy_order(frame: pd.DataFrame) -> pd.Series:
    """A sort key matching :func:`privacy_labels`: no privacy first, then ε or ratio ascending."""
    epsilon = pd.to_numeric(frame.get("epsilon"), errors="coerce").fillna(0.0)
    ratio = pd.to_numeric(frame.get("sparsify_ratio"), errors="coerce").fillna(0.0)
    kind = frame["privacy"].map({"none": 0, "gaussian": 1, "sparsify": 2}).fillna(3)
    mode = (frame.get("sparsify_mode", pd.Series("", index=frame.index)) == "topk").astype(float)
    return kind * 1e6 + mode * 1e3 + epsilon + ratio


def _require(frame: pd.DataFrame, columns: Sequence[str], who: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{who} takes a pandas DataFrame. Got {type(frame).__name__} instead.")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{who} needs the columns {list(columns)}; missing {missing}. Pass the table of "
            "dpbr_lib.results.load_results (per step) or load_summaries (per run)."
        )


def _labelled(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["setting"] = setting_labels(out)
    out["privacy_label"] = privacy_labels(out)
    out["privacy_key"] = privacy_order(out)
    return out


def _ordered(frame: pd.DataFrame, label: str, key: str) -> list[str]:
    return list(frame.sort_values(key).drop_duplicates(label)[label])


def _settings(frame: pd.DataFrame) -> list[str]:
    """Settings in the reference's order: no attack first, then by rule and attack."""
    table = frame[["setting", "rule", "attack"]].drop_duplicates("setting")
    table = table.assign(first=table["attack"] != "none")
    return list(table.sort_values(["first", "rule", "attack"])["setting"])


def _legend(fig: Figure, handles: list, labels: list[str]) -> None:
    """One legend below the panels, as many columns as the figure's width holds."""
    fits = max(1, int(fig.get_figwidth() // 2.1))
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), fits),
               fontsize=9)


def _colors(settings: list[str]) -> dict[str, tuple[float, ...]]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(settings) <= 10 else "tab20"]
    return {s: palette(i % palette.N) for i, s in enumerate(settings)}


# --------------------------------------------------------------------------------------------- #
# Curves


def mean_std(
    results: pd.DataFrame, metric: str, by: Sequence[str], smooth: int = 1
) -> pd.DataFrame:
    """Mean and std over seeds of ``metric`` per ``by`` + step (rows where it is NaN dropped).

    The std is the population one (ddof = 0), as the reference's ``compute_avg_err``.

    ``smooth > 1`` first averages each run's metric over a trailing window of that many steps
    (for the per-step training loss, which a small batch makes noisy).
    """
    _require(results, ["run_id", "step", metric, *by], "mean_std")
    check_int("smooth", smooth, low=1)
    frame = results.sort_values(["run_id", "step"])
    values = frame[metric]
    if smooth > 1:
        values = values.groupby(frame["run_id"]).transform(
            lambda s: s.rolling(smooth, min_periods=1).mean()
        )
    frame = frame.assign(_value=values).dropna(subset=["_value"])
    grouped = frame.groupby([*by, "step"], sort=True)["_value"]
    return pd.DataFrame({
        "mean": grouped.mean(),
        "std": grouped.std(ddof=0),  # population std over seeds, as reproduce.py (numpy.std)
        "count": grouped.count(),
    }).reset_index()


def resilience_figure(
    results: pd.DataFrame,
    privacy: str = "gaussian",
    metrics: Sequence[str] = ("test_accuracy", "train_loss"),
    smooth: int = 10,
    title: str | None = None,
) -> Figure:
    """Accuracy and loss against steps, mean ± std over seeds, a line per rule/attack.

    Panels: a column per batch size b, a row per (privacy setting, metric) — with
    ``privacy="none"`` one setting, with ``"gaussian"`` one per ε, with ``"sparsify"`` one per
    (keep-ratio, top-k/random-k). Only the runs of that privacy mode are drawn.
    """
    check_choice("privacy", privacy, ("none", "gaussian", "sparsify"))
    _require(results, ["privacy", "batch_size", "rule", "attack", "step", *metrics],
             "resilience_figure")
    runs = results[results["privacy"] == privacy]
    if runs.empty:
        raise ValueError(
            f"No run with privacy={privacy!r} in the results (found "
            f"{sorted(results['privacy'].unique())})."
        )
    runs = _labelled(runs)
    settings = _settings(runs)
    colors = _colors(settings)
    options = _ordered(runs, "privacy_label", "privacy_key")
    batches = sorted(runs["batch_size"].unique())
    rows = [(option, metric) for option in options for metric in metrics]

    fig = Figure(figsize=(max(6.4, 3.2 * len(batches)), 0.8 + 2.3 * len(rows)),
                 layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), len(batches), sharex=True, squeeze=False))
    for metric in metrics:
        curves = mean_std(runs, metric, ["privacy_label", "batch_size", "setting"],
                          smooth=1 if metric == "test_accuracy" else smooth)
        for r, (option, row_metric) in enumerate(rows):
            if row_metric != metric:
                continue
            for c, b in enumerate(batches):
                ax = axes[r, c]
                panel = curves[(curves["privacy_label"] == option) & (curves["batch_size"] == b)]
                for setting in settings:
                    line = panel[panel["setting"] == setting]
                    if line.empty:
                        continue
                    ax.plot(line["step"], line["mean"], color=colors[setting], label=setting)
                    ax.fill_between(line["step"], line["mean"] - line["std"],
                                    line["mean"] + line["std"], color=colors[setting],
                                    alpha=0.2, linewidth=0)
                ax.set_title(f"{option}, b = {b}", fontsize=9)
                if metric == "test_accuracy":
                    ax.set_ylim(0, 1)
                elif "loss" in metric and (panel["mean"] > 0).all() and not panel.empty:
                    ax.set_yscale("log")  # a diverging run's loss spans decades
                if c == 0:
                    ax.set_ylabel(METRIC_NAMES.get(metric, metric))
                if r == len(rows) - 1:
                    ax.set_xlabel("Step")
                ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    _legend(fig, handles, labels)
    names = {"none": "without privacy", "gaussian": "with Gaussian noise",
             "sparsify": "with gradient sparsification"}
    fig.suptitle(title or f"Byzantine resilience {names[privacy]}")
    return fig


# --------------------------------------------------------------------------------------------- #
# Final accuracy heat map


def heatmap_figure(
    summaries: pd.DataFrame,
    value: str = "final_accuracy",
    rows: str = "privacy",
    columns: str = "batch_size",
    title: str | None = None,
) -> Figure:
    """Mean over seeds of ``value`` on a (``rows``, ``columns``) grid, a panel per rule/attack.

    ``rows="privacy"`` gives a row per privacy setting (no privacy, each ε, each keep-ratio);
    any other column name (e.g. ``"d"``, ``"width"``) a row per value of that column.
    """
    _require(summaries, ["rule", "attack", "privacy", value, columns], "heatmap_figure")
    frame = _labelled(summaries)
    if rows == "privacy":
        row_key, row_labels = "privacy_label", _ordered(frame, "privacy_label", "privacy_key")
    else:
        _require(summaries, [rows], "heatmap_figure")
        row_key, row_labels = rows, sorted(frame[rows].unique())
    column_labels = sorted(frame[columns].unique())
    settings = _settings(frame)
    width = max(3.0, 0.75 * len(column_labels) + 1.5)
    ncols = min(len(settings), 3)
    nrows = math.ceil(len(settings) / ncols)
    fig = Figure(figsize=(width * ncols, 0.5 * len(row_labels) * nrows + 1.5 * nrows),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for i, setting in enumerate(settings):
        ax = axes[i // ncols, i % ncols]
        table = (frame[frame["setting"] == setting]
                 .pivot_table(index=row_key, columns=columns, values=value, aggfunc="mean")
                 .reindex(index=row_labels, columns=column_labels))
        image = ax.imshow(table.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis",
                          aspect="auto")
        for (r, c), number in np.ndenumerate(table.to_numpy(dtype=float)):
            if np.isfinite(number):
                ax.text(c, r, f"{number:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if number < 0.6 else "black")
        ax.set_xticks(range(len(column_labels)), [str(v) for v in column_labels])
        ax.set_yticks(range(len(row_labels)), [str(v) for v in row_labels])
        ax.set_xlabel("b" if columns == "batch_size" else columns)
        ax.set_title(setting, fontsize=10)
    for j in range(len(settings), nrows * ncols):
        axes[j // ncols, j % ncols].set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label=value.replace("_", " "))
    fig.suptitle(title or f"{value.replace('_', ' ').capitalize()} (mean over seeds)")
    return fig


# --------------------------------------------------------------------------------------------- #
# VN ratio


def vn_ratio_figure(results: pd.DataFrame, smooth: int = 10, title: str | None = None) -> Figure:
    """The received gradients' empirical VN ratio against the rule's bound κ(n, f), over steps.

    A panel per (privacy setting, b); a line per rule/attack with a known bound (mean ± std over
    seeds, smoothed over ``smooth`` steps), its κ dashed in the same colour, the ratio before
    noise dotted. Resilience guarantees hold while the ratio stays below κ (Guerraoui et al.
    2021); with dominant noise the ratio tends to √h, h the honest workers.
    """
    _require(results, ["privacy", "batch_size", "rule", "attack", "step", "vn_ratio",
                       "vn_ratio_noisy", "vn_bound"], "vn_ratio_figure")
    runs = _labelled(results[results["vn_bound"].notna()])
    if runs.empty:
        raise ValueError("No run of a rule with a known VN bound κ (average has none).")
    settings = _settings(runs)
    colors = _colors(settings)
    options = _ordered(runs, "privacy_label", "privacy_key")
    batches = sorted(runs["batch_size"].unique())
    fig = Figure(figsize=(max(6.4, 3.2 * len(batches)), 0.8 + 2.4 * len(options)),
                 layout="constrained")
    axes = fig.subplots(len(options), len(batches), sharex=True, squeeze=False)
    by = ["privacy_label", "batch_size", "setting"]
    received = mean_std(runs, "vn_ratio_noisy", by, smooth)
    clean = mean_std(runs, "vn_ratio", by, smooth)
    bounds = runs.groupby("setting")["vn_bound"].first()
    for r, option in enumerate(options):
        for c, b in enumerate(batches):
            ax = axes[r, c]
            for setting in settings:
                pick = ((received["privacy_label"] == option) & (received["batch_size"] == b)
                        & (received["setting"] == setting))
                line = received[pick]
                if line.empty:
                    continue
                color = colors[setting]
                ax.plot(line["step"], line["mean"], color=color, label=setting)
                ax.fill_between(line["step"], (line["mean"] - line["std"]).clip(lower=1e-6),
                                line["mean"] + line["std"], color=color, alpha=0.2, linewidth=0)
                before = clean[(clean["privacy_label"] == option) & (clean["batch_size"] == b)
                               & (clean["setting"] == setting)]
                ax.plot(before["step"], before["mean"], color=color, linestyle=":")
                ax.axhline(bounds[setting], color=color, linestyle="--", linewidth=1)
            ax.set_yscale("log")
            ax.set_title(f"{option}, b = {b}", fontsize=9)
            if c == 0:
                ax.set_ylabel("VN ratio")
            if r == len(options) - 1:
                ax.set_xlabel("Step")
            ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles += [Line2D([], [], color="grey", linestyle="--"),
                Line2D([], [], color="grey", linestyle=":")]
    labels += ["bound κ(n, f)", "before noise"]
    _legend(fig, handles, labels)
    fig.suptitle(title or "Empirical VN ratio of the received gradients against the bound κ")
    return fig


# --------------------------------------------------------------------------------------------- #
# Batch size against dimension


def min_converging_batch(
    summaries: pd.DataFrame, threshold: float = CONVERGED_ACCURACY, value: str = "final_accuracy"
) -> pd.DataFrame:
    """Per (rule/attack, privacy, d): the smallest b whose mean ``value`` over seeds reaches
    ``threshold`` (NaN where no b of the grid does), and the largest b tried."""
    check_float("threshold", threshold)
    _require(summaries, ["rule", "attack", "privacy", "d", "batch_size", value],
             "min_converging_batch")
    frame = _labelled(summaries)
    keys = ["setting", "privacy_label", "d"]
    means = frame.groupby([*keys, "batch_size"])[value].mean().reset_index()
    means["converged"] = means[value] >= threshold
    rows = []
    for key, group in means.groupby(keys):
        done = group.loc[group["converged"], "batch_size"]
        rows.append({**dict(zip(keys, key, strict=True)),
                     "min_batch_size": float(done.min()) if len(done) else math.nan,
                     "max_batch_tried": int(group["batch_size"].max())})
    return pd.DataFrame(rows)


def batch_vs_dim_figure(
    summaries: pd.DataFrame,
    threshold: float = CONVERGED_ACCURACY,
    title: str | None = None,
) -> Figure:
    """Smallest converging b against d (log-log) with the two theory bounds.

    Each run is a dot at (d, b), filled if its mean final accuracy over seeds reaches
    ``threshold``; the line joins the smallest converging b per d. The √d curve is
    :func:`dpbr_lib.theory.min_batch_size` and the flat line
    :func:`dpbr_lib.theory.min_batch_size_constant`, both at the runs' (n, f, ε, δ, C, rule)
    with G = C (the most favourable gradient norm).
    """
    from dpbr_lib import theory

    _require(summaries, ["rule", "attack", "privacy", "d", "batch_size", "final_accuracy", "n",
                         "f", "epsilon", "delta", "clip"], "batch_vs_dim_figure")
    noisy = summaries[summaries["privacy"] == "gaussian"]
    if noisy.empty:
        raise ValueError("batch_vs_dim_figure needs runs with privacy='gaussian'.")
    frame = _labelled(noisy)
    best = min_converging_batch(noisy, threshold)
    means = frame.groupby(["setting", "privacy_label", "d", "batch_size"])["final_accuracy"]
    means = means.mean().reset_index()
    fig = Figure(figsize=(7.0, 4.8), layout="constrained")
    ax = fig.subplots()
    groups = frame.drop_duplicates(["setting", "privacy_label"]).sort_values("privacy_key")
    colors = _colors([f"{s}, {p}" for s, p in zip(groups["setting"], groups["privacy_label"],
                                                   strict=True)])
    d_grid = np.unique(np.geomspace(frame["d"].min() / 2, frame["d"].max() * 2, 100).round())
    d_grid = d_grid.astype(np.int64)
    for _, run in groups.iterrows():
        name = f"{run['setting']}, {run['privacy_label']}"
        color = colors[name]
        dots = means[(means["setting"] == run["setting"])
                     & (means["privacy_label"] == run["privacy_label"])]
        ok = dots["final_accuracy"] >= threshold
        ax.scatter(dots.loc[ok, "d"], dots.loc[ok, "batch_size"], color=color, s=30)
        ax.scatter(dots.loc[~ok, "d"], dots.loc[~ok, "batch_size"], facecolors="none",
                   edgecolors=color, s=30)
        line = best[(best["setting"] == run["setting"])
                    & (best["privacy_label"] == run["privacy_label"])].sort_values("d")
        ax.plot(line["d"], line["min_batch_size"], color=color, marker="o",
                label=f"{name}: smallest b with accuracy ≥ {threshold:g}")
        rule = run["rule"]
        args = (run["n"], run["f"], float(run["epsilon"]), run["delta"], run["clip"])
        try:
            root = theory.min_batch_size(d_grid, *args, gar=rule)
            flat = theory.min_batch_size_constant(*args, gar=rule)
        except ValueError:  # a rule without a known κ: no bound to draw
            continue
        ax.plot(d_grid, root, color=color, linestyle="--", label=f"√d bound ({rule_name(rule)})")
        ax.axhline(float(flat), color=color, linestyle=":",
                   label=f"constant-batch bound ({rule_name(rule)})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Model dimension d")
    ax.set_ylabel("Batch size b")
    ax.grid(alpha=0.3, which="both")
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="grey", marker="o", linestyle=""),
                Line2D([], [], color="grey", marker="o", linestyle="", markerfacecolor="none")]
    labels += ["run converged", "run did not converge"]
    ax.legend(handles, labels, fontsize=7, loc="best")
    ax.set_title(title or "Smallest converging batch size against model dimension", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------- #
# By name

Maker = Callable[[pd.DataFrame, pd.DataFrame], Figure]
FIGURES: Registry[Maker] = Registry("figure")
FIGURES.register("resilience_none", lambda res, _: resilience_figure(res, "none"))
FIGURES.register("resilience_gaussian", lambda res, _: resilience_figure(res, "gaussian"))
FIGURES.register("resilience_sparsify", lambda res, _: resilience_figure(res, "sparsify"))
FIGURES.register("heatmap", lambda _, summ: heatmap_figure(summ))
FIGURES.register("heatmap_d", lambda _, summ: heatmap_figure(summ, rows="d"))
FIGURES.register("vn_ratio", lambda res, _: vn_ratio_figure(res))
FIGURES.register("batch_vs_dim", lambda _, summ: batch_vs_dim_figure(summ))


def draw(
    names: Sequence[str], results: pd.DataFrame, summaries: pd.DataFrame
) -> dict[str, Figure]:
    """The named figures (see :data:`FIGURES`) of one results folder's tables."""
    if results.empty or summaries.empty:
        raise ValueError("The results folder holds no run: nothing to plot.")
    return {name: FIGURES.get(name)(results, summaries) for name in names}


__all__ = [
    "CONVERGED_ACCURACY",
    "FIGURES",
    "batch_vs_dim_figure",
    "draw",
    "heatmap_figure",
    "mean_std",
    "min_converging_batch",
    "privacy_labels",
    "resilience_figure",
    "rule_name",
    "setting_labels",
    "vn_ratio_figure",
]
