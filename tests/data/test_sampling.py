"""Language weight strategies against published values and hand computations; the plan."""

import math

import numpy as np
import pytest
import torch

from langtune_jax.data import (
    DataError,
    DynamicConfig,
    SamplingConfig,
    build_plan,
    language_weights,
)

COUNTS = {"en": 1000, "es": 400, "qu": 10}


def _close(got: dict, want: dict, tol=1e-9):
    assert list(got) == list(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=tol), (k, got, want)


def test_temperature_published_xlmr_values():
    # Conneau et al. / issue: n = (1e9, 1e7, 1e5), alpha 0.3 -> (.761, .191, .048).
    got = language_weights({"a": 1e9, "b": 1e7, "c": 1e5}, "temperature", alpha=0.3)
    assert [round(v, 3) for v in got.values()] == [0.761, 0.191, 0.048]


def test_unimax_published_example():
    # UniMax reference implementation example (character counts, budget 250e9, N = 4).
    counts = {
        "fao": 549_707_867,
        "isl": 10_027_573_389,
        "ekk": 42_541_080_893,
        "swe": 179_955_884_499,
        "fas": 184_595_788_282,
    }
    got = language_weights(counts, "unimax", budget=250e9, max_epochs=4)
    assert [round(got[k], 4) for k in counts] == [0.0088, 0.1604, 0.2769, 0.2769, 0.2769]


def test_unimax_hand_computed():
    # budget 900, N=2: qu gets min(300, 20)=20; es min(440, 800)=440; en 440.
    got = language_weights(COUNTS, "unimax", budget=900, max_epochs=2)
    _close(got, {"en": 440 / 900, "es": 440 / 900, "qu": 20 / 900})


def test_natural_uniform_log_manual_hand_computed():
    _close(language_weights(COUNTS, "natural"), {k: v / 1410 for k, v in COUNTS.items()})
    _close(language_weights(COUNTS, "uniform"), {k: 1 / 3 for k in COUNTS})
    logs = {k: math.log1p(v) for k, v in COUNTS.items()}
    _close(language_weights(COUNTS, "log"), {k: v / sum(logs.values()) for k, v in logs.items()})
    got = language_weights(COUNTS, "manual", weights={"en": 1, "es": 2, "qu": 1})
    _close(got, {"en": 0.25, "es": 0.5, "qu": 0.25})


def test_temperature_hand_computed_and_limits():
    p = {k: v / 1410 for k, v in COUNTS.items()}
    q = {k: v**0.5 for k, v in p.items()}
    z = sum(q.values())
    _close(language_weights(COUNTS, "temperature", alpha=0.5), {k: v / z for k, v in q.items()})
    _close(language_weights(COUNTS, "temperature", alpha=1.0), language_weights(COUNTS))


def test_inverse_matches_torch_weighted_random_sampler():
    # Per-example weight 1/count_l: the language marginal torch's sampler draws from.
    per_example = torch.cat([torch.full((n,), 1.0 / n) for n in COUNTS.values()])
    marg = torch.stack([c.sum() for c in per_example.split(list(COUNTS.values()))])
    marg = (marg / marg.sum()).tolist()
    got = language_weights(COUNTS, "inverse")
    assert list(got.values()) == pytest.approx(marg, abs=1e-7)
    # and torch's sampler realises it (statistically)
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor(
        list(torch.utils.data.WeightedRandomSampler(per_example, 30000, generator=g))
    )
    lang = np.searchsorted(np.cumsum(list(COUNTS.values())), draws.numpy(), side="right")
    assert np.bincount(lang, minlength=3) / 30000 == pytest.approx(marg, abs=0.015)


