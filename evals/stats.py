"""Paired statistics for base-vs-tuned comparisons on the same items, and the verdict rule.

Per task (every item scored by both models):

- ``delta`` = mean(tuned) - mean(base) of the per-item score (0/1 correctness, or a continuous score).
- ``p_value``: two-sided exact McNemar test on the discordant pairs for 0/1 scores; a paired sign-flip
  permutation test on the per-item differences for continuous scores.
- ``[ci_low, ci_high]``: paired percentile-bootstrap confidence interval (level 1 - alpha) of ``delta``:
  items are resampled with both scores attached, so the correlation between the two models is kept.
- ``p_holm``: Holm step-down adjustment over the gated tasks of one evaluation.

The verdict (``decide``), with margin m (absolute accuracy, default 0.01) and level alpha:

- A task is *non-inferior* when ``ci_low > -m``: the data exclude a loss of m or more.
- A task has *regressed* when ``delta < 0``, ``p_holm < alpha`` (the worsening is significant after
  correcting for the number of tasks) and ``ci_low < -m`` (a loss of at least m is compatible with the
  data). Both are required so that a tiny but significant drop (within the margin) does not fail the gate,
  and a wide interval on few items without a significant drop does not either.
- ``REGRESSED`` if any gated task regressed; else ``PASS`` if every gated task is non-inferior (an
  intersection-union test: each task tested at level alpha/2 one-sided, no multiplicity correction needed);
  else ``INCONCLUSIVE``, with the number of items each undecided task would need (normal approximation:
  the CI half-width z * sd / sqrt(n) must fall below delta + m).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as sps

PASS, REGRESSED, INCONCLUSIVE = "PASS", "REGRESSED", "INCONCLUSIVE"


def _is_binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0) | (x == 1)))


def mcnemar_exact(base: np.ndarray, tuned: np.ndarray) -> float:
    """Two-sided exact McNemar p-value from per-item 0/1 correctness of two models on the same items."""
    base = np.asarray(base, dtype=bool)
    tuned = np.asarray(tuned, dtype=bool)
    lost = int(np.sum(base & ~tuned))
    gained = int(np.sum(~base & tuned))
    if lost + gained == 0:
        return 1.0
    return float(sps.binomtest(min(lost, gained), lost + gained, 0.5).pvalue)


def sign_flip_pvalue(diffs: np.ndarray, n_perm: int = 4000, seed: int = 0) -> float:
    """Two-sided paired permutation test of mean(diffs) = 0, flipping the sign of each difference."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, 2_000_000 // d.size)
    for start in range(0, n_perm, chunk):
        k = min(chunk, n_perm - start)
        signs = rng.integers(0, 2, size=(k, d.size), dtype=np.int8) * 2 - 1
        hits += int(np.sum(np.abs((signs * d).mean(axis=1)) >= observed - 1e-12))
    return (hits + 1) / (n_perm + 1)


