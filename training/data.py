"""SFT data: chat-template tokenisation with assistant-only labels, packing, batches.

Tokenisation renders the model's chat template (``training.models`` falls back to ChatML when the
tokenizer has none) and tokenises the whole rendered conversation once, the way inference sees it.
Which tokens are trained on is found by rendering the conversation up to each assistant turn: the
characters between "prompt up to turn i + generation prompt" and "conversation through turn i" are
that turn's answer (its end-of-turn marker included, so the model learns to stop). Every other token
(system, user, earlier template text) gets the label ``-100``. Plain-text records (``text``) are
trained on every token.

Packing puts several examples into one ``seq_len`` row (best-fit decreasing, so little padding is
left). Examples never see each other: ``position_ids`` restart at 0 for each example, and the model is
called without a 2D attention mask, which transformers (>= 4.54) reads as "packed" and turns into a
block-diagonal causal mask (sdpa/eager/flex) or varlen flash-attention. The first token of every
example is unlabelled, so no loss crosses an example boundary either.

Tokenised examples are kept as flat numpy arrays (tokens + offsets), about 5 bytes per token.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import torch

from curation.errors import SftflowError
from curation.io import iter_record_batches
from curation.records import ROLES, Record

IGNORE = -100


class TemplateError(SftflowError, ValueError):
    """The chat template cannot be used for assistant-only masking."""


@dataclass
class DroppedExample:
    id: str
    reason: str
    detail: str = ""


@dataclass
class TokenizedExamples:
    """Examples as flat arrays: example ``i`` is ``tokens[starts[i] : starts[i] + lengths[i]]``."""

    ids: list[str] = field(default_factory=list)
    tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    trained: np.ndarray = field(default_factory=lambda: np.zeros(0, np.bool_))  # label this token?
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    dropped: list[DroppedExample] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        s, n = int(self.starts[i]), int(self.lengths[i])
        return self.tokens[s : s + n], self.trained[s : s + n]

    def subset(self, indices: list[int]) -> TokenizedExamples:
        parts = [self.example(i) for i in indices]
        lengths = np.array([len(p[0]) for p in parts], np.int64)
        return TokenizedExamples(
            ids=[self.ids[i] for i in indices],
            tokens=np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32),
            trained=np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.bool_),
            starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if parts else lengths,
            lengths=lengths,
        )


class SkipExample(Exception):
    """A record that cannot be used as an example: ``reason`` (a ledger-style name) and ``detail``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _render(tok, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def check_messages(messages: list[dict[str, str]]) -> None:
    """Raise :class:`SkipExample` unless the conversation has a non-empty assistant turn and known roles."""
    if not messages:
        raise SkipExample("empty_record", "no messages")
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise SkipExample("unknown_role", f"message {i} has role {m['role']!r} (expected one of {ROLES})")
        if m["role"] == "assistant" and not (m["content"] or "").strip():
            raise SkipExample("empty_assistant_turn", f"message {i} is an empty assistant turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise SkipExample("no_assistant_turn", "nothing to train on: the conversation has no assistant turn")


def assistant_spans(tok, record_id: str, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = _render(tok, messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tok, messages[:i], add_generation_prompt=True) if i else ""
        through = _render(tok, messages[: i + 1], add_generation_prompt=False)
        if not (full.startswith(through) and through.startswith(before)):
            raise TemplateError(
                f"record {record_id}: the chat template renders turn {i} differently once later turns "
                "follow (e.g. it rewrites earlier turns), so assistant tokens cannot be located; "
                "use a template whose rendering of a conversation prefix is a prefix of the whole"
            )
        spans.append((len(before), len(through)))
    return full, spans


def render_chat(tok, record_id: str, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """:func:`check_messages` + :func:`assistant_spans`; a template that refuses the conversation is a
    :class:`SkipExample` (``template_error``), a template that cannot be masked a :class:`TemplateError`."""
    check_messages(messages)
    try:
        return assistant_spans(tok, record_id, messages)
    except jinja2.TemplateError as e:  # e.g. the template's raise_exception("roles must alternate")
        raise SkipExample("template_error", f"the chat template refused this conversation: {e}") from None


def _turn_from_offsets(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> np.ndarray:
    turn = np.full(len(offsets), -1, np.int32)
    starts = [s for s, _ in spans]
    for t, (a, b) in enumerate(offsets):
        if b <= a:  # special tokens with an empty span: belong to where they sit
            a = b = a
        k = bisect.bisect_right(starts, a) - 1
        if k >= 0 and a < spans[k][1]:
            turn[t] = k
    return turn


def _encode_by_segments(tok, text: str, spans: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """For tokenizers without character offsets: tokenise prompt and answer pieces one by one.

    Token boundaries then fall on turn boundaries, which can differ slightly from tokenising the whole
    text at once (inference); fast tokenizers take the exact path in :func:`encode_conversations`.
    """
    ids: list[int] = []
    turn: list[int] = []
    at = 0
    for k, (start, end) in enumerate(spans + [(len(text), len(text))]):
        for piece, label in ((text[at:start], -1), (text[start:end], k)):
            if piece:
                toks = tok(piece, add_special_tokens=False)["input_ids"]
                ids += toks
                turn += [label] * len(toks)
        at = end
    return np.asarray(ids, np.int32), np.asarray(turn, np.int32)


def encode_conversations(
    tok, rendered: list[tuple[str, list[tuple[int, int]]]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids of rendered conversations and, per token, the index of the assistant span it is in (-1: none).

    ``rendered`` holds ``(text, spans)`` pairs from :func:`assistant_spans`. The whole text is tokenised
    once (as inference sees it) and tokens are assigned to spans by their character offsets; no extra
    special tokens are added, since templates spell out their own (BOS included).
    """
    if not rendered:
        return []
    if getattr(tok, "is_fast", False):
        enc = tok([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
        return [
            (np.asarray(enc["input_ids"][j], np.int32), _turn_from_offsets(enc["offset_mapping"][j], spans))
            for j, (_, spans) in enumerate(rendered)
        ]
    return [_encode_by_segments(tok, text, spans) for text, spans in rendered]


def tokenize_records(
    records: list[Record], tok, *, seq_len: int, too_long: str = "drop"
) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[DroppedExample], list[str]]:
    """Tokenise a batch: ``[(id, tokens, trained)]``, the dropped ones with reasons, the truncated ids."""
    rendered: list[tuple[str, str, list[tuple[int, int]] | None]] = []
    dropped: list[DroppedExample] = []
    for r in records:
        try:
            if r.messages is not None:
                text, spans = render_chat(tok, r.id, r.messages)
                rendered.append((r.id, text, spans))
            elif r.text and r.text.strip():
                rendered.append((r.id, r.text, None))
            else:
                raise SkipExample("empty_record", "neither messages nor text")
        except SkipExample as s:
            dropped.append(DroppedExample(r.id, s.reason, s.detail))
    if not rendered:
        return [], dropped, []

    chats = [i for i, (_, _, spans) in enumerate(rendered) if spans is not None]
    texts = [i for i, (_, _, spans) in enumerate(rendered) if spans is None]
    encoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, (ids, turn) in zip(chats, encode_conversations(tok, [rendered[i][1:] for i in chats]), strict=True):
        encoded[i] = (ids, turn >= 0)
    if texts:
        enc = tok([rendered[i][1] for i in texts], add_special_tokens=True)
        for j, i in enumerate(texts):
            ids = list(enc["input_ids"][j])
            if tok.eos_token_id is not None:
                ids.append(tok.eos_token_id)
            encoded[i] = (np.asarray(ids, np.int32), np.ones(len(ids), np.bool_))

    out, truncated = [], []
    for i, (rid, _, _) in enumerate(rendered):
        ids, trained = encoded[i]
        if len(ids) > seq_len:
            if too_long == "drop":
                dropped.append(DroppedExample(rid, "too_long", f"{len(ids)} tokens > seq_len {seq_len}"))
                continue
            ids, trained = ids[:seq_len], trained[:seq_len]
            truncated.append(rid)
        trained = trained.copy()
        trained[0] = False  # never predicted: keeps packed and unpacked losses identical
        if not trained.any():
            reason = "no_answer_left_after_truncation" if rid in truncated[-1:] else "no_trained_tokens"
            dropped.append(DroppedExample(rid, reason, "no assistant token within seq_len"))
            if truncated[-1:] == [rid]:
                truncated.pop()
            continue
        out.append((rid, ids, trained))
    return out, dropped, truncated


def load_examples(
    path: str | Path, tok, *, seq_len: int, too_long: str = "drop", batch_size: int = 1024
) -> TokenizedExamples:
    """Stream a records parquet and tokenise it into :class:`TokenizedExamples`."""
    ids: list[str] = []
    tokens, trained, lengths = [], [], []
    dropped: list[DroppedExample] = []
    truncated: list[str] = []
    for batch in iter_record_batches(path, batch_size=batch_size):
        kept, drop, trunc = tokenize_records(batch, tok, seq_len=seq_len, too_long=too_long)
        dropped += drop
        truncated += trunc
        for rid, t, m in kept:
            ids.append(rid)
            tokens.append(t)
            trained.append(m)
            lengths.append(len(t))
    lengths_arr = np.asarray(lengths, np.int64)
    return TokenizedExamples(
        ids=ids,
        tokens=np.concatenate(tokens) if tokens else np.zeros(0, np.int32),
        trained=np.concatenate(trained) if trained else np.zeros(0, np.bool_),
        starts=(np.cumsum(lengths_arr) - lengths_arr).astype(np.int64),
        lengths=lengths_arr,
        dropped=dropped,
        truncated=truncated,
    )


def split_eval(examples: TokenizedExamples, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, eval) example indices. Membership hashes the record id, so it does not depend on order."""
    if fraction <= 0:
        return list(range(len(examples))), []
    train, held = [], []
    for i, rid in enumerate(examples.ids):
        h = int.from_bytes(hashlib.blake2b(f"{seed}:{rid}".encode(), digest_size=8).digest(), "big")
        (held if h / 2**64 < fraction else train).append(i)
    if not train or not held:  # tiny sets: keep at least one example on each side
        everything = train + held
        if len(everything) < 2:
            return everything, []
        train, held = everything[:-1], everything[-1:]
    return train, held


def pack(lengths: list[int] | np.ndarray, seq_len: int) -> list[list[int]]:
    """Group example indices into rows of at most ``seq_len`` tokens (best-fit decreasing).

    Deterministic: ties keep index order. Each row lists its examples in the order they were placed.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    rows: list[list[int]] = []
    # (space left, row index), sorted: the tightest row that still fits is found by bisection
    free: list[tuple[int, int]] = []
    for i in order:
        n = int(lengths[i])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, row = free.pop(k)
            rows[row].append(i)
            bisect.insort(free, (space - n, row))
        else:
            rows.append([i])
            bisect.insort(free, (seq_len - n, len(rows) - 1))
    return rows


def collate(
    examples: TokenizedExamples, rows: list[list[int]], pad_id: int, pad_to: int | None = None
) -> dict:
    """Tensors for rows of examples: one example per row = plain padded batch; several = packed.

    Returns ``input_ids``, ``labels`` (``-100`` where not trained), ``position_ids`` (restarting per
    example) and, only when every row holds one example, an ``attention_mask`` for the padding. Packed
    rows are passed without a mask so the model builds the block-diagonal one from ``position_ids``.
    """
    width = pad_to or max(sum(int(examples.lengths[i]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            toks, trained = examples.example(i)
            n = len(toks)
            t = torch.from_numpy(toks.astype(np.int64))
            input_ids[r, at : at + n] = t
            labels[r, at : at + n] = torch.where(torch.from_numpy(trained), t, IGNORE)
            position_ids[r, at : at + n] = torch.arange(n)
            attention_mask[r, at : at + n] = 1
            at += n
        # padding continues the positions of a separate "example" that is never trained on
        position_ids[r, at:] = torch.arange(width - at)
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if all(len(row) == 1 for row in rows):
        batch["attention_mask"] = attention_mask
    batch["real_tokens"] = int(attention_mask.sum())
    return batch


class BatchPlan:
    """The deterministic order of micro-batches, epoch after epoch, and where we are in it.

    With packing, the rows are packed once and their order is reshuffled every epoch; without packing,
    the examples are reshuffled every epoch and each batch is padded to its longest example. The
    position (epoch, batch) is all a checkpoint needs to resume on the very next batch.
    """

    def __init__(
        self,
        examples: TokenizedExamples,
        indices: list[int],
        *,
        batch_size: int,
        seq_len: int,
        packing: bool,
        seed: int,
        shuffle: bool = True,
    ):
        self.examples, self.batch_size, self.seq_len = examples, batch_size, seq_len
        self.packing, self.seed, self.shuffle = packing, seed, shuffle
        if packing:
            rows = pack(examples.lengths[indices], seq_len)
            self.rows = [[indices[j] for j in row] for row in rows]
        else:
            self.rows = [[i] for i in indices]
        self.epoch, self.batch = 0, 0

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.rows)))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(len(self.rows), generator=g).tolist()

    def state(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def next_rows(self) -> list[list[int]]:
        if self.batch >= len(self):
            self.epoch, self.batch = self.epoch + 1, 0
        order = self._order(self.epoch)
        picked = order[self.batch * self.batch_size : (self.batch + 1) * self.batch_size]
        self.batch += 1
        return [self.rows[i] for i in picked]

    def one_pass(self) -> Iterator[list[list[int]]]:
        """Every batch once, in a fixed order (for eval)."""
        for b in range(len(self)):
            yield self.rows[b * self.batch_size : (b + 1) * self.batch_size]
