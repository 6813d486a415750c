"""Instruction-following difficulty (IFD) of each row, measured with the model you will fine-tune.

IFD (Li et al., "From Quantity to Quality", Cherry LLM; Superfiltering) compares how well a causal LM
predicts a row's answer with and without its instruction::

    ifd = PPL(answer | instruction) / PPL(answer) = exp(loss_given_instruction - loss_answer_only)

where each loss is the mean next-token cross-entropy (nats per token) over the answer tokens. Low IFD:
the instruction makes the answer much easier to predict (easy, well-aligned pair). High IFD (< 1):
the instruction helps little, the row teaches the model something. IFD >= 1: the instruction does not
help predict the answer at all — typically an answer that belongs to another question (misaligned),
which ``select`` can drop (``misaligned_ifd``).

How each part is computed (the choices users of Cherry/Superfiltering would expect, in the chat format
this project trains on):

- **Conditioned**: the conversation is rendered with the model's chat template and tokenised exactly
  as :mod:`training.data` does for SFT; the answer tokens are the tokens training learns from: each
  assistant turn's content and its end-of-turn marker, predicted from everything before it (system,
  user and earlier turns).
- **Unconditioned**: each assistant turn alone under the template's assistant header (with the
  template's default system prompt, if it injects one, as it does for every conversation without a
  system message). Templates that refuse a conversation starting with the assistant (Llama-2,
  Mistral, Gemma: "roles must alternate") get an empty user turn before it instead. The row's own
  system prompt counts as part of the instruction, so it is left out too.
- **Multi-turn**: every assistant turn is scored (conditioned on the whole conversation before it);
  the losses are token-weighted over all answer tokens of all turns — the way SFT weights them — so
  ``ifd`` is the ratio of the two perplexities over every answer token of the row.
- **Length**: sequences are cut to ``max_length`` tokens from the right (the start of the
  conversation is kept, as training's ``too_long: truncate`` does); the answer tokens cut off are
  not scored in either condition (the unconditioned side scores the same leading answer tokens of
  each turn), and ``ifd_note`` says how many were scored. A row whose first answer token lies beyond
  ``max_length`` gets no IFD.

Rows that cannot be scored keep an empty ``ifd`` and say why in ``ifd_note`` (``plain_text``,
``no_assistant_turn``, ``empty_answer``, ``no_instruction``, ``template_error``,
``answer_beyond_max_length``); ``select`` ranks them last and names the note in the ledger. Nothing
is dropped here. A model that cannot be found is a one-line error when the stage is built; one that
cannot be loaded, when the first row needs scoring (a fully cached run never loads it); the stage then
publishes nothing.

Speed: rows are tokenised in batches, their conditioned and unconditioned sequences sorted by length
and run in forward passes of at most ``batch_tokens`` padded tokens (a sequence shorter than 3/4 of
the longest in a pass starts the next one, so padding stays small); only answer positions reach the
output layer (in chunks), so the vocabulary projection of prompt and padding tokens is never computed.
GPU when present (``device: auto``), bf16 there, fp32 on CPU. Values are cached per row content by
the score stage (:mod:`curation.scorers`), keyed by the model weights' hash and these settings.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field

from curation.errors import ConfigError
from curation.records import Record
from curation.scorers import Scorer, ScorerSettings, model_weights_digest
from training.data import SkipExample, encode_conversations, render_chat
from training.models import ModelNotFoundError, load_model, resolve_model
from training.sft import COMPUTE_DTYPE, _head_and_decoder, resolve_precision

# stands in for an answer when finding where the template puts the assistant header
_SENTINEL = "\x00sftflow-answer\x00"
# logits (positions x vocabulary) computed at once when projecting answer positions
_LOGIT_ELEMENTS = 2**25


class IFDSettings(ScorerSettings):
    """``score: {ifd: {...}}`` in a recipe, ``--set ifd.<key>=...`` on the command line."""

    model: str = Field(description="the model to score with: alias, local folder or hub id (the base you fine-tune)")
    max_length: int = Field(
        1024,
        ge=16,
        description="tokens per sequence (training's default seq_len); longer ones are cut from the right",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on a GPU that has it (fp16 otherwise), fp32 on CPU"
    )
    device: str = Field("auto", description="auto (cuda when present), cpu, cuda, cuda:1, ...")
    batch_size: int = Field(32, ge=1, description="records per call to the scorer (sorted by length)")
    batch_tokens: int = Field(
        8192, ge=64, description="padded tokens per forward pass (rows x longest sequence)"
    )
    trust_remote_code: bool = False


class IFDScorer(Scorer):
    """Writes ``ifd``, ``ifd_loss_given_instruction``, ``ifd_loss_answer_only``, ``ifd_answer_tokens``, ``ifd_note``."""

    Settings = IFDSettings
    version: ClassVar[int] = 1
    not_in_fingerprint: ClassVar[frozenset[str]] = frozenset(
        {"batch_size", "cache", "device", "batch_tokens", "trust_remote_code"}
    )

    def __init__(self, settings: IFDSettings | None = None, **values: Any):
        super().__init__(settings, **values)
        self.settings: IFDSettings
        self.device = torch.device(_device(self.settings.device))
        self.precision = resolve_precision(self.settings.precision, self.device)
        self._folder = _model_folder(self.settings.model)
        self.model = self.tok = self._head = None
        self._uncond_prefix: list[dict[str, str]] = []
        self._header = ""

    # --- the scorer contract ------------------------------------------------------------------------
    def columns(self) -> dict[str, pa.DataType]:
        return {
            "ifd": pa.float64(),
            "ifd_loss_given_instruction": pa.float64(),
            "ifd_loss_answer_only": pa.float64(),
            "ifd_answer_tokens": pa.int64(),
            "ifd_note": pa.string(),
        }

    def weights_digest(self) -> str:
        # the values depend on the weights, the tokenizer/template files and the numeric precision
        return f"{model_weights_digest(self._folder)}-{self.precision}"

    def load(self) -> None:
        try:
            model, tok = load_model(
                str(self._folder),
                dtype=COMPUTE_DTYPE[self.precision],
                device=self.device,
                trust_remote_code=self.settings.trust_remote_code,
            )
        except ModelNotFoundError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelNotFoundError(
                f"ifd.model {self.settings.model}: could not load it ({str(e).splitlines()[0][:200]})"
            ) from None
        model.eval()
        self.model, self.tok = model, tok
        self._head = _head_and_decoder(model)
        self._uncond_prefix, self._header = _assistant_header(tok, self.settings.model)

    def score(self, records: list[Record]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {c: [None] * len(records) for c in self.columns()}
        seqs: list[_Seq] = []
        plans: dict[int, _RowPlan] = {}
        for i, r in enumerate(records):
            try:
                plans[i] = self._plan(r)
            except SkipExample as s:
                out["ifd_note"][i] = f"{s.reason}: {s.detail}" if s.detail else s.reason
        self._tokenize(plans, seqs)
        sums = self._nll_sums(seqs)
        for i, plan in plans.items():
            cond_sum, cond_n, unc_sum, unc_n = 0.0, 0, 0.0, 0
            for s in plan.seqs:
                total, n = sums[s]
                if seqs[s].conditioned:
                    cond_sum, cond_n = cond_sum + total, cond_n + n
                else:
                    unc_sum, unc_n = unc_sum + total, unc_n + n
            if cond_n == 0 or unc_n == 0:
                out["ifd_note"][i] = (
                    f"answer_beyond_max_length: no answer token within max_length {self.settings.max_length} "
                    f"(the prompt is {plan.prompt_tokens} tokens)"
                )
                continue
            cond, unc = cond_sum / cond_n, unc_sum / unc_n
            out["ifd"][i] = math.exp(cond - unc)
            out["ifd_loss_given_instruction"][i] = cond
            out["ifd_loss_answer_only"][i] = unc
            out["ifd_answer_tokens"][i] = cond_n
            if plan.cut:
                out["ifd_note"][i] = (
                    f"truncated: scored {cond_n} of {plan.answer_tokens} answer tokens "
                    f"(max_length {self.settings.max_length})"
                )
        return out

    # --- building the sequences ---------------------------------------------------------------------
    def _plan(self, r: Record) -> _RowPlan:
        if r.messages is None:
            raise SkipExample("plain_text", "a plain-text record has no instruction")
        try:
            text, spans = render_chat(self.tok, r.id, r.messages)
        except SkipExample as s:
            if s.reason == "empty_assistant_turn":
                raise SkipExample("empty_answer", s.detail) from None
            raise
        first = next(i for i, m in enumerate(r.messages) if m["role"] == "assistant")
        if not any((m["content"] or "").strip() for m in r.messages[:first]):
            raise SkipExample("no_instruction", "nothing precedes the first assistant turn")
        answers = [m["content"] for m in r.messages if m["role"] == "assistant"]
        return _RowPlan(text=text, spans=spans, answers=answers)

    def _tokenize(self, plans: dict[int, _RowPlan], seqs: list[_Seq]) -> None:
        """Conditioned (whole conversation) and unconditioned (each answer alone) sequences of every row."""
        if not plans:
            return
        limit = self.settings.max_length
        rows = list(plans.values())
        cond = encode_conversations(self.tok, [(p.text, p.spans) for p in rows])
        alone = []
        for p in rows:
            for answer in p.answers:
                alone.append(self._alone(answer))
        uncond = iter(encode_conversations(self.tok, alone))
        for p, (ids, turn) in zip(rows, cond, strict=True):
            p.answer_tokens = int((turn[1:] >= 0).sum())
            answer_pos = np.flatnonzero(turn >= 0)
            p.prompt_tokens = int(answer_pos[0]) if len(answer_pos) else len(ids)
            ids, turn = ids[:limit], turn[:limit]
            # position 0 is never predicted (as in training)
            kept = [int((turn[1:] == k).sum()) for k in range(len(p.answers))]
            p.cut = sum(kept) < p.answer_tokens
            p.seqs.append(len(seqs))
            seqs.append(_Seq(ids, _positions(turn), conditioned=True))
            for k in range(len(p.answers)):
                u_ids, u_turn = next(uncond)
                pos = _positions(u_turn[:limit])
                if p.cut:  # the same leading answer tokens of the turn as the conditioned side scored
                    pos = pos[: kept[k]]
                if len(pos):
                    p.seqs.append(len(seqs))
                    seqs.append(_Seq(u_ids[:limit], pos, conditioned=False))

    def _alone(self, answer: str) -> tuple[str, list[tuple[int, int]]]:
        """One answer under the assistant header, and its span (content + end-of-turn marker)."""
        text = self.tok.apply_chat_template(
            [*self._uncond_prefix, {"role": "assistant", "content": answer}], tokenize=False
        )
        start = len(self._header) if text.startswith(self._header) else text.rfind(answer)
        if start < 0:
            raise ConfigError(
                f"ifd.model {self.settings.model}: the chat template changes an answer's text when it renders it, "
                "so the answer cannot be located in the unconditioned sequence"
            )
        return text, [(start, len(text))]

    # --- the model ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def _nll_sums(self, seqs: list[_Seq]) -> list[tuple[float, int]]:
        """(summed next-token loss, tokens) over the scored positions of every sequence."""
        out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
        order = sorted((i for i in range(len(seqs)) if len(seqs[i].positions)), key=lambda i: -len(seqs[i].ids))
        start = 0
        while start < len(order):
            width = len(seqs[order[start]].ids)  # the longest of this forward pass
            cap, end = max(1, self.settings.batch_tokens // width), start + 1
            # a sequence under 3/4 of the width starts the next pass: padding stays under a quarter
            while end < len(order) and end - start < cap and 4 * len(seqs[order[end]].ids) >= 3 * width:
                end += 1
            chunk, start = order[start:end], end
            for i, (total, count) in zip(chunk, self._forward([seqs[i] for i in chunk], width), strict=True):
                out[i] = (total, count)
        return out

    def _forward(self, batch: list[_Seq], width: int) -> list[tuple[float, int]]:
        dev = self.device
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        rows, cols = [], []
        for r, s in enumerate(batch):
            ids[r, : len(s.ids)] = torch.from_numpy(s.ids.astype(np.int64))
            mask[r, : len(s.ids)] = 1
            rows.append(np.full(len(s.positions), r))
            cols.append(s.positions)
        row_idx = torch.from_numpy(np.concatenate(rows)).to(dev)
        pos_idx = torch.from_numpy(np.concatenate(cols)).to(dev)
        ids, mask = ids.to(dev), mask.to(dev)
        targets = ids[row_idx, pos_idx]
        if self._head is not None:
            decoder, output_layer = self._head
            hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            hidden = hidden[row_idx, pos_idx - 1]  # the position before each answer token predicts it
            vocab = output_layer.weight.shape[0]
            step = max(1, _LOGIT_ELEMENTS // vocab)
            nll = torch.cat(
                [_nll(output_layer(h), t) for h, t in zip(hidden.split(step), targets.split(step), strict=True)]
            )
        else:  # a head that is not a plain projection (soft-capped logits, ...): the model's own logits
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            nll = _nll(logits[row_idx, pos_idx - 1], targets)
        per_row = torch.zeros(len(batch), dtype=torch.float64, device=dev).index_add_(0, row_idx, nll.double())
        return [(float(per_row[r]), len(s.positions)) for r, s in enumerate(batch)]


class _Seq:
    """One sequence to run: token ids and the positions whose token is scored."""

    __slots__ = ("ids", "positions", "conditioned")

    def __init__(self, ids: np.ndarray, positions: np.ndarray, conditioned: bool):
        self.ids, self.positions, self.conditioned = ids, positions, conditioned


class _RowPlan:
    __slots__ = ("text", "spans", "answers", "seqs", "answer_tokens", "prompt_tokens", "cut")

    def __init__(self, text: str, spans: list[tuple[int, int]], answers: list[str]):
        self.text, self.spans, self.answers = text, spans, answers
        self.seqs: list[int] = []
        self.answer_tokens = self.prompt_tokens = 0
        self.cut = False


def _positions(turn: np.ndarray) -> np.ndarray:
    """Positions (>= 1: the first token is never predicted) of answer tokens."""
    pos = np.flatnonzero(turn >= 0)
    return pos[pos >= 1].astype(np.int64)


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets[:, None])[:, 0]


def _assistant_header(tok, model: str) -> tuple[list[dict[str, str]], str]:
    """(messages put before a lone answer, the rendered text before the answer's content).

    A lone assistant message when the template accepts one, else after an empty user turn.
    """
    import jinja2

    for prefix in ([], [{"role": "user", "content": ""}]):
        try:
            text = tok.apply_chat_template([*prefix, {"role": "assistant", "content": _SENTINEL}], tokenize=False)
        except jinja2.TemplateError:
            continue
        if _SENTINEL in text:
            return prefix, text[: text.index(_SENTINEL)]
    raise ConfigError(f"ifd.model {model}: its chat template renders no conversation that holds a lone answer")


def _device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"ifd.device {setting}: no CUDA device is available here")
    return setting


def _model_folder(name: str):
    """The local folder holding the model's files (an alias is built, a hub id looked up or fetched)."""
    src = resolve_model(name)
    if not isinstance(src, str):
        return src
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return snapshot_download(src, local_files_only=True, allow_patterns=patterns)
    except Exception:  # not in the local cache: fetch it, unless the hub is off
        pass
    try:
        return snapshot_download(src, allow_patterns=patterns)
    except Exception as e:
        raise ModelNotFoundError(
            f"ifd.model {name}: not a local folder or alias, and the hub id cannot be fetched "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'offline?'})"
        ) from None
