"""Decontamination: recall on planted benchmark items vs false positives on clean rows, and speed.

Peer, in the same run: lm-evaluation-harness's ``Janitor`` (13-gram decontamination as in GPT-3 /
lm-eval: lower case, ``string.punctuation`` deleted, whitespace-split words, a row is contaminated when
any of its 13-grams is a benchmark 13-gram), fed the same benchmark texts.

    python bench/decontam_bench.py sweep            # recall / FP per setting (chooses n and thresholds)
    python bench/decontam_bench.py speed --rows 100000   # matching only; then the whole stage (parquet in/out)
    python bench/decontam_bench.py all

Data: the ``full`` eval suite's benchmarks (every item), clean instruction rows (dolly_hhrlhf_sample,
self_instruct_seed, oasst1_zh_sft, belle_zh) and, as harder clean text, questions of benchmarks that
are *not* in the suite (TriviaQA sample, AGIEval, BBH, MT-Bench, IFEval) from ``$SFTFLOW_DATA_DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import flows  # noqa: E402,F401  (registers the benchmark_documents service)
from curation.decontam import DecontamConfig, DecontamIndex  # noqa: E402
from curation.records import Record, detect_lang  # noqa: E402
from evals.benchmarks import benchmark_documents  # noqa: E402
from tests.curation.decontam_planted import HARD_VARIANTS, VARIANTS, plant  # noqa: E402
from tests.curation.quality_junk import load_clean_records  # noqa: E402

DATA = Path(os.environ.get("SFTFLOW_DATA_DIR", REPO.parent / "shared" / "data"))
#: benchmarks whose items are the same questions (a drop naming either is right)
SAME_ITEMS = {"truthfulqa_mc1": "truthfulqa", "truthfulqa_mc2": "truthfulqa"}


def other_benchmark_rows(data: Path) -> list[Record]:
    """Question-style clean text: benchmarks outside the suite, as user turns."""
    texts: list[tuple[str, str]] = []
    p = data / "triviaqa_sample" / "triviaqa_sm_sub.jsonl"
    if p.exists():
        for line in p.open(encoding="utf-8"):
            q = json.loads(line)["context"].removeprefix("Question: ").removesuffix("\nAnswer:")
            texts.append(("triviaqa", q))
    for f in sorted((data / "agieval").glob("*.jsonl")):
        for line in f.open(encoding="utf-8"):
            r = json.loads(line)
            texts.append(("agieval", "\n".join(x for x in (r.get("passage"), r.get("question")) if x)))
    for f in sorted((data / "bbh").glob("*.json")):
        for ex in json.loads(f.read_text(encoding="utf-8")).get("examples", []):
            texts.append(("bbh", ex["input"]))
    p = data / "mt_bench" / "question.jsonl"
    if p.exists():
        for line in p.open(encoding="utf-8"):
            texts.extend(("mt_bench", t) for t in json.loads(line)["turns"])
    p = data / "ifeval" / "input_data.jsonl"
    if p.exists():
        for line in p.open(encoding="utf-8"):
            texts.append(("ifeval", json.loads(line)["prompt"]))
    return [
        Record(id=f"{src}-{i}", messages=[{"role": "user", "content": t}], source=src, lang=detect_lang(t))
        for i, (src, t) in enumerate(texts)
    ]


def same(a: str, b: str) -> bool:
    return SAME_ITEMS.get(a, a) == SAME_ITEMS.get(b, b)


# ------------------------------------------------------------------------------------------------
# the peer


class JanitorPeer:
    """lm-eval's Janitor detection step, unchanged: normalise each whitespace 13-gram, look it up."""

    def __init__(self, texts: list[str], n: int = 13):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from lm_eval.decontamination.janitor import Janitor, word_ngrams_indices
        self.jan = Janitor(ngram_n=n)
        self.ngrams = word_ngrams_indices
        for t in texts:
            self.jan.register_contaminant_python(t)

    def contaminated(self, text: str) -> bool:
        norm = self.jan.normalize_string
        return any(norm(g) in self.jan.dirt_ngrams for g, _ in self.ngrams(text, self.jan.ngram_n))


