"""Scoring a causal LM the way lm-eval-harness does, with fewer tokens per decision.

- Log-likelihood of a continuation given a context: tokens are split exactly as lm-eval splits them
  (trailing spaces of the context move to the continuation; the pair is encoded whole and the context
  part is the encoding of the context alone), so per-item predictions match lm-eval's.
- Prefix sharing: the inputs of all requests are sorted and packed into rows as prefix trees
  (:func:`pack_prefix_trees`): a shared prefix (a question's context, the start of a WinoGrande sentence, a
  few-shot header) is one run of nodes, and each continuation is a branch that attends to its ancestors
  only (a tree-shaped attention mask, positions continue from the branch point). One forward pass per
  batch, no key/value cache copies, no padding between sequences; the output layer and the
  full-vocabulary normalisation run only at the positions that predict a continuation token.
- Every batch is run through each *view* (base, tuned) before moving on; per-token KL(base || tuned) of
  the perplexity task is computed without keeping logits around.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: a view is a zero-argument callable returning a context manager that yields the model to run
View = Callable[[], contextlib.AbstractContextManager]

# cap on (rows x tokens) whose full-vocabulary log-probs are held at once (~ this x vocab x 4 bytes)
_LOGIT_TOKENS = 1024
#: nodes per packed row: attention inside a row costs rows x nodes^2, so rows stay short
ROW_TOKENS = 384
#: input tokens (padding included) per forward pass: large enough for efficient matrix multiplies
BATCH_TOKENS = 4096
#: bumped whenever the numbers a scorer produces could change; part of the base-results cache key
SCORER_VERSION = "2"


@dataclass(slots=True)
class LoglikelihoodResult:
    """Summed log-prob of the continuation tokens, whether each was the greedy choice, and their count."""

    logprob: float
    is_greedy: bool
    n_tokens: int


@dataclass(slots=True)
class PerplexityResult:
    logprob: float
    n_tokens: int
    n_bytes: int
    #: mean over tokens of KL(base || this view); 0 for the base view
    kl_to_base: float = 0.0


def fixed_view(model: torch.nn.Module) -> View:
    """A view that always yields ``model`` as it is."""

    @contextlib.contextmanager
    def view() -> Iterator[torch.nn.Module]:
        yield model

    return view


def adapter_disabled_view(model: Any) -> View:
    """The base view of a PEFT model: its adapter switched off for the duration of the block."""

    @contextlib.contextmanager
    def view() -> Iterator[torch.nn.Module]:
        with model.disable_adapter():
            yield model

    return view


def prefix_token_id(tokenizer) -> int:
    """The token that stands in for an empty context (lm-eval: BOS if the tokenizer has one, else EOS)."""
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    return tokenizer.eos_token_id


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) exactly as lm-eval's ``HFLM._encode_pair`` splits them."""
    if not context:
        return [prefix_token_id(tokenizer)], tokenizer.encode(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


@dataclass(slots=True)
class _Encoded:
    """A request as tokens: ``tokens`` = context + continuation (cut from the left), the last ``n_cont`` scored."""

    tokens: list[int]
    n_cont: int


@dataclass
class _Tree:
    """One packed row: a prefix tree of token sequences, nodes in depth-first order (parents first).

    Every node is one input token at position ``depth``; it attends to its ancestors and itself only, so
    sequences that share a prefix (the choices of a question, the options of a WinoGrande sentence, a
    few-shot header) run that prefix once and nothing leaks between branches.
    """

    tokens: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    #: (request index, node predicting each continuation token, the continuation tokens)
    requests: list[tuple[int, list[int], list[int]]] = field(default_factory=list)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def pack_prefix_trees(encoded: list[_Encoded], capacity: int) -> list[_Tree]:
    """Pack requests into rows of at most ``capacity`` nodes (a longer request gets a row of its own).

    Inputs (tokens minus the last) are sorted, so a request shares the longest possible prefix with the one
    before it; the shared part is reused, only the rest becomes new nodes.
    """
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].tokens[:-1])
    rows: list[_Tree] = []
    cur: _Tree | None = None
    prev: list[int] = []
    prev_path: list[int] = []
    for i in order:
        enc = encoded[i]
        inputs = enc.tokens[:-1]
        shared = 0
        if cur is not None:
            shared = _common_prefix(prev, inputs)
            if len(cur.tokens) + len(inputs) - shared > capacity:
                cur, shared = None, 0
        if cur is None:
            cur = _Tree()
            rows.append(cur)
        path = prev_path[:shared]
        for k in range(shared, len(inputs)):
            cur.parent.append(path[-1] if path else -1)
            cur.tokens.append(inputs[k])
            cur.depth.append(k)
            path.append(len(cur.tokens) - 1)
        first = len(enc.tokens) - enc.n_cont - 1  # the node that predicts the first continuation token
        cur.requests.append((i, path[first:], enc.tokens[len(enc.tokens) - enc.n_cont :]))
        prev, prev_path = inputs, path
    return rows


