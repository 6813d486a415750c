"""Soak: the curation pipeline (no neural scorers) over a large synthetic corpus; speed, memory, ledger.

    python bench/soak.py                              # 1,000,000 task rows (+ a general pool of 25% of that)
    python bench/soak.py --rows 200000 --workers 1,2  # smaller, once per worker count, compared

Stages: quality (rule heuristics, no fastText model), dedup (exact + MinHash LSH), score (complexity /
task type, no embeddings), mix (general replay, ratio 0.15). Targets: >= 5,000 rows per CPU second end
to end, >= 1.8x wall speed-up from 1 to 2 workers, <= 4 GB peak RSS, and a ledger that balances (rows
in + added = rows out + ledger rows); with several worker counts, byte-identical outputs.

Rows are alpaca records whose words come from the real responses of dolly_hhrlhf_sample when the
shared data folder is there (else a small built-in vocabulary); every 10th row is Chinese. Planted:
~5% exact copies, ~3% near copies (one word changed), ~3% junk answers (refusals, one-word answers,
repetition), so every stage has work. The curation runs in its own process (``--workers``: with its
pool of worker processes): the peak RSS is the pipeline's alone (data generation excluded). CPU
seconds include the worker processes (live ones read from /proc, ended ones from RUSAGE_CHILDREN);
rows/s is given per wall second and per CPU second (wall time depends on what else the machine runs;
the load average is printed beside each run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("SFTFLOW_DATA_DIR", REPO.parent / "shared" / "data"))
TARGET_ROWS_PER_S = 5_000
TARGET_RSS_GB = 4.0
TARGET_SPEEDUP = 1.8  # wall, 1 → 2 workers
DEFAULT_STAGES = "quality,dedup,score,mix"
FALLBACK_WORDS = (
    "the of and to in is for that with as on it by this be are from or at an was which can have more "
    "data model answer question first second because however example result value number step time "
    "people water energy system city river history science language function method table list"
).split()
JUNK = ["I'm sorry, but I cannot help with that request.", "ok", "As an AI language model, I cannot do that.",
        "yes yes yes yes yes yes yes yes yes yes yes yes yes yes yes yes yes yes yes yes yes yes"]


def _vocab() -> tuple[list[str], str]:
    words: list[str] = []
    dolly = DATA / "dolly_hhrlhf_sample" / "dolly_hhrlhf_train_small.jsonl"
    if dolly.exists():
        for line in dolly.open(encoding="utf-8"):
            words.extend(json.loads(line)["response"].split())
    zh = ""
    seeds = DATA / "belle_zh" / "zh_seed_tasks.json"
    if seeds.exists():
        zh = "".join(json.loads(line)["instances"][0]["output"] for line in seeds.open(encoding="utf-8"))
    if len(zh) < 1000:
        zh = "机器学习是人工智能的一个分支它让计算机从数据中学习规律并做出预测" * 40
    return words or FALLBACK_WORDS, zh


def _sentences(rng: random.Random, words: list[str], n_words: int) -> str:
    """Word salad shaped like prose (capitals, full stops), so the quality rules judge content, not form."""
    out, left = [], n_words
    while left > 0:
        k = min(left, rng.randint(6, 18))
        sent = " ".join(rng.choices(words, k=k)).strip(" ,;:")
        out.append(sent[:1].upper() + sent[1:] + ".")
        left -= k
    return " ".join(out)


def make_task_rows(path: Path, n: int, seed: int = 0, copies: dict[int, tuple[str, int]] | None = None
                   ) -> dict[str, int]:
    """Alpaca JSON Lines with planted exact copies, near copies and junk answers.

    ``copies``, when given, receives line → (``"exact"`` | ``"near"``, line copied from) for every planted copy.
    """
    words, zh = _vocab()
    rng = random.Random(seed)
    recent: list[tuple[dict, int]] = []  # a window of earlier rows (and their lines) to copy from
    planted = {"exact": 0, "near": 0, "junk": 0}
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            roll = rng.random()
            if recent and roll < 0.05:
                src, src_line = rng.choice(recent)
                row = dict(src)
                planted["exact"] += 1
                if copies is not None:
                    copies[i + 1] = ("exact", src_line)
            elif recent and roll < 0.08:
                src, src_line = rng.choice(recent)
                row = dict(src)
                if copies is not None:
                    copies[i + 1] = ("near", src_line)
                out = row["output"].split()
                if len(out) > 30:  # one word of a long answer: Jaccard stays high
                    out[rng.randrange(len(out))] = rng.choice(words)
                row["output"] = " ".join(out)
                planted["near"] += 1
            elif i % 10 == 0:
                a = rng.randrange(len(zh) - 300)
                row = {"instruction": zh[a : a + 20] + "？", "input": "",
                       "output": zh[a + 20 : a + rng.randint(60, 300)] + "。"}
            else:
                row = {
                    "instruction": _sentences(rng, words, rng.randint(5, 30))[:-1] + "?",
                    "input": _sentences(rng, words, rng.choice([0, 0, 10, 30])),
                    "output": _sentences(rng, words, rng.randint(20, 200)),
                }
                if roll > 0.97:
                    row["output"] = rng.choice(JUNK)
                    planted["junk"] += 1
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            if len(recent) < 2000:
                recent.append((row, i + 1))
            elif rng.random() < 0.01:
                recent[rng.randrange(len(recent))] = (row, i + 1)
    return planted


def make_general_rows(path: Path, n: int, seed: int = 1) -> None:
    """A general-knowledge pool in OpenAI messages format."""
    words, _ = _vocab()
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            q = " ".join(rng.choices(words, k=rng.randint(6, 20))) + f" ({i})?"
            a = _sentences(rng, words, rng.randint(30, 150))
            fh.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                     + "\n")


def stage_configs(names: list[str], general: Path) -> list[tuple[str, dict]]:
    configs = {
        "quality": {},  # rules only: no fastText model configured
        "dedup": {"threshold": 0.8},
        "score": {"embeddings": False},
        "select": {"embeddings": "hashing"},
        "mix": {"general": [str(general)], "ratio": 0.15, "seed": 0},
    }
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise SystemExit(f"unknown stages {unknown}; choose from {', '.join(configs)}")
    return [(n, configs[n]) for n in names]


def _children_cpu() -> tuple[float, int]:
    """(CPU seconds, peak RSS KiB) of this process's children: reaped ones (RUSAGE_CHILDREN) plus the live
    ones (the worker pool, read from /proc: their time reaches RUSAGE_CHILDREN only once they end)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu, rss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    for d in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != me:
                continue
            cpu += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            status = (d / "status").read_text()
            rss = max(rss, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError, ValueError):
            continue
    return cpu, rss


