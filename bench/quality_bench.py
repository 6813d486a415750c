"""Benchmark: quality filter accuracy on realistic mixed data, and speed at 100k rows.

    python bench/quality_bench.py                  # everything (~3-5 min on 2 cores)
    python bench/quality_bench.py --part accuracy  # or: speed
    python bench/quality_bench.py --rows 100000    # rows for the speed run

Data: clean rows of the shared instruction sets (dolly_hhrlhf, self_instruct seed, oasst1 zh, BELLE
eval + zh seed; ../shared/data or $SFTFLOW_DATA_DIR) and junk of every kind made from them by
``tests/curation/quality_junk.py`` (refusals, boilerplate, truncations, repetitions, empties, echoes,
mojibake, HTML spam, placeholders, language mismatches; half en, half zh).

The clean rows are split in two by content hash: the classifier trains on one half (+ junk made
from it, seed 1), every figure is measured on the other half (+ junk made from it, seed 2), so the
classifier never saw an evaluated row or the junk made from it.

Peers, measured in the same run:
- accuracy: a plain minimum-length filter (what most pipelines start with), at the length that
  drops the same share of clean rows as the default rules;
- speed: reading the same records from parquet (the floor any stage pays).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.io import iter_record_batches, write_records  # noqa: E402
from curation.quality import QualityConfig, QualityStage, RulesConfig  # noqa: E402
from curation.quality_model import QualityClassifier, train_classifier  # noqa: E402
from curation.records import Record  # noqa: E402
from curation.runner import apply_stage, run_stage  # noqa: E402
from tests.curation.quality_junk import JUNK_KINDS, load_clean_records, make_junk  # noqa: E402

DATA = Path(os.environ.get("SFTFLOW_DATA_DIR", REPO.parent / "shared" / "data"))


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    sys.stdout.flush()


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}%" if b else "-"


def split_clean(clean: list[Record]) -> tuple[list[Record], list[Record]]:
    train, test = [], []
    for r in clean:
        (train if hashlib.blake2b(r.id.encode(), digest_size=4).digest()[0] < 128 else test).append(r)
    return train, test


def train_demo_model(tmp: Path, train_clean: list[Record]) -> tuple[str, dict]:
    write_records(tmp / "pos.parquet", train_clean)
    # about as many negatives as positives: 10 kinds x 2 languages x per_kind
    per_kind = max(1, len(train_clean) // (2 * len(JUNK_KINDS)))
    write_records(tmp / "neg.parquet", make_junk(train_clean, per_kind=per_kind, seed=1))
    model = str(tmp / "quality.bin")
    metrics = train_classifier([str(tmp / "pos.parquet")], [str(tmp / "neg.parquet")], model)
    return model, metrics


def dropped_ids(config: QualityConfig, records: list[Record]) -> tuple[set[str], dict[str, str]]:
    _, dropped, _ = apply_stage(QualityStage(config), [Record(**_copy(r)) for r in records])
    return {d.record.id for d in dropped}, {d.record.id: d.reason for d in dropped}


def _copy(r: Record) -> dict:
    return {
        "id": r.id,
        "messages": r.messages,
        "text": r.text,
        "source": r.source,
        "lang": r.lang,
        "line": r.line,
        "meta": dict(r.meta),
        "attrs": {},
    }


# --------------------------------------------------------------------------------------------------
def part_accuracy(tmp: Path) -> str:
    clean = load_clean_records(DATA)
    train_clean, test_clean = split_clean(clean)
    junk = make_junk(test_clean, per_kind=100, seed=2)
    model, metrics = train_demo_model(tmp, train_clean)
    table(
        "classifier training (demo recipe: clean half vs junk made from it)",
        [
            "rows pos",
            "rows neg",
            "held out",
            "precision (hq)",
            "recall (hq)",
            "precision (lq)",
            "recall (lq)",
            "AUC",
            "train s",
        ],
        [
            [
                metrics["n_pos"],
                metrics["n_neg"],
                metrics["n_heldout"],
                metrics["precision"],
                metrics["recall"],
                metrics["precision_low"],
                metrics["recall_low"],
                metrics["auc"],
                metrics["train_seconds"],
            ]
        ],
    )

    records = test_clean + junk
    configs = {
        "rules (default)": QualityConfig(),
        "classifier only (p>=0.5)": QualityConfig(
            model=model, threshold=0.5, rules={k: {"enabled": False} for k in RulesConfig.model_fields}
        ),
        "rules + classifier (p>=0.5)": QualityConfig(model=model, threshold=0.5),
    }
    results = {name: dropped_ids(cfg, records) for name, cfg in configs.items()}
    clean_rate = len(results["rules (default)"][0] & {r.id for r in test_clean}) / len(test_clean)

    # peer: minimum answer length, set to drop the same share of clean rows as the default rules
    def ans_len(r: Record) -> int:
        return len((r.response() or "").strip())

    lengths = sorted(ans_len(r) for r in test_clean)
    min_len = lengths[min(len(lengths) - 1, int(clean_rate * len(lengths)))]
    results[f"peer: min length {min_len} chars"] = ({r.id for r in records if ans_len(r) < min_len}, {})

    junk_ids_by_kind = {k: {r.id for r in junk if r.meta["junk_kind"] == k} for k in JUNK_KINDS}
    rows = []
    for k in JUNK_KINDS:
        row = [k]
        for _name, (ids, _) in results.items():
            row.append(pct(len(ids & junk_ids_by_kind[k]), len(junk_ids_by_kind[k])))
        rows.append(row)
    all_junk = {r.id for r in junk}
    clean_ids = {r.id for r in test_clean}
    rows.append(["**all junk**"] + [pct(len(ids & all_junk), len(all_junk)) for ids, _ in results.values()])
    rows.append(
        ["**clean dropped**"] + [pct(len(ids & clean_ids), len(clean_ids)) for ids, _ in results.values()]
    )
    table(
        f"junk dropped per kind ({len(junk)} junk rows, half en half zh) and clean rows dropped "
        f"({len(test_clean)} clean rows)",
        ["junk kind", *results],
        rows,
    )

    for lang in ("en", "zh"):
        ids = results["rules (default)"][0]
        lj = [r for r in junk if r.lang == lang]
        lc = [r for r in test_clean if r.lang == lang]
        print(
            f"- default rules, {lang}: junk dropped {pct(sum(r.id in ids for r in lj), len(lj))}, "
            f"clean dropped {pct(sum(r.id in ids for r in lc), len(lc))}"
        )

    # false drops on the whole clean set (both halves): per rule and per source
    ids, reasons = dropped_ids(QualityConfig(), clean)
    by_rule = Counter(reasons.values())
    table(
        f"default rules: clean rows dropped per rule (all {len(clean)} clean rows)",
        ["rule", "clean rows dropped", "share"],
        [[k, v, pct(v, len(clean))] for k, v in by_rule.most_common()]
        + [["**total**", len(ids), pct(len(ids), len(clean))]],
    )
    per_src = Counter(r.source for r in clean)
    drop_src = Counter(r.source for r in clean if r.id in ids)
    table(
        "default rules: clean rows dropped per source",
        ["source", "rows", "dropped", "share"],
        [[s, n, drop_src[s], pct(drop_src[s], n)] for s, n in per_src.items()],
    )
    return model


def part_speed(tmp: Path, n_rows: int, model: str | None) -> None:
    clean = load_clean_records(DATA)
    base = clean + make_junk(clean, per_kind=100, seed=2)
    records = []
    i = 0
    while len(records) < n_rows:
        for r in base:
            if len(records) >= n_rows:
                break
            c = _copy(r)
            c["id"] = f"{r.id}#{i}"
            records.append(Record(**c))
        i += 1
    src = tmp / "speed.parquet"
    write_records(src, records)
    del records
    if model is None:
        train_clean, _ = split_clean(clean)
        model, _ = train_demo_model(tmp, train_clean)

    # wall time depends on what else runs on the machine; CPU time of this process does not
    rows = []

    def timed(fn) -> tuple[float, float]:
        w, c = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - w, time.process_time() - c

    def row(name: str, wall: float, cpu: float) -> list:
        return [name, n_rows, f"{wall:.1f}", f"{cpu:.1f}", f"{n_rows / wall:,.0f}", f"{n_rows / cpu:,.0f}"]

    wall, cpu = timed(lambda: [None for _ in iter_record_batches(src)])
    rows.append(row("peer: read parquet only", wall, cpu))
    runs = (
        ("rules (default)", QualityConfig()),
        ("rules + classifier", QualityConfig(model=model, threshold=0.5)),
        ("rules + classifier, top 80%", QualityConfig(model=model, top_percent=80)),
        ("rules + pii flags", QualityConfig(pii=True)),
    )
    for i, (name, cfg) in enumerate(runs):
        wall, cpu = timed(lambda cfg=cfg, i=i: run_stage(QualityStage(cfg), src, tmp / f"run{i}"))
        rows.append(row(name, wall, cpu))

    clf = QualityClassifier.load(model)
    batches = list(iter_record_batches(src))
    wall, cpu = timed(lambda: [clf.predict(b) for b in batches])
    rows.append(row("classifier predict only (in memory)", wall, cpu))
    table(
        f"speed at {n_rows:,} rows (parquet in -> output + ledger + stats out; load avg "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
        ["run", "rows", "wall s", "CPU s", "rows/s (wall)", "rows/s (CPU)"],
        rows,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["accuracy", "speed", "all"], default="all")
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    if not DATA.is_dir():
        sys.exit(f"shared data folder {DATA} not found (set SFTFLOW_DATA_DIR)")
    with tempfile.TemporaryDirectory(prefix="quality_bench_") as d:
        tmp = Path(d)
        model = None
        if args.part in ("accuracy", "all"):
            model = part_accuracy(tmp)
        if args.part in ("speed", "all"):
            part_speed(tmp, args.rows, model)


if __name__ == "__main__":
    main()
