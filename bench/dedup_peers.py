"""Dedup side by side: sftflow's dedup stage, datatrove's MinHash pipeline and rensa, on the same documents.

    python bench/dedup_peers.py --rows 200000
    python bench/dedup_peers.py --rows 1000000 --methods sftflow,rensa

The documents are the soak's task rows (``bench/soak.py``: alpaca rows of real Dolly words, every
10th Chinese, ~5% planted exact copies and ~3% near copies — one word of a long answer changed),
ingested once by sftflow; every method gets the same text per row (``Record.full_text()``: what
sftflow's dedup compares), as JSON Lines for the peers and as the ingested records for sftflow.
Each method runs in a process of its own: wall and CPU seconds (with its worker processes) and
peak RSS (the largest of its processes) are measured from outside with ``wait4``.

- **sftflow**: ``DedupStage`` defaults (exact + MinHash LSH, threshold 0.8, 128 permutations, word
  3-grams, CJK character 3-grams, bands x rows from the weighted datasketch search), one process.
- **datatrove** (``MinhashDedupSignature`` → ``Buckets`` → ``Cluster`` → ``Filter``, the four-step
  pipeline of its README, ``LocalPipelineExecutor``, one task per bucket on all cores): once with its
  defaults (word 5-grams, 14 buckets x 8 hashes, spaCy English word tokenizer) and once with sftflow's
  shingles and banding (3-grams, the same bands x rows).
- **rensa**: ``RMinHash`` (128 permutations) + its ``RMinHashDeduplicator`` (LSH, 16 bands, keep the
  first of each group) over lower-cased whitespace word 3-grams, as its README does.

"duplicates found": rows each method removes (Chinese ones apart: their text has no spaces, so word
shingles see few "words"; sftflow shingles CJK by character). "planted copies caught": planted
(copy, original) pairs of which the method removed one — which of the two it keeps differs by design
(sftflow keeps the best row of a group, the peers the first), so removed-row sets are not compared.
Rows removed outside the planted pairs are duplicates the generated text made by itself (the Chinese
rows are cut from one shared text, so many overlap) or false positives.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

THRESHOLD, NUM_PERM = 0.8, 128
METHODS = ["sftflow", "datatrove (defaults)", "datatrove (sftflow's shingles + bands)", "rensa"]
SHORT = {"sftflow": METHODS[0], "datatrove": METHODS[1], "datatrove-same": METHODS[2], "rensa": METHODS[3]}


# ------------------------------------------------------------------------------------------------
# the methods (each runs in its own process; writes the removed lines to removed.json)


def run_sftflow(work: Path, out: Path) -> list[int]:
    import pyarrow.parquet as pq

    from curation.dedup import DedupConfig, DedupStage
    from curation.runner import run_stage

    run_stage(DedupStage(DedupConfig(threshold=THRESHOLD, num_perm=NUM_PERM)), work / "ingest" / "output.parquet",
              out / "dedup")
    return pq.read_table(out / "dedup" / "ledger.parquet", columns=["line"]).column("line").to_pylist()


def _datatrove(work: Path, out: Path, same_as_sftflow: bool) -> list[int]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from curation.minhash import lsh_params

    _xxhash_accepts_str()
    cores = len(os.sched_getaffinity(0))
    if same_as_sftflow:
        bands, rows = lsh_params(THRESHOLD, NUM_PERM, 0.2, 0.8)
        config = MinhashConfig(n_grams=3, num_buckets=bands, hashes_per_bucket=rows)
    else:
        config = MinhashConfig()
    base, logs = out / "dt", out / "dt-logs"

    def reader():
        return JsonlReader(str(work / "docs"), glob_pattern="*.jsonl", id_key="id")

    steps = [
        ([reader(), MinhashDedupSignature(output_folder=str(base / "sigs"), config=config)], 1),
        ([MinhashDedupBuckets(input_folder=str(base / "sigs"), output_folder=str(base / "buckets"), config=config)],
         config.num_buckets),
        ([MinhashDedupCluster(input_folder=str(base / "buckets"), output_folder=str(base / "remove"), config=config)],
         1),
        ([reader(), MinhashDedupFilter(input_folder=str(base / "remove"),
                                       exclusion_writer=JsonlWriter(str(base / "removed"), compression=None)),
          JsonlWriter(str(base / "kept"), compression=None)], 1),
    ]
    for i, (pipeline, tasks) in enumerate(steps):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(tasks, cores),
                              logging_dir=str(logs / f"step{i}"), skip_completed=False).run()
    removed = []
    for f in sorted((base / "removed").glob("*.jsonl")):
        removed.extend(int(json.loads(line)["id"]) for line in f.open())
    return removed


def _xxhash_accepts_str() -> None:
    """datatrove 0.10 hashes ``str`` shingles with xxhash, which took ``str`` (as UTF-8) until xxhash 4; the
    venv has xxhash 4 (datasets', evaluate's), so give datatrove's helpers the UTF-8 bytes xxhash 3 hashed."""
    import xxhash
    from datatrove.utils.hashes import xxhash as dt_xxhash

    dt_xxhash.xxhash32 = lambda data: xxhash.xxh32_intdigest(data.encode() if isinstance(data, str) else data)
    dt_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)


