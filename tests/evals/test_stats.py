"""Paired statistics and the verdict rule, on simulated per-item correctness (fast, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from evals.stats import (
    INCONCLUSIVE,
    PASS,
    REGRESSED,
    compare_task,
    decide,
    holm,
    items_needed,
    mcnemar_exact,
    paired_bootstrap_ci,
    sign_flip_pvalue,
)


def _pair(n: int, p_base: float, p_lose: float, p_gain: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Base correctness ~ Bernoulli(p_base); tuned loses a right item w.p. p_lose, gains a wrong one w.p. p_gain."""
    rng = np.random.default_rng(seed)
    base = rng.random(n) < p_base
    u = rng.random(n)
    tuned = np.where(base, u >= p_lose, u < p_gain)
    return base.astype(float), tuned.astype(float)


def _verdict(base, tuned, margin=0.01, alpha=0.05, seed=0, n_boot=1000):
    s = compare_task(base, tuned, n_boot=n_boot, alpha=alpha, seed=seed)
    return decide({"t": s}, {"t": tuned - base}, margin=margin, alpha=alpha), s


def test_mcnemar_exact_matches_hand_computed_binomial_tail():
    base = np.array([1] * 10 + [0] * 2 + [1] * 5, dtype=bool)  # 10 lost, 2 gained, 5 agree
    tuned = np.array([0] * 10 + [1] * 2 + [1] * 5, dtype=bool)
    # two-sided: 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(base, tuned) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact(base, base) == 1.0


def test_holm_step_down():
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adj == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})


def test_bootstrap_ci_identical_is_zero_and_covers_true_shift():
    base, tuned = _pair(2000, 0.6, 0.0, 0.0, seed=1)
    assert paired_bootstrap_ci(base, tuned, n_boot=500) == (0.0, 0.0)
    covered = 0
    for seed in range(40):
        b, t = _pair(400, 0.6, 0.10, 0.10, seed=seed)  # true delta = 0.4*0.1 - 0.6*0.1 = -0.02
        low, high = paired_bootstrap_ci(b, t, n_boot=500, seed=seed)
        covered += low <= -0.02 <= high
    assert covered >= 34  # nominal 95 %: 38/40, leave room for Monte-Carlo noise


def test_continuous_scores_use_sign_flip_and_index_bootstrap():
    rng = np.random.default_rng(0)
    base = rng.random(300)
    tuned = base - 0.05 + rng.normal(0, 0.02, 300)
    s = compare_task(base, tuned, n_boot=500, alpha=0.05, seed=0)
    assert s["test"] == "sign_flip" and s["p_value"] < 0.01
    assert s["ci_low"] < -0.05 < s["ci_high"] < 0
    assert sign_flip_pvalue(np.zeros(10)) == 1.0


def test_equivalent_models_pass_in_at_least_95_percent_of_seeds():
    # same true accuracy, 1 % of items flip each way; 5000 items are enough for a 1-point margin
    passes = sum(
        _verdict(*_pair(5000, 0.6, 0.01 / 0.6, 0.01 / 0.4, seed=s), seed=s)[0]["verdict"] == PASS
        for s in range(60)
    )
    assert passes >= 57


def test_identical_models_always_pass():
    for s in range(20):
        base, _ = _pair(50, 0.5, 0, 0, seed=s)
        assert _verdict(base, base.copy(), seed=s)[0]["verdict"] == PASS


def test_real_loss_is_regressed():
    hits = sum(
        _verdict(*_pair(1000, 0.6, 0.15, 0.02, seed=s), seed=s)[0]["verdict"] == REGRESSED for s in range(20)
    )
    assert hits == 20  # true delta = -0.09 + 0.008 = -0.082


def test_small_significant_loss_inside_margin_is_not_regressed():
    # true delta -0.3 points on 40k items: significant, but the CI stays above -1 point
    decision, s = _verdict(*_pair(40000, 0.6, 0.008 / 0.6, 0.005 / 0.4, seed=3))
    assert s["p_value"] < 0.05 and s["delta"] < 0
    assert decision["verdict"] == PASS


def test_too_few_items_is_inconclusive_with_items_needed():
    base, tuned = _pair(150, 0.6, 0.1, 0.15, seed=5)
    decision, s = _verdict(base, tuned)
    assert decision["verdict"] == INCONCLUSIVE
    needed = decision["items_needed"]["t"]
    assert needed is not None and needed > 150
    assert "needs ~" in decision["reason"]
    # with the suggested number of items (same effect sizes) the gate decides
    big = [_verdict(*_pair(needed * 2, 0.6, 0.1, 0.15, seed=s), seed=s)[0]["verdict"] for s in range(5)]
    assert big.count(PASS) >= 4


def test_items_needed_none_when_delta_beyond_margin():
    assert items_needed(np.array([-1.0, 0.0, 0.0, -1.0]), margin=0.01, alpha=0.05) is None


def test_holm_is_applied_across_tasks():
    # 13 lost / 3 gained of 20 items: exact p = 2 * P(X <= 3 | 16) ~ 0.021, significant alone;
    # with five such tasks Holm multiplies the smallest by 5, so none is significant any more.
    base = np.array([1.0] * 13 + [0.0] * 3 + [1.0] * 4)
    tuned = np.array([0.0] * 13 + [1.0] * 3 + [1.0] * 4)
    alone, _ = _verdict(base, tuned)
    assert alone["verdict"] == REGRESSED
    per_task = {f"t{k}": compare_task(base, tuned, n_boot=300, alpha=0.05, seed=k) for k in range(5)}
    decision = decide(per_task, {t: tuned - base for t in per_task}, margin=0.01, alpha=0.05)
    assert all(s["p_value"] == pytest.approx(2 * 697 / 65536) for s in per_task.values())
    assert all(s["p_holm"] == pytest.approx(5 * 2 * 697 / 65536) for s in per_task.values())
    assert decision["verdict"] == INCONCLUSIVE
    assert "beyond the margin but not significant" in decision["reason"]
