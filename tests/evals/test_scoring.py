"""The batched, context-sharing scorer gives the same numbers as scoring each request on its own."""

from __future__ import annotations

import pytest
import torch

from evals.scoring import Scorer, cut_at_stop, encode_pair, fixed_view, prefix_token_id
from training.models import load_model


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny-random-llama")
    model.eval()
    return model, tok


def _naive(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    ctx, cont = encode_pair(tok, context, continuation)
    inp = torch.tensor([ctx + cont])[:, :-1]
    with torch.no_grad():
        lp = torch.log_softmax(model(inp).logits.float(), -1)[0, len(ctx) - 1 :]
    target = torch.tensor(cont)
    return float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())


REQUESTS = [
    ("Question: Which is heavier?\nAnswer:", " a brick"),
    ("Question: Which is heavier?\nAnswer:", " a feather that is very long indeed"),
    ("Question: Which is heavier?\nAnswer:", " A"),
    ("Short", " x"),
    ("A context with a trailing space ", "word"),
    ("The cat sat on the mat because the cat", " was tired."),
    ("The cat sat on the mat because the mat", " was tired."),
    ("中文的上下文：", "答案"),
]


def test_encode_pair_moves_trailing_space_to_continuation(tiny):
    _, tok = tiny
    ctx, cont = encode_pair(tok, "abc ", "d")
    assert tok.decode(ctx) == "abc" and tok.decode(cont) == " d"
    ctx, cont = encode_pair(tok, "", "hello")
    assert ctx == [prefix_token_id(tok)] and tok.decode(cont) == "hello"


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_loglikelihood_matches_one_by_one(tiny, batch_size):
    model, tok = tiny
    res = Scorer(tok, batch_size=batch_size).loglikelihood(REQUESTS, {"m": fixed_view(model)})["m"]
    for (ctx, cont), r in zip(REQUESTS, res, strict=True):
        lp, greedy = _naive(model, tok, ctx, cont)
        assert r.logprob == pytest.approx(lp, abs=1e-4)
        assert r.is_greedy == greedy
        assert r.n_tokens == len(encode_pair(tok, ctx, cont)[1])


def test_prefix_trees_split_across_rows_and_batches_match_one_by_one(tiny, shared_data):
    model, tok = tiny
    from evals.tasks import load_items

    # WinoGrande shares the sentence start between its two contexts; ARC shares a context between choices
    items = load_items("winogrande", str(shared_data), 6) + load_items("arc_easy", str(shared_data), 6)
    requests = [r for it in items for r in it.requests] + REQUESTS
    scorer = Scorer(tok, row_tokens=40, batch_tokens=120)
    res = scorer.loglikelihood(requests, {"m": fixed_view(model)})["m"]
    for (ctx, cont), r in zip(requests, res, strict=True):
        lp, greedy = _naive(model, tok, ctx, cont)
        assert r.logprob == pytest.approx(lp, abs=1e-4)
        assert r.is_greedy == greedy
    # with the default row size, sharing prefixes runs fewer tokens than the requests hold (padding included)
    total = sum(len(c) + len(x) - 1 for c, x in (encode_pair(tok, *q) for q in requests))
    default = Scorer(tok)
    default.loglikelihood(requests, {"m": fixed_view(model)})
    assert default.tokens_run < 0.7 * total


def test_pack_prefix_trees_shares_prefixes():
    from evals.scoring import _Encoded, pack_prefix_trees

    enc = [_Encoded([1, 2, 3, 4, 9], 1), _Encoded([1, 2, 3, 5, 8], 2), _Encoded([1, 2, 7], 1), _Encoded([6, 6], 1)]
    rows = pack_prefix_trees(enc, capacity=100)
    assert len(rows) == 1
    t = rows[0]
    # inputs [1,2,3,4], [1,2,3,5,?] -> [1,2,3,5], [1,2], [6]: shared nodes 1,2,3 once
    assert sorted(t.tokens) == sorted([1, 2, 3, 4, 5, 6])
    assert len(t.tokens) == 6 and t.depth[t.tokens.index(5)] == 3
    preds = {i: (nodes, targets) for i, nodes, targets in t.requests}
    assert [t.tokens[n] for n in preds[1][0]] == [3, 5] and preds[1][1] == [5, 8]
    assert [t.tokens[n] for n in preds[2][0]] == [2] and preds[2][1] == [7]
    # a capacity below the whole set starts new rows, never splitting one request
    small = pack_prefix_trees(enc, capacity=4)
    assert len(small) > 1 and sum(len(r.requests) for r in small) == 4


def test_views_are_scored_separately(tiny):
    model, tok = tiny
    other, _ = load_model("tiny-random-llama")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    res = Scorer(tok).loglikelihood(REQUESTS, {"base": fixed_view(model), "tuned": fixed_view(other)})
    assert [r.logprob for r in res["base"]] == pytest.approx(
        [_naive(model, tok, *q)[0] for q in REQUESTS], abs=1e-4
    )
    assert [r.logprob for r in res["tuned"]] == pytest.approx(
        [_naive(other, tok, *q)[0] for q in REQUESTS], abs=1e-4
    )


def test_perplexity_and_kl(tiny):
    model, tok = tiny
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "A second, somewhat longer text about nothing much.",
    ]
    same = Scorer(tok).perplexity(texts, {"base": fixed_view(model), "tuned": fixed_view(model)})
    for i, t in enumerate(texts):
        lp, _ = _naive(model, tok, "", t)
        assert same["base"][i].logprob == pytest.approx(lp, abs=1e-4)
        assert same["base"][i].n_bytes == len(t.encode())
        assert same["tuned"][i].kl_to_base == pytest.approx(0.0, abs=1e-6)
    other, _ = load_model("tiny-random-llama")
    with torch.no_grad():
        other.lm_head.weight.mul_(3.0)
    diff = Scorer(tok).perplexity(texts, {"base": fixed_view(model), "tuned": fixed_view(other)})
    assert all(r.kl_to_base > 1e-3 for r in diff["tuned"])


def test_generate_is_greedy_and_cut_at_stop(tiny):
    model, tok = tiny
    prompts = ["Hello there", "Another, longer prompt to pad the batch"]
    out = Scorer(tok, batch_size=2).generate(prompts, {"m": fixed_view(model)}, until=[], max_new_tokens=8)[
        "m"
    ]
    for p, text in zip(prompts, out, strict=True):
        ids = torch.tensor([tok.encode(p)])
        ref = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        assert text == tok.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
    assert cut_at_stop("abc\n\nQuestion: x", ["Question:", "\n\n"]) == "abc"
