"""Dedup speed: MinHash signatures and the whole dedup stage against their peers, in one run.

    python bench/dedup_bench.py                 # signatures on 20k docs, stage on 60k docs
    python bench/dedup_bench.py --rss-docs 1000000   # + peak RSS of the streaming stage on 1M docs

Documents are 100 words drawn independently from the real word stream of the shared instruction datasets
(dolly_hhrlhf_sample + self_instruct_seed), so word frequencies are natural. Every peer gets the same
documents; peers shingle in Python (lower-case, split, join n-grams) as a user would, and their
signature-only speed (shingles given) is shown too. sftflow starts from raw text.
"""

from __future__ import annotations

import argparse
import gc
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

from curation.dedup import DedupConfig, DedupStage  # noqa: E402
from curation.minhash import SignatureBuilder  # noqa: E402
from curation.records import Record, normalize_text  # noqa: E402
from curation.runner import apply_stage  # noqa: E402

DATA = Path(os.environ.get("SFTFLOW_DATA_DIR", REPO.parent / "shared" / "data"))


def word_stream() -> list[str]:
    words: list[str] = []
    for line in (DATA / "dolly_hhrlhf_sample" / "dolly_hhrlhf_train_small.jsonl").open():
        words.extend(json.loads(line)["response"].split())
    for line in (DATA / "self_instruct_seed" / "seed_tasks.jsonl").open():
        row = json.loads(line)
        words.extend(row["instruction"].split())
        for inst in row["instances"]:
            words.extend(inst["output"].split())
    return words


def make_docs(n: int, words_per_doc: int = 100, dup_rate: float = 0.1, seed: int = 0) -> list[str]:
    """``n`` docs; ``dup_rate`` of them are near copies (2 words replaced) of an earlier doc."""
    rng = random.Random(seed)
    words = word_stream()
    docs: list[str] = []
    for i in range(n):
        if i > 10 and rng.random() < dup_rate:
            w = docs[rng.randrange(i)].split()
            for _ in range(2):
                w[rng.randrange(len(w))] = rng.choice(words)
            docs.append(" ".join(w))
        else:
            # words drawn independently from the real stream: natural frequencies, distinct docs
            docs.append(" ".join(rng.choices(words, k=words_per_doc)))
    return docs


def py_shingles(text: str, n: int) -> list[str]:
    w = text.lower().split()
    return [" ".join(w[i : i + n]) for i in range(max(1, len(w) - n + 1))]


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


# --------------------------------------------------------------------------------------------------