# ------------------------------------------------------------------------------------------------
# sweep


def evaluate(match, planted: list[Record], clean: list[Record], other: list[Record]) -> dict:
    """``match(records) -> list of (benchmark or None)``: recall per variant / lang / benchmark, FP rates."""
    got = match(planted)
    per_variant: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_lang: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_bench: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    named = 0
    per_item: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r, b in zip(planted, got, strict=True):
        p = r.meta["planted"]
        hit = b is not None
        per_item[(p["benchmark"], p["item"])][0] += hit
        per_item[(p["benchmark"], p["item"])][1] += 1
        for d, k in ((per_variant, p["variant"]), (per_lang, p["lang"]), (per_bench, p["benchmark"])):
            d[k][0] += hit
            d[k][1] += 1
        named += hit and same(b, p["benchmark"])
    clean_hits = [(r, b) for r, b in zip(clean, match(clean), strict=True) if b is not None]
    other_hits = [(r, b) for r, b in zip(other, match(other), strict=True) if b is not None]
    n_hit = sum(v[0] for v in per_variant.values())
    return {
        "recall": n_hit / len(planted),
        "recall_n": n_hit,
        "items": len(per_item),
        "items_all_variants": sum(h == n for h, n in per_item.values()),
        "named": named / max(n_hit, 1),
        "per_variant": {k: v[0] / v[1] for k, v in per_variant.items()},
        "per_lang": {k: v[0] / v[1] for k, v in per_lang.items()},
        "per_benchmark": {k: v[0] / v[1] for k, v in sorted(per_bench.items())},
        "clean_fp": len(clean_hits) / len(clean),
        "clean_fp_n": len(clean_hits),
        "clean_fp_by_lang": dict(Counter(r.lang for r, _ in clean_hits)),
        "other_fp": len(other_hits) / max(len(other), 1),
        "other_fp_n": len(other_hits),
        "clean_examples": [(r.source, b, r.instruction()[:100]) for r, b in clean_hits[:40]],
        "other_examples": [(r.source, b, r.instruction()[:100]) for r, b in other_hits[:40]],
    }


def hard_recall(match, hard: list[Record]) -> dict[str, float]:
    got = match(hard)
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r, b in zip(hard, got, strict=True):
        per[r.meta["planted"]["variant"]][0] += b is not None
        per[r.meta["planted"]["variant"]][1] += 1
    return {k: v[0] / v[1] for k, v in per.items()}


