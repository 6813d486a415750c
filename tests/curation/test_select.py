"""Diversity-aware selection: near-copies go, the best of each group stays, selection beats random."""

from __future__ import annotations

import copy
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from curation.diversity import embed_texts, embedding_metrics, embedding_text, nearest_neighbour_similarity
from curation.errors import ConfigError
from curation.ingest import ingest
from curation.io import read_records, write_records
from curation.records import Record
from curation.runner import apply_stage, run_stage
from curation.select import SelectConfig, SelectStage

TOPICS = [
    "Explain how photosynthesis turns sunlight into chemical energy in plants",
    "Write a Python function that merges two sorted lists into one sorted list",
    "Give me five ideas for a rainy weekend with small children at home",
    "把下面这段话翻译成英文：今天天气很好，我们去公园散步吧",
    "Summarize the causes and consequences of the French Revolution",
]


def rec(rid: str, instruction: str, complexity: float, quality: float | None = None) -> Record:
    attrs = {"complexity": complexity, "task_type": "open_qa"}
    if quality is not None:
        attrs["quality"] = quality
    return Record(
        id=rid,
        messages=[{"role": "user", "content": instruction}, {"role": "assistant", "content": "ok"}],
        lang="zh" if "翻译" in instruction else "en",
        attrs=attrs,
    )


def groups() -> list[Record]:
    """Five topics, each with three near-copies (a suffix) of different complexity."""
    out = []
    for t, topic in enumerate(TOPICS):
        for v, (suffix, c) in enumerate([("", 0.3), (" please", 0.6), (" now", 0.45)]):
            out.append(rec(f"t{t}v{v}", topic + suffix, c))
    return out


def select(records: list[Record], **cfg) -> tuple[list[Record], list, dict]:
    cfg.setdefault("embeddings", "hashing")
    return apply_stage(SelectStage(SelectConfig(**cfg)), copy.deepcopy(records))


def test_score_first_keeps_the_best_of_each_near_copy_group() -> None:
    kept, dropped, stats = select(groups(), similarity_threshold=0.8)
    assert sorted(r.id for r in kept) == [f"t{t}v1" for t in range(5)]  # v1 has the highest complexity
    assert len(dropped) == 10 and {d.reason for d in dropped} == {"not_selected"}
    for d in dropped:
        topic = d.record.id[:2]
        assert d.duplicate_of == f"{topic}v1"
        assert "score 0." in d.detail and "similarity" in d.detail
    assert stats.extra["rows_selected"] == 5
    assert stats.rows_in == stats.rows_out + stats.rows_dropped


def test_quality_multiplies_the_ranking_score() -> None:
    rows = groups()
    for r in rows:
        if r.id.endswith("v0"):
            r.attrs["quality"] = 3.0  # 0.3 * 3 beats 0.6 * 1
    kept, _, _ = select(rows, similarity_threshold=0.8)
    assert sorted(r.id for r in kept) == [f"t{t}v0" for t in range(5)]
    assert all(r.attrs["selection_score"] == pytest.approx(0.9) for r in kept)


def test_budget_is_respected_and_cut_by_score() -> None:
    kept, dropped, stats = select(groups(), similarity_threshold=0.8, budget=3)
    assert len(kept) == 3
    assert all(r.id.endswith("v1") for r in kept)
    budget_drops = [d for d in dropped if d.duplicate_of is None]
    assert budget_drops and all("budget 3" in d.detail for d in budget_drops)
    assert stats.extra["budget_shortfall"] == 0


def test_unfillable_budget_is_reported_not_hidden() -> None:
    kept, _, stats = select(groups(), similarity_threshold=0.8, budget=10)
    assert len(kept) == 5
    assert stats.extra["budget_shortfall"] == 5
    assert "budget 10 not filled" in stats.extra["warning"]


def test_selection_is_deterministic_and_tie_breaks_by_input_order() -> None:
    rows = [rec(f"r{i}", TOPICS[0], 0.5) for i in range(4)]  # identical text and score
    a, _, _ = select(rows, similarity_threshold=0.95)
    b, _, _ = select(rows, similarity_threshold=0.95)
    assert [r.id for r in a] == [r.id for r in b] == ["r0"]