def paired_bootstrap_ci(
    base: np.ndarray, tuned: np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI (level 1 - alpha) of mean(tuned - base), resampling items in pairs."""
    d = np.asarray(tuned, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    n = d.size
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values, counts = np.unique(d, return_counts=True)
    if values.size <= 3:
        # 0/1 scores give diffs in {-1, 0, 1}: resampling n items is a multinomial draw of the counts.
        draws = rng.multinomial(n, counts / n, size=n_boot)
        means = draws @ values / n
    else:
        means = np.empty(n_boot)
        chunk = max(1, 2_000_000 // n)
        for start in range(0, n_boot, chunk):
            k = min(chunk, n_boot - start)
            means[start : start + k] = d[rng.integers(0, n, size=(k, n))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm step-down adjusted p-values (family-wise error control across tasks)."""
    names = sorted(pvalues, key=lambda k: pvalues[k])
    m = len(names)
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, name in enumerate(names):
        running = max(running, min(1.0, (m - rank) * pvalues[name]))
        adjusted[name] = running
    return adjusted


def items_needed(diffs: np.ndarray, margin: float, alpha: float) -> int | None:
    """Items for the CI lower bound of the mean diff to clear ``-margin`` at the observed effect and spread.

    None when the observed delta is already at or below ``-margin`` (more items cannot show
    non-inferiority then, only confirm the loss).
    """
    d = np.asarray(diffs, dtype=np.float64)
    room = float(d.mean()) + margin
    if room <= 0:
        return None
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    if sd == 0:
        # no discordant pair seen yet: assume one in ten items would disagree
        sd = math.sqrt(0.1)
    z = sps.norm.ppf(1 - alpha / 2)
    return int(math.ceil((z * sd / room) ** 2))


def compare_task(
    base: np.ndarray, tuned: np.ndarray, *, n_boot: int, alpha: float, seed: int
) -> dict[str, Any]:
    """Delta, CI and unadjusted p-value of one task from per-item scores of both models."""
    base = np.asarray(base, dtype=np.float64)
    tuned = np.asarray(tuned, dtype=np.float64)
    binary = _is_binary(base) and _is_binary(tuned)
    low, high = paired_bootstrap_ci(base, tuned, n_boot=n_boot, alpha=alpha, seed=seed)
    p = mcnemar_exact(base, tuned) if binary else sign_flip_pvalue(tuned - base, seed=seed)
    return {
        "base": float(base.mean()) if base.size else math.nan,
        "tuned": float(tuned.mean()) if tuned.size else math.nan,
        "delta": float((tuned - base).mean()) if base.size else math.nan,
        "ci_low": low,
        "ci_high": high,
        "p_value": p,
        "test": "mcnemar_exact" if binary else "sign_flip",
        "n": int(base.size),
        "lost": int(np.sum(base > tuned)),
        "gained": int(np.sum(tuned > base)),
    }


def decide(
    per_task: dict[str, dict[str, Any]],
    diffs: dict[str, np.ndarray],
    *,
    margin: float,
    alpha: float,
) -> dict[str, Any]:
    """Add ``p_holm``/``status`` to each gated task's stats and return the verdict (see module docstring).

    ``per_task`` maps task -> :func:`compare_task` output; only tasks present in ``diffs`` are gated.
    """
    gated = [t for t in per_task if t in diffs]
    adjusted = holm({t: per_task[t]["p_value"] for t in gated})
    regressed, undecided = [], []
    needed: dict[str, int | None] = {}
    for t in gated:
        s = per_task[t]
        s["p_holm"] = adjusted[t]
        if s["delta"] < 0 and adjusted[t] < alpha and s["ci_low"] < -margin:
            s["status"] = "regressed"
            regressed.append(t)
        elif s["ci_low"] > -margin:
            s["status"] = "non_inferior"
        else:
            s["status"] = "undecided"
            undecided.append(t)
            n = items_needed(diffs[t], margin, alpha)
            needed[t] = n
            s["items_needed"] = n
    if not gated:
        verdict, reason = INCONCLUSIVE, "no gated task was evaluated"
    elif regressed:
        verdict = REGRESSED
        reason = "significant loss beyond the margin on: " + ", ".join(
            f"{t} ({per_task[t]['delta']:+.3f}, CI [{per_task[t]['ci_low']:+.3f}, {per_task[t]['ci_high']:+.3f}], "
            f"p_holm={per_task[t]['p_holm']:.3g})"
            for t in regressed
        )
    elif not undecided:
        verdict, reason = PASS, f"every gated task is non-inferior (CI lower bound above -{margin:g})"
    else:
        verdict = INCONCLUSIVE
        parts = []
        for t in undecided:
            n = needed[t]
            have = per_task[t]["n"]
            if n is None:
                parts.append(
                    f"{t}: observed delta {per_task[t]['delta']:+.3f} is beyond the margin but not significant"
                )
            else:
                parts.append(f"{t}: needs ~{n} items (has {have})")
        reason = f"too few items to rule out a loss of {margin:g}: " + "; ".join(parts)
    return {"verdict": verdict, "reason": reason, "items_needed": needed}
