"""SFT data: assistant-only labels from the chat template, packing, batches, bad rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from curation.io import write_records
from curation.records import Record
from training.data import (
    IGNORE,
    BatchPlan,
    TemplateError,
    _encode_by_segments,
    assistant_spans,
    collate,
    load_examples,
    pack,
    split_eval,
    tokenize_records,
)
from training.models import load_tokenizer

MULTI_TURN = [
    {"role": "system", "content": "sys prompt"},
    {"role": "user", "content": "héllo 你好"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "again"},
    {"role": "assistant", "content": "second answer"},
]


def trained_pieces(tok, ids: np.ndarray, trained: np.ndarray) -> list[str]:
    """Decode each contiguous run of trained tokens."""
    pieces, run = [], []
    for t, keep in zip(ids.tolist(), trained.tolist(), strict=True):
        if keep:
            run.append(t)
        elif run:
            pieces.append(tok.decode(run))
            run = []
    if run:
        pieces.append(tok.decode(run))
    return pieces


@pytest.fixture(scope="module")
def tiny_tok():
    return load_tokenizer("tiny-random-llama")


@pytest.mark.parametrize("model", ["tiny-random-llama", "smollm2-135m-instruct"])
def test_only_assistant_turns_and_their_end_marker_are_trained(model):
    tok = load_tokenizer(model)
    [(rid, ids, trained)], dropped, _ = tokenize_records(
        [Record(id="m", messages=MULTI_TURN)], tok, seq_len=1024
    )
    assert rid == "m" and not dropped
    assert trained_pieces(tok, ids, trained) == ["first answer<|im_end|>\n", "second answer<|im_end|>\n"]
    # the whole sequence is exactly the rendered template (what inference sees)
    assert tok.decode(ids.tolist()) == tok.apply_chat_template(MULTI_TURN, tokenize=False)


def test_segment_fallback_matches_offsets_on_a_byte_tokenizer(tiny_tok):
    text, spans = assistant_spans(tiny_tok, "m", MULTI_TURN)
    [(_, ids, trained)], _, _ = tokenize_records(
        [Record(id="m", messages=MULTI_TURN)], tiny_tok, seq_len=1024
    )
    seg_ids, seg_turn = _encode_by_segments(tiny_tok, text, spans)
    seg_trained = seg_turn >= 0
    assert np.array_equal(seg_ids, ids)
    seg_trained[0] = False  # tokenize_records never trains the first token
    assert np.array_equal(seg_trained, trained)


def test_template_that_rewrites_earlier_turns_is_refused(tiny_tok):
    tok = load_tokenizer("tiny-random-llama")
    tok.chat_template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(TemplateError, match="prefix"):
        tokenize_records([Record(id="x", messages=MULTI_TURN)], tok, seq_len=1024)


def test_plain_text_records_train_on_every_token_and_end_with_eos(tiny_tok):
    [(_, ids, trained)], _, _ = tokenize_records([Record(id="t", text="just text")], tiny_tok, seq_len=64)
    assert ids[-1] == tiny_tok.eos_token_id
    assert not trained[0] and trained[1:].all()


def test_too_long_rows_are_dropped_or_truncated_with_reasons(tiny_tok):
    long_answer = Record(
        id="a", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "x" * 200}]
    )
    long_prompt = Record(
        id="p", messages=[{"role": "user", "content": "q" * 200}, {"role": "assistant", "content": "y"}]
    )
    kept, dropped, truncated = tokenize_records([long_answer, long_prompt], tiny_tok, seq_len=100)
    assert not kept and {d.reason for d in dropped} == {"too_long"} and not truncated
    kept, dropped, truncated = tokenize_records(
        [long_answer, long_prompt], tiny_tok, seq_len=100, too_long="truncate"
    )
    assert [k[0] for k in kept] == ["a"] and len(kept[0][1]) == 100 and truncated == ["a"]
    assert [(d.id, d.reason) for d in dropped] == [("p", "no_answer_left_after_truncation")]


def test_pack_places_every_example_once_within_the_row_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=200)
    rows = pack(lengths, 128)
    placed = sorted(i for row in rows for i in row)
    assert placed == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    # best-fit decreasing wastes little: within 10% of the lower bound
    assert len(rows) <= 1.1 * lengths.sum() / 128 + 1
    assert rows == pack(lengths, 128)  # deterministic


def test_collate_restarts_positions_and_masks_example_starts(tiny_tok, tmp_path):
    recs = [
        Record(
            id=f"r{i}", messages=[{"role": "user", "content": "q" * i}, {"role": "assistant", "content": "a"}]
        )
        for i in range(1, 4)
    ]
    write_records(tmp_path / "d.parquet", recs)
    ex = load_examples(tmp_path / "d.parquet", tiny_tok, seq_len=128)
    packed = collate(ex, [[0, 1, 2]], tiny_tok.pad_token_id, pad_to=256)
    assert "attention_mask" not in packed  # the model derives the block-diagonal mask from position_ids
    pos = packed["position_ids"][0]
    starts = [0, int(ex.lengths[0]), int(ex.lengths[0] + ex.lengths[1])]
    assert [int(pos[s]) for s in starts] == [0, 0, 0]
    assert all(int(packed["labels"][0, s]) == IGNORE for s in starts)
    assert packed["real_tokens"] == int(ex.lengths.sum())
    padded = collate(ex, [[0], [1], [2]], tiny_tok.pad_token_id)
    assert padded["attention_mask"].sum() == int(ex.lengths.sum())
    assert torch.equal(padded["position_ids"][0, : ex.lengths[0]], torch.arange(int(ex.lengths[0])))


def test_eval_split_does_not_depend_on_row_order(tiny_tok, tmp_path):
    recs = [
        Record(id=f"r{i}", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
        for i in range(200)
    ]
    write_records(tmp_path / "a.parquet", recs)
    write_records(tmp_path / "b.parquet", recs[::-1])
    held = []
    for name in ("a", "b"):
        ex = load_examples(tmp_path / f"{name}.parquet", tiny_tok, seq_len=64)
        _, eval_idx = split_eval(ex, 0.1, seed=0)
        held.append({ex.ids[i] for i in eval_idx})
    assert held[0] == held[1] and 5 < len(held[0]) < 40


def test_batch_plan_resumes_on_the_next_batch_across_epochs():
    from training.data import TokenizedExamples

    ex = TokenizedExamples(
        ids=[str(i) for i in range(10)],
        lengths=np.full(10, 4),
        starts=np.arange(10) * 4,
        tokens=np.zeros(40, np.int32),
        trained=np.ones(40, np.bool_),
    )
    plan = BatchPlan(ex, list(range(10)), batch_size=3, seq_len=64, packing=False, seed=1)
    first = [plan.next_rows() for _ in range(5)]  # crosses into the second epoch
    state = plan.state()
    rest = [plan.next_rows() for _ in range(5)]
    again = BatchPlan(ex, list(range(10)), batch_size=3, seq_len=64, packing=False, seed=1)
    again.load_state(state)
    assert [again.next_rows() for _ in range(5)] == rest
    epoch0 = sorted(i for b in first[:4] for row in b for i in row)
    assert epoch0 == list(range(10))  # an epoch sees every example once
    assert first[4] != first[0]  # and the next epoch is reshuffled


def test_conversation_the_template_refuses_is_dropped_with_its_message():
    tok = load_tokenizer("tiny-random-llama")
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    ok = Record(id="ok", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    kept, dropped, _ = tokenize_records([Record(id="m", messages=MULTI_TURN), ok], tok, seq_len=1024)
    assert [k[0] for k in kept] == ["ok"]
    assert [(d.id, d.reason) for d in dropped] == [("m", "template_error")] and "no system role" in dropped[
        0
    ].detail