def test_kcenter_covers_every_topic_first() -> None:
    kept, _, _ = select(groups(), method="kcenter", budget=5, similarity_threshold=0.99)
    assert sorted(r.id[:2] for r in kept) == [f"t{t}" for t in range(5)]
    # the first centre is the best-ranked row
    kept_all, _, _ = select(groups(), method="kcenter", budget=1, similarity_threshold=0.99)
    assert [r.id for r in kept_all] == ["t0v1"]


def test_kcenter_stops_when_everything_is_covered() -> None:
    kept, _, _ = select(groups(), method="kcenter", similarity_threshold=0.8)
    assert len(kept) == 5


def test_run_stage_two_passes_and_ledger(tmp_path) -> None:
    write_records(tmp_path / "in.parquet", groups())
    stats = run_stage(
        SelectStage(SelectConfig(embeddings="hashing", similarity_threshold=0.8)),
        tmp_path / "in.parquet",
        tmp_path / "out",
        batch_size=4,
    )
    assert stats.rows_out == 5 and stats.dropped_by_reason == {"not_selected": 10}
    ledger = pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()
    assert len(ledger) == 10 and all(row["stage"] == "select" for row in ledger)
    out = pq.read_table(tmp_path / "out" / "output.parquet")
    assert "selection_score" in out.column_names
    div = stats.extra["diversity"]
    # the kept rows are the 5 distinct topics: less redundant than a random 5 of the 15
    assert div["after"]["mean_nn_similarity"] < div["before"]["mean_nn_similarity"]
    assert stats.extra["after"]["rows"] == 5 and sum(stats.extra["before"]["langs"].values()) == 15


def test_changed_input_between_passes_is_an_error() -> None:
    stage = SelectStage(SelectConfig(embeddings="hashing"))
    rows = groups()
    stage.fit(iter([rows]))
    with pytest.raises(RuntimeError, match="input changed"):
        stage.process(list(reversed(rows)))


def test_uses_embeddings_stored_by_the_score_stage() -> None:
    rows = groups()
    # store deliberately different vectors: every row orthogonal except two identical ones
    for i, r in enumerate(rows):
        v = np.zeros(256, dtype=np.float32)
        v[min(i, 1)] = 1.0
        r.attrs["embedding_hashing"] = v.tolist()
    kept, _, _ = select(rows, similarity_threshold=0.9)
    # rows 1..14 share one stored vector, so only the best of them survives next to row 0
    assert len(kept) == 2


def test_selection_is_more_diverse_than_random_on_real_data(shared_data, tmp_path) -> None:
    """self-instruct seed + user-oriented + a duplicated slice: selection must beat random of equal size."""
    src = shared_data / "self_instruct_seed"
    ingest([str(src)], tmp_path / "ing")
    records = read_records(tmp_path / "ing" / "output.parquet")
    rng = np.random.default_rng(0)
    # real data rarely repeats itself this much, but pipelines do: add near-copies of 100 rows
    extra = []
    for i in rng.choice(len(records), 100, replace=False):
        r = copy.deepcopy(records[i])
        r.id = f"{r.id}-copy"
        r.messages[0]["content"] = r.messages[0]["content"] + " Thanks!"
        extra.append(r)
    pool = records + extra
    budget = 200
    kept, _, _ = select(pool, budget=budget, similarity_threshold=0.85)
    emb = embed_texts([embedding_text(r) for r in pool], "hashing")
    index = {r.id: i for i, r in enumerate(pool)}
    sel = emb[[index[r.id] for r in kept]]
    random_nn = [
        float(nearest_neighbour_similarity(emb[rng.choice(len(pool), budget, replace=False)]).mean())
        for _ in range(5)
    ]
    assert len(kept) == budget
    assert nearest_neighbour_similarity(sel).mean() < np.mean(random_nn) - 0.02
    assert embedding_metrics(sel)["nn_redundancy"] < 0.01


# --- the diversity helpers the select stats are built on (curation/diversity.py) ----------------------


