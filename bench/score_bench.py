"""Benchmark: scoring speed, selection at 100k rows, and selection diversity vs random selection.

    python bench/score_bench.py                 # everything (~5-10 min on 2 cores)
    python bench/score_bench.py --part score    # or: select, diversity, agreement
    python bench/score_bench.py --rows 100000   # rows for the selection run

Peers, measured in the same run:
- scoring: reading the same records from parquet (the floor any stage pays);
- selection time: uniform random selection of the same budget;
- diversity: random selections of the same size, mean over 5 seeds.
Real inputs come from ../shared/data (or $SFTFLOW_DATA_DIR); the 100k-row selection input repeats
the real instructions with a variant suffix, so it is full of near-copies, as raw pools often are.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from curation.diversity import (  # noqa: E402
    coverage,
    embed_texts,
    embedding_metrics,
    embedding_text,
)
from curation.features import classify_task  # noqa: E402
from curation.ingest import IngestConfig, ingest  # noqa: E402
from curation.io import iter_record_batches, read_records, write_records  # noqa: E402
from curation.records import Record  # noqa: E402
from curation.runner import apply_stage, run_stage  # noqa: E402
from curation.score import ScoreConfig, ScoreStage  # noqa: E402
from curation.select import SelectConfig, SelectStage  # noqa: E402

DATA = Path(os.environ.get("SFTFLOW_DATA_DIR", REPO.parent / "shared" / "data"))
EN_SOURCES = ["dolly_hhrlhf_sample", "self_instruct_seed"]
ZH_SOURCES = ["oasst1_zh_sft", "belle_zh/zh_seed_tasks.json"]


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    sys.stdout.flush()


def ingest_to(tmp: Path, name: str, sources: list[str], field_map: dict | None = None) -> Path:
    ingest([str(DATA / s) for s in sources], tmp / name, IngestConfig(field_map=field_map or {}))
    return tmp / name / "output.parquet"


def belle_eval(tmp: Path) -> Path:
    return ingest_to(
        tmp, "belle_eval", ["belle_zh/eval_set.json"], {"instruction": "question", "output": "std_answer"}
    )


# --------------------------------------------------------------------------------------------------
def part_score(tmp: Path) -> None:
    paths = [ingest_to(tmp, "en", EN_SOURCES), ingest_to(tmp, "zh", ZH_SOURCES), belle_eval(tmp)]
    records = [r for p in paths for r in read_records(p)]
    write_records(tmp / "all.parquet", records)
    n = len(records)
    rows = []
    t = time.perf_counter()
    for _ in iter_record_batches(tmp / "all.parquet"):
        pass
    secs = time.perf_counter() - t
    rows.append(["peer: read records from parquet", n, f"{secs:.2f}", f"{n / secs:,.0f}"])
    for label, cfg, limit in [
        ("score (features + task type)", ScoreConfig(), n),
        ("score + hashing embeddings", ScoreConfig(embeddings=True, embedding_model="hashing"), n),
        (
            "score + minilm embeddings (CPU, 2 threads)",
            ScoreConfig(embeddings=True, embedding_model="minilm"),
            600,
        ),
    ]:
        subset = tmp / f"in_{limit}.parquet"
        if not subset.exists():
            write_records(subset, records[:limit])
        if cfg.embeddings and cfg.embedding_model == "minilm":
            from curation.diversity import minilm_model

            minilm_model()  # load once outside the timing (~5 s)
        stats = run_stage(ScoreStage(cfg), subset, tmp / f"score_{label[:12]}")
        rows.append([label, limit, f"{stats.seconds:.2f}", f"{stats.rows_in / stats.seconds:,.0f}"])
    table(
        "Scoring throughput (en + zh instruction data from shared/data)",
        ["what", "rows", "seconds", "rows/s"],
        rows,
    )


# --------------------------------------------------------------------------------------------------
def make_big_pool(tmp: Path, n_rows: int) -> Path:
    base = [
        r
        for p in (ingest_to(tmp, "en", EN_SOURCES), ingest_to(tmp, "zh", ZH_SOURCES))
        for r in read_records(p)
    ]
    out: list[Record] = []
    rng = np.random.default_rng(0)
    cplx = rng.random(n_rows)
    for i in range(n_rows):
        src = base[i % len(base)]
        msgs = copy.deepcopy(src.messages)
        if i >= len(base):
            msgs[0]["content"] += f" (variant {i // len(base)})"
        out.append(
            Record(
                id=f"big{i}",
                messages=msgs,
                lang=src.lang,
                attrs={"complexity": float(cplx[i]), "task_type": "other"},
            )
        )
    path = tmp / f"big_{n_rows}.parquet"
    write_records(path, out)
    return path


def _peak_rss_kib() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the
    parent, so a child started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def select_child(path: str, method: str, budget: int) -> None:
    """Runs in a fresh process so its peak RSS is the selection's own."""
    import pyarrow.parquet  # noqa: F401 - loaded before the baseline is taken

    before = _peak_rss_kib()
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        if method == "random":
            # peer: read the ids, draw a uniform sample, write the chosen rows
            import pyarrow.parquet as pq

            table_ = pq.read_table(path)
            idx = np.sort(np.random.default_rng(0).choice(table_.num_rows, budget, replace=False))
            pq.write_table(table_.take(idx), Path(out) / "output.parquet")
            kept = budget
        else:
            stats = run_stage(
                SelectStage(
                    SelectConfig(method=method, budget=budget, embeddings="hashing", similarity_threshold=0.9)
                ),
                path,
                out,
            )
            kept = stats.rows_out
        secs = time.perf_counter() - t
    peak = _peak_rss_kib()
    print(
        json.dumps(
            {"seconds": secs, "kept": kept, "peak_rss_mib": peak / 1024, "baseline_rss_mib": before / 1024}
        )
    )


