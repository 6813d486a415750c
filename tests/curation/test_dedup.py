"""Dedup stage: datasketch-identical signatures, exact/near clusters, deterministic keeper, ledger,
persistent folder and Redis indexes, CJK."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash

from curation.dedup import DedupConfig, DedupFigures, DedupStage
from curation.dedup_index import IndexMismatchError
from curation.io import write_records
from curation.minhash import (
    SignatureBuilder,
    clean_for_shingles,
    jit_available,
    permutations,
    poly64_hash32,
    remove_punctuation,
    shingle_text,
    shingles,
    uses_char_shingles,
)
from curation.records import Record, normalize_text
from curation.runner import apply_stage, run_stage

WORDS = (
    "river stone cloud garden signal paper window market engine silver forest planet coffee ladder "
    "mirror basket candle harbor pencil rocket violin winter summer yellow orange purple bridge castle "
    "dragon island jacket kitten lemon monkey needle ocean parrot quartz rabbit saddle tiger umbrella "
    "valley wagon yogurt zebra anchor bottle carpet desert eagle falcon glacier hammer igloo jungle"
).split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def chat(id_: str, user: str, answer: str, source: str = "s", **attrs) -> Record:
    return Record(
        id=id_,
        messages=[{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        source=source,
        attrs=dict(attrs),
    )


def edit(text: str, rng: random.Random, n_edits: int = 1) -> str:
    words = text.split()
    for _ in range(n_edits):
        i = rng.randrange(1, len(words) - 1)
        words[i] = words[i][::-1]  # a "typo" that changes one word
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus() -> list[Record]:
    """40 distinct rows + exact copies (case/space changes) + near copies (one word changed)."""
    rng = random.Random(7)
    base = [chat(f"b{i:02d}", sentence(rng, 12), sentence(rng, 100), source="base") for i in range(40)]
    extra = []
    for i in range(0, 40, 4):
        r = base[i]
        user, ans = r.messages[0]["content"], r.messages[1]["content"]
        extra.append(chat(f"e{i:02d}", "  " + user.upper(), ans.replace(" ", "  "), source="copies"))
        extra.append(chat(f"n{i:02d}", user, edit(ans, rng, 1) + " more", source="copies"))
    return base + extra


# --------------------------------------------------------------------------------------------------
# signatures


TEXTS = [
    "Hello,   world! This is a test... of the thing.",
    "a",
    "two words",
    "Ünïcode ｆｕｌｌ width — dash “quotes” end.",
    "中文的句子，测试一下去重。还有 English words 混合",
    "日本語のテキストも少しあります。",
    "emoji 🙂 and astral 𝒳 characters!",
    "x" * 40,
    "end.start,middle;semi",
]


BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not jit_available(), reason="no numba"))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shingle_hash", ["sha1", "poly64"])
@pytest.mark.parametrize(("num_perm", "seed", "ngram", "cjk_ngram"), [(128, 1, 5, 3), (64, 42, 2, 2)])
def test_signatures_bit_identical_to_datasketch(backend, shingle_hash, num_perm, seed, ngram, cjk_ngram):
    rng = random.Random(seed)
    texts = TEXTS + [sentence(rng, rng.randrange(1, 120)) for _ in range(30)]
    normalized = [normalize_text(t) for t in texts]
    builder = SignatureBuilder(
        num_perm, seed, ngram, cjk_ngram, shingle_hash=shingle_hash, chunk_rows=64, backend=backend
    )
    sigs, sh = builder.signatures(normalized)
    hashed_sigs, _ = builder.signatures(normalized, keep_hashes=True)
    np.testing.assert_array_equal(sigs, hashed_sigs)
    for i, (text, sig) in enumerate(zip(normalized, sigs, strict=True)):
        # sha1: datasketch's default hashfunc (sha1_hash32); poly64: the same function fed to datasketch
        m = MinHash(
            num_perm=num_perm, seed=seed, hashfunc=poly64_hash32 if shingle_hash == "poly64" else None
        )
        reference_shingles = shingles(clean_for_shingles(text), ngram, cjk_ngram)
        assert sh.offsets[i + 1] - sh.offsets[i] == len(reference_shingles)
        for s in reference_shingles:
            m.update(s.encode("utf-8"))
        assert m.hashvalues.dtype == np.uint32
        np.testing.assert_array_equal(sig, m.hashvalues, err_msg=text)


def test_permutations_are_datasketchs():
    a, b = permutations(128, 5)
    ref = MinHash(num_perm=128, seed=5).permutations
    np.testing.assert_array_equal(a, ref[0])
    np.testing.assert_array_equal(b, ref[1])


def test_remove_punctuation_equals_normalize_text_option():
    rng = random.Random(9)
    alphabet = list("ab cd,.!?;:-—…“”«»「」。，、\t\n ") + ["\U00010100", "\U0001f642", "Ａ", "ﬁ", "İ"]
    texts = TEXTS + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) for _ in range(300)]
    for t in texts:
        assert remove_punctuation(normalize_text(t)) == normalize_text(t, punctuation=True), repr(t)


def test_shingling_rules():
    assert shingle_text("Hello,World!  Foo-bar") == "hello world foo bar"
    assert shingles("a b c d", 3) == ["a b c", "b c d"]
    assert shingles("a b", 3) == ["a b"]  # shorter than n: one shingle
    assert uses_char_shingles(shingle_text("今天天气很好 but a little English"))
    assert not uses_char_shingles("plain english text")
    assert shingles("今天天气", 5, 2) == ["今天", "天天", "天气"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_record_is_capped_consistently(backend):
    rng = random.Random(3)
    huge = " ".join(rng.choice(WORDS) + str(i) for i in range(5000))
    builder = SignatureBuilder(64, 1, 3, 3, max_shingles=500, backend=backend)
    sigs, sh = builder.signatures([huge, huge + " tail"])
    assert sh.capped.all() and (np.diff(sh.offsets) == 500).all()
    assert (sigs[0] == sigs[1]).mean() > 0.9


# --------------------------------------------------------------------------------------------------
# the stage


def run(records, batch_size=16, **cfg):
    stage = DedupStage(DedupConfig(**cfg))
    kept, dropped, stats = apply_stage(stage, records, batch_size=batch_size)
    return kept, dropped, stats


def test_exact_and_near_duplicates_are_dropped_with_reasons(corpus):
    kept, dropped, stats = run(corpus)
    by_id = {d.record.id: d for d in dropped}
    assert len(kept) == 40 and len(dropped) == 20
    # the exact copy has doubled spaces, so the longest response: it wins its cluster of three
    for i in range(0, 40, 4):
        exact, near = by_id[f"b{i:02d}"], by_id[f"n{i:02d}"]
        assert (exact.reason, exact.duplicate_of) == ("exact_duplicate", f"e{i:02d}")
        assert (near.reason, near.duplicate_of) == ("near_duplicate", f"e{i:02d}")
        j = float(near.detail.split("estimated_jaccard=")[1].split(";")[0])
        assert 0.7 < j < 1.0
    kept_ids = {r.id for r in kept}
    assert all(d.duplicate_of in kept_ids for d in dropped)
    assert stats.dropped_by_reason == {"exact_duplicate": 10, "near_duplicate": 10}
    assert all(r.attrs["dedup_cluster_size"] >= 1 for r in kept)


def test_keeper_is_best_quality_then_longest_then_smallest_id():
    text = "the quick brown fox jumps over the lazy dog near the river bank today"
    rows = [
        chat("c", text, "short"),
        chat("b", text, "a much longer answer here"),
        chat("a", text, "short"),
    ]
    kept, dropped, _ = run(rows, field="instruction")
    assert [r.id for r in kept] == ["b"]  # longest response
    kept, _, _ = run([chat("c", text, "x"), chat("a", text, "x")], field="instruction")
    assert [r.id for r in kept] == ["a"]  # tie -> smallest id
    rows = [chat("z", text, "tiny", quality=0.9), chat("y", text, "a much longer answer here", quality=0.2)]
    kept, dropped, _ = run(rows, field="instruction")
    assert [r.id for r in kept] == ["z"] and dropped[0].duplicate_of == "z"  # quality beats length


def test_same_result_whatever_order_or_batch_size(corpus):
    kept, dropped, _ = run(corpus, batch_size=7)
    ref = ({r.id for r in kept}, {d.record.id: (d.reason, d.duplicate_of) for d in dropped})
    rng = random.Random(1)
    for batch_size in (1, 5, 64, 1000):
        shuffled = corpus[:]
        rng.shuffle(shuffled)
        kept, dropped, _ = run(shuffled, batch_size=batch_size)
        got = ({r.id for r in kept}, {d.record.id: (d.reason, d.duplicate_of) for d in dropped})
        assert got == ref, batch_size


def test_distinct_rows_are_not_merged():
    rng = random.Random(11)
    rows = [chat(f"r{i}", sentence(rng, 10), sentence(rng, 40)) for i in range(200)]
    kept, dropped, stats = run(rows, batch_size=50)
    assert len(kept) == 200, [(d.record.id, d.detail) for d in dropped]


def test_bad_rows_get_ledger_reasons_not_crashes():
    rows = [
        Record(id="blank", text="   \n\t "),
        Record(id="none", text=None),
        Record(id="punct", text="?!... ;;"),
        chat("ok", "what is a river", "a river is water that flows"),
        Record(id="bad", messages=[{"role": "user", "content": None}], source="x"),
    ]
    kept, dropped, _ = run(rows)
    reasons = {d.record.id: d.reason for d in dropped}
    assert reasons == {"blank": "empty_text", "none": "empty_text", "bad": "not_text"}
    # punctuation-only text has no shingles but still takes part in exact dedup
    assert {r.id for r in kept} == {"punct", "ok"}
    kept, dropped, _ = run([Record(id="p1", text="?!"), Record(id="p2", text="?!")])
    assert [d.reason for d in dropped] == ["exact_duplicate"]


def test_field_choice_and_punctuation_option():
    rows = [
        chat("a", "Name three rivers.", "Nile, Amazon, Yangtze."),
        chat("b", "name three rivers", "Rhine"),
    ]
    kept, _, _ = run(rows, field="instruction", near=False)
    assert len(kept) == 2  # punctuation differs: not an exact duplicate by default
    kept, dropped, _ = run(rows, field="instruction", near=False, punctuation_insensitive=True)
    assert [d.reason for d in dropped] == ["exact_duplicate"] and dropped[0].duplicate_of == "a"
    kept, _, _ = run(rows, field="all", punctuation_insensitive=True)
    assert len(kept) == 2


def test_chinese_near_duplicates():
    a = "请介绍一下中国的四大发明，包括造纸术、印刷术、火药和指南针，并说明它们对世界文明的影响。"
    b = "请介绍一下中国的四大发明，包括造纸术、印刷术、火药与指南针，并说明它们对世界文明的影响"
    c = "给出下面词语的同义词，并且为每一个同义词写一个例句，说明它和原词在用法上的区别。"
    d = "根据自然语言描述，生成可以在数据库表执行的SQL语句，查询平均工资高于整体平均水平的部门。"
    rows = [Record(id=k, text=t, lang="zh") for k, t in zip("abcd", (a, b, c, d), strict=True)]
    kept, dropped, stats = run(rows, cjk_ngram=2)
    assert [(x.record.id, x.reason, x.duplicate_of) for x in dropped] == [("b", "near_duplicate", "a")]
    assert stats.extra["char_shingled_records"] == 4


def test_verify_jaccard_and_stats(corpus):
    kept, dropped, stats = run(corpus, verify_jaccard=True)
    assert len(kept) == 40
    fig = stats.figures(DedupFigures)  # the typed view of stats.json's extra
    assert fig.lsh.bands * fig.lsh.rows <= 128
    curve = dict(fig.lsh.s_curve)
    assert curve[0.5] < curve[0.8] < curve[0.95]
    assert stats.extra["lsh"]["p_candidate_at_threshold_minus_0.1"] == fig.lsh.p_candidate_below
    for source, n_rows in (("base", 40), ("copies", 20)):
        n_dropped = sum(d.record.source == source for d in dropped)
        assert fig.per_source[source].rows == n_rows
        assert fig.per_source[source].duplicate_rate == round(n_dropped / n_rows, 4)
    top = fig.largest_clusters
    assert top[0].size == 3 and sum(m.kept for m in top[0].members) == 1
    assert fig.pairs.verified <= fig.pairs.candidates


def test_run_stage_writes_ledger(tmp_path, corpus):
    src = tmp_path / "in.parquet"
    write_records(src, corpus)
    stats = run_stage(DedupStage(DedupConfig()), src, tmp_path / "out", batch_size=9)
    ledger = pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()
    out = pq.read_table(tmp_path / "out" / "output.parquet")
    assert stats.rows_in == 60 and out.num_rows == 40 and len(ledger) == 20
    assert {r["reason"] for r in ledger} == {"exact_duplicate", "near_duplicate"}
    assert set(r["duplicate_of"] for r in ledger) <= set(out.column("id").to_pylist())
    assert "dedup_cluster_size" in out.column_names
    json.dumps(stats.to_json())  # stats.json-serialisable


# --------------------------------------------------------------------------------------------------
# persistent indexes


def _incremental_check(index: str, corpus: list[Record]) -> None:
    first = corpus[:20]
    kept1, dropped1, _ = run(first, index=index)
    assert len(kept1) == 20
    rng = random.Random(5)
    later = [
        chat("new-exact", first[3].messages[0]["content"], first[3].messages[1]["content"]),
        chat("new-near", first[5].messages[0]["content"], edit(first[5].messages[1]["content"], rng)),
        chat("new-fresh", sentence(rng, 12), sentence(rng, 50)),
    ]
    kept2, dropped2, stats = run(later, index=index)
    got = {d.record.id: (d.reason, d.duplicate_of) for d in dropped2}
    assert got == {"new-exact": ("exact_duplicate", "b03"), "new-near": ("near_duplicate", "b05")}
    assert "earlier run" in dropped2[0].detail
    assert [r.id for r in kept2] == ["new-fresh"]
    # the fresh row is now in the index too
    _, dropped3, _ = run(
        [chat("again", later[2].messages[0]["content"], later[2].messages[1]["content"])], index=index
    )
    assert [(d.reason, d.duplicate_of) for d in dropped3] == [("exact_duplicate", "new-fresh")]


def test_folder_index_drops_rows_accepted_in_earlier_runs(tmp_path, corpus):
    index = tmp_path / "idx"
    _incremental_check(str(index), corpus)
    assert not list(index.glob("*.pkl")) and (index / "meta.json").exists()
    with pytest.raises(IndexMismatchError, match="ngram"):
        run(corpus[:2], index=str(index), ngram=4)


@pytest.fixture
def redis_url(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not installed (apt-get install redis-server); CI installs it")
    pytest.importorskip("redis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_index_shared_by_workers(redis_url, corpus):
    _incremental_check(redis_url + "?basename=t1", corpus)
    # a second "worker" with its own stage object sees the first one's accepted rows
    kept, dropped, _ = run(corpus[20:40], index=redis_url + "?basename=t1")
    assert len(kept) == 20  # distinct from everything accepted so far
    with pytest.raises(IndexMismatchError):
        run(corpus[:2], index=redis_url + "?basename=t1", num_perm=64)


def test_index_folder_files_are_plain_arrays(tmp_path, corpus):
    index = tmp_path / "idx"
    run(corpus[:10], index=str(index))
    meta = json.loads((index / "meta.json").read_text())
    part = Path(index / meta["parts"][0]["name"])
    sig = np.load(f"{part}.sig.npy", allow_pickle=False)
    assert sig.shape == (10, 128) and sig.dtype == np.uint32


def test_exact_only_run_with_index(tmp_path):
    index = str(tmp_path / "idx")
    first = [chat("a", "what is a river", "water that flows"), chat("b", "name a colour", "blue")]
    kept, _, _ = run(first, near=False, index=index)
    assert len(kept) == 2
    kept, dropped, _ = run([chat("c", "What is a  river", "Water that flows")], near=False, index=index)
    assert [(d.reason, d.duplicate_of) for d in dropped] == [("exact_duplicate", "a")]


def test_process_refuses_input_it_did_not_fit(corpus):
    stage = DedupStage(DedupConfig())
    stage.fit([corpus[:10]])
    with pytest.raises(RuntimeError, match="same input"):
        stage.process(corpus[10:20])


def test_chinese_real_rows_with_one_character_edits(shared_data):
    rows = json.loads((shared_data / "oasst1_zh_sft" / "oaast_sft_zh.json").read_text())[:300]
    base = [
        chat(f"z{i:03d}", (r["instruction"] + "\n" + r["input"]).strip(), r["output"], source="zh")
        for i, r in enumerate(rows)
    ]
    rng = random.Random(4)
    edited = []
    for r in base[::10]:
        answer = r.messages[1]["content"]
        if len(answer) >= 200:
            j = rng.randrange(len(answer))
            edited.append(
                chat("e" + r.id, r.messages[0]["content"], answer[:j] + "的" + answer[j + 1 :], source="zh")
            )
    kept, dropped, stats = run(base + edited, batch_size=64)
    cluster_of = {r.id: r.id for r in kept} | {d.record.id: d.duplicate_of for d in dropped}
    assert edited and all(cluster_of[e.id] == cluster_of[e.id[1:]] for e in edited)
    # oasst1 has several answers to one prompt: rows sharing a long prompt may merge, nothing else
    merged_base = [d for d in dropped if d.record.id.startswith("z") and not d.duplicate_of.startswith("e")]
    assert len(merged_base) < 10
    assert stats.extra["char_shingled_records"] > 250


def _attempt(records: list[Record], index: str, run_key: str | None):
    stage = DedupStage(DedupConfig(index=index))
    stage.run_key = run_key  # run_stage sets it: input fingerprint + output folder
    kept, dropped, _ = apply_stage(stage, records)
    return kept, dropped


@pytest.mark.parametrize("backend", ["folder", "redis"])
def test_a_rerun_of_the_same_run_does_not_meet_its_own_committed_rows(backend, tmp_path, corpus, request):
    """A crash after the index commit but before the stage is published reruns dedup with the same run
    key: its own rows in the index must not count as earlier runs' rows, and the commit is not doubled.
    A different run (another key) on the same data does meet them."""
    index = str(tmp_path / "idx") if backend == "folder" else request.getfixturevalue("redis_url") + "?basename=rk"
    first_kept, _ = _attempt(corpus[:20], index, "run-a")
    again_kept, again_dropped = _attempt(corpus[:20], index, "run-a")
    assert [r.id for r in again_kept] == [r.id for r in first_kept]
    assert not any("earlier run" in d.detail for d in again_dropped)
    other_kept, other_dropped = _attempt(corpus[:20], index, "run-b")
    assert other_kept == [] and len(other_dropped) == 20
    if backend == "folder":
        meta = json.loads((Path(index) / "meta.json").read_text())
        assert [p["tag"] is not None for p in meta["parts"]] == [True]  # run-a committed once, run-b kept none
