"""Benchmark: does IFD find misaligned rows, where should the cut be, and how fast is it?

    python bench/ifd_bench.py                                  # SmolLM2-135M, 400 rows + 40 peer rows
    python bench/ifd_bench.py --model tiny-random-llama --rows 40 --peer-rows 8   # a quick check

The test set (built here from ../shared/data, never written into the repo): real single-turn rows,
half English (Dolly/HH sample, self-instruct seeds) and half Chinese (oasst1-zh, BELLE seed tasks);
in each language half of the rows get another row's answer (a random derangement within the
language, so a swap is never given away by the script). Reported:

- AUC of ``ifd`` for swapped vs matched rows (Mann-Whitney, ties counted half), overall and per
  language, with a 95% percentile-bootstrap interval (2000 resamples within each class);
- for candidate ``misaligned_ifd`` thresholds: the share of matched rows that would be dropped and
  the share of swapped rows caught, with 95% Wilson intervals;
- IFD quantiles of matched and swapped rows;
- speed: rows/s and answer tokens/s of the scorer (batched, length-sorted, output layer on answer
  positions only), against the **peer**: the per-row loop of the Cherry LLM / Superfiltering
  reference scripts (batch 1, the model's full logits, two forward passes per row), run on the same
  rows in the same process, with the largest difference between the two IFDs (they compute the same
  quantity, so it must be ~0).

Runs on the GPU when there is one (``--device``). Prints markdown tables; ``--out`` writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from bench.score_bench import table  # noqa: E402
from curation.ingest import IngestConfig, ingest  # noqa: E402
from curation.io import read_records  # noqa: E402
from curation.records import Record  # noqa: E402
from training.ifd import IFDScorer  # noqa: E402

DATA = Path(os.environ.get("SFTFLOW_DATA_DIR", REPO.parent / "shared" / "data"))
SOURCES = {
    "en": ["dolly_hhrlhf_sample", "self_instruct_seed"],
    "zh": ["oasst1_zh_sft", "belle_zh/zh_seed_tasks.json"],
}
THRESHOLDS = [0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2]


# --------------------------------------------------------------------------------------------------
# the test set


def swapped_set(rows: int, seed: int, tmp: Path) -> tuple[list[Record], np.ndarray, list[str]]:
    """(records, swapped flag per record, language per record): ``rows`` real rows, half of each
    language's rows carrying another row's answer."""
    rng = np.random.default_rng(seed)
    records: list[Record] = []
    swapped: list[bool] = []
    langs: list[str] = []
    for lang, sources in SOURCES.items():
        out = tmp / lang
        ingest([str(DATA / s) for s in sources], out, IngestConfig())
        pool = [
            r
            for r in read_records(out / "output.parquet")
            if r.lang == lang and r.messages is not None and [m["role"] for m in r.messages] == ["user", "assistant"]
            and r.messages[1]["content"].strip()
        ]
        n = min(rows // 2, len(pool))
        picked = [pool[i] for i in rng.choice(len(pool), n, replace=False)]
        swap = rng.permutation(n)[: n // 2]
        # a derangement among the swapped rows: each takes the answer of the next one in a random cycle
        answers = [picked[i].messages[1]["content"] for i in swap]
        for j, i in enumerate(swap):
            picked[i].messages[1]["content"] = answers[(j + 1) % len(swap)]
        flags = np.zeros(n, dtype=bool)
        flags[swap] = True
        records += picked
        swapped += flags.tolist()
        langs += [lang] * n
    return records, np.asarray(swapped), langs


# --------------------------------------------------------------------------------------------------
# statistics


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann-Whitney U / (n1 n0))."""
    both = np.concatenate([pos, neg])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    sorted_v = both[order]
    i = 0
    while i < len(both):  # average ranks over ties
        j = i
        while j + 1 < len(both) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def auc_ci(pos: np.ndarray, neg: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    stats = [
        auc(rng.choice(pos, len(pos)), rng.choice(neg, len(neg))) for _ in range(n_boot)
    ]
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pct(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{k}/{n} = {100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


# --------------------------------------------------------------------------------------------------
# the peer: the reference scripts' per-row loop


def peer_ifd(scorer: IFDScorer, records: list[Record]) -> list[float | None]:
    """IFD per row the way Cherry LLM / Superfiltering compute it: one row at a time, two forward
    passes (with and without the instruction), cross-entropy over the answer tokens of the full
    logits. Same chat rendering as ours, so the values must match."""
    model, dev = scorer.model, scorer.device
    out: list[float | None] = []
    for r in records:
        plan = scorer._plan(r)
        seqs = []
        scorer._tokenize({0: plan}, seqs)
        losses = []
        for conditioned in (True, False):
            total, count = 0.0, 0
            for s in (s for s in seqs if s.conditioned == conditioned):
                ids = torch.from_numpy(s.ids.astype(np.int64))[None].to(dev)
                labels = torch.full_like(ids, -100)
                labels[0, s.positions] = ids[0, s.positions]
                with torch.inference_mode():
                    loss = model(input_ids=ids, labels=labels).loss  # mean over the answer tokens
                total, count = total + float(loss) * len(s.positions), count + len(s.positions)
            losses.append(total / count if count else math.nan)
        out.append(math.exp(losses[0] - losses[1]) if count else None)
    return out


# --------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=400, help="rows in the test set (half en, half zh)")
    ap.add_argument("--peer-rows", type=int, default=40, help="rows also scored by the per-row peer")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ifd_bench_"))
    records, swapped, langs = swapped_set(args.rows, args.seed, tmp)
    langs_a = np.asarray(langs)
    scorer = IFDScorer(
        model=args.model,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        max_length=args.max_length,
        device=args.device,
        cache=False,
    )
    t = time.perf_counter()
    scorer.ensure_loaded()
    load_s = time.perf_counter() - t
    device = f"{scorer.device} ({torch.cuda.get_device_name(scorer.device)})" if scorer.device.type == "cuda" else (
        f"cpu ({torch.get_num_threads()} threads)"
    )
    print(f"# IFD bench: {args.model} on {device}, {scorer.precision}; {len(records)} rows "
          f"({int(swapped.sum())} swapped); model load {load_s:.1f} s")

    # ours, as the score stage runs it: length-sorted batches of batch_size rows
    order = sorted(range(len(records)), key=lambda i: -scorer.sort_key(records[i]))
    values: dict[str, list] = {c: [None] * len(records) for c in scorer.columns()}
    t, cpu = time.perf_counter(), time.process_time()
    for s in range(0, len(order), args.batch_size):
        idx = order[s : s + args.batch_size]
        got = scorer.score([records[i] for i in idx])
        for c in values:
            for j, i in enumerate(idx):
                values[c][i] = got[c][j]
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    ifd = np.asarray([math.nan if v is None else v for v in values["ifd"]])
    tokens = int(sum(v or 0 for v in values["ifd_answer_tokens"]))
    unscored = int(np.isnan(ifd).sum())

    results: dict = {
        "model": args.model,
        "device": device,
        "precision": scorer.precision,
        "rows": len(records),
        "swapped": int(swapped.sum()),
        "unscored": unscored,
        "seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "rows_per_s": round(len(records) / wall, 2),
        "answer_tokens_per_s": round(tokens / wall, 1),
        "load_seconds": round(load_s, 2),
        "settings": {k: getattr(args, k) for k in ("batch_size", "batch_tokens", "max_length", "seed")},
    }

    rows = []
    for name, mask in (("all", np.ones(len(records), bool)), ("en", langs_a == "en"), ("zh", langs_a == "zh")):
        ok = mask & ~np.isnan(ifd)
        pos, neg = ifd[ok & swapped], ifd[ok & ~swapped]
        if len(pos) and len(neg):
            a = auc(pos, neg)
            lo, hi = auc_ci(pos, neg, seed=args.seed)
            results[f"auc_{name}"] = {"auc": round(a, 4), "ci95": [round(lo, 4), round(hi, 4)],
                                      "swapped": len(pos), "matched": len(neg)}
            rows.append([name, len(pos), len(neg), f"{a:.3f} [{lo:.3f}, {hi:.3f}]"])
    table("AUC of ifd, swapped vs matched answers (95% bootstrap CI)", ["rows", "swapped", "matched", "AUC"], rows)

    ok = ~np.isnan(ifd)
    qs = [0.05, 0.25, 0.5, 0.75, 0.95]
    qrows = []
    for name, m in (("matched", ok & ~swapped), ("swapped", ok & swapped)):
        v = ifd[m]
        results[f"quantiles_{name}"] = {str(q): round(float(np.quantile(v, q)), 4) for q in qs}
        qrows.append([name, len(v)] + [f"{np.quantile(v, q):.3f}" for q in qs])
    table("IFD quantiles", ["rows", "n"] + [f"q{int(q * 100)}" for q in qs], qrows)

    trows = []
    results["thresholds"] = {}
    for thr in THRESHOLDS:
        fp = int((ifd[ok & ~swapped] >= thr).sum())
        tp = int((ifd[ok & swapped] >= thr).sum())
        n_neg, n_pos = int((ok & ~swapped).sum()), int((ok & swapped).sum())
        results["thresholds"][str(thr)] = {"matched_dropped": fp, "matched": n_neg, "swapped_caught": tp,
                                           "swapped": n_pos}
        trows.append([thr, pct(fp, n_neg), pct(tp, n_pos)])
    table("misaligned_ifd thresholds: matched rows dropped / swapped rows caught (95% Wilson CI)",
          ["ifd >=", "matched dropped", "swapped caught"], trows)

    # the peer on the first rows of the set, and ours again on exactly those rows
    k = min(args.peer_rows, len(records))
    if k:
        sub = [i for i in range(len(records)) if not math.isnan(ifd[i])][:k]
        t, c = time.perf_counter(), time.process_time()
        peer = peer_ifd(scorer, [records[i] for i in sub])
        peer_s, peer_cpu = time.perf_counter() - t, time.process_time() - c
        sub_order = sorted(sub, key=lambda i: -scorer.sort_key(records[i]))
        t, c = time.perf_counter(), time.process_time()
        ours = {}
        for s in range(0, len(sub_order), args.batch_size):
            idx = sub_order[s : s + args.batch_size]
            for i, v in zip(idx, scorer.score([records[i] for i in idx])["ifd"], strict=True):
                ours[i] = v
        ours_s, ours_cpu = time.perf_counter() - t, time.process_time() - c
        diff = max(abs(ours[i] - p) for i, p in zip(sub, peer, strict=True))
        results["peer"] = {"rows": len(sub), "peer_seconds": round(peer_s, 2), "ours_seconds": round(ours_s, 2),
                           "peer_cpu_seconds": round(peer_cpu, 2), "ours_cpu_seconds": round(ours_cpu, 2),
                           "speedup_wall": round(peer_s / ours_s, 2), "speedup_cpu": round(peer_cpu / ours_cpu, 2),
                           "max_abs_ifd_diff": float(f"{diff:.2e}")}
        table(f"speed vs the per-row reference loop (same {len(sub)} rows, same process)",
              ["scorer", "wall s", "CPU s", "rows/s (wall)", "rows per CPU-s"],
              [["sftflow IFDScorer (batched)", f"{ours_s:.1f}", f"{ours_cpu:.1f}", f"{len(sub) / ours_s:.2f}",
                f"{len(sub) / ours_cpu:.3f}"],
               ["per-row peer (Cherry/Superfiltering loop)", f"{peer_s:.1f}", f"{peer_cpu:.1f}",
                f"{len(sub) / peer_s:.2f}", f"{len(sub) / peer_cpu:.3f}"]])
        print(f"\nlargest |IFD ours - IFD peer| on those rows: {diff:.2e}")

    print(f"\nwhole set: {len(records)} rows in {wall:.1f} s = {results['rows_per_s']} rows/s, "
          f"{results['answer_tokens_per_s']} answer tokens/s ({cpu:.0f} CPU-s); {unscored} rows unscored")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