def test_multipliers_apply_after_any_strategy():
    got = language_weights(COUNTS, "uniform", multipliers={"qu": 2.0})
    _close(got, {"en": 0.25, "es": 0.25, "qu": 0.5})
    base = language_weights(COUNTS, "temperature", alpha=0.3)
    got = language_weights(COUNTS, "temperature", alpha=0.3, multipliers={"en": 3.0})
    z = base["en"] * 3 + base["es"] + base["qu"]
    _close(got, {"en": base["en"] * 3 / z, "es": base["es"] / z, "qu": base["qu"] / z})


@pytest.mark.parametrize("strategy", ["natural", "uniform", "inverse", "temperature", "log"])
def test_sums_to_one_and_no_language_starves(strategy):
    got = language_weights({"a": 1e12, "b": 1, "c": 5}, strategy)
    assert sum(got.values()) == pytest.approx(1.0)
    assert all(v > 0 for v in got.values())


@pytest.mark.parametrize(
    "counts, strategy, opts, match",
    [
        ({"en": 10, "qu": 0}, "natural", {}, "'qu' has zero examples"),
        ({"en": 10, "qu": -1}, "natural", {}, "'qu'"),
        ({}, "natural", {}, "empty"),
        (COUNTS, "manual", {"weights": {"en": 1, "es": -1, "qu": 1}}, "weights.es"),
        (COUNTS, "manual", {"weights": {"en": 0, "es": 0, "qu": 0}}, "all weights are zero"),
        (
            COUNTS,
            "manual",
            {"weights": {"en": 1, "es": 1, "qu": 1, "de": 1}},
            "'de' not in the data",
        ),
        (COUNTS, "manual", {"weights": {"en": 1}}, "no weight for language"),
        (COUNTS, "uniform", {"multipliers": {"xx": 2}}, "'xx' not in the data"),
        (COUNTS, "uniform", {"multipliers": {"en": -2}}, "multipliers.en"),
        (COUNTS, "unimax", {}, "needs a budget"),
        (COUNTS, "temperature", {"alpha": 0}, "alpha"),
        (COUNTS, "natural", {"alpha": 0.3}, "do not apply"),
        (COUNTS, "bogus", {}, "unknown strategy"),
    ],
)
def test_bad_weights_are_errors_naming_the_problem(counts, strategy, opts, match):
    with pytest.raises(DataError, match=match):
        language_weights(counts, strategy, **opts)


def test_sampling_config_validation_names_field():
    with pytest.raises(ValueError, match="sampling.strategy"):
        SamplingConfig(strategy="nope")
    with pytest.raises(ValueError, match="sampling.weights.en"):
        SamplingConfig(strategy="manual", weights={"en": -1.0})
    with pytest.raises(ValueError, match="sampling.unit"):
        SamplingConfig(unit="bytes")


def test_plan_rows_table_and_warnings():
    cfg = SamplingConfig(strategy="uniform", max_epochs=4)
    plan = build_plan(COUNTS, cfg, total_samples=3000, skipped={"qu": 2})
    row = {r.language: r for r in plan.rows}
    assert row["qu"].expected_samples == pytest.approx(1000)
    assert row["qu"].expected_epochs == pytest.approx(100)
    assert row["en"].expected_epochs == pytest.approx(1.0)
    assert row["es"].warning is None  # 1000/400 = 2.5 epochs <= 4
    assert len(plan.warnings) == 1 and "'qu'" in plan.warnings[0]
    table = plan.table()
    assert "qu" in table and "100.00 !" in table and "skipped" in table
    d = plan.to_dict()
    assert d["languages"][2]["language"] == "qu" and d["languages"][2]["skipped"] == 2


def test_plan_in_tokens_sets_token_shares():
    examples = {"en": 100, "zh": 100}
    tokens = {"en": 1000, "zh": 4000}  # zh examples are 4x longer
    plan = build_plan(
        examples, SamplingConfig(strategy="uniform", unit="tokens"), 1000, tokens=tokens
    )
    row = {r.language: r for r in plan.rows}
    assert row["en"].target == pytest.approx(0.5)
    # equal token shares need 4x more en draws than zh draws
    assert row["en"].probability == pytest.approx(0.8)
    assert row["zh"].probability == pytest.approx(0.2)
    assert row["zh"].share == pytest.approx(0.8)