def sweep(args) -> None:
    docs = list(benchmark_documents("full", str(DATA)))
    clean = load_clean_records(DATA)
    other = other_benchmark_rows(DATA)
    planted = plant(docs, clean, per_benchmark=args.per_benchmark, seed=args.seed)
    # the same items planted as the bare question (no choices), a harder case for stem-like questions
    bare = plant(docs, clean, per_benchmark=args.per_benchmark, seed=args.seed, prefer=(), variants=("embedded",))
    hard = plant(docs, clean, per_benchmark=args.per_benchmark, seed=args.seed, variants=HARD_VARIANTS)
    print(f"{len(docs)} benchmark texts; planted {len(planted)} rows ({args.per_benchmark} items x "
          f"{len(VARIANTS)} variants per benchmark); clean {len(clean)} "
          f"(en {sum(r.lang == 'en' for r in clean)}, zh {sum(r.lang == 'zh' for r in clean)}); "
          f"other-benchmark rows {len(other)}")
    default = DecontamConfig()
    base = dict(default.matching(), min_coverage=default.min_coverage)
    # one setting changed at a time around the default
    changes = [
        {}, {"ngram": 6, "min_words": 4}, {"ngram": 10}, {"ngram": 13, "min_words": 6},
        {"cjk_ngram": 10, "min_cjk_chars": 6}, {"cjk_ngram": 16}, {"cjk_ngram": 20, "min_cjk_chars": 10},
        {"min_coverage": 0.3}, {"min_coverage": 0.4}, {"min_coverage": 0.5}, {"min_coverage": 0.7},
        {"min_coverage": 0.9}, {"min_words": 4}, {"min_words": 6}, {"min_cjk_chars": 6},
        {"min_cjk_chars": 10}, {"template_items": 2}, {"template_items": 5}, {"template_items": 10},
        {"template_items": 1000},
    ]
    if args.quick:
        changes = [c for c in changes if set(c) <= set(args.quick.split(","))]
    grid = [{**base, **c} for c in changes]
    rows = []
    for g in grid:
        cfg = DecontamConfig(**g)
        t = time.perf_counter()
        index = DecontamIndex.build(iter(docs), cfg.matching())
        build_s = time.perf_counter() - t

        def match(recs, index=index, cov=cfg.min_coverage):
            out = []
            for i in range(0, len(recs), 2048):
                out += [m and m.benchmark for m in index.match([r.full_text() for r in recs[i : i + 2048]], cov)]
            return out

        res = evaluate(match, planted, clean, other)
        res["bare_question_recall"] = sum(b is not None for b in match(bare)) / len(bare)
        res["hard"] = hard_recall(match, hard)
        res["build_s"] = build_s
        res["setting"] = g
        rows.append(res)
        print(json.dumps({k: v for k, v in res.items() if not k.endswith("examples")}, ensure_ascii=False))
    t = time.perf_counter()
    peer = JanitorPeer([d.text for d in docs])
    build_s = time.perf_counter() - t

    def peer_match(recs):
        return ["?" if peer.contaminated(r.full_text()) else None for r in recs]

    res = evaluate(peer_match, planted, clean, other)
    res["bare_question_recall"] = sum(b is not None for b in peer_match(bare)) / len(bare)
    res["hard"] = hard_recall(peer_match, hard)
    res["build_s"] = build_s
    res["setting"] = "lm-eval Janitor 13-gram, any hit"
    res["named"] = None
    rows.append(res)
    print(json.dumps({k: v for k, v in res.items() if not k.endswith("examples")}, ensure_ascii=False))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    print_table(rows, len(planted), len(clean), len(other))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(k: int, n: int) -> str:
    """95% Clopper-Pearson interval of k/n."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return f"{100 * k / n:.1f}% [{100 * ci.low:.1f}%, {100 * ci.high:.1f}%] (n={n})"


def print_table(rows: list[dict], n_planted: int, n_clean: int, n_other: int) -> None:
    print(f"\n| setting | recall, {n_planted} planted | en | zh | bare question | punct as spaces | first 2/3 "
          f"| edited every 15th | clean rows dropped (of {n_clean}) | other-benchmark rows hit (of {n_other}) "
          "| index build s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    default = DecontamConfig()
    base = dict(default.matching(), min_coverage=default.min_coverage)
    for r in rows:
        st = r["setting"]
        if isinstance(st, dict):
            diff = {k: v for k, v in st.items() if base.get(k) != v}
            name = "default" if not diff else ", ".join(f"{k}={v}" for k, v in diff.items())
        else:
            name = st
        h = r["hard"]
        print(f"| {name} | {_pct(r['recall'])} | {_pct(r['per_lang']['en'])} | {_pct(r['per_lang']['zh'])} "
              f"| {_pct(r['bare_question_recall'])} | {_pct(h['punct_as_spaces'])} | {_pct(h['first_two_thirds'])} "
              f"| {_pct(h['edited_every_15'])} | {r['clean_fp_n']} ({_pct(r['clean_fp'])}) | {r['other_fp_n']} "
              f"| {r['build_s']:.1f} |")
    d, peer = rows[0], rows[-1]
    print(f"\nDefault: planted rows dropped {d['recall_n']}/{n_planted}; items dropped in all "
          f"{len(VARIANTS)} variants {_ci(d['items_all_variants'], d['items'])}; clean rows dropped "
          f"{_ci(d['clean_fp_n'], n_clean)}. Peer: items {_ci(peer['items_all_variants'], peer['items'])}; "
          f"clean {_ci(peer['clean_fp_n'], n_clean)}. Intervals: exact binomial, items as the unit (the six "
          "variants of one item are not independent).")


# ------------------------------------------------------------------------------------------------
# speed


def speed_rows(n: int) -> list[Record]:
    """``n`` clean instruction rows (the shared sets cycled; ids made unique)."""
    base = load_clean_records(DATA)
    return [
        Record(id=f"{r.id}-{i}", messages=r.messages, text=r.text, lang=r.lang, source=r.source)
        for i, r in zip(range(n), (base[i % len(base)] for i in range(n)), strict=False)
    ]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speed_one(method: str, n: int, batch: int) -> dict:
    rows = speed_rows(n)
    chars = sum(len(r.full_text()) for r in rows)
    rss_rows = _rss_mib()
    index_mib = None
    if method == "sftflow-runner":
        import tempfile

        from curation.decontam import DecontamStage
        from curation.io import write_records
        from curation.runner import run_stage

        with tempfile.TemporaryDirectory() as tmp:
            write_records(Path(tmp) / "in.parquet", rows)
            del rows
            stage = DecontamStage(DecontamConfig())
            t = time.perf_counter()
            stage.index()
            index_s, cache = time.perf_counter() - t, stage._index_report["cache"]
            t, c = time.perf_counter(), time.process_time()
            stats = run_stage(stage, Path(tmp) / "in.parquet", Path(tmp) / "out", batch_size=batch)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            dropped = stats.rows_dropped
    elif method == "sftflow":
        from curation.decontam import DecontamStage

        stage = DecontamStage(DecontamConfig())
        t = time.perf_counter()
        stage.index()
        index_s = time.perf_counter() - t
        cache = stage._index_report["cache"]
        idx = stage.index()
        index_mib = (idx.keys.nbytes + idx.docs_of_keys.nbytes + idx._filter.nbytes + idx._docs.nbytes) / 2**20
        t, c = time.perf_counter(), time.process_time()
        dropped = 0
        for i in range(0, n, batch):
            dropped += len(stage.process(rows[i : i + batch]).dropped)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    else:
        docs = [d.text for d in benchmark_documents("full", str(DATA))]
        t = time.perf_counter()
        peer = JanitorPeer(docs)
        index_s, cache = time.perf_counter() - t, "n/a"
        t, c = time.perf_counter(), time.process_time()
        dropped = sum(peer.contaminated(r.full_text()) for r in rows)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {
        "method": method, "rows": n, "mean_chars": round(chars / n), "index_s": round(index_s, 2),
        "index_cache": cache, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "rows_per_s": round(n / wall), "rows_per_cpu_s": round(n / cpu), "dropped": dropped,
        "rss_with_rows_mib": round(rss_rows), "peak_rss_mib": round(_rss_mib()),
        "index_mib": round(index_mib, 1) if index_mib else None,
    }


def speed(args) -> None:
    if args.method:
        print(json.dumps(speed_one(args.method, args.rows, args.batch)))
        return
    # each method in its own process, so peak RSS is its own
    # the first sftflow run may build the index (cache miss), the second loads it
    runs = [("sftflow", args.rows), ("sftflow", args.rows), ("sftflow-runner", args.rows), ("janitor", args.peer_rows)]
    for method, n in runs:
        cmd = [sys.executable, __file__, "speed", "--method", method, "--rows", str(n), "--batch", str(args.batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        print(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["sweep", "speed", "all"])
    ap.add_argument("--per-benchmark", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the sweep rows (json) here")
    ap.add_argument("--quick", default="", help="only vary these settings (comma-separated)")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--peer-rows", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--method", choices=["sftflow", "sftflow-runner", "janitor"], default=None)
    args = ap.parse_args()
    if args.what in ("sweep", "all"):
        sweep(args)
    if args.what in ("speed", "all"):
        speed(args)


if __name__ == "__main__":
    main()