def test_verb_noun_roots_en_and_zh() -> None:
    from curation.diversity import verb_noun, verb_noun_stats

    assert verb_noun("Write a poem about the sea.", "en") == ("write", "poem")
    assert verb_noun("Give me three ideas for a birthday party.", "en") == ("give", "idea")
    # a question has no imperative root
    assert verb_noun("What is the capital of France?", "en") == (None, None)
    assert verb_noun("帮我写一封求职信", "zh") == ("写", "信")
    assert verb_noun("把下面这句话翻译成英文", "zh") == ("翻译", "英文")
    stats = verb_noun_stats([("write", "poem"), ("write", "poem"), ("give", "idea"), (None, None)])
    assert stats["distinct_verb_noun"] == 2 and stats["with_verb"] == 0.75
    assert stats["top_verb_noun"][0] == ("write poem", 2)


def test_distinct_n_and_entropy() -> None:
    from curation.diversity import distinct_n, entropy

    assert distinct_n(["a b c", "a b c"], 2) == 0.5
    assert distinct_n(["a b c", "d e f"], 2) == 1.0
    assert distinct_n(["你好世界", "你好世界"], 1) == 0.5  # CJK characters are tokens
    assert entropy({"x": 5, "y": 5})["bits"] == 1.0
    assert entropy({"x": 10})["bits"] == 0.0


def test_embedding_metrics_see_redundancy() -> None:
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(50, 32)).astype(np.float32)
    distinct /= np.linalg.norm(distinct, axis=1, keepdims=True)
    redundant = np.repeat(distinct[:10], 5, axis=0)
    a, b = embedding_metrics(distinct), embedding_metrics(redundant)
    assert a["nn_redundancy"] == 0.0 and b["nn_redundancy"] == 1.0
    assert a["mean_pairwise_distance"] > b["mean_pairwise_distance"] - 0.05
    assert a["mean_nn_similarity"] < b["mean_nn_similarity"]
    # blocked nearest-neighbour search agrees with the dense computation
    sims = distinct @ distinct.T
    np.fill_diagonal(sims, -np.inf)
    assert np.allclose(nearest_neighbour_similarity(distinct, block=7), sims.max(axis=1), atol=1e-6)


@pytest.mark.slow
def test_auto_embeddings_compare_chinese_only_with_chinese() -> None:
    """auto: MiniLM block for English, hashing block for Chinese; cross-language similarity is 0."""
    from curation.diversity import embed_records

    rows = [
        rec("en0", "Write a Python function that merges two sorted lists.", 0.6),
        rec("en1", "Write a Python function that merges two sorted lists please.", 0.5),
        rec("zh0", "把下面这段话翻译成英文：今天天气很好，我们去公园散步吧", 0.6),
        rec("zh1", "把下面这段话翻译成英文：今天天气很好，我们去公园散步吧。", 0.5),
    ]
    emb = embed_records(rows, "auto")
    assert emb.shape == (4, 384 + 256)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.allclose(emb[:2] @ emb[2:].T, 0.0)
    kept, dropped, _ = select(rows, embeddings="auto", similarity_threshold=0.9)
    assert sorted(r.id for r in kept) == ["en0", "zh0"]
    assert sorted(d.duplicate_of for d in dropped) == ["en0", "zh0"]


def test_diversity_report_on_a_redundant_and_a_varied_set() -> None:
    from curation.diversity import diversity_report

    varied = [rec(f"v{i}", t, 0.5) for i, t in enumerate(TOPICS)]
    redundant = [rec(f"r{i}", TOPICS[0] + " please" * (i % 2), 0.5) for i in range(5)]
    a, b = diversity_report(varied), diversity_report(redundant)
    assert a["rows"] == a["sampled_rows"] == 5 and a["task_types"] == {"open_qa": 5}
    assert a["distinct_2"] > b["distinct_2"]
    assert a["mean_nn_similarity"] < b["mean_nn_similarity"] and b["nn_redundancy"] == 1.0
    assert a["verb_noun"]["distinct_verbs"] > b["verb_noun"]["distinct_verbs"]


# --------------------------------------------------------------------------------------------------
# rank_by