def child(spec: dict) -> None:
    """The measured part, in its own process: curate, then report per-stage timings and peak RSS.

    CPU counts this process and its worker processes; peak RSS is this process's and the largest
    worker's (with workers, their sum bounds the whole run's).
    """
    from curation import pipeline
    from curation.workers import local_executor

    marks = []
    t0, c0 = time.perf_counter(), time.process_time()

    def on_stage(name: str, stats) -> None:
        kids_cpu, kids_rss = _children_cpu()
        marks.append({"stage": name, "wall": time.perf_counter() - t0, "cpu": time.process_time() - c0 + kids_cpu,
                      "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "worker_rss_kb": kids_rss})

    with local_executor(spec["workers"]) as executor:
        summary = pipeline.curate([spec["source"]], [tuple(s) for s in spec["stages"]], spec["run"],
                                  batch_size=spec["batch_size"], on_stage=on_stage, executor=executor)
    wall = time.perf_counter() - t0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pool has ended: all of it is here now
    cpu = time.process_time() - c0 + kids.ru_utime + kids.ru_stime
    worker_rss_kb = kids.ru_maxrss
    # the ledger, counted from the files themselves
    import pyarrow.parquet as pq

    run = Path(spec["run"])
    n_out = pq.ParquetFile(run / "output.parquet").metadata.num_rows
    n_ledger = pq.ParquetFile(run / "ledger.parquet").metadata.num_rows
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # the peer: the stage runner alone (read → records → a stage that keeps everything → write)
    from curation.runner import run_stage

    c1 = time.process_time()
    run_stage(_noop_stage(), run / "00_ingest" / "output.parquet", run / "noop", batch_size=spec["batch_size"])
    noop_cpu = time.process_time() - c1
    print(json.dumps({"summary": summary.model_dump(mode="json", include={"rows_in", "rows_added", "rows_out",
                                                                          "rows_dropped", "balanced", "stages"}),
                      "marks": marks, "wall": wall, "cpu": cpu, "n_out": n_out, "n_ledger": n_ledger,
                      "maxrss_kb": rss_kb, "worker_rss_kb": worker_rss_kb, "noop_cpu": noop_cpu,
                      "workers": spec["workers"]}))


def _noop_stage():
    from pydantic import BaseModel

    from curation.stage import Stage, StageOutput

    class NoOpConfig(BaseModel):
        pass

    class NoOp(Stage):
        name = "noop"
        Config = NoOpConfig

        def process(self, batch):
            return StageOutput(kept=batch)

    return NoOp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="task rows to generate")
    ap.add_argument("--stages", default=DEFAULT_STAGES, help="comma-separated stages, in order")
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--general-share", type=float, default=0.25, help="general pool size / task rows")
    ap.add_argument("--workers", default=str(len(os.sched_getaffinity(0))),
                    help="worker processes; a comma list (1,2) runs each on the same data and compares them")
    ap.add_argument("--work", help="folder for the data and the run (default: a temp folder, removed)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="sftflow-soak-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        source, general = work / "task.jsonl", work / "general.jsonl"
        t = time.perf_counter()
        planted = make_task_rows(source, args.rows)
        make_general_rows(general, max(1000, int(args.rows * args.general_share)))
        gen_s = time.perf_counter() - t
        print(f"input: {args.rows:,} task rows ({source.stat().st_size / 2**20:.0f} MiB JSON Lines; planted "
              f"{planted['exact']:,} exact copies, {planted['near']:,} near copies, {planted['junk']:,} junk), "
              f"general pool {general.stat().st_size / 2**20:.0f} MiB; generated in {gen_s:.0f} s")
        print(f"stages: ingest, {', '.join(names)}; batch size {args.batch_size}; "
              f"{len(os.sched_getaffinity(0))} CPU cores available")
        for workers in worker_counts:
            run = work / f"run-w{workers}"
            shutil.rmtree(run, ignore_errors=True)
            spec = {"source": str(source), "stages": stage_configs(names, general), "run": str(run),
                    "batch_size": args.batch_size, "workers": workers}
            load = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                raise SystemExit(f"curation failed:\n{proc.stderr[-4000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["load_before"], res["load_after"] = load, os.getloadavg()[0]
            results.append(res)
            print(f"\n{workers} worker{'s' if workers > 1 else ''} (load average {load:.1f} before, "
                  f"{res['load_after']:.1f} after):")
            report(res, args.rows)
        if len(results) > 1:
            same = all(_same_files(work / f"run-w{worker_counts[0]}", work / f"run-w{w}") for w in worker_counts[1:])
            compare(results, same)


def _same_files(a: Path, b: Path) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in ("output.parquet", "ledger.parquet"))


def compare(results: list[dict], same_bytes: bool) -> None:
    """Wall and CPU per stage for each worker count, with the wall speed-up over the first."""
    base = results[0]
    print(f"\n{'stage':<9}" + "".join(f" {'wall s w' + str(r['workers']):>10} {'cpu s w' + str(r['workers']):>10}"
                                       for r in results) + "".join(f" {'x w' + str(r['workers']):>7}"
                                                                  for r in results[1:]))

    def per_stage(res: dict) -> dict[str, tuple[float, float]]:
        out, pw, pc = {}, 0.0, 0.0
        for m in res["marks"]:
            out[m["stage"]] = (m["wall"] - pw, m["cpu"] - pc)
            pw, pc = m["wall"], m["cpu"]
        return out

    stages = [per_stage(r) for r in results]
    for name in stages[0]:
        cells = "".join(f" {st[name][0]:>10.1f} {st[name][1]:>10.1f}" for st in stages)
        ups = "".join(f" {stages[0][name][0] / max(st[name][0], 1e-9):>6.2f}x" for st in stages[1:])
        print(f"{name:<9}{cells}{ups}")
    cells = "".join(f" {r['wall']:>10.1f} {r['cpu']:>10.1f}" for r in results)
    ups = "".join(f" {base['wall'] / r['wall']:>6.2f}x" for r in results[1:])
    print(f"{'total':<9}{cells}{ups}")
    for r in results[1:]:
        speedup = base["wall"] / r["wall"]
        target = TARGET_SPEEDUP if base["workers"] == 1 and r["workers"] == 2 else None
        verdict = "" if target is None else f" (target >= {target}x: {'yes' if speedup >= target else 'NO'})"
        print(f"wall speed-up {base['workers']} → {r['workers']} workers: {speedup:.2f}x{verdict}")
    print(f"output and ledger byte-identical across worker counts: {'yes' if same_bytes else 'NO'}")
    if not same_bytes:
        raise SystemExit("the worker counts wrote different files")


def report(res: dict, n_rows: int) -> None:
    s = res["summary"]
    marks = {m["stage"]: m for m in res["marks"]}
    print(f"{'stage':<9} {'rows in':>10} {'added':>8} {'rows out':>10} {'dropped':>9} {'wall s':>8} {'cpu s':>8} "
          f"{'rows/s (cpu)':>13} {'peak RSS':>9}")
    prev_wall = prev_cpu = 0.0
    for st in s["stages"]:
        m = marks[st["stage"]]
        wall, cpu = m["wall"] - prev_wall, m["cpu"] - prev_cpu
        prev_wall, prev_cpu = m["wall"], m["cpu"]
        print(f"{st['stage']:<9} {st['rows_in']:>10,} {st['rows_added']:>8,} {st['rows_out']:>10,} "
              f"{sum(st['dropped_by_reason'].values()):>9,} {wall:>8.1f} {cpu:>8.1f} "
              f"{st['rows_in'] / max(cpu, 1e-9):>13,.0f} {m['maxrss_kb'] / 2**20:>8.2f}G")
    wall, cpu = res["wall"], res["cpu"]
    rss_gb = (res["maxrss_kb"] + (res["worker_rss_kb"] * res["workers"] if res["workers"] > 1 else 0)) / 2**20
    print(f"{'total':<9} {s['rows_in']:>10,} {s['rows_added']:>8,} {s['rows_out']:>10,} {s['rows_dropped']:>9,} "
          f"{wall:>8.1f} {cpu:>8.1f} {n_rows / max(cpu, 1e-9):>13,.0f} {res['maxrss_kb'] / 2**20:>8.2f}G")
    if res["workers"] > 1:
        print(f"  workers: {res['workers']} processes, the largest peaked at {res['worker_rss_kb'] / 2**20:.2f}G; "
              f"CPU includes theirs")
    n_ingested = s["stages"][0]["rows_out"]
    print(f"{'peer: runner alone':<9} {n_ingested:>10,} {0:>8,} {n_ingested:>10,} {0:>9,} {'':>8} "
          f"{res['noop_cpu']:>8.1f} {n_ingested / max(res['noop_cpu'], 1e-9):>13,.0f}")
    print("  (a stage that keeps every row: what the runner's read → records → write costs per stage)")
    balanced = s["rows_in"] + s["rows_added"] == res["n_out"] + res["n_ledger"]
    print()
    print(f"{'measure':<28} {'value':>14} {'target':>12}  ok")
    for label, value, target, ok in [
        ("rows/s, wall clock", f"{n_rows / wall:,.0f}", f">= {TARGET_ROWS_PER_S:,}", n_rows / wall >= TARGET_ROWS_PER_S),
        ("rows/s, per CPU second", f"{n_rows / cpu:,.0f}", f">= {TARGET_ROWS_PER_S:,}", n_rows / cpu >= TARGET_ROWS_PER_S),
        ("peak RSS (all processes)", f"{rss_gb:.2f} GB", f"<= {TARGET_RSS_GB:.0f} GB", rss_gb <= TARGET_RSS_GB),
        ("ledger balances (files)", f"{s['rows_in'] + s['rows_added']:,} = {res['n_out']:,} + {res['n_ledger']:,}",
         "equal", balanced),
    ]:
        print(f"{label:<28} {value:>14} {target:>12}  {'yes' if ok else 'NO'}")
    if not balanced or not s["balanced"]:
        raise SystemExit("the ledger does not balance")


if __name__ == "__main__":
    main()