def part_select(tmp: Path, n_rows: int) -> None:
    path = make_big_pool(tmp, n_rows)
    rows = []
    for method, budget in [("random", 10_000), ("score_first", 10_000), ("kcenter", 2_000)]:
        res = subprocess.run(
            [sys.executable, __file__, "--select-child", str(path), method, str(budget)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(
            [
                method,
                n_rows,
                budget,
                r["kept"],
                f"{r['seconds']:.1f}",
                f"{n_rows / r['seconds']:,.0f}",
                f"{r['baseline_rss_mib']:.0f}",
                f"{r['peak_rss_mib']:.0f}",
            ]
        )
    texts = [r.instruction()[:1000] for b in iter_record_batches(path) for r in b]
    t = time.perf_counter()
    embed_texts(texts, "hashing")
    secs = time.perf_counter() - t
    rows.append(
        [
            "(of which: hashing embeddings of the 100k instructions)",
            n_rows,
            "",
            "",
            f"{secs:.1f}",
            f"{n_rows / secs:,.0f}",
            "",
            "",
        ]
    )
    table(
        f"Selection on {n_rows:,} rows (hashing embeddings computed in fit, threshold 0.9; kcenter budget smaller)",
        ["method", "rows", "budget", "kept", "seconds", "rows/s", "RSS after imports MiB", "peak RSS MiB"],
        rows,
    )


# --------------------------------------------------------------------------------------------------
def part_diversity(tmp: Path) -> None:
    rows = []
    pools = [
        ("en: dolly sample + self-instruct", ingest_to(tmp, "en", EN_SOURCES), ["minilm", "hashing"]),
        ("zh: oasst1-zh + BELLE seed", ingest_to(tmp, "zh", ZH_SOURCES), ["hashing", "minilm"]),
    ]
    for pool_name, path, models in pools:
        records = apply_stage(ScoreStage(), read_records(path))[0]
        n = len(records)
        budget = n // 3
        for model in models:
            emb = embed_texts([embedding_text(r) for r in records], model)
            col = f"embedding_{model}"
            for r, e in zip(records, emb, strict=True):
                r.attrs[col] = e.tolist()
            index = {r.id: i for i, r in enumerate(records)}

            def metrics(idx: np.ndarray, emb=emb) -> dict:
                m = embedding_metrics(emb[idx])
                m["coverage"] = coverage(emb, emb[idx])
                return m

            rand = [metrics(np.random.default_rng(s).choice(n, budget, replace=False)) for s in range(5)]
            keys = ["mean_pairwise_distance", "mean_nn_similarity", "nn_redundancy", "coverage"]
            rows.append(
                [pool_name, model, "random x5 (mean ± sd)", budget]
                + [f"{np.mean([m[k] for m in rand]):.4f} ± {np.std([m[k] for m in rand]):.4f}" for k in keys]
            )
            for method, thr in [("score_first", 0.9), ("score_first", 0.8), ("kcenter", 0.9)]:
                kept, _, _ = apply_stage(
                    SelectStage(
                        SelectConfig(method=method, budget=budget, embeddings=model, similarity_threshold=thr)
                    ),
                    copy.deepcopy(records),
                )
                m = metrics(np.asarray([index[r.id] for r in kept]))
                rows.append(
                    [pool_name, model, f"{method} thr {thr}", len(kept)] + [f"{m[k]:.4f}" for k in keys]
                )
    table(
        "Diversity of a selection vs random selection of the same size (budget = pool / 3); metrics in the "
        "embedding space named (higher distance / coverage, lower NN similarity / redundancy = more diverse)",
        [
            "pool",
            "embeddings",
            "selection",
            "rows",
            "mean pairwise distance",
            "mean NN similarity",
            "NN redundancy (>=0.9)",
            "coverage of pool",
        ],
        rows,
    )


def part_agreement(tmp: Path) -> None:
    from collections import Counter

    label_map = {
        "open qa": {"open_qa"},
        "closed qa": {"closed_qa"},
        "brainstorming": {"brainstorming"},
        "rewrite": {"rewriting", "translation"},
        "generation": {"creative_writing"},
        "math": {"math"},
        "classification": {"classification"},
        "summarization": {"summarization"},
        "code": {"code"},
        "extract": {"extraction"},
    }
    per, ok = Counter(), Counter()
    for line in (DATA / "belle_zh" / "eval_set.json").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        label = row["class"].replace("\xa0", " ")
        rec = Record(
            id="x",
            lang="zh",
            messages=[
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": row["std_answer"]},
            ],
        )
        per[label] += 1
        ok[label] += classify_task(rec) in label_map[label]
    rows = [[k, per[k], f"{ok[k] / per[k]:.2f}"] for k in sorted(per)]
    rows.append(["**all**", sum(per.values()), f"{sum(ok.values()) / sum(per.values()):.3f}"])
    table(
        "Task-type agreement with BELLE eval_set labels (zh; BELLE 'rewrite' accepts translation)",
        ["BELLE class", "rows", "agreement"],
        rows,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["all", "score", "select", "diversity", "agreement"], default="all")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--select-child", nargs=3, metavar=("PATH", "METHOD", "BUDGET"))
    args = ap.parse_args()
    if args.select_child:
        select_child(args.select_child[0], args.select_child[1], int(args.select_child[2]))
        return
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.part in ("all", "agreement"):
            part_agreement(tmp)
        if args.part in ("all", "score"):
            part_score(tmp)
        if args.part in ("all", "diversity"):
            part_diversity(tmp)
        if args.part in ("all", "select"):
            part_select(tmp, args.rows)


if __name__ == "__main__":
    main()