def test_default_rank_by_is_quality_times_complexity() -> None:
    rows = groups()
    for i, r in enumerate(rows):
        r.attrs["quality"] = 0.5 + (i % 3) / 10
    kept_default, dropped_default, stats = select(rows, similarity_threshold=0.8)
    kept_explicit, dropped_explicit, _ = select(rows, similarity_threshold=0.8, rank_by=["quality", "complexity"])
    assert [(r.id, r.attrs["selection_score"]) for r in kept_default] == [
        (r.id, r.attrs["selection_score"]) for r in kept_explicit
    ]
    assert [d.detail for d in dropped_default] == [d.detail for d in dropped_explicit]
    assert all(r.attrs["selection_score"] == round(r.attrs["quality"] * r.attrs["complexity"], 6) for r in kept_default)
    assert stats.extra["rank_by"] == "quality x complexity"


def test_rank_by_any_score_column() -> None:
    rows = groups()
    for r in rows:  # a model score that prefers the plain variant (v0), unlike complexity (v1)
        r.attrs["ifd"] = {"0": 0.9, "1": 0.2, "2": 0.5}[r.id[-1]]
    kept, _, stats = select(rows, similarity_threshold=0.8, rank_by="ifd")
    assert sorted(r.id for r in kept) == [f"t{t}v0" for t in range(5)]
    assert all(r.attrs["selection_score"] == 0.9 for r in kept)
    assert stats.extra["rank_by"] == "ifd"


def test_rank_by_weighted_sum_and_negative_weight() -> None:
    rows = groups()
    for r in rows:
        r.attrs["ifd"] = {"0": 0.9, "1": 0.2, "2": 0.5}[r.id[-1]]
    # complexity 0.3/0.6/0.45 vs ifd 0.9/0.2/0.5: 0.5*c + 0.5*ifd = 0.6/0.4/0.475 -> v0
    kept, _, stats = select(rows, similarity_threshold=0.8, rank_by={"complexity": 0.5, "ifd": 0.5})
    assert sorted(r.id for r in kept) == [f"t{t}v0" for t in range(5)]
    assert kept[0].attrs["selection_score"] == pytest.approx(0.6)
    assert stats.extra["rank_by"] == "0.5 x complexity + 0.5 x ifd"
    kept, _, _ = select(rows, similarity_threshold=0.8, rank_by={"ifd": -1.0})  # lowest ifd first
    assert sorted(r.id for r in kept) == [f"t{t}v1" for t in range(5)]


def test_rows_without_a_score_rank_last_and_a_missing_column_is_an_error() -> None:
    rows = groups()
    for r in rows:
        r.attrs["ifd"] = None if r.id.endswith("v0") else 0.5
    kept, dropped, stats = select(rows, similarity_threshold=0.99, budget=10, rank_by="ifd")
    assert not any(r.id.endswith("v0") for r in kept)
    unscored = [d for d in dropped if d.record.id.endswith("v0")]
    assert unscored and all(d.detail.startswith("no score (ifd empty)") for d in unscored)
    assert stats.extra["rank_missing"] == 5
    with pytest.raises(ConfigError, match="no input row has a column 'judge'"):
        select(groups(), rank_by="judge")
    with pytest.raises(ConfigError, match="column 'task_type' is not numeric"):
        select(groups(), rank_by="task_type")
    with pytest.raises(ValidationError):
        SelectConfig(rank_by=[])


def with_ifd(values: dict[str, float | None]) -> list[Record]:
    """groups() with an ifd per variant (v0/v1/v2), and the two losses a real IFD scorer writes."""
    rows = groups()
    for r in rows:
        v = values[r.id[-1]]
        r.attrs["ifd"] = v
        if v is not None:
            r.attrs["ifd_loss_given_instruction"] = 2.0 + math.log(v)
            r.attrs["ifd_loss_answer_only"] = 2.0
    return rows


@pytest.mark.parametrize("method", ["score_first", "kcenter", "random"])
def test_misaligned_rows_are_dropped_whatever_the_method(method) -> None:
    rows = with_ifd({"0": 1.3, "1": 0.4, "2": 0.8})  # v0 answers do not follow from their instructions
    kept, dropped, stats = select(rows, method=method, similarity_threshold=0.99, budget=8, rank_by="ifd")
    assert len(kept) == 8 and not any(r.id.endswith("v0") for r in kept)
    mis = [d for d in dropped if d.reason == "misaligned"]
    assert sorted(d.record.id for d in mis) == [f"t{t}v0" for t in range(5)]
    assert mis[0].detail.startswith("ifd 1.300 >= 1: the instruction does not help predict the answer")
    assert "(answer loss 2.262 nats/token with the instruction, 2.000 without)" in mis[0].detail
    assert stats.extra["misaligned"] == 5
    assert stats.rows_in == stats.rows_out + stats.rows_dropped


