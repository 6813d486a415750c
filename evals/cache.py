"""Content-addressed cache of base-model results, so a second eval of the same base only runs the tuned side.

Key = (model fingerprint, scorer namespace, request content):

- the model fingerprint is a hash of the bytes of the model folder's weights, config and tokenizer files
  (names relative to the folder, so a copy elsewhere is the same model; memoised per file size and
  modification time, so a 500 MB model is hashed once);
- the namespace adds :data:`evals.scoring.SCORER_VERSION`, dtype, device type and the input length cap;
- a request is what the scorer sees, rendered: (context, continuation) for log-likelihoods, (prompt, stop
  sequences, max new tokens) for generations. A task's spec and item id determine that text, so keying by
  the text itself means a changed template, answer list or data file misses, and a changed metric (scored
  from the same raw log-likelihoods) correctly hits.

Stored in SQLite under ``$SFTFLOW_CACHE/eval/base_results.sqlite`` (``$SFTFLOW_EVAL_CACHE`` moves it) (JSON values, no pickle; each batch
is one transaction, so a crash keeps what was finished). Only the base model is cached: it is the side
that repeats across arms, days and recipes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: files that define a model's outputs (weights, architecture, tokenizer); everything else is ignored
_MODEL_FILES = (
    "*.safetensors",
    "*.bin",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


def cache_root() -> Path:
    """``$SFTFLOW_CACHE`` (default ``~/.cache/sftflow``)."""
    return Path(os.environ.get("SFTFLOW_CACHE", Path.home() / ".cache" / "sftflow"))


def eval_cache_dir() -> Path:
    """Where eval results are cached: ``$SFTFLOW_EVAL_CACHE``, default ``$SFTFLOW_CACHE/eval``."""
    return Path(os.environ.get("SFTFLOW_EVAL_CACHE") or cache_root() / "eval")


def _memo_path() -> Path:
    return eval_cache_dir() / "fingerprints.json"


def model_fingerprint(folder: str | os.PathLike) -> str:
    """Hash of the bytes of a model folder's weight, config and tokenizer files (names relative)."""
    folder = Path(folder)
    files = sorted({p for pattern in _MODEL_FILES for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise FileNotFoundError(f"{folder}: no model files to fingerprint")
    stamp = json.dumps(
        [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files] + [str(folder.resolve())]
    )
    memo_file = _memo_path()
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if stamp in memo:
        return memo[stamp]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    digest = h.hexdigest()[:24]
    memo[stamp] = digest
    try:
        from curation.io import write_json

        write_json(memo_file, dict(list(memo.items())[-256:]))
    except OSError:
        pass  # an unwritable cache folder only costs a re-hash next time
    return digest


def request_key(*parts: Any) -> str:
    """Stable hash of a request's content."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()[
        :32
    ]


class ResultCache:
    """Results of one model namespace by request key, in SQLite (values as JSON)."""

    def __init__(self, namespace: str, path: str | os.PathLike | None = None):
        self.namespace = namespace
        self.path = Path(path) if path is not None else eval_cache_dir() / "base_results.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=120, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS results (namespace TEXT NOT NULL, key TEXT NOT NULL, "
            "task TEXT, value_json TEXT NOT NULL, PRIMARY KEY (namespace, key))"
        )
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """Cached values of ``keys`` (absent keys are misses)."""
        out: dict[str, Any] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 500):  # SQLite's bound-parameter limit
            chunk = unique[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in self._db.execute(
                f"SELECT key, value_json FROM results WHERE namespace = ? AND key IN ({marks})",
                [self.namespace, *chunk],
            ):
                out[key] = json.loads(value)
        self.hits += sum(k in out for k in keys)
        self.misses += sum(k not in out for k in keys)
        return out

    def put_many(self, items: Iterable[tuple[str, Any]], task: str | None = None) -> None:
        rows = [(self.namespace, k, task, json.dumps(v, allow_nan=True)) for k, v in items]
        if not rows:
            return
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR REPLACE INTO results (namespace, key, task, value_json) VALUES (?, ?, ?, ?)", rows
            )

    def __len__(self) -> int:
        return self._db.execute(
            "SELECT COUNT(*) FROM results WHERE namespace = ?", [self.namespace]
        ).fetchone()[0]

    def close(self) -> None:
        self._db.close()


__all__ = ["ResultCache", "cache_root", "eval_cache_dir", "model_fingerprint", "request_key"]
