"""Calibration of the regression gate by simulation: how often equivalent models PASS, damaged ones REGRESS.

Two sources of per-item scores, each run over many seeds through the gate's own decision code
(:func:`evals.stats.decide_scores`, the tests and rule :func:`evals.run.evaluate` applies):

- ``--items RUN/eval/items.parquet`` (real): the per-item scores of a real base-vs-tuned eval. *Equivalent
  models*: each seed resamples every task's items with replacement and, per item, swaps which of the two
  models is called "base" with probability 1/2, so the two sides are exchangeable (true mean difference 0)
  while keeping the real spread of per-item differences. *Damaged*: the real pairs, resampled (pass the
  items of a model that really regressed, e.g. the forget recipe's).
- synthetic (default): per item a latent logit, two noisy views of it (equivalent) or the tuned view shifted
  down on one task (damaged); 0/1 accuracy is the argmax-like threshold of the probability.

    python bench/gate_calibration.py --seeds 200
    python bench/gate_calibration.py --items runs/demo-.../eval/items.parquet --seeds 200
    python bench/gate_calibration.py --items runs/forget-.../eval/items.parquet --mode real --seeds 100
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evals.stats import decide_scores  # noqa: E402


def _real_pairs(path: str, score: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(path).to_pylist() if r.get("in_gate")]
    col = "prob" if score == "prob" else "score"
    out: dict[str, tuple[list, list]] = {}
    for r in rows:
        if r[f"base_{col}"] is None or r[f"tuned_{col}"] is None:
            continue
        b, t = out.setdefault(r["task"], ([], []))
        b.append(r[f"base_{col}"])
        t.append(r[f"tuned_{col}"])
    return {k: (np.array(b), np.array(t)) for k, (b, t) in out.items()}


def _resample(pairs, rng, swap: bool):
    out = {}
    for task, (b, t) in pairs.items():
        idx = rng.integers(0, b.size, b.size)
        bb, tt = b[idx], t[idx]
        if swap:
            flip = rng.random(b.size) < 0.5
            bb, tt = np.where(flip, tt, bb), np.where(flip, bb, tt)
        out[task] = (bb, tt)
    return out


def _synthetic(rng, tasks: int, n: int, noise: float, shift: float, score: str):
    out = {}
    for k in range(tasks):
        latent = rng.normal(0.3, 1.5, n)
        b = 1 / (1 + np.exp(-(latent + rng.normal(0, noise, n))))
        t = 1 / (1 + np.exp(-(latent + (shift if k == 0 else 0.0) + rng.normal(0, noise, n))))
        if score == "accuracy":  # correct when the gold answer carries most of the mass
            b, t = (b > 0.5).astype(float), (t > 0.5).astype(float)
        out[f"task{k}"] = (b, t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", help="items.parquet of a real eval (default: synthetic scores)")
    ap.add_argument("--mode", choices=["equivalent", "real", "both"], default="both",
                    help="equivalent: role-swapped resamples; real: the real pairs resampled")
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--score", choices=["prob", "accuracy"], default="prob")
    ap.add_argument("--margin", type=float, default=0.01)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=5, help="synthetic: tasks")
    ap.add_argument("--n", type=int, default=200, help="synthetic: items per task")
    ap.add_argument("--noise", type=float, default=0.15, help="synthetic: per-model logit noise")
    ap.add_argument("--shift", type=float, default=-0.5, help="synthetic damaged: logit shift on one task")
    args = ap.parse_args()

    real = _real_pairs(args.items, args.score) if args.items else None
    if real is not None:
        sizes = {k: v[0].size for k, v in real.items()}
        deltas = {k: round(float((t - b).mean()), 4) for k, (b, t) in real.items()}
        sds = {k: round(float((t - b).std(ddof=1)), 4) for k, (b, t) in real.items()}
        print(f"source: {args.items}\n  items per task {sizes}\n  observed delta {deltas}\n  sd of diffs {sds}")
    else:
        print(f"source: synthetic, {args.tasks} tasks x {args.n} items, logit noise {args.noise}, "
              f"damaged shift {args.shift} on one task")
    modes = ["equivalent", "real"] if args.mode == "both" else [args.mode]
    t0 = time.perf_counter()
    for mode in modes:
        counts: Counter[str] = Counter()
        p_min = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            if real is not None:
                pairs = _resample(real, rng, swap=mode == "equivalent")
            else:
                shift = 0.0 if mode == "equivalent" else args.shift
                pairs = _synthetic(rng, args.tasks, args.n, args.noise, shift, args.score)
            decision, tasks, suite = decide_scores(
                pairs, score=args.score, margin=args.margin, alpha=args.alpha, n_boot=args.bootstrap, seed=seed
            )
            counts[decision.verdict] += 1
            p_min.append(min(t.test.p_holm for t in tasks.values()))  # type: ignore[union-attr]
        label = "equivalent models" if mode == "equivalent" else (
            "real pairs (resampled)" if real is not None else "damaged model")
        rate = {v: f"{counts[v]}/{args.seeds} ({100 * counts[v] / args.seeds:.1f}%)"
                for v in ("PASS", "REGRESSED", "INCONCLUSIVE")}
        print(f"{label:24s} PASS {rate['PASS']:>16}  REGRESSED {rate['REGRESSED']:>16}  "
              f"INCONCLUSIVE {rate['INCONCLUSIVE']:>16}  median smallest Holm p {np.median(p_min):.3g}")
    print(f"score {args.score}, margin {args.margin}, alpha {args.alpha}, {args.bootstrap} bootstrap resamples, "
          f"{time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
