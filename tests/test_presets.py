"""Presets: the paper profiles match the reference's reproduce.py grid, every profile of every
preset is a valid grid (all configs pass TrainConfig's checks), names are checked."""

from __future__ import annotations

import dataclasses

import pytest

from dpbr_lib import aggregators, models, presets, sweep
from dpbr_lib.training import TrainConfig


def _configs(name: str, profile: str) -> list[TrainConfig]:
    preset = presets.get(name)
    return [job.config for job in sweep.plan(preset.grid(profile), preset.seeds(profile), "x")]


def test_registry_lists_the_presets_and_checks_names():
    assert presets.names() == ["batch_vs_dim", "logit", "reference", "rules", "sparsification"]
    with pytest.raises(ValueError, match=r"Unknown preset 'refrence'\. Valid names: batch_vs_dim"):
        presets.get("refrence")
    with pytest.raises(ValueError, match=r"'profile' parameter must be one of 'paper', 'quick'"):
        presets.get("reference").grid("fast")
    with pytest.raises(dataclasses.FrozenInstanceError):
        presets.REFERENCE.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        presets.REFERENCE.fixed["n"] = 7  # type: ignore[index]


@pytest.mark.parametrize("name", presets.names())
def test_every_profile_of_every_preset_is_a_valid_grid(name):
    for profile in presets.PROFILES:
        configs = _configs(name, profile)
        assert configs, (name, profile)
        for config in configs:
            aggregators.get(config.rule).check(config.n, config.f)  # e.g. Bulyan's n ≥ 4f + 3


def test_reference_paper_profile_is_reproduce_py():
    configs = _configs("reference", "paper")
    assert len(configs) == 3 * 4 * 6 * 5  # (gar, attack) x ε x b x seeds
    assert {(c.n, c.f, c.clip, c.delta, c.steps, c.eval_every) for c in configs} == {
        (11, 5, 0.01, 1e-6, 1000, 50)
    }
    assert {c.seed for c in configs} == {1, 2, 3, 4, 5}
    assert {c.batch_size for c in configs} == {10, 25, 50, 100, 250, 500}
    assert {c.epsilon for c in configs} == {None, 0.1, 0.2, 0.5}
    assert {c.privacy for c in configs if c.epsilon is None} == {"none"}
    settings = {
        (c.rule, c.attack, c.f_real, c.attack_factor, c.attack_negative) for c in configs
    }
    assert settings == {
        ("average", "none", 0, None, False),  # reproduce.py: nb-real-byz 0 for average
        ("mda", "little", 5, 1.5, True),
        ("mda", "empire", 5, 1.1, False),
    }
    assert {(c.model, c.dataset, c.clip_mode) for c in configs} == {
        ("cnn", "mnist", "per_sample")
    }


def test_quick_and_smoke_profiles_are_offline_and_smaller():
    for name in presets.names():
        paper = _configs(name, "paper")
        for profile in ("quick", "smoke"):
            configs = _configs(name, profile)
            assert {c.dataset for c in configs} == {"digits"}
            assert len(configs) < len(paper)
            assert max(c.steps for c in configs) < 1000


def test_sparsification_grid_replaces_noise_by_keep_ratios():
    configs = _configs("sparsification", "paper")
    assert {c.privacy for c in configs} == {"sparsify"}
    assert {(c.sparsify_ratio, c.sparsify_mode) for c in configs} == {
        (r, m) for r in (0.5, 0.1, 0.01) for m in ("randk", "topk")
    }
    assert len(configs) == 3 * 6 * 6 * 5


def test_rules_grid_runs_every_robust_rule_at_a_valid_f():
    configs = _configs("rules", "paper")
    assert {c.f for c in configs} == {presets.RULES_F}
    attacked = {(c.rule, c.attack) for c in configs if c.attack != "none"}
    assert attacked == {(r, a) for r in presets.ROBUST_RULES for a in ("little", "empire")}
    with pytest.raises(ValueError, match="bulyan"):  # why f = 5 was not kept
        aggregators.get("bulyan").check(11, 5)


def test_batch_vs_dim_spans_three_orders_of_magnitude_of_d():
    configs = _configs("batch_vs_dim", "paper")
    assert {c.epsilon for c in configs} == {presets.BATCH_VS_DIM_EPSILON}
    dims = {
        models.count_parameters(models.build_model("cnn", (1, 28, 28), 10, width))
        for width in {c.width for c in configs}
    }
    assert min(dims) < 2_000 and max(dims) > 1_000_000
    quick = _configs("batch_vs_dim", "quick")
    assert len({c.width for c in quick}) >= 3 and len({c.batch_size for c in quick}) >= 3


def test_logit_preset_uses_the_reference_optimiser_and_clipping():
    configs = _configs("logit", "quick")
    assert {(c.model, c.lr, c.momentum, c.loss, c.clip_mode) for c in configs} == {
        ("logit", 2.0, 0.99, "mse", "batch")
    }
    assert {c.dataset for c in _configs("logit", "paper")} == {"phishing"}
