"""Paired statistics for two models scored on the same items, and the gate's verdict rule.

Per-item scores
    Every item gets the task's own 0/1 metric (``acc``, ``acc_norm``, ``exact_match``, ...) and, for
    multiple-choice items, a continuous score ``prob``: the probability the model puts on the gold choice,
    normalised over the choices like the metric (see :func:`choice_probs`). ``prob`` moves with every
    change of the model, not only when an answer flips, so it needs far fewer items for the same power.

Tests (:func:`paired_test`)
    ``delta`` = mean(tuned) - mean(base). 0/1 scores: exact McNemar p-value and Tango's score interval for
    a paired difference of proportions (valid with no discordant pair: 0 of n discordant gives
    [-z^2/(n+z^2), +z^2/(n+z^2)]). Continuous scores: paired sign-flip permutation p-value and a paired
    percentile-bootstrap interval. Scores bounded in [0, 1] get one more guard, the *hidden-loss floor*: the
    interval never sits closer to ``delta`` than ``1 - (alpha/2)^(1/n)``, the exact (Clopper-Pearson) bound
    on the share of items that could all have been lost without one showing up in n items. So a task whose
    differences are all zero, or whose n is small, cannot be called non-inferior by accident: with a margin
    of 0.01 a single task needs at least 368 items (:func:`min_items`).

The suite test (:func:`pooled_test`)
    The mean over the gated tasks, each weighted equally, of each task's delta; stratified bootstrap
    (items resampled within their task) and stratified sign-flip. Its hidden-loss floor is
    ``(1 - (alpha/2)^(1/n_min)) / T`` for T tasks whose smallest has n_min items (the worst case puts every
    unseen loss into the smallest task).

The verdict (:func:`decide`), margin m, level alpha; the family is every counted task's test plus the
suite test, Holm-adjusted:
    - a test has *regressed* when its loss is significant (Holm p < alpha) and beyond the margin
      (delta < -m);
    - a test is *non-inferior* when its lower bound is above -m;
    - ``REGRESSED`` if any test regressed; ``PASS`` if the suite test is non-inferior and no task's
      estimated change is a loss beyond the margin; else ``INCONCLUSIVE``, with the items each undecided test
      would need at the observed effect.
    Per-task tests are the regression tests; the suite test is the non-inferiority test (one task rarely
    has the 368+ items to rule out a one-point loss alone, the pooled suite does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from evals.verdict import (
    INCONCLUSIVE,
    PASS,
    REGRESSED,
    PairedTest,
    SuiteResult,
    TaskResult,
)

#: sign-flip permutations (p-value resolution 1/4001) and, below this many non-zero differences, exact
#: enumeration of all 2^k sign patterns instead
N_PERM = 4000
_EXACT_FLIP = 12


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0) | (x == 1)))


def _z(alpha: float) -> float:
    return float(sps.norm.ppf(1 - alpha / 2))


# ------------------------------------------------------------------------------------------------
# per-item scores


def choice_probs(logprobs: Sequence[float], lengths: Sequence[float] | None = None) -> np.ndarray:
    """Probability of each choice, normalised over the item's choices the way the metric ranks them.

    ``acc`` (``lengths=None``): softmax of the summed log-likelihoods. ``acc_norm`` (``lengths`` = each
    choice's length in characters, as lm-eval divides by): each log-likelihood is first rescaled to the
    item's mean choice length (``ll_i * mean(len) / len_i``), so the ranking is exactly acc_norm's and the
    scale stays that of a typical-length answer (dividing by length alone would flatten every item to
    about uniform).
    """
    lls = np.asarray(logprobs, dtype=np.float64)
    if lengths is not None:
        lens = np.maximum(np.asarray(lengths, dtype=np.float64), 1.0)
        lls = lls * (lens.mean() / lens)
    z = np.exp(lls - lls.max())
    return z / z.sum()


# ------------------------------------------------------------------------------------------------
# intervals and p-values


def wilson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (level 1 - alpha)."""
    if n == 0:
        return (0.0, 1.0)
    z = _z(alpha)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def hidden_loss_bound(n: int, alpha: float = 0.05) -> float:
    """Largest share of items that could differ with none of them among n sampled (one-sided alpha/2).

    The exact Clopper-Pearson upper bound for 0 events in n trials: ``1 - (alpha/2)^(1/n)`` (~3.7/n).
    """
    if n <= 0:
        return 1.0
    return float(1 - (alpha / 2) ** (1 / n))


def min_items(margin: float, alpha: float = 0.05) -> int:
    """Fewest items with which zero observed losses can rule out a loss of ``margin`` (368 for 0.01)."""
    return int(math.floor(math.log(alpha / 2) / math.log(1 - margin))) + 1


def mcnemar_exact(base: np.ndarray, tuned: np.ndarray) -> float:
    """Two-sided exact McNemar p-value from per-item 0/1 correctness of two models on the same items."""
    base = np.asarray(base, dtype=bool)
    tuned = np.asarray(tuned, dtype=bool)
    lost = int(np.sum(base & ~tuned))
    gained = int(np.sum(~base & tuned))
    if lost + gained == 0:
        return 1.0
    return float(sps.binomtest(min(lost, gained), lost + gained, 0.5).pvalue)


def tango_interval(lost: int, gained: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Tango's (1998) score interval for a paired difference of proportions, (gained - lost) / n.

    The set of differences d whose score statistic ``(gained - lost - n d) / sqrt(n (2 p_l + d - d^2))``
    (p_l = restricted maximum-likelihood share of lost items given d) is within +-z. Unlike the Wald or
    bootstrap interval it has width with no discordant pair: [-z^2/(n+z^2), z^2/(n+z^2)].
    """
    if n == 0:
        return (-1.0, 1.0)
    z = _z(alpha)
    g, ll, m = gained, lost, n - gained - lost

    def score(d: float) -> float:
        b = g + ll - d * (g + 3 * ll + 2 * m)
        c = ll * d * (1 - d)
        p_l = (b + math.sqrt(max(0.0, b * b + 8 * n * c))) / (4 * n)
        p_l = min(max(p_l, max(0.0, -d)), (1 - d) / 2)
        var = n * (2 * p_l + d - d * d)
        diff = g - ll - n * d
        if var <= 0:
            return math.copysign(math.inf, diff) if diff else 0.0
        return diff / math.sqrt(var)

    est = (g - ll) / n

    def root(lo: float, hi: float, target: float) -> float:
        # score() decreases in d; bisection to 1e-10 (60 halvings)
        for _ in range(60):
            mid = (lo + hi) / 2
            if score(mid) > target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    low = -1.0 if score(-1.0 + 1e-12) <= z else root(-1.0 + 1e-12, est, z)
    high = 1.0 if score(1.0 - 1e-12) >= -z else root(est, 1.0 - 1e-12, -z)
    return (float(low), float(high))


def sign_flip_pvalue(
    diffs: np.ndarray, n_perm: int = N_PERM, seed: int = 0, weights: np.ndarray | None = None
) -> float:
    """Two-sided paired permutation p-value of sum(w * diffs) = 0, flipping the sign of each difference.

    Exact (all 2^k sign patterns) when at most 12 differences are non-zero; else ``n_perm`` random flips,
    p = (hits + 1) / (n_perm + 1).
    """
    d = np.asarray(diffs, dtype=np.float64)
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=np.float64)
    wd = (w * d)[d != 0]
    if wd.size == 0:
        return 1.0
    observed = abs(wd.sum())
    tol = 1e-12 * max(1.0, float(np.abs(wd).sum()))
    if wd.size <= _EXACT_FLIP:
        patterns = ((np.arange(2**wd.size)[:, None] >> np.arange(wd.size)) & 1) * 2 - 1
        return float(np.mean(np.abs(patterns @ wd) >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, 2_000_000 // wd.size)
    for start in range(0, n_perm, chunk):
        k = min(chunk, n_perm - start)
        signs = rng.integers(0, 2, size=(k, wd.size), dtype=np.int8) * 2 - 1
        hits += int(np.sum(np.abs(signs @ wd) >= observed - tol))
    return (hits + 1) / (n_perm + 1)


def paired_bootstrap_ci(
    base: np.ndarray, tuned: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI (level 1 - alpha) of mean(tuned - base), resampling items in pairs."""
    d = np.asarray(tuned, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    if d.size == 0:
        return (math.nan, math.nan)
    means = _boot_means(d, n_boot, np.random.default_rng(seed))
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def _boot_means(d: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    n = d.size
    values, counts = np.unique(d, return_counts=True)
    if values.size <= 3:
        # 0/1 scores give diffs in {-1, 0, 1}: resampling n items is a multinomial draw of the counts.
        return rng.multinomial(n, counts / n, size=n_boot) @ values / n
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        means[start : start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    return means


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm step-down adjusted p-values (family-wise error control across tests)."""
    names = sorted(pvalues, key=lambda k: pvalues[k])
    m = len(names)
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, name in enumerate(names):
        running = max(running, min(1.0, (m - rank) * pvalues[name]))
        adjusted[name] = running
    return adjusted


def _floor(low: float, high: float, delta: float, half: float) -> tuple[float, float]:
    return (min(low, delta - half), max(high, delta + half))


def paired_test(
    base: np.ndarray,
    tuned: np.ndarray,
    *,
    score: str,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    bounded: bool = True,
) -> PairedTest:
    """Compare per-item scores of two models on the same items (see module docstring).

    ``bounded``: scores lie in [0, 1], so the hidden-loss floor applies (False for unbounded scores such as
    negative bits per byte).
    """
    base = np.asarray(base, dtype=np.float64)
    tuned = np.asarray(tuned, dtype=np.float64)
    if base.shape != tuned.shape or base.size == 0:
        raise ValueError(
            f"paired_test needs two equal-length non-empty score arrays, got {base.shape}, {tuned.shape}"
        )
    n = base.size
    d = tuned - base
    delta = float(d.mean())
    lost, gained = int(np.sum(d < 0)), int(np.sum(d > 0))
    if _is_binary(base) and _is_binary(tuned):
        low, high = tango_interval(lost, gained, n, alpha)
        p, test, how = mcnemar_exact(base, tuned), "mcnemar_exact", "Tango score interval"
    else:
        low, high = paired_bootstrap_ci(base, tuned, n_boot=n_boot, alpha=alpha, seed=seed)
        p, test = sign_flip_pvalue(d, seed=seed), "sign_flip"
        how = f"paired percentile bootstrap ({n_boot} resamples)"
    if bounded:
        low, high = _floor(low, high, delta, hidden_loss_bound(n, alpha))
        how += ", hidden-loss floor"
    return PairedTest(
        score=score,
        n=n,
        base=float(base.mean()),
        tuned=float(tuned.mean()),
        delta=delta,
        ci_low=float(low),
        ci_high=float(high),
        interval=how,
        test=test,
        p_value=float(p),
        lost=lost,
        gained=gained,
    )


def pooled_test(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    score: str,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[PairedTest, int]:
    """The suite-level test: mean over tasks (equal weights) of each task's mean difference.

    Returns the test and its effective n for the hidden-loss floor (#tasks x smallest task's n).
    """
    names = [t for t in pairs if len(pairs[t][0])]
    if not names:
        raise ValueError("pooled_test needs at least one task with items")
    rng = np.random.default_rng(seed)
    k = len(names)
    diffs = {t: np.asarray(pairs[t][1], np.float64) - np.asarray(pairs[t][0], np.float64) for t in names}
    delta = float(np.mean([diffs[t].mean() for t in names]))
    boot = np.mean([_boot_means(diffs[t], n_boot, rng) for t in names], axis=0)
    low, high = (float(x) for x in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    all_d = np.concatenate([diffs[t] for t in names])
    weights = np.concatenate([np.full(diffs[t].size, 1.0 / (k * diffs[t].size)) for t in names])
    p = sign_flip_pvalue(all_d, seed=seed, weights=weights)
    n_min = min(diffs[t].size for t in names)
    low, high = _floor(low, high, delta, hidden_loss_bound(n_min, alpha) / k)
    test = PairedTest(
        score=score,
        n=int(all_d.size),
        base=float(np.mean([np.mean(pairs[t][0]) for t in names])),
        tuned=float(np.mean([np.mean(pairs[t][1]) for t in names])),
        delta=delta,
        ci_low=low,
        ci_high=high,
        interval=f"stratified percentile bootstrap ({n_boot} resamples), equal task weights, hidden-loss floor",
        test="stratified_sign_flip",
        p_value=float(p),
        lost=int(np.sum(all_d < 0)),
        gained=int(np.sum(all_d > 0)),
    )
    return test, k * n_min


# ------------------------------------------------------------------------------------------------
# items needed


def items_to_significance(diffs: np.ndarray, alpha: float) -> int | None:
    """Items for an observed mean loss to become significant at level ``alpha`` (normal approximation)."""
    d = np.asarray(diffs, dtype=np.float64)
    mean = float(d.mean()) if d.size else 0.0
    if mean >= 0:
        return None
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    sd = sd or 0.5  # nothing varied yet: assume the spread of a fair coin
    return int(math.ceil((_z(alpha) * sd / mean) ** 2))


def items_to_non_inferiority(
    delta: float, se: float, n_now: int, tasks: int, margin: float, alpha: float
) -> int | None:
    """Items per task for a pooled lower bound to clear -margin at the observed delta and spread.

    The interval half-width shrinks as 1/sqrt(n) (sampling) and the hidden-loss floor as 1/n; None when the
    observed delta is not above -margin (more items cannot show non-inferiority then).
    """
    room = delta + margin
    if room <= 0:
        return None
    z = _z(alpha)
    n = max(1, n_now)
    for _ in range(64):
        half = max(z * se * math.sqrt(n_now / n), hidden_loss_bound(n, alpha) / tasks)
        if half < room:
            return n
        n = int(math.ceil(n * 1.25)) + 1
    return None


# ------------------------------------------------------------------------------------------------
# the verdict


@dataclass
class Decision:
    verdict: str
    reason: str
    items_needed: dict[str, int | None] = field(default_factory=dict)


def rule_text(margin: float, alpha: float, gate_score: str) -> str:
    """The verdict rule in words, with this run's margin and alpha."""
    score = (
        "the probability each model puts on the gold answer (normalised over the choices like the task's "
        "metric; tasks without choices use their 0/1 metric)"
        if gate_score == "prob"
        else "each task's 0/1 metric"
    )
    return (
        f"Per item the gate compares {score}. Tasks where the base model is not above chance (the "
        f"lower bound of its accuracy interval is at or below chance) are uninformative and left out. REGRESSED: a task, or the suite mean, "
        f"lost more than the margin ({margin:g}) and the loss is significant (Holm-adjusted p < {alpha:g} "
        f"over the tasks and the suite test). PASS: the suite mean (tasks weighted equally) has its "
        f"{100 * (1 - alpha):g}% lower bound above -{margin:g}, and no task's estimated change is a loss "
        f"beyond -{margin:g}. Every interval is at least as wide as the exact bound for losses that no item "
        f"showed (1 - (alpha/2)^(1/n)), so few or identical items cannot pass by accident. Otherwise "
        f"INCONCLUSIVE."
    )


def decide(
    tasks: Mapping[str, TaskResult],
    suite: SuiteResult | None,
    diffs: Mapping[str, np.ndarray],
    *,
    margin: float,
    alpha: float,
) -> Decision:
    """Set ``p_holm`` and ``status`` on every counted task and the suite; return the verdict.

    ``tasks`` maps name -> result whose decisive test is filled; tasks with status ``uninformative`` or
    ``not_gated`` are left alone. ``diffs`` holds each counted task's per-item decisive differences (for
    the items-needed estimate).
    """
    counted = [t for t, r in tasks.items() if r.counted and r.test is not None]
    family = {t: tasks[t].test.p_value for t in counted}  # type: ignore[union-attr]
    if suite is not None:
        family["suite"] = suite.test.p_value
    adjusted = holm(family)
    needed: dict[str, int | None] = {}
    regressed: list[str] = []
    beyond: list[str] = []
    for t in counted:
        r = tasks[t]
        test = r.test
        assert test is not None
        test.p_holm = adjusted[t]
        if test.delta < -margin and adjusted[t] < alpha:
            r.status, r.note = (
                "regressed",
                f"lost {-test.delta:.4f} > margin {margin:g}, Holm p {adjusted[t]:.3g}",
            )
            regressed.append(t)
        elif test.ci_low > -margin:
            r.status, r.note = "non_inferior", f"lower bound {test.ci_low:+.4f} > -{margin:g}"
        elif test.delta > -margin:
            r.status = "within_margin"
            r.note = (
                f"change {test.delta:+.4f} within the margin; n={test.n} is too few to rule out a loss of "
                f"{margin:g} alone (counted in the suite test)"
            )
        else:
            r.status = "undecided"
            r.items_needed = needed[t] = items_to_significance(diffs[t], alpha / max(1, len(family)))
            r.note = f"estimated loss {-test.delta:.4f} beyond the margin, not significant (Holm p {adjusted[t]:.3g})"
            beyond.append(t)
    suite_ok = False
    if suite is not None:
        st = suite.test
        st.p_holm = adjusted["suite"]
        if st.delta < -margin and adjusted["suite"] < alpha:
            suite.status, suite.note = (
                "regressed",
                f"mean loss {-st.delta:.4f} beyond the margin, significant",
            )
            regressed.append("suite")
        elif st.ci_low > -margin:
            suite.status, suite.note = "non_inferior", f"lower bound {st.ci_low:+.4f} > -{margin:g}"
            suite_ok = True
        else:
            suite.status = "undecided"
            k = len(suite.tasks)
            se = (st.ci_high - st.ci_low) / (2 * _z(alpha)) if st.n else 0.0
            per_task = suite.n_effective // max(1, k)
            suite.items_needed = needed["suite"] = items_to_non_inferiority(
                st.delta, se, per_task, k, margin, alpha
            )
            suite.note = f"lower bound {st.ci_low:+.4f} does not clear -{margin:g}"

    if not counted:
        return Decision(INCONCLUSIVE, "no gated task is informative (every one is at chance or was skipped)")
    if regressed:
        parts = []
        for t in regressed:
            test = suite.test if t == "suite" else tasks[t].test  # type: ignore[union-attr]
            parts.append(
                f"{'suite mean' if t == 'suite' else t} ({test.delta:+.4f}, CI [{test.ci_low:+.4f}, "
                f"{test.ci_high:+.4f}], p_holm={test.p_holm:.3g})"
            )
        return Decision(REGRESSED, "significant loss beyond the margin on: " + ", ".join(parts), needed)
    if suite_ok and not beyond:
        assert suite is not None
        return Decision(
            PASS,
            f"suite mean change {suite.test.delta:+.4f}, lower bound {suite.test.ci_low:+.4f} > -{margin:g} "
            f"over {len(counted)} tasks; no task lost more than the margin",
            needed,
        )
    parts = []
    for t in beyond:
        n = needed.get(t)
        test = tasks[t].test
        assert test is not None
        parts.append(
            f"{t}: estimated loss {-test.delta:.4f} beyond the margin, not significant"
            + (f" (~{n} items would decide)" if n else "")
        )
    if suite is not None and not suite_ok:
        n = needed.get("suite")
        parts.append(
            f"suite lower bound {suite.test.ci_low:+.4f} does not clear -{margin:g}"
            + (f" (needs ~{n} items per task)" if n else " (the observed mean loss is beyond the margin)")
        )
    return Decision(INCONCLUSIVE, "cannot rule out a loss of the margin: " + "; ".join(parts), needed)


def decide_scores(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    score: str = "prob",
    margin: float = 0.01,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[Decision, dict[str, TaskResult], SuiteResult]:
    """The gate on per-item scores alone: ``{task: (base scores, tuned scores)}`` -> decision, tasks, suite.

    The same tests and rule :func:`evals.run.evaluate` applies (every task counted); used to calibrate the
    gate by simulation (``bench/gate_calibration.py``).
    """
    tasks: dict[str, TaskResult] = {}
    for i, (name, (b, t)) in enumerate(pairs.items()):
        test = paired_test(b, t, score=score, alpha=alpha, n_boot=n_boot, seed=seed + i)
        tasks[name] = TaskResult(
            task=name,
            output_type="multiple_choice",
            metric=score,
            gated=True,
            status="undecided",
            n=len(b),
            prob=test if score == "prob" else None,
            accuracy=None if score == "prob" else test,
            decisive="prob" if score == "prob" else "accuracy",
        )
    pooled, n_eff = pooled_test(pairs, score=score, alpha=alpha, n_boot=n_boot, seed=seed)
    suite = SuiteResult(tasks=list(pairs), test=pooled, n_effective=n_eff, status="undecided")
    diffs = {k: np.asarray(t, np.float64) - np.asarray(b, np.float64) for k, (b, t) in pairs.items()}
    return decide(tasks, suite, diffs, margin=margin, alpha=alpha), tasks, suite


# ------------------------------------------------------------------------------------------------
# arm vs arm


@dataclass
class ArmComparison:
    """Two candidates (e.g. a replay arm vs the no-replay arm) on the same items, per task and pooled.

    In each :class:`PairedTest`, ``base`` is arm ``a`` and ``tuned`` is arm ``b``: ``delta`` > 0 means ``b``
    scores higher. ``p_holm`` is adjusted over the tasks and the pooled test.
    """

    a: str
    b: str
    tasks: dict[str, PairedTest]
    pooled: PairedTest | None

    def better(self, alpha: float = 0.05) -> str | None:
        """The arm that is significantly better on the pooled test, or None."""
        if self.pooled is None or self.pooled.p_holm is None or self.pooled.p_holm >= alpha:
            return None
        return self.b if self.pooled.delta > 0 else self.a


def compare_arms(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    *,
    names: tuple[str, str] = ("a", "b"),
    score: str = "prob",
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
) -> ArmComparison:
    """Paired comparison of two tuned models' per-item scores (same tasks, same items in the same order).

    Same tests as the gate: per task the paired bootstrap / Tango interval and sign-flip / McNemar p-value
    (with the hidden-loss floor), pooled the equal-weight stratified test; Holm over tasks + pooled.
    """
    if set(a) != set(b):
        raise ValueError(f"arms scored different tasks: {sorted(set(a) ^ set(b))}")
    tasks: dict[str, PairedTest] = {}
    for i, t in enumerate(sorted(a)):
        x, y = np.asarray(a[t], np.float64), np.asarray(b[t], np.float64)
        if x.shape != y.shape:
            raise ValueError(f"task {t}: arms scored {x.size} and {y.size} items; they must share items")
        if x.size:
            tasks[t] = paired_test(x, y, score=score, alpha=alpha, n_boot=n_boot, seed=seed + i)
    pooled = None
    if tasks:
        pooled, _ = pooled_test(
            {t: (a[t], b[t]) for t in tasks}, score=score, alpha=alpha, n_boot=n_boot, seed=seed
        )
    family = {t: r.p_value for t, r in tasks.items()}
    if pooled is not None:
        family["__pooled__"] = pooled.p_value
    adjusted = holm(family)
    for t, r in tasks.items():
        r.p_holm = adjusted[t]
    if pooled is not None:
        pooled.p_holm = adjusted["__pooled__"]
    return ArmComparison(names[0], names[1], tasks, pooled)


__all__ = [
    "PASS",
    "REGRESSED",
    "INCONCLUSIVE",
    "ArmComparison",
    "Decision",
    "choice_probs",
    "compare_arms",
    "decide",
    "decide_scores",
    "hidden_loss_bound",
    "holm",
    "items_to_non_inferiority",
    "items_to_significance",
    "mcnemar_exact",
    "min_items",
    "paired_bootstrap_ci",
    "paired_test",
    "pooled_test",
    "rule_text",
    "sign_flip_pvalue",
    "tango_interval",
    "wilson_interval",
]