def run_rensa(work: Path, out: Path) -> list[int]:
    import rensa

    dedup = rensa.RMinHashDeduplicator(threshold=THRESHOLD, num_perm=NUM_PERM, use_lsh=True, num_bands=16)
    removed = []
    with (work / "docs" / "docs.jsonl").open() as fh:
        for line in fh:
            doc = json.loads(line)
            words = doc["text"].lower().split()
            m = rensa.RMinHash(num_perm=NUM_PERM, seed=42)
            m.update([" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))])
            if not dedup.add(doc["id"], m):
                removed.append(int(doc["id"]))
    return removed


RUNNERS = {
    METHODS[0]: run_sftflow,
    METHODS[1]: lambda w, o: _datatrove(w, o, same_as_sftflow=False),
    METHODS[2]: lambda w, o: _datatrove(w, o, same_as_sftflow=True),
    METHODS[3]: run_rensa,
}


# ------------------------------------------------------------------------------------------------
# the harness


def prepare(work: Path, n_rows: int) -> dict[int, tuple[str, int]]:
    """Generate the rows, ingest them once, write the peers' documents; returns the planted copies."""
    import pyarrow.parquet as pq
    from soak import make_task_rows

    from curation.ingest import ingest
    from curation.records import Record

    copies: dict[int, tuple[str, int]] = {}
    make_task_rows(work / "task.jsonl", n_rows, copies=copies)
    ingest([str(work / "task.jsonl")], work / "ingest")
    (work / "docs").mkdir()
    with (work / "docs" / "docs.jsonl").open("w") as fh:
        for rb in pq.ParquetFile(work / "ingest" / "output.parquet").iter_batches(batch_size=4096):
            for row in rb.to_pylist():
                fh.write(json.dumps({"id": str(row["line"]), "text": Record.from_row(row).full_text()},
                                    ensure_ascii=False) + "\n")
    return copies


def _chinese_lines(work: Path) -> set[int]:
    import pyarrow.parquet as pq

    t = pq.read_table(work / "ingest" / "output.parquet", columns=["line", "lang"])
    return {line for line, lang in zip(t.column("line").to_pylist(), t.column("lang").to_pylist(), strict=True)
            if lang == "zh"}


def measure(work: Path, method: str) -> dict:
    out = work / f"out-{METHODS.index(method)}"
    out.mkdir()
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", method, str(work), str(out)],
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{method} failed")
    removed = json.loads((out / "removed.json").read_text())
    return {"method": method, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "rss_mib": usage.ru_maxrss / 1024, "removed": set(removed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--methods", default="sftflow,datatrove,datatrove-same,rensa",
                    help=f"comma-separated: {', '.join(SHORT)}")
    ap.add_argument("--work", help="folder for the data (default: a temp folder, removed)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, work, out = args.child
        removed = RUNNERS[method](Path(work), Path(out))
        (Path(out) / "removed.json").write_text(json.dumps(sorted(removed)))
        return

    methods = [SHORT[m.strip()] for m in args.methods.split(",") if m.strip()]
    with tempfile.TemporaryDirectory(prefix="sftflow-dedup-peers-", dir=args.work) as tmp:
        work = Path(tmp)
        copies = prepare(work, args.rows)
        chinese = _chinese_lines(work)
        n_docs = sum(1 for _ in (work / "docs" / "docs.jsonl").open())
        print(f"{n_docs:,} documents ({args.rows:,} rows: {sum(k == 'exact' for k, _ in copies.values()):,} planted "
              f"exact copies, {sum(k == 'near' for k, _ in copies.values()):,} near copies); threshold {THRESHOLD}, "
              f"{NUM_PERM} permutations; {len(os.sched_getaffinity(0))} cores, load average "
              f"{os.getloadavg()[0]:.1f}\n")
        results = [measure(work, m) for m in methods]
    pairs = [(copy, src) for copy, (_, src) in copies.items()]
    print("| method | wall s | CPU s | docs per CPU s | peak RSS MiB | duplicates found (Chinese) "
          "| planted copies caught |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        removed = r["removed"]
        caught = sum(1 for copy, src in pairs if copy in removed or src in removed)
        print(f"| {r['method']} | {r['wall']:.1f} | {r['cpu']:.1f} | {n_docs / max(r['cpu'], 1e-9):,.0f} | "
              f"{r['rss_mib']:,.0f} | {len(removed):,} ({len(removed & chinese):,}) | "
              f"{caught:,} of {len(pairs):,} ({caught / max(1, len(pairs)):.1%}) |")


if __name__ == "__main__":
    main()
