"""fastText high/low-quality classifier: train from positive/negative files, score records.

Features are the answer's tokens (the instruction is the rules' business: echo, language), with
CJK-aware tokenisation: words for space-separated scripts, single characters for Chinese (word
bigrams then give character bigrams), or jieba words with ``zh_tokenizer="jieba"``. A few
structural tokens (length bucket, how the answer ends, language) let the linear model see what
truncated and padded answers look like.

A model is a fastText ``.bin`` (no pickle) plus ``<model>.meta.json`` next to it: labels, the
feature recipe, a hash of the training data, held-out metrics. :class:`QualityClassifier` only
loads a path it is given and refuses a model without its metadata.

Where positives and negatives come from:

- your own data (the useful case): positives = rows you kept or rated good, negatives = rows you
  rejected (a previous run's ledger, low-rated answers, a known-bad source);
- the test/bench set, ``write_demo_training_set`` in ``tests/curation/quality_junk.py``: positives = the clean
  rows of the shared instruction sets, negatives = junk the generator makes from them (every kind,
  en + zh, about as many as positives).

The quality stage runs rules only by default and never trains or loads a model on its own: a
classifier trained on generated junk mostly relearns what the rules already catch (the bench shows
it adds a few points of junk recall for several points of clean rows lost), and one trained at run
time would make the default recipe depend on a training run. Give it a model path to use one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from curation.errors import ConfigError, MissingFileError, SftflowError
from curation.io import atomic_path, iter_record_batches, parquet_schema, write_json
from curation.records import Record, content_id, detect_lang

log = logging.getLogger(__name__)

FORMAT = "sftflow-quality-fasttext/1"
POS, NEG = "__label__hq", "__label__lq"


class ClassifierConfig(BaseModel):
    """Training settings (fastText's knobs, snake_case) and the held-out split."""

    model_config = ConfigDict(extra="forbid")
    epoch: int = Field(15, ge=1)
    lr: float = Field(0.2, gt=0, description="learning rate (halved and retried if training diverges)")
    word_ngrams: int = Field(2, ge=1, le=5)
    dim: int = Field(32, ge=2)
    # hashed n-gram buckets: the .bin is about bucket * dim * 4 bytes (200k x 32 -> 26 MB)
    bucket: int = Field(200_000, ge=1000)
    min_count: int = Field(1, ge=1)
    heldout_fraction: float = Field(
        0.1, gt=0, lt=0.9, description="rows held out (by content hash) for metrics"
    )
    threads: int = Field(1, ge=1, description="1 keeps training deterministic (more threads train hogwild)")
    seed: int = 0
    max_chars: int = Field(3000, ge=100, description="characters of the answer used (head + tail)")
    zh_tokenizer: Literal["char", "jieba"] = "char"


# --------------------------------------------------------------------------------------------------
# features

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN_RE = re.compile(f"[{_CJK}]+|(?:(?![{_CJK}])[^\\W_])+|[^\\w\\s]")
_CJK_RUN_RE = re.compile(f"^[{_CJK}]+$")


def _answer(record: Record) -> str:
    return record.response() if record.messages is not None else (record.text or "")


def _end_token(text: str) -> str:
    t = text.rstrip()
    if not t:
        return "__end_empty__"
    ch = t[-1]
    if ch in ".!?。！？…":
        return "__end_stop__"
    if ch in ",，、;；:：(（[-":
        return "__end_open__"
    if ch.isdigit():
        return "__end_digit__"
    if ch.isalpha():
        return "__end_word__"
    return "__end_other__"


def features(record: Record, max_chars: int = 3000, zh_tokenizer: str = "char") -> str:
    """The fastText input line for one record (no newlines)."""
    text = _answer(record)
    if len(text) > max_chars:  # head and tail: the tail is where truncation shows
        text = text[: max_chars * 2 // 3] + " " + text[-max_chars // 3 :]
    tokens: list[str] = []
    for tok in _TOKEN_RE.findall(text.casefold()):
        if _CJK_RUN_RE.match(tok):
            if zh_tokenizer == "jieba":
                import jieba

                tokens.extend(w for w in jieba.lcut(tok) if w.strip())
            else:
                tokens.extend(tok)
        else:
            tokens.append(tok)
    n = len(text)
    length = next(b for b in (0, 10, 30, 100, 300, 1000, 3000, 10**12) if n <= b)
    lang = detect_lang(text)
    meta = [f"__len_{length}__", _end_token(text), f"__lang_{lang}__"]
    if record.messages is not None:  # answering in the instruction's language or not
        meta.append(f"__asked_{detect_lang(record.instruction()[:500])}_got_{lang}__")
    return " ".join(meta + tokens)


# --------------------------------------------------------------------------------------------------
# reading training files


def iter_input_records(path: str | os.PathLike) -> Iterator[Record]:
    """Records from a records parquet (a stage's output), any file ingest reads, or ``.txt`` lines."""
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"{p}: no such file")
    if p.suffix == ".parquet" and {"id", "messages", "text", "meta"} <= set(parquet_schema(p).names):
        for batch in iter_record_batches(p):
            yield from batch
        return
    if p.suffix == ".txt":
        with p.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                if line.strip():
                    yield Record(id=f"{p.name}:{i}", text=line.rstrip("\n"), source=str(p), line=i)
        return
    from curation.ingest import IngestConfig, iter_records

    for _, rec, _ in iter_records(str(p), IngestConfig()):
        if rec is not None:  # a bad row is no example
            yield rec


def _files_hash(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.basename(p).encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _is_heldout(rec: Record, fraction: float, seed: int) -> bool:
    key = hashlib.blake2b(f"{seed}:{content_id(rec.messages, rec.text)}".encode(), digest_size=8).digest()
    return int.from_bytes(key, "big") / 2**64 < fraction


def metadata_path(model_path: str | os.PathLike) -> Path:
    """Where a model's metadata lives: ``<model>.meta.json``."""
    p = Path(model_path)
    return p.with_name(p.name + ".meta.json")


# --------------------------------------------------------------------------------------------------
# training


def _binary_metrics(scores: list[float], labels: list[bool], threshold: float = 0.5) -> dict[str, Any]:
    tp = sum(1 for s, y in zip(scores, labels, strict=True) if s >= threshold and y)
    fp = sum(1 for s, y in zip(scores, labels, strict=True) if s >= threshold and not y)
    fn = sum(1 for s, y in zip(scores, labels, strict=True) if s < threshold and y)
    tn = len(scores) - tp - fp - fn
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    # low-quality side: what dropping below the threshold would catch
    prec_lq = tn / (tn + fn) if tn + fn else 0.0
    rec_lq = tn / (tn + fp) if tn + fp else 0.0
    return {
        "threshold": threshold,
        "n": len(scores),
        "accuracy": round((tp + tn) / len(scores), 4) if scores else 0.0,
        "precision": round(prec, 4),
        "recall": round(rec, 4),
        "f1": round(2 * prec * rec / (prec + rec), 4) if prec + rec else 0.0,
        "precision_low": round(prec_lq, 4),
        "recall_low": round(rec_lq, 4),
        "auc": round(_auc(scores, labels), 4),
    }


def _auc(scores: list[float], labels: list[bool]) -> float:
    pairs = sorted(zip(scores, labels, strict=True))
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return 0.0
    rank_sum, i = 0.0, 0
    while i < len(pairs):  # average ranks over ties
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg = (i + j + 1) / 2
        rank_sum += avg * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def train_classifier(
    pos: list[str], neg: list[str], out: str, *, config: ClassifierConfig | dict | None = None
) -> dict[str, Any]:
    """Train a high/low-quality fastText model from positive and negative files.

    ``pos`` / ``neg`` are paths (records parquet, anything ingest reads, or ``.txt`` one example per
    line). A fixed share of rows (by content hash) is held out; the model written to ``out`` is
    trained on the rest, so the returned held-out precision/recall describe that very model.
    Writes ``out`` and ``<out>.meta.json``; returns the metrics.
    """
    import fasttext

    cfg = config if isinstance(config, ClassifierConfig) else ClassifierConfig(**(config or {}))
    if not pos or not neg:
        raise ConfigError("train_classifier needs at least one positive and one negative file")
    started = time.perf_counter()
    train_lines: list[str] = []
    held: list[tuple[str, bool]] = []
    counts = {"pos": 0, "neg": 0}
    for label, paths, key in ((POS, pos, "pos"), (NEG, neg, "neg")):
        for path in paths:
            for rec in iter_input_records(path):
                line = features(rec, cfg.max_chars, cfg.zh_tokenizer)
                counts[key] += 1
                if _is_heldout(rec, cfg.heldout_fraction, cfg.seed):
                    held.append((line, label == POS))
                else:
                    train_lines.append(f"{label} {line}")
    for key, paths in (("pos", pos), ("neg", neg)):
        if counts[key] < 2:
            raise ConfigError(f"train_classifier: only {counts[key]} {key} rows readable in {paths}")
    if not held:
        raise ConfigError("no rows held out for metrics: add data or raise heldout_fraction")

    random.Random(cfg.seed).shuffle(train_lines)  # fastText reads in order; mixed labels train better
    with tempfile.TemporaryDirectory() as tmp:
        train_file = os.path.join(tmp, "train.txt")
        with open(train_file, "w", encoding="utf-8") as fh:
            fh.write("\n".join(train_lines) + "\n")
        params = {
            "input": train_file,
            "epoch": cfg.epoch,
            "wordNgrams": cfg.word_ngrams,
            "dim": cfg.dim,
            "bucket": cfg.bucket,
            "minCount": cfg.min_count,
            "thread": cfg.threads,
            "seed": cfg.seed,
            "verbose": 0,
            "minn": 0,
            "maxn": 0,
            "loss": "softmax",
        }
        model_file = os.path.join(tmp, "model.bin")
        # a safety net for real data: fastText can diverge ("Encountered NaN.") at a too high lr
        lr = cfg.lr
        for attempt in range(4):
            error = _train_fasttext({**params, "lr": lr}, model_file)
            if error is None:
                break
            if attempt == 3:
                raise ConfigError(f"fastText training failed ({error}) even at lr {lr}; check the data")
            log.warning("fastText diverged at lr %s (%s); retrying at lr %s", lr, error, lr / 2)
            lr /= 2
        model = fasttext.load_model(model_file)
    scores = _p_hq(model, [line for line, _ in held])
    metrics = _binary_metrics(scores, [y for _, y in held])
    metrics.update(
        {
            "n_train": len(train_lines),
            "lr_used": lr,
            "n_heldout": len(held),
            "n_pos": counts["pos"],
            "n_neg": counts["neg"],
            "train_seconds": round(time.perf_counter() - started, 2),
        }
    )
    with atomic_path(out) as tmp_path:
        model.save_model(str(tmp_path))
    meta = {
        "format": FORMAT,
        "labels": {"high": POS, "low": NEG},
        "features": {"answer_max_chars": cfg.max_chars, "zh_tokenizer": cfg.zh_tokenizer},
        "config": cfg.model_dump(),
        "inputs": {"pos": [str(p) for p in pos], "neg": [str(p) for p in neg]},
        "data_hash": _files_hash([*pos, *neg]),
        "metrics": metrics,
    }
    write_json(metadata_path(out), meta)
    return metrics


# Run in a fresh interpreter. fastText (this build) allocates the input matrix without initialising it
# and, with thread=1, fills only its first 10% with random values: the rest is whatever the allocator
# hands back. In a fresh process that is zero pages (upstream fastText zero-fills); in a process that
# trained or freed large buffers before, it is old data, so the same data and seed gave a different
# model on every call, sometimes one that diverged to NaN. A new process whose large allocations are
# always fresh mmap pages (MALLOC_MMAP_THRESHOLD_) makes training a function of data + settings.
_TRAIN_CHILD = """
import json, sys
import fasttext
params, out = json.loads(sys.argv[1]), sys.argv[2]
try:
    model = fasttext.train_supervised(**params)
except RuntimeError as e:
    print(str(e), file=sys.stderr)
    sys.exit(3)
model.save_model(out)
"""


def _train_fasttext(params: dict[str, Any], out: str) -> str | None:
    """Train a fastText model with ``params`` into ``out`` in a fresh process; the error text if it diverged."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run(
        [sys.executable, "-c", _TRAIN_CHILD, json.dumps(params), out], env=env, capture_output=True, text=True
    )
    if proc.returncode == 3:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "training failed"
    if proc.returncode != 0:
        raise RuntimeError(f"fastText training process failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return None


def _p_hq(model: Any, lines: list[str]) -> list[float]:
    if not lines:
        return []
    labels, probs = model.predict(lines, k=2)
    out = []
    for labs, ps in zip(labels, probs, strict=True):
        p = dict(zip(labs, ps, strict=True)).get(POS)
        if p is None:  # k=2 of 2 labels always has it; guard a one-label model
            p = 1.0 - float(dict(zip(labs, ps, strict=True)).get(NEG, 0.0))
        out.append(min(1.0, max(0.0, float(p))))
    return out


# --------------------------------------------------------------------------------------------------
# applying


class ModelError(SftflowError, ValueError):
    """A model path that is missing, not a fastText file, or not trained by sftflow."""


class QualityClassifier:
    """A trained model: ``predict(records)`` gives p(high quality) per record."""

    def __init__(self, model: Any, meta: dict[str, Any], path: str, fingerprint: str):
        self.model = model
        self.meta = meta
        self.path = path
        self.fingerprint = fingerprint
        feats = meta.get("features", {})
        self.max_chars = int(feats.get("answer_max_chars", 3000))
        self.zh_tokenizer = feats.get("zh_tokenizer", "char")

    @classmethod
    def load(cls, path: str | os.PathLike) -> QualityClassifier:
        """Load the model at ``path`` (only that path) with its ``.meta.json``."""
        import fasttext

        p = Path(path)
        if not p.is_file():
            raise ModelError(f"quality model {p}: no such file (train one with `sftflow quality train`)")
        mp = metadata_path(p)
        if not mp.is_file():
            raise ModelError(
                f"quality model {p}: metadata {mp.name} missing; only models written by "
                "`sftflow quality train` are loaded"
            )
        try:
            meta = json.loads(mp.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ModelError(f"quality model metadata {mp}: invalid JSON ({e.msg})") from None
        if meta.get("format") != FORMAT:
            raise ModelError(
                f"quality model metadata {mp}: format {meta.get('format')!r}, expected {FORMAT!r}"
            )
        try:
            model = fasttext.load_model(str(p))
        except ValueError as e:
            raise ModelError(f"quality model {p}: not a fastText model ({e})") from None
        h = hashlib.sha256()
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return cls(model, meta, str(p), h.hexdigest())

    def predict(self, records: list[Record]) -> list[float]:
        """p(high quality) for each record, in order."""
        return _p_hq(self.model, [features(r, self.max_chars, self.zh_tokenizer) for r in records])


__all__ = [
    "ClassifierConfig",
    "QualityClassifier",
    "ModelError",
    "train_classifier",
    "features",
    "metadata_path",
]
