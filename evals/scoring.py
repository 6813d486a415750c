"""Scoring a causal LM the way lm-eval-harness does, but faster, and for base and tuned in one pass.

- Log-likelihood of a continuation given a context: tokens are split exactly as lm-eval splits them
  (trailing spaces of the context move to the continuation; the pair is encoded whole and the context
  part is the encoding of the context alone), so per-item predictions match lm-eval's.
- Speed: requests sharing a context (the choices of one question) are grouped; each context runs through
  the model once (keeping only the last position's logits) and all its continuations are then scored
  together on top of the context's key/value cache. Batches are sorted by length to keep padding low.
- Every batch is run through each *view* (base, tuned) before moving on, so a PEFT model is toggled with
  ``disable_adapter()`` instead of loading two models, and per-token KL(base || tuned) is computed
  without keeping logits around.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

#: a view is a zero-argument callable returning a context manager that yields the model to run
View = Callable[[], contextlib.AbstractContextManager]

# cap on (rows x tokens) whose full-vocabulary log-probs are held at once (~ this x vocab x 4 bytes)
_LOGIT_TOKENS = 1024


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


class Scorer:
    """Batched scoring of requests through one or more views of a model (see module docstring)."""

    def __init__(
        self, tokenizer, *, batch_size: int = 16, device: str | torch.device = "cpu", max_length: int = 2048
    ):
        self.tokenizer = tokenizer
        self.batch_size = max(1, batch_size)
        self.device = torch.device(device)
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # ---------------------------------------------------------------------------------------------
    # log-likelihood of continuations

    def loglikelihood(
        self,
        requests: list[tuple[str, str]],
        views: dict[str, View],
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, list[LoglikelihoodResult]]:
        """Score every (context, continuation) under every view; results are in request order."""
        groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        for i, (ctx, cont) in enumerate(requests):
            ctx_ids, cont_ids = encode_pair(self.tokenizer, ctx, cont)
            if not cont_ids:
                raise ValueError(f"request {i}: the continuation {cont!r} encodes to no tokens")
            cont_ids = cont_ids[-self.max_length :]
            keep = max(1, self.max_length + 1 - len(cont_ids))  # input = ctx + cont[:-1] <= max_length
            groups.setdefault(tuple(ctx_ids[-keep:]), []).append((i, cont_ids))
        # longest first: the first batch shows at once whether memory suffices, and padding stays low
        ordered = sorted(groups.items(), key=lambda g: -(len(g[0]) + max(len(c) for _, c in g[1])))
        out: dict[str, list[LoglikelihoodResult | None]] = {name: [None] * len(requests) for name in views}
        done = 0
        for batch in self._batches(ordered):
            for name, view in views.items():
                with view() as model, torch.inference_mode():
                    for req_idx, res in self._score_group_batch(model, batch):
                        out[name][req_idx] = res
            done += sum(len(conts) for _, conts in batch)
            if progress is not None:
                progress(done, len(requests))
        return {name: list(res) for name, res in out.items()}  # type: ignore[arg-type]

    def _batches(self, ordered):
        batch, tokens = [], 0
        for ctx, conts in ordered:
            cost = sum(len(c) for _, c in conts)
            if batch and (len(batch) >= self.batch_size or tokens + cost > _LOGIT_TOKENS):
                yield batch
                batch, tokens = [], 0
            batch.append((ctx, conts))
            tokens += cost
        if batch:
            yield batch

    def _score_group_batch(self, model, batch) -> list[tuple[int, LoglikelihoodResult]]:
        dev = self.device
        n_groups = len(batch)
        ctx_len = torch.tensor([len(c) for c, _ in batch], device=dev)
        width = int(ctx_len.max())
        ids = torch.full((n_groups, width), self.pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros((n_groups, width), dtype=torch.long, device=dev)
        for g, (ctx, _) in enumerate(batch):  # left padding: every context ends at the last column
            ids[g, width - len(ctx) :] = torch.tensor(ctx, device=dev)
            mask[g, width - len(ctx) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        rows = [(g, req_idx, cont) for g, (_, conts) in enumerate(batch) for req_idx, cont in conts]
        need_rest = any(len(cont) > 1 for _, _, cont in rows)
        ctx_out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=need_rest, logits_to_keep=1
        )
        first = torch.log_softmax(
            ctx_out.logits[:, -1].float(), dim=-1
        )  # predicts each continuation's 1st token
        first_greedy = first.argmax(-1)
        results = {
            req_idx: [float(first[g, cont[0]]), bool(first_greedy[g] == cont[0])] for g, req_idx, cont in rows
        }
        rest = [(g, req_idx, cont) for g, req_idx, cont in rows if len(cont) > 1]
        if rest:
            cache = ctx_out.cache if getattr(ctx_out, "cache", None) is not None else ctx_out.past_key_values
            row_group = torch.tensor([g for g, _, _ in rest], device=dev)
            cache.batch_select_indices(row_group)  # each row continues its own group's context
            rest_width = max(len(cont) - 1 for _, _, cont in rest)
            x = torch.full((len(rest), rest_width), self.pad_id, dtype=torch.long, device=dev)
            target = torch.zeros((len(rest), rest_width), dtype=torch.long, device=dev)
            valid = torch.zeros((len(rest), rest_width), dtype=torch.bool, device=dev)
            for r, (_, _, cont) in enumerate(rest):
                n = len(cont) - 1
                x[r, :n] = torch.tensor(cont[:-1], device=dev)
                target[r, :n] = torch.tensor(cont[1:], device=dev)
                valid[r, :n] = True
            attn = torch.cat([mask[row_group], valid.long()], dim=1)
            pos = ctx_len[row_group, None] + torch.arange(rest_width, device=dev)[None, :]
            logits = model(
                input_ids=x,
                attention_mask=attn,
                position_ids=pos,
                use_cache=False,
                **{_cache_kwarg(model): cache},
            ).logits.float()
            # log p(target) = logit - logsumexp: no full-vocabulary log-prob tensor is materialised
            tok_lp = logits.gather(-1, target[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)
            tok_lp = tok_lp.masked_fill(~valid, 0.0).sum(-1)
            greedy = ((logits.argmax(-1) == target) | ~valid).all(-1)
            for r, (_, req_idx, _) in enumerate(rest):
                results[req_idx][0] += float(tok_lp[r])
                results[req_idx][1] = results[req_idx][1] and bool(greedy[r])
        lengths = {req_idx: len(cont) for _, req_idx, cont in rows}
        return [
            (req_idx, LoglikelihoodResult(lp, greedy, lengths[req_idx]))
            for req_idx, (lp, greedy) in results.items()
        ]

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


def _cache_kwarg(model) -> str:
    """``cache`` (transformers >= 5.x) or ``past_key_values`` (older): the name the forward accepts."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(inner.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cut_at_stop(text: str, until: list[str]) -> str:
    """``text`` up to the earliest stop sequence."""
    cut = len(text)
    for stop in until:
        pos = text.find(stop)
        if pos >= 0:
            cut = min(cut, pos)
    return text[:cut]
