"""Paired statistics, the verdict rule and the arm-vs-arm comparison, on simulated items (fast, no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evals.stats import (
    INCONCLUSIVE,
    PASS,
    REGRESSED,
    choice_probs,
    compare_arms,
    decide,
    decide_scores,
    hidden_loss_bound,
    holm,
    items_to_non_inferiority,
    mcnemar_exact,
    min_items,
    paired_bootstrap_ci,
    paired_test,
    pooled_test,
    sign_flip_pvalue,
    tango_interval,
    wilson_interval,
)
from evals.verdict import TaskResult

Z2 = 1.959963984540054**2


def _pair(n: int, p_base: float, p_lose: float, p_gain: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Base correctness ~ Bernoulli(p_base); tuned loses a right item w.p. p_lose, gains a wrong one w.p. p_gain."""
    rng = np.random.default_rng(seed)
    base = rng.random(n) < p_base
    u = rng.random(n)
    tuned = np.where(base, u >= p_lose, u < p_gain)
    return base.astype(float), tuned.astype(float)


def _probs(n: int, seed: int, shift: float = 0.0, noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Gold-answer probabilities of two models: noisy views of one latent logit per item.

    With ``shift=0`` the two are exchangeable (equivalent models: the true mean difference is exactly 0);
    ``shift`` < 0 lowers the tuned model's logit on every item.
    """
    rng = np.random.default_rng(seed)
    latent = rng.normal(0.3, 1.5, n)
    base = 1 / (1 + np.exp(-(latent + rng.normal(0, noise, n))))
    tuned = 1 / (1 + np.exp(-(latent + shift + rng.normal(0, noise, n))))
    return base, tuned


def _suite(pairs: dict[str, tuple[np.ndarray, np.ndarray]], margin=0.01, alpha=0.05, seed=0, n_boot=500):
    return decide_scores(pairs, score="prob", margin=margin, alpha=alpha, n_boot=n_boot, seed=seed)


# ------------------------------------------------------------------------------------------------
# known answers


def test_mcnemar_exact_matches_hand_computed_binomial_tail():
    base = np.array([1] * 10 + [0] * 2 + [1] * 5, dtype=bool)  # 10 lost, 2 gained, 5 agree
    tuned = np.array([0] * 10 + [1] * 2 + [1] * 5, dtype=bool)
    # two-sided: 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(base, tuned) == pytest.approx(2 * 79 / 4096)
    assert mcnemar_exact(base, base) == 1.0


def test_holm_step_down():
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adj == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})


def test_tango_interval_is_honest_with_no_discordance():
    # 0 of n discordant: [-z^2/(n+z^2), +z^2/(n+z^2)], so 40 items cannot clear a one-point margin
    for n in (20, 40, 400):
        low, high = tango_interval(0, 0, n)
        assert low == pytest.approx(-Z2 / (n + Z2), abs=1e-9) and high == pytest.approx(
            Z2 / (n + Z2), abs=1e-9
        )
    assert tango_interval(0, 0, 40)[0] < -0.08
    # many discordant pairs: close to the Wald interval of the paired difference
    low, high = tango_interval(300, 200, 10000)
    d, se = -0.01, math.sqrt((0.05 - 0.01**2) / 10000)
    assert low == pytest.approx(d - 1.96 * se, abs=5e-4) and high == pytest.approx(d + 1.96 * se, abs=5e-4)
    # all discordant pairs one way: the interval reaches the boundary and excludes 0
    assert tango_interval(0, 5, 5)[1] == 1.0 and tango_interval(0, 5, 5)[0] > 0


def test_tango_interval_covers_the_true_difference():
    covered = 0
    for seed in range(200):
        b, t = _pair(150, 0.6, 0.05, 0.05, seed)  # true delta = 0.4*0.05 - 0.6*0.05 = -0.01
        low, high = tango_interval(int(np.sum(b > t)), int(np.sum(t > b)), 150)
        covered += low <= -0.01 <= high
    assert covered >= 185  # nominal 95 % of 200


def test_hidden_loss_bound_and_min_items():
    assert hidden_loss_bound(40) == pytest.approx(1 - 0.025 ** (1 / 40))
    assert 3.5 / 100 < hidden_loss_bound(100) < 3.8 / 100
    assert min_items(0.01) == 368
    assert hidden_loss_bound(min_items(0.01)) < 0.01 <= hidden_loss_bound(min_items(0.01) - 1)


def test_wilson_interval():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(Z2 / (10 + Z2))
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.5 - 0.0971, abs=1e-3) and high == pytest.approx(0.5 + 0.0971, abs=1e-3)


def test_sign_flip_is_exact_on_few_differences():
    # 5 equal positive differences: only all-plus and all-minus reach |sum| = 5, p = 2/32
    assert sign_flip_pvalue(np.array([1.0, 1, 1, 1, 1, 0, 0])) == pytest.approx(2 / 32)
    assert sign_flip_pvalue(np.zeros(10)) == 1.0
    rng = np.random.default_rng(0)
    assert sign_flip_pvalue(rng.normal(-0.05, 0.02, 300)) < 0.001


def test_choice_probs_follow_the_metric():
    # acc: softmax of the summed log-likelihoods
    assert choice_probs([-1.0, -2.0]) == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))])
    # acc_norm: equal lengths change nothing; otherwise ranked as ll / length, on the mean length's scale
    assert choice_probs([-1.0, -2.0], [5, 5]) == pytest.approx(choice_probs([-1.0, -2.0]))
    lls, lens = [-10.0, -12.0], [10, 20]  # per char -1.0 vs -0.6: acc picks 0, acc_norm picks 1
    p = choice_probs(lls, lens)
    assert np.argmax(p) == 1 == int(np.argmax(np.array(lls) / np.array(lens)))
    assert p == pytest.approx(choice_probs([-15.0, -9.0]))  # rescaled to the mean length 15
    assert p.sum() == pytest.approx(1.0)


def test_paired_test_zero_differences_is_not_a_zero_interval():
    b = np.random.default_rng(0).random(40)
    for base, tuned in ((b, b.copy()), (np.round(b), np.round(b))):
        t = paired_test(base, tuned, score="x")
        assert t.delta == 0 and t.p_value == 1.0
        assert t.ci_low <= -hidden_loss_bound(40) < -0.08 and t.ci_high >= hidden_loss_bound(40)


def test_bootstrap_ci_covers_the_true_shift():
    base, tuned = _pair(2000, 0.6, 0.0, 0.0, seed=1)
    assert paired_bootstrap_ci(base, tuned, n_boot=500) == (0.0, 0.0)  # the raw bootstrap: why it is floored
    covered = 0
    for seed in range(40):
        b, t = _pair(400, 0.6, 0.10, 0.10, seed=seed)  # true delta = 0.4*0.1 - 0.6*0.1 = -0.02
        low, high = paired_bootstrap_ci(b, t, n_boot=500, seed=seed)
        covered += low <= -0.02 <= high
    assert covered >= 34  # nominal 95 %: 38/40, leave room for Monte-Carlo noise


def test_pooled_test_weights_tasks_equally_and_floors_by_the_smallest():
    rng = np.random.default_rng(1)
    a = (rng.random(400), None)
    a = (a[0], a[0] - 0.02)  # task a: -0.02 on 400 items
    b = (rng.random(100), None)
    b = (b[0], b[0] + 0.04)  # task b: +0.04 on 100 items
    test, n_eff = pooled_test({"a": a, "b": b}, score="prob", n_boot=300)
    assert test.delta == pytest.approx((-0.02 + 0.04) / 2)  # not the item-weighted -0.008
    assert n_eff == 200 and test.n == 500
    assert test.ci_low <= test.delta - hidden_loss_bound(100) / 2 + 1e-12
    assert test.p_value < 0.01


# ------------------------------------------------------------------------------------------------
# the verdict rule


def test_identical_models_on_few_items_never_pass():
    for s in range(10):
        b, _ = _probs(40, s)
        decision, tasks, suite = _suite({"x": (b, b.copy()), "y": (b[:20], b[:20].copy())}, seed=s)
        assert decision.verdict == INCONCLUSIVE
        assert all(t.status != "non_inferior" for t in tasks.values())
        assert suite.test.ci_low < -0.01 and suite.items_needed is not None


def test_identical_models_on_enough_items_pass():
    pairs = {f"t{i}": (b, b.copy()) for i, (b, _) in enumerate(_probs(120, s) for s in range(5))}
    decision, _, suite = _suite(pairs)
    assert suite.n_effective == 600 and decision.verdict == PASS


def test_equivalent_models_pass_in_at_least_95_percent_of_100_seeds():
    # the quick-suite shape: 5 informative tasks of 200 items, equivalent models (exchangeable scores)
    verdicts = []
    for s in range(100):
        pairs = {f"t{k}": _probs(200, 1000 * s + k) for k in range(5)}
        verdicts.append(_suite(pairs, seed=s, n_boot=300)[0].verdict)
    assert verdicts.count(PASS) >= 95, {v: verdicts.count(v) for v in set(verdicts)}
    assert verdicts.count(REGRESSED) == 0


def test_damaged_model_is_regressed():
    for s in range(20):
        pairs = {f"t{k}": _probs(200, 1000 * s + k, shift=-0.5 if k == 2 else 0.0) for k in range(5)}
        decision, tasks, _ = _suite(pairs, seed=s, n_boot=300)
        assert decision.verdict == REGRESSED and tasks["t2"].status == "regressed"
        assert tasks["t2"].prob.p_holm < 0.01


def test_small_significant_loss_inside_margin_is_not_regressed():
    # every item loses a little (-0.004 on average): highly significant, but within the margin
    pairs = {}
    for k in range(5):
        b, _ = _probs(300, k)
        pairs[f"t{k}"] = (b, np.clip(b - 0.004 + np.random.default_rng(k).normal(0, 0.002, 300), 0, 1))
    decision, tasks, suite = _suite(pairs)
    assert all(t.prob.p_value < 0.001 for t in tasks.values())
    assert decision.verdict == PASS and not any(t.status == "regressed" for t in tasks.values())


def test_diffuse_loss_is_caught_by_the_suite_test():
    # each task loses ~1.2 points with an interval too wide alone after Holm; pooled, the loss is significant
    pairs = {}
    for k in range(6):
        b, _ = _probs(120, 50 + k)
        noise = np.random.default_rng(k).normal(-0.012, 0.08, 120)
        pairs[f"t{k}"] = (b, np.clip(b + noise, 0, 1))
    decision, tasks, suite = _suite(pairs)
    assert suite.status == "regressed" and decision.verdict == REGRESSED
    assert "suite mean" in decision.reason


def test_loss_beyond_margin_without_significance_is_inconclusive_with_items_needed():
    pairs = {f"t{k}": _probs(200, k) for k in range(4)}
    rng = np.random.default_rng(9)
    b = rng.uniform(0.3, 0.7, 60)
    pairs["small"] = (b, b - 0.02 + rng.permutation([-0.2, 0.2] * 30))  # exactly -2 points, very noisy
    decision, tasks, _ = _suite(pairs)
    assert tasks["small"].status == "undecided" and decision.verdict == INCONCLUSIVE
    assert decision.items_needed["small"] > 60 and "small" in decision.reason


def test_holm_is_applied_across_tasks():
    # 13 lost / 3 gained of 20 items: exact p = 2 * P(X <= 3 | 16) ~ 0.021, significant alone;
    # with five such tasks (+ the suite test) Holm multiplies the smallest by 6, so none is significant.
    base = np.array([1.0] * 13 + [0.0] * 3 + [1.0] * 4)
    tuned = np.array([0.0] * 13 + [1.0] * 3 + [1.0] * 4)
    tasks = {}
    for k in range(5):
        test = paired_test(base, tuned, score="acc", n_boot=300, seed=k)
        tasks[f"t{k}"] = TaskResult(
            task=f"t{k}",
            output_type="multiple_choice",
            metric="acc",
            gated=True,
            status="undecided",
            n=20,
            accuracy=test,
            decisive="accuracy",
        )
    decision = decide(tasks, None, {t: tuned - base for t in tasks}, margin=0.01, alpha=0.05)
    assert all(t.accuracy.p_value == pytest.approx(2 * 697 / 65536) for t in tasks.values())
    assert all(t.accuracy.p_holm == pytest.approx(5 * 2 * 697 / 65536) for t in tasks.values())
    assert decision.verdict == INCONCLUSIVE and all(t.status == "undecided" for t in tasks.values())
    alone = decide({"t0": tasks["t0"]}, None, {"t0": tuned - base}, margin=0.01, alpha=0.05)
    assert alone.verdict == REGRESSED


def test_uninformative_tasks_are_left_out():
    b, t = _probs(200, 0, shift=-1.0)  # a big loss, but on a task marked uninformative
    decision, tasks, _ = _suite({"ok": _probs(400, 1)})
    info = TaskResult(
        task="chance",
        output_type="multiple_choice",
        metric="acc",
        gated=True,
        status="uninformative",
        n=200,
        prob=paired_test(b, t, score="prob"),
        decisive="prob",
    )
    decision2 = decide(
        {**tasks, "chance": info},
        None,
        {"ok": tasks["ok"].prob and _probs(400, 1)[1]},
        margin=0.01,
        alpha=0.05,
    )
    assert info.status == "uninformative" and decision2.verdict != REGRESSED
    no_task = decide({"chance": info}, None, {}, margin=0.01, alpha=0.05)
    assert no_task.verdict == INCONCLUSIVE and "informative" in no_task.reason


def test_items_to_non_inferiority_shrinks_with_room():
    few = items_to_non_inferiority(0.0, 0.004, 100, 5, 0.01, 0.05)
    more = items_to_non_inferiority(-0.005, 0.004, 100, 5, 0.01, 0.05)
    assert few is not None and more is not None and more > few
    assert items_to_non_inferiority(-0.02, 0.004, 100, 5, 0.01, 0.05) is None


# ------------------------------------------------------------------------------------------------
# arm vs arm


def test_compare_arms_known_answers():
    rng = np.random.default_rng(3)
    a = {"t1": rng.random(300), "t2": rng.random(200)}
    same = compare_arms(a, {k: v.copy() for k, v in a.items()}, names=("no_replay", "replay"))
    assert same.pooled.delta == 0 and same.pooled.p_value == 1.0 and same.better() is None
    assert all(t.delta == 0 and t.ci_low < 0 < t.ci_high for t in same.tasks.values())
    b = {k: np.clip(v + 0.05 + rng.normal(0, 0.01, v.size), 0, 1) for k, v in a.items()}
    cmp = compare_arms(a, b, names=("no_replay", "replay"))
    assert cmp.pooled.delta == pytest.approx(np.mean([(b[k] - a[k]).mean() for k in a]))
    assert cmp.pooled.p_holm < 0.01 and cmp.better() == "replay"
    assert all(t.delta > 0.04 and t.ci_low > 0 for t in cmp.tasks.values())
    # swapping the arms flips the sign and names the other arm
    rev = compare_arms(b, a, names=("replay", "no_replay"))
    assert rev.pooled.delta == pytest.approx(-cmp.pooled.delta) and rev.better() == "replay"


def test_compare_arms_rejects_mismatched_items():
    with pytest.raises(ValueError, match="different tasks"):
        compare_arms({"a": np.ones(3)}, {"b": np.ones(3)})
    with pytest.raises(ValueError, match="share items"):
        compare_arms({"a": np.ones(3)}, {"a": np.ones(4)})
