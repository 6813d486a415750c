"""IFD scorer: the losses it reports are the ones a direct computation gives, whatever the batching;
multi-turn aggregation, truncation, unscorable rows, templates, the score stage, the CLI and errors.

The values are checked against plain ``model(...)`` cross-entropy on tiny-random-llama (byte-level
tokenizer, so the answer's tokens are its bytes); whether IFD separates misaligned answers needs a real
model and is measured by bench/ifd_bench.py (one real-model check is here too, marked slow).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

import flows  # noqa: F401  (registers the ifd scorer, as every entry point does)
from curation import registry
from curation.errors import SftflowError
from curation.io import write_records
from curation.records import Record
from curation.runner import run_stage
from curation.stage import build_stage
from training.ifd import IFDScorer, _assistant_header
from training.models import load_model

SFTFLOW = str(Path(sys.executable).parent / "sftflow")


def chat(*turns: str, system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return msgs


ROWS = [
    Record(id="a", messages=chat("What is the capital of France?", "Paris is the capital of France.")),
    Record(id="b", messages=chat("Name a colour.", "Blue.")),
    Record(id="c", messages=chat("Write a haiku about rain.", "Soft rain on the roof\nthe garden drinks it all in\nclouds move on at dusk")),
    Record(id="d", messages=chat("hi", "hello", "and more?", "more words here", system="Be brief.")),
]


@pytest.fixture(scope="module")
def scorer() -> IFDScorer:
    s = IFDScorer(model="tiny-random-llama", cache=False)
    s.ensure_loaded()
    return s


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny-random-llama")
    model.eval()
    return model, tok


def answer_loss(model, tok, text: str, n_answer_tokens: int, skip_last: int = 0) -> tuple[float, int]:
    """Summed cross-entropy of the ``n_answer_tokens`` tokens ending ``skip_last`` tokens before the end."""
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    targets = ids[0, 1:]
    end = len(targets) - skip_last
    nll = F.cross_entropy(logits[end - n_answer_tokens : end], targets[end - n_answer_tokens : end], reduction="sum")
    return float(nll), n_answer_tokens


def n_bytes(s: str) -> int:
    return len(s.encode("utf-8"))


END = "<|im_end|>\n"  # ChatML end of turn: part of what training learns after each answer


def test_losses_and_ifd_match_a_direct_computation(scorer, tiny) -> None:
    model, tok = tiny
    row = ROWS[0]
    got = scorer.score([row])
    answer = row.messages[1]["content"]
    full = tok.apply_chat_template(row.messages, tokenize=False)
    cond, n = answer_loss(model, tok, full, n_bytes(answer + END))
    alone = tok.apply_chat_template([row.messages[1]], tokenize=False)
    unc, _ = answer_loss(model, tok, alone, n_bytes(answer + END))
    assert got["ifd_answer_tokens"] == [n]
    assert got["ifd_loss_given_instruction"][0] == pytest.approx(cond / n, rel=1e-5)
    assert got["ifd_loss_answer_only"][0] == pytest.approx(unc / n, rel=1e-5)
    assert got["ifd"][0] == pytest.approx(math.exp(cond / n - unc / n), rel=1e-5)
    assert got["ifd_note"] == [None]


def test_multi_turn_losses_are_token_weighted_over_every_answer(scorer, tiny) -> None:
    model, tok = tiny
    row = ROWS[3]
    got = scorer.score([row])
    a1, a2 = row.messages[2]["content"], row.messages[4]["content"]
    full = tok.apply_chat_template(row.messages, tokenize=False)
    # turn 2 ends the text; turn 1 ends before "<|im_start|>user\nand more?<|im_end|>\n" + turn 2
    tail = n_bytes(f"<|im_start|>user\n{row.messages[3]['content']}{END}<|im_start|>assistant\n{a2}{END}")
    c1, n1 = answer_loss(model, tok, full, n_bytes(a1 + END), skip_last=tail)
    c2, n2 = answer_loss(model, tok, full, n_bytes(a2 + END))
    u1, _ = answer_loss(model, tok, tok.apply_chat_template([row.messages[2]], tokenize=False), n1)
    u2, _ = answer_loss(model, tok, tok.apply_chat_template([row.messages[4]], tokenize=False), n2)
    assert got["ifd_answer_tokens"] == [n1 + n2]
    assert got["ifd_loss_given_instruction"][0] == pytest.approx((c1 + c2) / (n1 + n2), rel=1e-5)
    assert got["ifd_loss_answer_only"][0] == pytest.approx((u1 + u2) / (n1 + n2), rel=1e-5)


def test_values_do_not_depend_on_batching_or_padding(scorer) -> None:
    together = scorer.score(ROWS)
    one_by_one = [scorer.score([r]) for r in ROWS]
    small = IFDScorer(model="tiny-random-llama", cache=False, batch_tokens=64)  # one sequence per pass
    small.ensure_loaded()
    tight = small.score(ROWS)
    for i in range(len(ROWS)):
        for col in ("ifd", "ifd_loss_given_instruction", "ifd_loss_answer_only"):
            assert together[col][i] == pytest.approx(one_by_one[i][col][0], rel=1e-5)
            assert together[col][i] == pytest.approx(tight[col][i], rel=1e-5)
    assert small.fingerprint() == scorer.fingerprint()  # batching never changes the values: same cache


def test_unscorable_rows_keep_an_empty_ifd_and_say_why(scorer) -> None:
    rows = [
        Record(id="empty", messages=chat("Say something.", "   ")),
        Record(id="plain", text="a general-corpus document"),
        Record(id="alone", messages=[{"role": "assistant", "content": "an answer to nothing"}]),
        Record(id="none", messages=chat("only a question")),
        ROWS[1],
    ]
    got = scorer.score(rows)
    notes = got["ifd_note"]
    assert notes[0].startswith("empty_answer: message 1")
    assert notes[1].startswith("plain_text")
    assert notes[2].startswith("no_instruction")
    assert notes[3].startswith("no_assistant_turn")
    assert got["ifd"][:4] == [None] * 4 and got["ifd_loss_given_instruction"][:4] == [None] * 4
    assert got["ifd"][4] is not None and notes[4] is None  # the good row in the same batch is scored


def test_long_rows_are_cut_from_the_right_and_both_sides_score_the_same_answer_tokens(tiny) -> None:
    model, tok = tiny
    s = IFDScorer(model="tiny-random-llama", cache=False, max_length=100)
    s.ensure_loaded()
    question, answer = "Tell me a story.", "Once upon a time " * 10
    got = s.score([Record(id="long", messages=chat(question, answer))])
    full = tok.apply_chat_template(chat(question, answer), tokenize=False)
    prompt = n_bytes(full) - n_bytes(answer + END)
    kept = 100 - prompt  # answer tokens inside the first 100 tokens (all of them predicted)
    assert got["ifd_answer_tokens"] == [kept]
    assert got["ifd_note"][0] == f"truncated: scored {kept} of {n_bytes(answer + END)} answer tokens (max_length 100)"
    ids = tok.encode(full, add_special_tokens=False)[:100]
    cond, _ = answer_loss(model, tok, tok.decode(ids), kept)
    alone = tok.apply_chat_template([{"role": "assistant", "content": answer}], tokenize=False)
    header = n_bytes(alone) - n_bytes(answer + END)
    unc, _ = answer_loss(model, tok, tok.decode(tok.encode(alone, add_special_tokens=False)[: header + kept]), kept)
    assert got["ifd_loss_given_instruction"][0] == pytest.approx(cond / kept, rel=1e-5)
    assert got["ifd_loss_answer_only"][0] == pytest.approx(unc / kept, rel=1e-5)

    # a prompt that fills max_length leaves no answer token to score
    got = s.score([Record(id="p", messages=chat("x" * 200, "short"))])
    assert got["ifd"] == [None]
    assert got["ifd_note"][0].startswith("answer_beyond_max_length: no answer token within max_length 100")


def test_a_template_that_needs_a_user_turn_first_gets_an_empty_one(scorer, tiny) -> None:
    model, tok = tiny
    strict = IFDScorer(model="tiny-random-llama", cache=False)
    strict.ensure_loaded()
    strict.tok.chat_template = (
        "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('roles must alternate') }}{% endif %}"
        + tok.chat_template
    )
    strict._uncond_prefix, strict._header = _assistant_header(strict.tok, "strict")
    assert strict._uncond_prefix == [{"role": "user", "content": ""}]
    got = strict.score([ROWS[1]])
    answer = ROWS[1].messages[1]["content"]
    alone = tok.apply_chat_template([{"role": "user", "content": ""}, ROWS[1].messages[1]], tokenize=False)
    unc, n = answer_loss(model, tok, alone, n_bytes(answer + END))
    assert got["ifd_loss_answer_only"][0] == pytest.approx(unc / n, rel=1e-5)


def test_score_stage_writes_the_columns_and_a_rerun_scores_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "_INSTANCES", {})
    src = tmp_path / "in.parquet"
    write_records(src, ROWS + [Record(id="plain", text="general text")])
    stats = run_stage(build_stage("score", {"ifd": {"model": "tiny-random-llama"}}), src, tmp_path / "a")
    table = pq.read_table(tmp_path / "a" / "output.parquet")
    assert {"ifd", "ifd_loss_given_instruction", "ifd_loss_answer_only", "ifd_answer_tokens", "ifd_note"} <= set(
        table.column_names
    )
    assert table.column("ifd").null_count == 1
    assert stats.extra["scorers"]["ifd"]["scored"] == 5
    monkeypatch.setattr(registry, "_INSTANCES", {})  # a new process
    stats = run_stage(build_stage("score", {"ifd": {"model": "tiny-random-llama"}}), src, tmp_path / "b")
    assert stats.extra["scorers"]["ifd"]["cache_hits"] == 5 and stats.extra["scorers"]["ifd"]["scored"] == 0
    assert (tmp_path / "a" / "output.parquet").read_bytes() == (tmp_path / "b" / "output.parquet").read_bytes()


def test_a_model_that_cannot_be_found_or_loaded_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(registry, "_INSTANCES", {})
    with pytest.raises(SftflowError, match="no such model folder"):
        build_stage("score", {"ifd": {"model": str(tmp_path / "missing")}})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # a folder that looks like a model but is not one
    stage = build_stage("score", {"ifd": {"model": str(broken)}})
    with pytest.raises(SftflowError, match="broken"):
        stage.process([ROWS[0]])


def test_cli_score_with_ifd_and_a_bad_model(tmp_path) -> None:
    src = tmp_path / "rows.jsonl"
    src.write_text(
        "\n".join(json.dumps({"instruction": r.messages[-2]["content"], "output": r.messages[-1]["content"]})
                  for r in ROWS[:3]) + "\n"
    )
    env = {**os.environ, "SFTFLOW_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(
        [SFTFLOW, "score", str(src), "--out", str(tmp_path / "out"), "--set", "ifd.model=tiny-random-llama"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    table = pq.read_table(tmp_path / "out" / "output.parquet")
    assert table.num_rows == 3 and table.column("ifd").null_count == 0

    res = subprocess.run(
        [SFTFLOW, "score", str(src), "--out", str(tmp_path / "bad"), "--set", f"ifd.model={tmp_path / 'nope'}"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 2
    assert "nope: no such model folder" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_smollm2_ifd_is_higher_for_a_swapped_answer_than_for_the_right_one() -> None:
    s = IFDScorer(model="smollm2-135m-instruct", cache=False)
    s.ensure_loaded()
    pairs = [
        ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
        ("Translate 'good morning' into French.", "Bonjour."),
        ("Write a Python function that adds two numbers.", "def add(a, b):\n    return a + b"),
    ]
    matched = [Record(id=f"m{i}", messages=chat(q, a)) for i, (q, a) in enumerate(pairs)]
    swapped = [Record(id=f"s{i}", messages=chat(q, pairs[(i + 1) % 3][1])) for i, (q, _) in enumerate(pairs)]
    got = s.score(matched + swapped)["ifd"]
    for i in range(3):
        assert got[i] < got[3 + i]
    assert max(got[:3]) < 1.0