def test_plan_unimax_defaults_budget_to_run():
    plan = build_plan(COUNTS, SamplingConfig(strategy="unimax", max_epochs=2), 900)
    assert plan.probabilities == pytest.approx({"en": 440 / 900, "es": 440 / 900, "qu": 20 / 900})


# ----------------------------------------------------------------------------- dynamic weights

PRIOR = {"en": 0.7, "es": 0.25, "qu": 0.05}


def _record(**dynamic):
    from langtune_jax.data import WeightRecord

    cfg = SamplingConfig(strategy="dynamic", dynamic=DynamicConfig(prior="natural", **dynamic))
    plan = build_plan({"en": 700, "es": 250, "qu": 50}, cfg, total_samples=1000)
    return WeightRecord(cfg, plan, steps=100)


def test_dro_update_hand_computed():
    from langtune_jax.data.weight_record import dro_update

    got = dro_update(
        {"a": 0.5, "b": 0.5},
        {"a": 1.0, "b": 2.0},
        {"a": 1.0, "b": 1.0},
        {"a": 0.8, "b": 0.2},
        eta=math.log(3),
        smoothing=0.5,
    )  # exp: a 1, b 3 -> 0.25, 0.75; half toward the prior
    _close(got, {"a": 0.5 * 0.25 + 0.5 * 0.8, "b": 0.5 * 0.75 + 0.5 * 0.2})


def test_power_and_bounds_hand_computed():
    from langtune_jax.data.weight_record import bounded_weights, power_weights

    got = power_weights({"a": 0.5, "b": 0.5}, {"a": 1.0, "b": 3.0}, beta=1.0)
    _close(got, {"a": 0.25, "b": 0.75})
    # b capped at 0.6: a takes the rest; a floor at 0.3 lifts c and scales the others.
    _close(
        bounded_weights({"a": 0.2, "b": 0.8}, {"a": 0, "b": 0}, {"a": 1, "b": 0.6}),
        {"a": 0.4, "b": 0.6},
    )
    got = bounded_weights(
        {"a": 0.5, "b": 0.45, "c": 0.05}, dict.fromkeys("abc", 0.3), dict.fromkeys("abc", 1.0)
    )
    _close(got, {"a": 0.7 * 0.5 / 0.95, "b": 0.7 * 0.45 / 0.95, "c": 0.3})


def test_eta_zero_and_beta_zero_keep_the_prior_exactly():
    for rec in (_record(eta=0.0, every=5), _record(method="power", beta=0.0, every=5)):
        for step in (5, 10, 15):
            rec.record(step, {"en": 0.2, "es": 0.9, "qu": 2.5})
        assert rec.segments() == [(0, rec.prior)]
        assert rec.weights_at(99) == rec.prior


def test_dro_moves_toward_the_hardest_language_and_replays_identically():
    rec = _record(eta=2.0, smoothing=0.1, every=5, floor=0.02)
    rec.record(5, {"en": 1.0, "es": 1.0, "qu": 1.0})  # the reference window: nothing moves
    assert rec.segments() == [(0, rec.prior)]
    rec.record(10, {"en": 0.5, "es": 0.8, "qu": 1.0})  # qu improved least
    rec.record(15, {"en": 0.3, "es": 0.7, "qu": 0.9})
    segments = rec.segments()
    assert [s for s, _ in segments] == [0, 10, 15]
    assert segments[-1][1]["qu"] > segments[1][1]["qu"] > rec.prior["qu"]
    assert segments[-1][1]["en"] < rec.prior["en"]
    # UniMax's cap: qu has 50 examples in a 1000-draw run, max_epochs 4 -> at most 0.2.
    assert segments[-1][1]["qu"] <= 0.2 + 1e-12
    assert all(abs(sum(w.values()) - 1) < 1e-12 for _, w in segments)
    # A fresh record restored from the state replays the same segments (resume).
    other = _record(eta=2.0, smoothing=0.1, every=5, floor=0.02)
    other.restore(rec.state())
    assert other.segments() == segments


