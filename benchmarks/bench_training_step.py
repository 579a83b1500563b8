"""One training step end to end, the reference grid's setting on digits: time and its split.

The config (LPD-EPFL DifferentialByzantine ``reproduce.py``'s grid: n = 11, f = 5 Byzantine
workers that all attack, clip 0.01, delta = 1e-6, MDA against "a little is enough" with factor
1.5 and ``negative``, Gaussian privacy at epsilon = 0.2) with our digits CNN (d = 13,706),
b = 50 samples per honest worker, per-sample clipping.

The time per step is the difference of two runs' wall times, ``(T(S2) - T(S1)) / (S2 - S1)``
(S1 = 5, S2 = 30; quick: 1 and 3), so set-up (data, model, the initial evaluation, the
accountant) cancels; each run evaluates only after its last step, once in both runs. The split
is the mean of ``train``'s own per-step timers (``time_gradients``, ``time_privacy``,
``time_attack``, ``time_aggregation``) over the steps of the longer run; "other" is the rest
(the server update and the per-step statistics). Target: privacy + attack + aggregation
<= 20 % of the step.
"""

from __future__ import annotations

import statistics

from _harness import Row, Settings, run_as_script

from dpbr_lib import training

TOPIC = "training_step"
TARGET_SHARE = 0.20
PARTS = ("gradients", "privacy", "attack", "aggregation")


def reference_config(steps: int) -> dict:
    return {
        "dataset": "digits",
        "model": "cnn",
        "n": 11,
        "f": 5,
        "batch_size": 50,
        "clip": 0.01,
        "clip_mode": "per_sample",
        "privacy": "gaussian",
        "epsilon": 0.2,
        "delta": 1e-6,
        "rule": "mda",
        "attack": "little",
        "attack_factor": 1.5,
        "attack_negative": True,
        "steps": steps,
        "eval_every": steps,
        "seed": 0,
    }


def run(settings: Settings) -> list[Row]:
    short, long = (1, 3) if settings.quick else (5, 30)
    repeats = 1 if settings.quick else 3
    training.train(reference_config(short))  # warm-up: data set cache, torch.func tracing
    per_step, parts = [], {p: [] for p in PARTS}
    for _ in range(repeats):
        first = training.train(reference_config(short)).summary["wall_time"]
        result = training.train(reference_config(long))
        per_step.append((result.summary["wall_time"] - first) / (long - short))
        steps = result.metrics.iloc[1:]  # row 0: the initial evaluation
        for p in PARTS:
            parts[p].append(float(steps[f"time_{p}"].mean()))
    split = {p: statistics.median(v) for p, v in parts.items()}
    step = max(statistics.median(per_step), sum(split.values()))  # noise can invert the two
    split["other"] = max(step - sum(split.values()), 0.0)
    share = (split["privacy"] + split["attack"] + split["aggregation"]) / step
    case = "digits CNN d=13706 n=11 f=5 b=50 mda/little(1.5, negative) gaussian eps=0.2"
    rows = [
        Row(
            TOPIC,
            case,
            "training step",
            time_s=step,
            metric="privacy+attack+aggregation share",
            value=share,
            target=f"share <= {TARGET_SHARE:g}",
            met=share <= TARGET_SHARE,
            note=f"median over {repeats} pairs of runs of {short} and {long} steps",
        )
    ]
    for name, seconds in split.items():
        rows.append(
            Row(
                TOPIC,
                case,
                f"step: {name}",
                time_s=seconds,
                metric="share of step",
                value=seconds / step,
                note="server update and per-step statistics" if name == "other" else "",
            )
        )
    return rows


if __name__ == "__main__":
    run_as_script(run, __doc__)
