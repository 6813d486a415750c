"""Benchmark: the gate's scoring (base + tuned in one sftflow process) vs two lm-evaluation-harness runs.

Same model objects, same rendered items, same machine, one run. lm-eval (0.4, ``HFLM``) reads our items as a
local JSON task (offline) and scores the base model, then the tuned model; sftflow scores both the way
``evaluate`` does (:func:`evals.run.score_items`: prefix-tree packing, the output layer only where a
continuation token is predicted). Every per-item prediction (acc and acc_norm) of both models is compared.

Reported: wall and CPU seconds (CPU seconds of all threads of this process: the steadier figure on a shared
machine), the speed-up, input tokens per item for both tools (lm-eval: each choice's context + continuation,
single-token continuations of one context shared, as its logits cache does; sftflow: the packed rows,
padding included), and a second sftflow pass with the base model's results already in the cache (what a
second eval of the same base costs). The tuned model is the base with Gaussian noise on every weight matrix
(a full copy: the same cost as a merged LoRA adapter).

    python bench/eval_bench.py                          # quick-suite MC tasks, 40 items each, SmolLM2-135M
    python bench/eval_bench.py --tasks arc_easy,piqa --limit 100
    python bench/eval_bench.py --model tiny-random-llama --limit 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: on a shared, oversubscribed CPU, spinning threads
# waste most of the time slice (measured 20-80x slower here). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from evals.cache import ResultCache  # noqa: E402
from evals.reference import lm_eval_predictions  # noqa: E402
from evals.run import score_items  # noqa: E402
from evals.scoring import Scorer, encode_pair, fixed_view  # noqa: E402
from evals.tasks import load_items, load_task_spec  # noqa: E402
from training.models import load_model  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_TASKS = "arc_easy,piqa,hellaswag,openbookqa,commonsense_qa,mmlu_redux,boolq"


def lm_eval_tokens(tok, items) -> int:
    """Input tokens lm-eval runs for these items (one row per request; 1-token continuations of a context share)."""
    total = 0
    for it in items:
        seen = set()
        for ctx, cont in it.requests:
            c, x = encode_pair(tok, ctx, cont)
            inp = tuple(c + x[:-1])
            if len(x) == 1:
                if inp in seen:
                    continue
                seen.add(inp)
            total += len(inp)
    return total


def _preds(scores) -> list[tuple[int, int]]:
    """(acc prediction, acc_norm prediction) per item, as lm-eval's are compared."""
    return [(s.extra["pred_acc"], s.extra["pred_acc_norm"]) for s in scores]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16, help="lm-eval's batch size")
    ap.add_argument("--data-dir", default=os.environ.get("SFTFLOW_DATA_DIR", str(DEFAULT_DATA)))
    ap.add_argument("--repeats", type=int, default=1, help="runs per side; the fastest is kept")
    args = ap.parse_args()

    base, tok = load_model(args.model)
    tuned, _ = load_model(args.model)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.add_(torch.randn_like(p) * p.std() * 0.05)
    base.eval()
    tuned.eval()
    tasks = args.tasks.split(",")
    items = {t: load_items(t, args.data_dir, args.limit) for t in tasks}
    specs = {t: load_task_spec(t) for t in tasks}
    n_items = sum(len(v) for v in items.values())
    load0 = os.getloadavg()[0]

    # warm-up (first-call allocations, lazy imports) so neither side pays it in the timed run
    warm = {t: v[:2] for t, v in items.items()}
    lm_eval_predictions(base, tok, {tasks[0]: warm[tasks[0]]}, args.batch_size)
    for t in tasks:
        score_items(specs[t], warm[t], Scorer(tok), fixed_view(base), None)

    tokens_ours: dict[str, int] = {}

    def ours(cache_dir: str | None):
        out = {}
        cache = ResultCache("bench", Path(cache_dir) / "r.sqlite") if cache_dir else None
        for t in tasks:
            scorer = Scorer(tok)
            b = score_items(specs[t], items[t], scorer, fixed_view(base), cache)
            ran = scorer.tokens_run
            scorer.tokens_run = 0
            tn = score_items(specs[t], items[t], scorer, fixed_view(tuned), None)
            if cache_dir is None:
                tokens_ours[t] = ran + scorer.tokens_run
            out[t] = (_preds(b), _preds(tn))
        return out

    def ref():
        b = lm_eval_predictions(base, tok, items, args.batch_size)
        t = lm_eval_predictions(tuned, tok, items, args.batch_size)
        return {k: (b[k], t[k]) for k in items}

    best: dict[str, tuple[float, float]] = {}
    results = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for _ in range(args.repeats):
            runs = [("lm-eval", ref), ("sftflow", lambda: ours(None))]
            for name, fn in runs:
                w0, c0 = time.perf_counter(), time.process_time()
                results[name] = fn()
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                prev = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(prev[0], wall), min(prev[1], cpu))
        ours(cache_dir)  # fills the cache with the base model's results
        w0, c0 = time.perf_counter(), time.process_time()
        results["cached"] = ours(cache_dir)
        best["cached"] = (time.perf_counter() - w0, time.process_time() - c0)
    load1 = os.getloadavg()[0]

    print(f"\n{dt.date.today().isoformat()}: model {args.model}, {len(tasks)} tasks x {args.limit} items "
          f"({n_items} items), torch threads {torch.get_num_threads()}, best of {args.repeats}, "
          f"load average {load0:.1f} -> {load1:.1f}\n")
    print("| run (base + tuned, same items) | wall s | CPU s | speed-up wall / CPU |")
    print("|---|---:|---:|---:|")
    rw, rc = best["lm-eval"]
    for label, key in (
        ("lm-eval 0.4 HFLM, two runs", "lm-eval"),
        ("sftflow, one process, cold cache", "sftflow"),
        ("sftflow, base results cached (tuned only)", "cached"),
    ):
        w, c = best[key]
        print(f"| {label} | {w:.1f} | {c:.1f} | {rw / w:.2f}x / {rc / c:.2f}x |")
    print("\n| task | items | lm-eval tokens/item | sftflow tokens/item | fewer tokens | predictions identical |")
    print("|---|---:|---:|---:|---:|---|")
    all_equal = True
    tot_ref = tot_ours = 0
    for t in tasks:
        n = len(items[t])
        ref_tok = 2 * lm_eval_tokens(tok, items[t])
        tot_ref += ref_tok
        tot_ours += tokens_ours[t]
        same = all(results[k][t] == results["lm-eval"][t] for k in ("sftflow", "cached"))
        all_equal &= same
        print(f"| {t} | {n} | {ref_tok / (2 * n):.1f} | {tokens_ours[t] / (2 * n):.1f} | "
              f"{ref_tok / tokens_ours[t]:.2f}x | {same} |")
    print(f"| all | {n_items} | {tot_ref / (2 * n_items):.1f} | {tot_ours / (2 * n_items):.1f} | "
          f"{tot_ref / tot_ours:.2f}x | {all_equal} |")
    print("\n(lm-eval also computes the output layer and a full-vocabulary log-softmax at every input position;"
          " sftflow only where a continuation token is predicted)")
    print(f"per-item predictions (acc and acc_norm, base and tuned) identical to lm-eval: {all_equal}")


if __name__ == "__main__":
    main()