def test_window_losses_are_the_mean_per_language_and_fill_missing():
    rec = _record(every=2)
    rec.add_step(np.array([2.0, 3.0, 0.0], np.float32), np.array([2.0, 1.0, 0.0], np.float32))
    rec.add_step(np.array([1.0, 1.0, 0.0], np.float32), np.array([2.0, 1.0, 0.0], np.float32))
    losses = rec.window_losses()
    assert losses == {"en": 0.75, "es": 2.0}  # qu not drawn
    rec.record(2, losses)
    assert rec.updates[-1]["losses"] == {"en": 0.75, "es": 2.0, "qu": 1.375}
    assert rec.window_losses() == {}  # the window starts over


def test_dynamic_config_validation_names_field():
    with pytest.raises(ValueError, match="dynamic.prior"):
        DynamicConfig(prior="dynamic")
    with pytest.raises(ValueError, match="dynamic.eta"):
        DynamicConfig(eta=-1.0)
    with pytest.raises(ValueError, match="dynamic.smoothing"):
        DynamicConfig(smoothing=1.5)
    with pytest.raises(ValueError, match="dynamic.every"):
        DynamicConfig(every=-1)
    with pytest.raises(ValueError, match="dynamic.floor"):
        DynamicConfig(floor=1.0)
    # The prior's options are the sampling section's: manual needs weights.
    with pytest.raises(ValueError, match="sampling.weights"):
        SamplingConfig(strategy="dynamic", dynamic=DynamicConfig(prior="manual"))


def test_plan_of_a_dynamic_run_is_its_prior_and_lists_segments():
    rec = _record(every=5)
    cfg = SamplingConfig(strategy="dynamic", dynamic=DynamicConfig(prior="natural"))
    plan = build_plan({"en": 700, "es": 250, "qu": 50}, cfg, total_samples=1000)
    _close(plan.probabilities, PRIOR)
    plan.dynamic = rec.to_dict()
    d = plan.to_dict()
    assert d["weight_segments"] == [{"start_step": 0, "weights": plan.probabilities}]
    assert d["dynamic"]["prior"] == "natural" and d["dynamic"]["steps"] == 100
    assert "weights from step 0" in plan.table()


def test_strategy_table_one_documented_function_per_static_strategy():
    from langtune_jax.data import STATIC_STRATEGIES
    from langtune_jax.data.sampling import STRATEGY_TABLE

    assert tuple(STRATEGY_TABLE) == STATIC_STRATEGIES
    for name, fn in STRATEGY_TABLE.items():
        assert fn.__doc__ and ("∝" in fn.__doc__ or "=" in fn.__doc__), name
    # The table's functions give unnormalised weights; `language_weights` normalises them.
    raw = STRATEGY_TABLE["temperature"]({"a": 3, "b": 1}, alpha=0.5)
    _close(raw, {"a": 0.75**0.5, "b": 0.25**0.5})
    _close(STRATEGY_TABLE["log"]({"a": math.e - 1}), {"a": 1.0})


@pytest.mark.parametrize(
    "strategy, option, match",
    [
        ("temperature", {"alpha": 0}, "sampling.alpha must be > 0"),
        ("unimax", {"budget": 100, "max_epochs": -1}, "sampling.max_epochs must be > 0"),
        ("manual", {"weights": {"en": -1}}, "sampling.weights.en must be a finite number"),
        ("natural", {"multipliers": {"en": math.inf}}, "sampling.multipliers.en"),
    ],
)
def test_config_and_language_weights_share_one_check_per_option(strategy, option, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(strategy=strategy, **option)
    with pytest.raises(DataError, match=match):
        language_weights(COUNTS, strategy, **option)