def bench_signatures(n_docs: int, num_perm: int, ngram: int) -> list[tuple[str, float, float | None]]:
    from datasketch import MinHash

    docs = make_docs(n_docs, dup_rate=0.0)
    small = docs[: max(500, n_docs // 40)]
    rows: list[tuple[str, float, float | None]] = []

    def shingled(ds):
        return [[s.encode() for s in py_shingles(d, ngram)] for d in ds]

    t_sh = timed(lambda: shingled(docs)) / len(docs)
    pre = shingled(docs)
    pre_small = shingled(small)

    def update_loop():
        for sh in pre_small:
            m = MinHash(num_perm=num_perm)
            for s in sh:
                m.update(s)

    t = timed(update_loop) / len(small)
    rows.append(("datasketch MinHash.update loop (sha1)", t + t_sh, t))
    t = timed(lambda: MinHash.bulk(pre, num_perm=num_perm)) / len(docs)
    rows.append(("datasketch MinHash.bulk (sha1, affine32)", t + t_sh, t))
    t = timed(lambda: MinHash.bulk(pre_small, num_perm=num_perm, scheme="legacy")) / len(small)
    rows.append(("datasketch MinHash.bulk (sha1, legacy <2.0)", t + t_sh, t))
    try:
        import rensa

        pre_str = [[s.decode() for s in sh] for sh in pre]

        def run_rensa():
            for sh in pre_str:
                m = rensa.RMinHash(num_perm=num_perm, seed=1)
                m.update(sh)
                m.digest()

        def py_shingle_str():
            return [py_shingles(d, ngram) for d in docs]

        t_sh_str = timed(py_shingle_str) / len(docs)
        t = timed(run_rensa, repeat=2) / len(docs)
        rows.append(("rensa RMinHash (not datasketch-compatible)", t + t_sh_str, t))
    except ImportError:
        rows.append(("rensa (not installed)", float("nan"), None))

    for mode in ("sha1", "poly64"):
        builder = SignatureBuilder(num_perm=num_perm, seed=1, ngram=ngram, shingle_hash=mode)
        builder.signatures([normalize_text(d) for d in docs[:100]])  # warm-up (punctuation table)
        batch = 4096

        def run_sftflow(builder=builder, ds=docs if mode == "poly64" else small, batch=batch):
            for i in range(0, len(ds), batch):
                builder.signatures([normalize_text(d) for d in ds[i : i + batch]])

        n = len(docs) if mode == "poly64" else len(small)
        t = timed(run_sftflow, repeat=2 if mode == "poly64" else 1) / n
        # the "shingles given" column for sftflow: text already normalize_text-ed (the stage
        # computes that once for exact hashing and passes it on)
        normalized = [normalize_text(d) for d in (docs if mode == "poly64" else small)]

        def run_normalized(builder=builder, ds=normalized, batch=batch):
            for i in range(0, len(ds), batch):
                builder.signatures(ds[i : i + batch])

        t_sig = timed(run_normalized, repeat=2 if mode == "poly64" else 1) / n
        rows.append((f"sftflow SignatureBuilder ({mode}, from raw text)", t, t_sig))
    return rows


def plain_datasketch_clusters(shingle_lists: list[list[str]], threshold: float, num_perm: int) -> list[int]:
    """What a user writes with datasketch alone: bulk MinHash, LSH insert+query, union-find.

    Returns each document's cluster root (shared with bench/dedup_quality.py).
    """
    from datasketch import MinHash, MinHashLSH

    mhs = MinHash.bulk([[s.encode() for s in sh] for sh in shingle_lists], num_perm=num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    parent = list(range(len(shingle_lists)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, m in enumerate(mhs):
        for j in lsh.query(m):
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
        lsh.insert(i, m)
    return [find(i) for i in range(len(shingle_lists))]


def plain_datasketch_dedup(docs: list[str], threshold: float, num_perm: int, ngram: int) -> int:
    """Number of clusters (= kept docs) of the plain datasketch script."""
    roots = plain_datasketch_clusters([py_shingles(d, ngram) for d in docs], threshold, num_perm)
    return sum(1 for i, r in enumerate(roots) if r == i)


def bench_stage(n_docs: int, threshold: float, num_perm: int, ngram: int) -> list[tuple[str, float, int]]:
    docs = make_docs(n_docs, dup_rate=0.1, seed=1)
    records = [Record(id=f"d{i:07d}", text=d, source="bench") for i, d in enumerate(docs)]
    out = []
    t = time.process_time()
    kept = plain_datasketch_dedup(docs, threshold, num_perm, ngram)
    out.append(("datasketch bulk + MinHashLSH + union-find", time.process_time() - t, kept))
    gc.collect()
    # warm-up on a few rows: JIT (numba) load, bands/rows search
    apply_stage(DedupStage(DedupConfig(threshold=threshold, num_perm=num_perm, ngram=ngram)), records[:50])
    stage = DedupStage(DedupConfig(threshold=threshold, num_perm=num_perm, ngram=ngram))
    t = time.process_time()
    kept_recs, _, _ = apply_stage(stage, records, batch_size=4096)
    out.append(("sftflow DedupStage (exact + near, apply_stage)", time.process_time() - t, len(kept_recs)))
    return out


def write_rss_input(path: Path, n_docs: int) -> None:
    from curation.io import ParquetWriter, record_schema

    rng = random.Random(2)
    words = word_stream()
    with ParquetWriter(path, record_schema()) as w:
        for lo in range(0, n_docs, 50_000):
            rows = []
            for i in range(lo, min(n_docs, lo + 50_000)):
                rows.append(
                    Record(id=f"d{i:08d}", text=" ".join(rng.choices(words, k=100)), source="b").to_row()
                )
            w.write_rows(rows)


def _vm_hwm_kib() -> int:
    """Peak RSS of this process image (VmHWM; unlike ru_maxrss it does not carry the parent's peak
    across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_child(src: str, batch_size: int) -> None:
    """Child process: stream ``src`` through the stage; print its peak RSS as JSON."""
    from curation.io import count_rows
    from curation.runner import run_stage

    base = _vm_hwm_kib()  # interpreter + imports
    t = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        stats = run_stage(DedupStage(DedupConfig()), src, Path(tmp) / "out", batch_size=batch_size)
    secs = time.process_time() - t
    peak = _vm_hwm_kib()
    out = {"docs": count_rows(src), "peak_rss_mib": peak / 1024, "rss_before_mib": base / 1024}
    print(json.dumps(out | {"cpu_seconds": secs, "rows_out": stats.rows_out}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sig-docs", type=int, default=20_000)
    ap.add_argument("--stage-docs", type=int, default=60_000)
    ap.add_argument("--rss-docs", type=int, default=0, help="also measure peak RSS streaming this many docs")
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--rss-child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, 4096)
        return
    if args.rss_docs:
        # first, so the table is not delayed by the long part; the input is written by this
        # process, the stage runs in a fresh one whose peak RSS is only the stage's
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in.parquet"
            write_rss_input(src, args.rss_docs)
            proc = subprocess.run(
                [sys.executable, __file__, "--rss-child", str(src)],
                capture_output=True,
                text=True,
                check=True,
            )
        rss = json.loads(proc.stdout.strip().splitlines()[-1])

    print(
        f"## MinHash signatures: {args.sig_docs} docs x ~100 words, num_perm={args.num_perm}, word {args.ngram}-grams"
    )
    rows = bench_signatures(args.sig_docs, args.num_perm, args.ngram)
    ref = next(t for name, t, _ in rows if name.startswith("datasketch MinHash.bulk (sha1, affine32)"))
    rensa = next((t for name, t, _ in rows if name.startswith("rensa")), float("nan"))
    print(f"| {'method':48s} | docs/s from text | x bulk | x rensa | docs/s shingles given* |")
    print(f"|{'-' * 50}|------------------|--------|---------|------------------------|")
    for name, t, t_sig in rows:
        sig = f"{1 / t_sig:,.0f}" if t_sig else "-"
        print(f"| {name:48s} | {1 / t:16,.0f} | {ref / t:6.2f} | {rensa / t:7.2f} | {sig:>22s} |")
    print("* sftflow: from normalize_text output (punctuation, n-grams and hashing still included)")

    print(f"\n## Whole dedup stage: {args.stage_docs} docs (10% near copies), threshold {args.threshold}")
    stage_rows = bench_stage(args.stage_docs, args.threshold, args.num_perm, args.ngram)
    base_t = stage_rows[0][1]
    print(f"| {'pipeline':48s} | seconds | docs/s  | speed-up | rows kept |")
    print(f"|{'-' * 50}|---------|---------|----------|-----------|")
    for name, t, kept in stage_rows:
        print(f"| {name:48s} | {t:7.2f} | {args.stage_docs / t:7,.0f} | {base_t / t:8.2f} | {kept:9d} |")

    if args.rss_docs:
        r = rss
        print(f"\n## Peak RSS, run_stage streaming {r['docs']:,} docs of 100 words from parquet (batch 4096)")
        print(
            f"peak RSS {r['peak_rss_mib']:.0f} MiB (interpreter + imports before the stage: "
            f"{r['rss_before_mib']:.0f} MiB); {r['cpu_seconds']:.1f} CPU s, "
            f"{r['docs'] / r['cpu_seconds']:,.0f} docs/s incl. parquet read/write; {r['rows_out']:,} rows kept"
        )


if __name__ == "__main__":
    main()
