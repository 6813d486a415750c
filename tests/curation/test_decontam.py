"""Decontamination: planted benchmark items are dropped, clean rows are kept, drops name their benchmark,
the ledger balances, the index is cached by content, and missing benchmark files fail (or skip) loudly."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import flows  # noqa: F401  (registers the benchmark_documents service, as every entry point does)
from curation.decontam import (
    REASON,
    DecontamConfig,
    DecontamError,
    DecontamFigures,
    DecontamIndex,
    DecontamStage,
    match_units,
    units_of,
)
from curation.io import read_records, write_records
from curation.records import Record
from curation.runner import apply_stage, run_stage
from evals.benchmarks import benchmark_documents
from tests.curation.decontam_planted import VARIANTS, plant, strip_punctuation
from tests.curation.quality_junk import load_clean_records

# TruthfulQA MC1 and MC2 are the same questions: a drop naming either names the right benchmark
SAME = {"truthfulqa_mc2": "truthfulqa_mc1"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("sftflow_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SFTFLOW_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def full_stage(cache, shared_data):
    """The default stage (full suite, every item) over the shared benchmark copies."""
    stage = DecontamStage(DecontamConfig(data_dir=str(shared_data)))
    stage.index()
    return stage


@pytest.fixture(scope="module")
def planted(shared_data):
    docs = list(benchmark_documents("full", str(shared_data)))
    return plant(docs, load_clean_records(shared_data), per_benchmark=12, seed=7)


def rec(rid: str, *turns: str, text: str | None = None) -> Record:
    roles = ["user", "assistant"] * len(turns)
    msgs = [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)] if turns else None
    return Record(id=rid, messages=msgs, text=text, lang="en")


# ------------------------------------------------------------------------------------------------
# units


def test_units_survive_case_punctuation_and_whitespace():
    assert match_units("Which piece of SAFETY equipment?") == match_units("which  piece of safety\nequipment")
    assert match_units("Don't stop: 3.5-ish!") == ["dont", "stop", "35ish"]
    assert match_units("ＡＢＣ，中文。") == ["abc", "中", "文"]  # NFKC: full-width forms fold
    assert match_units("下列说法，正确的是") == list("下列说法正确的是")  # Chinese: one unit per character


def test_batch_units_equal_the_reference_definition():
    texts = [
        "Hello, World! Don't panic.",
        "",
        "e\u0301te\u0301 ﬁne Straße ＡＢＣ１２３ ①② 한국어 𝐀𝐁 ok",  # composing marks, ligatures, astral
        "中文abc，def。混合 text",
        "   ",
        "a" * 50,
    ]
    u = units_of(texts)
    for i, t in enumerate(texts):
        got = [u.span_text(k, k) for k in range(u.offsets[i], u.offsets[i + 1])]
        assert got == match_units(t), t
    # equal units hash equally, wherever they are
    a, b = units_of(["x Safety goggles"]), units_of(["SAFETY, goggles!"])
    assert a.hashes[1:].tolist() == b.hashes.tolist()


# ------------------------------------------------------------------------------------------------
# the planted set (issue #18's acceptance test)


def test_planted_benchmark_items_are_dropped_and_named(full_stage, planted):
    matches = full_stage.check(planted)
    hit = Counter()
    total = Counter()
    wrong_name = []
    for r, m in zip(planted, matches, strict=True):
        p = r.meta["planted"]
        for key in (p["variant"], p["lang"], "all"):
            total[key] += 1
            hit[key] += m is not None
        if m is not None and SAME.get(m.benchmark, m.benchmark) != SAME.get(p["benchmark"], p["benchmark"]):
            wrong_name.append((p, m.detail()))
    assert set(VARIANTS) <= set(total) and total["zh"] >= 12
    for key in (*VARIANTS, "en", "zh", "all"):
        assert hit[key] / total[key] >= 0.9, (key, hit[key], total[key])
    assert not wrong_name


def test_clean_instruction_rows_are_kept(full_stage, shared_data):
    clean = load_clean_records(shared_data)
    assert len(clean) > 2000
    dropped = [(r.instruction()[:60], m.detail()) for r, m in zip(clean, full_stage.check(clean), strict=True) if m]
    assert len(dropped) / len(clean) <= 0.01, dropped


def test_detail_names_benchmark_item_and_overlap(full_stage, shared_data):
    q = next(d for d in benchmark_documents("arc_easy", str(shared_data)) if d.field == "question")
    row = rec("r", f"Quick one from my homework. {q.text.upper()} Thanks!", "ok")
    (m,) = full_stage.check([row])
    assert (m.benchmark, m.item, m.field) == ("arc_easy", q.item, "question")
    detail = m.detail()
    assert detail.startswith(f"arc_easy item {q.item} question: ")
    assert "coverage" in detail or "whole text" in detail
    assert strip_punctuation(q.text).split()[1] in detail  # the matched span, normalised


# ------------------------------------------------------------------------------------------------
# matching rules on a small index


class Doc:
    def __init__(self, benchmark, item, field, text):
        self.benchmark, self.item, self.field, self.text = benchmark, item, field, text


def small_index(docs, **settings) -> DecontamIndex:
    cfg = DecontamConfig(**settings)
    return DecontamIndex.build(docs, cfg.matching())


def test_short_text_must_be_contained_whole():
    idx = small_index([Doc("tqa", "1", "question", "What happens if you crack your knuckles?")])
    cov = DecontamConfig().min_coverage
    rows = [
        "so, what happens if you crack your knuckles a lot",  # contained whole (7 words)
        "what happens if you crack your",  # part of it
        "knuckles crack if you what happens your",  # same words, other order
    ]
    got = idx.match(rows, cov)
    assert got[0] is not None and got[0].whole and got[0].total == 7
    assert got[1] is None and got[2] is None


def test_too_short_texts_are_counted_not_matched():
    idx = small_index([Doc("obqa", "1", "question", "Predators eat")])
    assert idx.meta["unmatchable"] == {"obqa": 1}
    assert idx.match(["predators eat bunnies"], 0.4) == [None]


def test_long_text_needs_min_coverage():
    words = [f"w{i}" for i in range(30)]  # 30 distinct words: 23 distinct 8-grams
    idx = small_index([Doc("b", "1", "passage", " ".join(words))])
    half = " ".join(words[:15])  # 8 of the 23 n-grams: 0.35
    most = " ".join(words[:22])  # 15 of 23: 0.65
    assert idx.match([half], 0.4) == [None]
    m = idx.match([most], 0.4)[0]
    assert m is not None and m.matched == 15 and m.total == 23
    assert idx.match([half], 0.3)[0] is not None


def test_template_wording_is_not_an_item():
    """A stem several items share ("Which of the following is true?") only matches with its choices."""
    docs = []
    for i in range(4):
        stem = "Which of the following is true?"
        choices = [f"alpha{i} beta{i} gamma{i}", f"delta{i} epsilon{i}", f"zeta{i} eta{i} theta{i}"]
        lettered = "\n".join(f"{'ABC'[j]}. {c}" for j, c in enumerate(choices))
        docs += [Doc("mmlu", str(i), "question", stem), Doc("mmlu", str(i), "question_choices", f"{stem}\n{lettered}")]
    idx = small_index(docs)
    assert idx.meta["template"] == {"mmlu": 4}
    assert idx.match(["Tell me which of the following is true: cats or dogs"], 0.4) == [None]
    m = idx.match(["Which of the following is true?\n(A) alpha2 beta2 gamma2 (B) delta2 epsilon2 (C) zeta2 eta2 theta2"], 0.4)[0]
    assert (m.item, m.field) == ("2", "question_choices")


def test_chinese_uses_character_ngrams():
    q = "在农业生产中被当作极其重要的劳动对象发挥作用，最主要的不可替代的基本生产资料是"
    idx = small_index([Doc("cmmlu", "0", "question", q)])
    assert bool(idx.cjk[0]) and idx.ngrams[0] == len(match_units(q)) - 13 + 1
    m = idx.match(["请回答：" + q.replace("，", " ") + "（单选）"], 0.4)[0]
    assert m is not None and m.coverage == 1.0 and "13-character" in m.detail()
    assert idx.match(["农业生产中最重要的生产资料是什么？"], 0.4) == [None]


# ------------------------------------------------------------------------------------------------
# the stage: ledger, stats, cache, errors


def tiny_benchmarks(root: Path) -> Path:
    """A data_dir with one small ARC-Easy file (written here: tests never copy shared data)."""
    (root / "arc").mkdir(parents=True)
    rows = [
        {"query": "Question: Which piece of safety equipment keeps mold spores out of the lungs?",
         "choices": ["goggles", "breathing mask", "gloves", "apron"], "gold": 1},
        {"query": "Question: Which gas do plants take in from the air to make their food?",
         "choices": ["oxygen", "nitrogen", "carbon dioxide", "helium"], "gold": 2},
    ]
    (root / "arc" / "arc_easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_stage_ledger_balances_and_stats_name_benchmarks(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    data = tiny_benchmarks(tmp_path / "data")
    rows = [rec(f"c{i}", f"Write a haiku about the number {i}.", "Leaves fall.") for i in range(40)]
    rows[5] = rec("bad1", "which gas do plants take in from the air to make their food", "CO2")
    rows[17] = rec("bad2", "hi", "Answer: Which piece of safety equipment keeps mold spores out of the lungs?")
    rows[30] = rec("bad3", text="Notes. Which piece of safety equipment keeps mold spores out of the lungs? A mask.")
    src = tmp_path / "in.parquet"
    write_records(src, rows)
    stage = DecontamStage(DecontamConfig(suite="arc_easy", data_dir=str(data)))
    stats = run_stage(stage, src, tmp_path / "out", batch_size=16)
    assert (stats.rows_in, stats.rows_out, stats.rows_dropped) == (40, 37, 3)
    assert stats.dropped_by_reason == {REASON: 3}
    led = pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()
    assert sorted(r["id"] for r in led) == ["bad1", "bad2", "bad3"]
    assert all(r["stage"] == "decontam" and r["detail"].startswith("arc_easy item ") for r in led)
    kept = {r.id for r in read_records(tmp_path / "out" / "output.parquet")}
    assert kept | {r["id"] for r in led} == {r.id for r in rows}
    fig = stats.figures(DecontamFigures)
    assert fig.removed_per_benchmark == {"arc_easy": 3}
    assert fig.index.benchmarks == ["arc_easy"] and fig.index.cache == ["miss"]
    assert {e["id"] for e in fig.examples["arc_easy"]} == {"bad1", "bad2", "bad3"}
    assert all(e["span"] for e in fig.examples["arc_easy"])
    on_disk = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert on_disk["extra"]["removed_per_benchmark"] == {"arc_easy": 3}


def test_sharded_run_equals_serial_run(tmp_path, monkeypatch):
    """A per-row stage: shards concatenated in order are the serial output, and the figures merge."""
    from curation.runner import ShardedExecutor

    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    data = tiny_benchmarks(tmp_path / "data")
    rows = [rec(f"c{i}", f"Tell me about the number {i}.", "ok") for i in range(30)]
    for i in (3, 12, 25):
        rows[i] = rec(f"bad{i}", "Which gas do plants take in from the air to make their food?", "CO2")
    src = tmp_path / "in.parquet"
    write_records(src, rows)
    cfg = DecontamConfig(suite="arc_easy", data_dir=str(data))
    serial = run_stage(DecontamStage(cfg), src, tmp_path / "serial", batch_size=8)
    sharded = run_stage(DecontamStage(cfg), src, tmp_path / "sharded", batch_size=8, executor=ShardedExecutor(3))
    assert sharded.shards == 3
    for name in ("output.parquet", "ledger.parquet"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "sharded" / name).read_bytes()
    a, b = serial.figures(DecontamFigures), sharded.figures(DecontamFigures)
    assert a.removed_per_benchmark == b.removed_per_benchmark == {"arc_easy": 3}
    assert len(b.index.cache) == 3 and b.index.key == a.index.key


def test_index_cache_hit_miss_and_content_key(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    data = tiny_benchmarks(tmp_path / "data")
    cfg = DecontamConfig(suite="arc_easy", data_dir=str(data))
    first = DecontamStage(cfg)
    first.index()
    assert first._index_report["cache"] == "miss"
    folder = Path(first._index_report["path"])
    # numpy arrays (no pickle), parquet and json only; no temp folder left behind
    assert sorted(p.name for p in folder.iterdir()) == ["docs.parquet", "docs_of_keys.npy", "index.json", "keys.npy"]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    np.load(folder / "keys.npy", allow_pickle=False)
    again = DecontamStage(cfg)
    again.index()
    assert again._index_report["cache"] == "hit" and again.key() == first.key()
    assert again.fingerprint() == first.fingerprint()
    row = [rec("x", "which gas do plants take in from the air to make their food?", "co2")]
    assert again.check(row)[0] is not None
    # other settings, or other benchmark bytes: another index (and another stage fingerprint)
    assert DecontamStage(DecontamConfig(suite="arc_easy", data_dir=str(data), ngram=6)).key() != first.key()
    moved = tmp_path / "moved"
    (data).rename(moved)
    assert DecontamStage(DecontamConfig(suite="arc_easy", data_dir=str(moved))).key() == first.key()
    f = moved / "arc" / "arc_easy.jsonl"
    f.write_text(f.read_text().replace("plants", "trees"))
    changed = DecontamStage(DecontamConfig(suite="arc_easy", data_dir=str(moved)))
    assert changed.key() != first.key() and changed.fingerprint() != first.fingerprint()
    changed.index()
    assert changed._index_report["cache"] == "miss"
    assert changed.check(row)[0] is None
    # cache off: built, never written
    off = DecontamStage(DecontamConfig(suite="arc_easy", data_dir=str(moved), cache=False, ngram=7))
    off.index()
    assert off._index_report["path"] is None and not (tmp_path / "cache" / "decontam" / off.key()).exists()


def test_missing_benchmark_file_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    stage = DecontamStage(DecontamConfig(suite="general_probe,cmmlu", data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(DecontamError) as e:
        apply_stage(stage, [rec("a", "hello there", "hi")])
    msg = str(e.value)
    assert msg.startswith("decontam: ") and str(tmp_path / "nowhere" / "cmmlu" / "test") in msg
    assert "skip_missing" in msg and "\n" not in msg


def test_hub_benchmark_unreachable_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    stage = DecontamStage(DecontamConfig(suite="arc_easy", data_dir=str(tmp_path)))
    with pytest.raises(DecontamError) as e:
        stage.index()
    msg = str(e.value)
    assert "arc_easy" in msg and str(tmp_path / "arc" / "arc_easy.jsonl") in msg and "\n" not in msg


def test_skip_missing_is_reported_and_nothing_is_lost(tmp_path, monkeypatch):
    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tiny_benchmarks(tmp_path / "data")
    cfg = DecontamConfig(suite="arc_easy,cmmlu,arc_challenge", data_dir=str(data), skip_missing=True)
    rows = [rec("a", "Which gas do plants take in from the air to make their food?", "CO2"), rec("b", "hi", "yo")]
    kept, dropped, stats = apply_stage(DecontamStage(cfg), rows)
    assert [r.id for r in kept] == ["b"] and [d.record.id for d in dropped] == ["a"]
    index = stats.figures(DecontamFigures).index
    assert set(index.skipped) == {"cmmlu", "arc_challenge"}  # cmmlu: no file; arc_challenge: hub offline
    assert index.benchmarks == ["arc_easy"]
    # an index missing a benchmark that only failed while reading (the hub) is not cached under the full key
    assert index.path is None


def test_stage_on_real_planted_rows_through_the_runner(full_stage, planted, shared_data, tmp_path):
    clean = load_clean_records(shared_data)
    rows = random.Random(1).sample(clean, 300) + planted[:120]
    src = tmp_path / "mixed.parquet"
    write_records(src, rows)
    stats = run_stage(full_stage, src, tmp_path / "out", batch_size=64)
    assert stats.rows_in == stats.rows_out + stats.rows_dropped == 420
    led = pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()
    planted_ids = {r.id for r in planted[:120]}
    assert sum(r["id"] in planted_ids for r in led) >= 0.9 * 120
    assert sum(r["id"] not in planted_ids for r in led) <= 3


# ------------------------------------------------------------------------------------------------
# the mixer's general pool


def test_mix_general_pool_is_decontaminated(tmp_path, monkeypatch):
    from curation.mix import MixConfig, MixStage

    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    data = tiny_benchmarks(tmp_path / "data")
    pool = tmp_path / "general.jsonl"
    lines = [{"instruction": f"Name a colour, number {i}.", "output": "Blue."} for i in range(20)]
    lines[4] = {"instruction": "Which gas do plants take in from the air to make their food?", "output": "CO2"}
    lines[9] = {"instruction": "Quiz", "input": "which piece of safety equipment keeps mold spores out of the lungs",
                "output": "mask"}
    pool.write_text("".join(json.dumps(x) + "\n" for x in lines))
    task = [rec(f"t{i}", f"Task question {i}?", "Answer.") for i in range(18)]
    dc = DecontamConfig(suite="arc_easy", data_dir=str(data))
    # ratio 0.5 of 18 task rows asks for 18 general rows: exactly the clean part of the pool
    stage = MixStage(MixConfig(general=[str(pool)], ratio=0.5, decontam=dc))
    kept, _, stats = apply_stage(stage, task)
    general = [r for r in kept if r.attrs["mix_source"] == "general"]
    assert len(general) == 18
    assert not any("plants" in r.full_text() or "mold" in r.full_text() for r in general)
    report = stats.extra["pool_decontam"]
    assert report["removed"] == 2 and report["removed_per_benchmark"] == {"arc_easy": 2}
    assert stats.extra["pool_bad_rows"] == {str(pool): {"contaminated": 2}}
    # without decontamination the two rows are in the pool (and can be replayed)
    plain = MixStage(MixConfig(general=[str(pool)], ratio=0.5, strict=False))
    kept, _, _ = apply_stage(plain, task)
    assert sum(r.attrs["mix_source"] == "general" for r in kept) == 18
    assert MixStage(MixConfig(general=[str(pool)], decontam=dc)).fingerprint() != plain.fingerprint()


# ------------------------------------------------------------------------------------------------
# the verdict's contamination block


def test_contamination_block_says_what_was_not_checked():
    from curation.decontam import IndexFigures, contamination_block

    fig = DecontamFigures(suite="full", index=IndexFigures(key="k", benchmarks=["arc_easy", "piqa"],
                                                           skipped={"cmmlu": "task cmmlu: file x not found"}),
                          removed_per_benchmark={"arc_easy": 3})
    ok = contamination_block(fig, ["arc_easy", "piqa"])
    assert ok["decontaminated"] and ok["covers_eval"] and ok["warning"] is None and ok["rows_removed"] == 3
    partial = contamination_block(fig.model_dump(), ["arc_easy", "piqa", "cmmlu"])
    assert not partial["covers_eval"] and partial["eval_tasks_not_checked"] == ["cmmlu"]
    assert "not checked against cmmlu" in partial["warning"] and "file x not found" in partial["warning"]
    none = contamination_block(None, ["arc_easy"])
    assert not none["decontaminated"] and not none["covers_eval"] and "decontam" in none["warning"]
    pool = {"benchmarks": ["arc_easy", "piqa"], "removed": 2, "removed_per_benchmark": {"piqa": 2}}
    assert contamination_block(fig, ["arc_easy"], pool=pool, general_rows=10)["general_pool"]["rows_removed"] == 2
    unchecked_pool = contamination_block(fig, ["arc_easy"], general_rows=10)
    assert not unchecked_pool["covers_eval"] and "10 general rows" in unchecked_pool["warning"]
