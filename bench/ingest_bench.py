"""Ingest speed and memory: sftflow ingest against reading the same file with its peers, in one run.

    python bench/ingest_bench.py                  # 200k alpaca rows, JSON Lines
    python bench/ingest_bench.py --rows 1000000   # peak RSS stays flat: ingest streams

Rows are alpaca records whose words are drawn from the real responses of dolly_hhrlhf_sample (so the
length and word mix are natural); every 10th row is Chinese-looking text built from the BELLE seed tasks
when present. Each measurement runs in its own process, so peak RSS is that reader's alone.
Peers: a bare ``json.loads`` loop (the floor: no validation, nothing written) and
``datasets.load_dataset("json")`` (what fine-tuning scripts call; arrow reader, no per-row checks, no ledger).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("SFTFLOW_DATA_DIR", REPO.parent / "shared" / "data"))


def make_rows(path: Path, n: int) -> None:
    words: list[str] = []
    for line in (DATA / "dolly_hhrlhf_sample" / "dolly_hhrlhf_train_small.jsonl").open():
        words.extend(json.loads(line)["response"].split())
    zh = ""
    seeds = DATA / "belle_zh" / "zh_seed_tasks.json"
    if seeds.exists():
        zh = "".join(json.loads(line)["instances"][0]["output"] for line in seeds.open())
    rng = random.Random(0)
    with path.open("w") as fh:
        for i in range(n):
            if zh and i % 10 == 0:
                a = rng.randrange(len(zh) - 300)
                row = {
                    "instruction": zh[a : a + 20],
                    "input": "",
                    "output": zh[a + 20 : a + rng.randint(60, 300)],
                }
            else:
                row = {
                    "instruction": " ".join(rng.choices(words, k=rng.randint(5, 30))),
                    "input": " ".join(rng.choices(words, k=rng.choice([0, 0, 10, 30]))),
                    "output": " ".join(rng.choices(words, k=rng.randint(20, 200))),
                }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def one(kind: str, path: str, out: str) -> dict:
    """Run one reader in this process; returns its timings."""
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "sftflow ingest":
        from curation.ingest import ingest

        rows = ingest([path], out).stats.rows_out
    elif kind == "json.loads loop":
        rows = 0
        with open(path, "rb") as fh:
            for line in fh:
                json.loads(line)
                rows += 1
    elif kind == "datasets json":
        import datasets

        datasets.disable_progress_bars()
        rows = len(datasets.load_dataset("json", data_files=path, split="train", cache_dir=out))
    else:
        raise ValueError(kind)
    return {
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "alpaca.jsonl"
        make_rows(src, args.rows)
        mb = src.stat().st_size / 2**20
        print(f"input: {args.rows} alpaca rows, {mb:.0f} MiB JSON Lines\n")
        print(
            f"{'reader':<18} {'rows':>9} {'wall s':>8} {'cpu s':>7} {'rows/s (cpu)':>13} {'peak RSS MiB':>13}"
        )
        for kind in ["sftflow ingest", "json.loads loop", "datasets json"]:
            out = Path(tmp) / kind.replace(" ", "_")
            proc = subprocess.run(
                [sys.executable, __file__, "--one", kind, str(src), str(out)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                print(f"{kind:<18} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{kind:<18} {r['rows']:>9} {r['wall_s']:>8.1f} {r['cpu_s']:>7.1f} "
                f"{r['rows'] / r['cpu_s']:>13,.0f} {r['peak_rss_mb']:>13,.0f}"
            )
        print("\nrows/s is per CPU second (wall time depends on what else the machine runs).")


if __name__ == "__main__":
    main()