def _body_and_head(model) -> tuple[Any, Any] | None:
    """(decoder stack, output layer) when logits are plainly ``head(body(x))``; None for anything else."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(inner, "config", None)
    if any(getattr(cfg, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    body = getattr(inner, "model", None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if body is None or head is None:
        return None
    return body, head


class Scorer:
    """Batched scoring of requests through one or more views of a model (see module docstring)."""

    def __init__(
        self,
        tokenizer,
        *,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        max_length: int = 2048,
        row_tokens: int = ROW_TOKENS,
        batch_tokens: int = BATCH_TOKENS,
    ):
        self.tokenizer = tokenizer
        self.batch_size = max(1, batch_size)
        self.device = torch.device(device)
        self.max_length = max_length
        self.row_tokens = max(16, row_tokens)
        self.batch_tokens = max(self.row_tokens, batch_tokens)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        #: input tokens run through the model by the last ``loglikelihood`` call (per view), padding included
        self.tokens_run = 0

    # ---------------------------------------------------------------------------------------------
    # log-likelihood of continuations

    def encode_requests(self, requests: list[tuple[str, str]]) -> list[_Encoded]:
        """Token form of each (context, continuation), cut from the left to ``max_length`` inputs."""
        out = []
        for i, (ctx, cont) in enumerate(requests):
            ctx_ids, cont_ids = encode_pair(self.tokenizer, ctx, cont)
            if not cont_ids:
                raise ValueError(f"request {i}: the continuation {cont!r} encodes to no tokens")
            cont_ids = cont_ids[-self.max_length :]
            keep = max(1, self.max_length + 1 - len(cont_ids))  # input = ctx + cont[:-1] <= max_length
            out.append(_Encoded(ctx_ids[-keep:] + cont_ids, len(cont_ids)))
        return out

    def loglikelihood(
        self,
        requests: list[tuple[str, str]],
        views: dict[str, View],
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, list[LoglikelihoodResult]]:
        """Score every (context, continuation) under every view; results are in request order."""
        rows = pack_prefix_trees(self.encode_requests(requests), self.row_tokens)
        out: dict[str, list[LoglikelihoodResult | None]] = {name: [None] * len(requests) for name in views}
        self.tokens_run = 0
        done = 0
        for batch in self._row_batches(rows):
            for name, view in views.items():
                with view() as model, torch.inference_mode():
                    for req_idx, res in self._score_trees(model, batch):
                        out[name][req_idx] = res
            done += sum(len(t.requests) for t in batch)
            if progress is not None:
                progress(done, len(requests))
        return {name: list(res) for name, res in out.items()}  # type: ignore[arg-type]

    def _row_batches(self, rows: list[_Tree]):
        """Rows of similar length together, up to ``batch_tokens`` tokens (padding included) per batch."""
        rows = sorted(rows, key=lambda t: -len(t.tokens))  # longest first: memory trouble shows at once
        batch: list[_Tree] = []
        for t in rows:
            width = len(batch[0].tokens) if batch else len(t.tokens)
            if batch and (len(batch) + 1) * width > self.batch_tokens:
                yield batch
                batch = []
            batch.append(t)
        if batch:
            yield batch

    def _score_trees(self, model, batch: list[_Tree]) -> list[tuple[int, LoglikelihoodResult]]:
        dev = self.device
        n_rows, width = len(batch), max(len(t.tokens) for t in batch)
        ids = np.full((n_rows, width), self.pad_id, dtype=np.int64)
        pos = np.zeros((n_rows, width), dtype=np.int64)
        mask = np.zeros((n_rows, 1, width, width), dtype=bool)
        for b, t in enumerate(batch):
            n = len(t.tokens)
            ids[b, :n] = t.tokens
            pos[b, :n] = t.depth
            anc = mask[b, 0]
            for i, parent in enumerate(t.parent):  # ancestors of a node = its parent's, plus itself
                if parent >= 0:
                    anc[i] = anc[parent]
                anc[i, i] = True
            anc[np.arange(n, width), np.arange(n, width)] = True  # padding attends to itself (no empty row)
        self.tokens_run += n_rows * width
        # the nodes whose next-token distribution is needed, and (node, target) pairs per request
        node_index: dict[int, int] = {}
        pair_node, pair_tok, pair_req = [], [], []
        for b, t in enumerate(batch):
            for req_idx, nodes, targets in t.requests:
                for node, tok in zip(nodes, targets, strict=True):
                    flat = b * width + node
                    pair_node.append(node_index.setdefault(flat, len(node_index)))
                    pair_tok.append(tok)
                    pair_req.append(req_idx)
        needed = torch.tensor(list(node_index), dtype=torch.long, device=dev)
        x = torch.from_numpy(ids).to(dev)
        p = torch.from_numpy(pos).to(dev)
        m = torch.from_numpy(mask).to(dev)
        split = _body_and_head(model)
        if split is not None:
            body, head = split
            hidden = body(input_ids=x, attention_mask=m, position_ids=p, use_cache=False).last_hidden_state
            hidden = hidden.reshape(n_rows * width, -1)[needed]
        else:  # unusual output layer: run the whole model and keep the needed positions
            logits_all = model(input_ids=x, attention_mask=m, position_ids=p, use_cache=False).logits
            hidden, head = logits_all.reshape(n_rows * width, -1)[needed], None
        pn = torch.tensor(pair_node, dtype=torch.long, device=dev)
        pt = torch.tensor(pair_tok, dtype=torch.long, device=dev)
        pair_lp = torch.empty(len(pair_node), dtype=torch.float64)
        pair_greedy = torch.empty(len(pair_node), dtype=torch.bool)
        step = max(1, _LOGIT_TOKENS)
        for start in range(0, len(node_index), step):
            # full-vocabulary log-probs of a chunk of nodes at a time (memory ~ chunk x vocab x 4 bytes)
            chunk = hidden[start : start + step]
            logits = (head(chunk) if head is not None else chunk).float()
            lse = torch.logsumexp(logits, dim=-1)
            best = logits.argmax(-1)
            sel = (pn >= start) & (pn < start + step)
            local = pn[sel] - start
            pair_lp[sel] = (logits[local, pt[sel]] - lse[local]).double().cpu()
            pair_greedy[sel] = (best[local] == pt[sel]).cpu()
        lp: dict[int, float] = {}
        greedy: dict[int, bool] = {}
        n_tok: dict[int, int] = {}
        for r, v, g in zip(pair_req, pair_lp.tolist(), pair_greedy.tolist(), strict=True):
            lp[r] = lp.get(r, 0.0) + v
            greedy[r] = greedy.get(r, True) and g
            n_tok[r] = n_tok.get(r, 0) + 1
        return [(r, LoglikelihoodResult(float(lp[r]), greedy[r], n_tok[r])) for r in n_tok]

    # ---------------------------------------------------------------------------------------------
    # perplexity of plain text, with KL to the first view

    def perplexity(
        self,
        texts: list[str],
        views: dict[str, View],
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, list[PerplexityResult]]:
        """Log-prob of each whole text after the prefix token, and KL(first view || each view) per token.

        Texts longer than the model's window are cut to it (the snippets used here are far shorter).
        """
        prefix = prefix_token_id(self.tokenizer)
        encoded = [[prefix, *self.tokenizer.encode(t)][: self.max_length + 1] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
        out: dict[str, list[PerplexityResult | None]] = {name: [None] * len(texts) for name in views}
        base_name = next(iter(views))
        step = max(1, min(self.batch_size, _LOGIT_TOKENS // max(1, len(encoded[order[0]])) if order else 1))
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            width = max(len(encoded[i]) for i in idx) - 1
            x = torch.full((len(idx), width), self.pad_id, dtype=torch.long, device=self.device)
            target = torch.zeros((len(idx), width), dtype=torch.long, device=self.device)
            valid = torch.zeros((len(idx), width), dtype=torch.bool, device=self.device)
            for r, i in enumerate(idx):
                seq = encoded[i]
                x[r, : len(seq) - 1] = torch.tensor(seq[:-1])
                target[r, : len(seq) - 1] = torch.tensor(seq[1:])
                valid[r, : len(seq) - 1] = True
            base_lp = None
            for name, view in views.items():
                with view() as model, torch.inference_mode():
                    lp = torch.log_softmax(model(input_ids=x, attention_mask=valid.long()).logits.float(), -1)
                tok_lp = lp.gather(-1, target[..., None])[..., 0].masked_fill(~valid, 0.0).sum(-1)
                if name == base_name:
                    base_lp, kl = lp, torch.zeros(len(idx))
                else:
                    kl_tok = (base_lp.exp() * (base_lp - lp)).sum(-1).masked_fill(~valid, 0.0)
                    kl = kl_tok.sum(-1) / valid.sum(-1)
                for r, i in enumerate(idx):
                    out[name][i] = PerplexityResult(
                        float(tok_lp[r]), int(valid[r].sum()), len(texts[i].encode("utf-8")), float(kl[r])
                    )
            if progress is not None:
                progress(min(start + step, len(order)), len(order))
        return {name: list(res) for name, res in out.items()}  # type: ignore[arg-type]

    # ---------------------------------------------------------------------------------------------
    # greedy generation with stop sequences

    def generate(
        self,
        prompts: list[str],
        views: dict[str, View],
        *,
        until: list[str],
        max_new_tokens: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, list[str]]:
        """Greedy continuations of each prompt, cut at the first stop sequence, under every view."""
        tok = self.tokenizer
        encoded = [tok.encode(p)[-max(1, self.max_length - max_new_tokens) :] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        out: dict[str, list[str]] = {name: [""] * len(prompts) for name in views}
        eos = tok.eos_token_id
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long, device=self.device)
            mask = torch.zeros((len(idx), width), dtype=torch.long, device=self.device)
            for r, i in enumerate(idx):
                ids[r, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[r, width - len(encoded[i]) :] = 1
            for name, view in views.items():
                with view() as model, torch.inference_mode():
                    gen = model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        max_new_tokens=max_new_tokens,
                        do_sample=False,
                        temperature=None,
                        top_p=None,
                        top_k=None,
                        pad_token_id=self.pad_id,
                        eos_token_id=eos,
                        stop_strings=until or None,
                        tokenizer=tok if until else None,
                    )
                for r, i in enumerate(idx):
                    text = tok.decode(gen[r, width:], skip_special_tokens=True)
                    out[name][i] = cut_at_stop(text, until)
            if progress is not None:
                progress(min(start + self.batch_size, len(order)), len(order))
        return out


def cut_at_stop(text: str, until: list[str]) -> str:
    """``text`` up to the earliest stop sequence."""
    cut = len(text)
    for stop in until:
        pos = text.find(stop)
        if pos >= 0:
            cut = min(cut, pos)
    return text[:cut]