def test_the_misaligned_threshold_is_configurable_and_can_be_off() -> None:
    rows = with_ifd({"0": 1.3, "1": 0.4, "2": 0.8})
    kept, _, stats = select(rows, similarity_threshold=0.99, rank_by="ifd", misaligned_ifd=None)
    assert stats.extra["misaligned"] == 0 and len(kept) == 15
    _, dropped, stats = select(rows, similarity_threshold=0.99, rank_by="ifd", misaligned_ifd=0.75)
    assert stats.extra["misaligned"] == 10 and {d.reason for d in dropped} == {"misaligned"}
    # rows without an ifd are never misaligned (and a run without the ifd scorer is unaffected)
    kept, _, stats = select(with_ifd({"0": None, "1": 0.4, "2": 0.8}), similarity_threshold=0.99)
    assert stats.extra["misaligned"] == 0 and len(kept) == 15
    kept, _, stats = select(groups(), similarity_threshold=0.99)
    assert stats.extra["misaligned"] == 0 and "ifd" not in stats.extra


def test_random_selection_is_seeded_and_ignores_rank_and_similarity() -> None:
    rows = groups()
    a, _, _ = select(rows, method="random", budget=6, similarity_threshold=0.5)
    b, dropped, stats = select(rows, method="random", budget=6, similarity_threshold=0.5)
    c, _, _ = select(rows, method="random", budget=6, similarity_threshold=0.5, seed=7)
    assert len(a) == 6 and [r.id for r in a] == [r.id for r in b] != [r.id for r in c]
    assert {d.reason for d in dropped} == {"not_selected"} and stats.extra["method"] == "random"
    everything, _, _ = select(rows, method="random", similarity_threshold=0.5)  # no budget: every row
    assert len(everything) == 15


def test_an_unscored_row_names_why_in_the_ledger() -> None:
    rows = with_ifd({"0": None, "1": 0.4, "2": 0.8})
    for r in rows:
        if r.id.endswith("v0"):
            r.attrs["ifd_note"] = "empty_answer: message 1 is an empty assistant turn"
    _, dropped, _ = select(rows, similarity_threshold=0.99, budget=10, rank_by="ifd")
    unscored = [d for d in dropped if d.record.id.endswith("v0")]
    assert len(unscored) == 5
    assert unscored[0].detail.startswith(
        "no score (ifd empty; ifd_note: empty_answer: message 1 is an empty assistant turn)"
    )


def test_ifd_figures_before_and_after_selection_with_examples() -> None:
    rows = with_ifd({"0": 1.3, "1": 0.4, "2": 0.05})
    rows[3].attrs.update(ifd=None, ifd_loss_given_instruction=None, ifd_loss_answer_only=None)
    _, _, stats = select(rows, similarity_threshold=0.99, budget=4, rank_by="ifd")
    f = stats.extra["ifd"]
    assert f["threshold"] == 1.0 and f["unscored"] == 1
    assert f["before"]["rows"] == 14 and sum(f["before"]["histogram"]) == 14
    assert f["after"]["rows"] == 4 and f["after"]["histogram"][4] == 4  # the four kept v1 rows: 0.4
    assert f["before"]["histogram"][13] == 4 and len(f["edges"]) == len(f["before"]["histogram"]) + 1
    assert [e["ifd"] for e in f["examples"]["misaligned"]] == [1.3, 1.3, 1.3]
    assert [e["ifd"] for e in f["examples"]["lowest"]] == [0.05, 0.05, 0.05]
    assert [e["ifd"] for e in f["examples"]["highest_kept"]] == [0.4, 0.4, 0.4]
    assert f["examples"]["lowest"][0]["instruction"] and f["examples"]["lowest"][0]["answer"] == "ok"
