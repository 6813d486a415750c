"""The scorer seam: model-backed scores (IFD, an LLM judge, ...) computed by the score stage.

A scorer lives where its model code lives (``training/`` for IFD) and is registered by name in
:data:`curation.registry.SCORERS` from ``flows/plugins.py``; curation never imports it. A recipe
turns it on in the score stage under its name, and the CLI the same way::

    stages:
      - score: {ifd: {model: smollm2-135m-instruct, batch_size: 8}}

    sftflow score data.parquet --out out/ --set ifd.model=smollm2-135m-instruct

What a scorer is (subclass :class:`Scorer`):

- ``Settings``: a pydantic model (``batch_size`` and ``cache`` come from :class:`ScorerSettings`);
- ``columns()``: the attribute columns it adds, with their arrow types;
- ``fingerprint()``: what its values depend on (class, version, settings, and the model weights'
  hash from ``weights_digest()``); it keys the cache and the stage's resume fingerprint;
- ``load()``: the expensive part (weights onto the device), called once, only when a row misses
  the cache, so a fully cached run never loads the model;
- ``score(records) -> {column: [value per record]}`` on one batch.

The stage does the rest the same way for every scorer (:func:`score_records`): rows are keyed by
content (:func:`curation.records.content_id`), looked up in a per-scorer SQLite cache under
``$SFTFLOW_CACHE/scores/<name>/<fingerprint>.sqlite`` (JSON values, no pickle), the misses are
scored in batches of ``batch_size`` sorted by length (less padding), and every batch is committed
as soon as it is scored, so a rerun, a scheduled run over a grown dataset or a resume after a crash
only scores rows never seen. :func:`get_scorer` keeps one instance per (name, settings) per
process (:meth:`curation.registry.Registry.instance`): the model loads once per process, not once
per batch, stage or shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curation.errors import ConfigError, SftflowError
from curation.records import Record, content_id
from curation.registry import SCORERS
from curation.stage import files_digest


def cache_root() -> Path:
    """``$SFTFLOW_CACHE`` (default ``~/.cache/sftflow``): converted models, score caches."""
    return Path(os.environ.get("SFTFLOW_CACHE", Path.home() / ".cache" / "sftflow"))


_LOAD_LOCK = threading.Lock()


class ScorerSettings(BaseModel):
    """Settings every scorer has; a scorer's ``Settings`` subclass adds its own (``model``, ...)."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(16, ge=1, description="records per call to the model (sorted by length)")
    cache: bool = Field(True, description="reuse scores of rows already scored ($SFTFLOW_CACHE/scores)")


class ScorerError(SftflowError, RuntimeError):
    """A scorer that returned the wrong columns or number of values (names the scorer)."""


class Scorer:
    """Base class of a model-backed scorer; see the module docstring for the contract."""

    Settings: ClassVar[type[ScorerSettings]] = ScorerSettings
    #: bump when the scoring changes in a way the settings and weights do not show
    version: ClassVar[int] = 1
    #: settings that do not change the values (left out of the fingerprint, so the cache survives them)
    not_in_fingerprint: ClassVar[frozenset[str]] = frozenset({"batch_size", "cache"})

    def __init__(self, settings: ScorerSettings | None = None, **values: Any):
        self.settings = settings if settings is not None else self.Settings(**values)
        #: the weights_digest() of the weights loaded now (None: nothing loaded)
        self.loaded_weights: str | None = None

    def columns(self) -> dict[str, pa.DataType]:
        """Attribute columns this scorer adds (name → arrow type)."""
        raise NotImplementedError

    def weights_digest(self) -> str:
        """Hash of the model weights the values depend on ('' for a scorer without a model)."""
        return ""

    def fingerprint(self) -> str:
        """Identity of the values: class, version, settings, columns and the model weights."""
        settings = {
            k: v
            for k, v in self.settings.model_dump(mode="json").items()
            if k not in self.not_in_fingerprint
        }
        payload = {
            "scorer": f"{type(self).__module__}.{type(self).__qualname__}",
            "version": self.version,
            "settings": settings,
            "columns": {k: str(t) for k, t in self.columns().items()},
            "weights": self.weights_digest(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def load(self) -> None:
        """Load the model (called once, before the first :meth:`score`; never for a fully cached run)."""

    def sort_key(self, record: Record) -> int:
        """Length used to batch similar rows together (characters of the whole conversation)."""
        return len(record.full_text())

    def score(self, records: list[Record]) -> dict[str, list[Any]]:
        """One value per record for every column of :meth:`columns`."""
        raise NotImplementedError

    def ensure_loaded(self) -> float:
        """:meth:`load` unless these weights are loaded already; returns the seconds it took (0 when loaded).

        Weights replaced on disk (same path, new bytes) are loaded again, never scored with the old ones.
        """
        weights = self.weights_digest()
        if self.loaded_weights == weights:
            return 0.0
        with _LOAD_LOCK:  # shards may run as threads of one process: one of them loads
            if self.loaded_weights == weights:
                return 0.0
            started = time.perf_counter()
            self.load()
            self.loaded_weights = weights
            return time.perf_counter() - started


def model_weights_digest(path: str | os.PathLike) -> str:
    """Hash of the bytes of a model file or folder, computed once per process per (path, size, mtime)."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    key = (str(p.resolve()), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()))
    if key not in _DIGESTS:
        _DIGESTS[key] = files_digest(str(p))
    return _DIGESTS[key]


_DIGESTS: dict[tuple, str] = {}


# --------------------------------------------------------------------------------------------------
# settings from a recipe, one instance per process


def scorer_class(name: str) -> type[Scorer]:
    """The class registered as ``name`` in :data:`~curation.registry.SCORERS` (a one-line error if none)."""
    cls = SCORERS.resolve(name)
    if not (isinstance(cls, type) and issubclass(cls, Scorer)):
        raise ConfigError(f"scorer {name!r} is registered as {cls!r}, which is not a curation.scorers.Scorer")
    return cls


def scorer_settings(name: str, raw: Any) -> ScorerSettings:
    """Validate the ``score.<name>`` section of a recipe into the scorer's settings model."""
    cls = scorer_class(name)
    if isinstance(raw, cls.Settings):
        return raw
    try:
        return cls.Settings.model_validate(raw if raw is not None else {})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in (name, *err['loc']))}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(problems) from None


def get_scorer(name: str, settings: ScorerSettings) -> Scorer:
    """The process-wide instance of scorer ``name`` with these settings (its model loads once per process)."""
    scorer_class(name)  # a one-line error when the name is not a Scorer
    return SCORERS.instance(name, **settings.model_dump(mode="json"))


# --------------------------------------------------------------------------------------------------
# the cache


class ScoreCache:
    """Scores of one scorer fingerprint by row content hash, in SQLite (values as JSON, no pickle).

    Several processes (shards) may share it: SQLite serialises the writers; each batch is committed
    on its own, so work finished before a crash is kept.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=120, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS scores (row_key TEXT PRIMARY KEY, value_json TEXT NOT NULL)")

    @classmethod
    def for_scorer(cls, name: str, scorer: Scorer) -> ScoreCache:
        return cls(cache_root() / "scores" / name / f"{scorer.fingerprint()}.sqlite")

    def get_many(self, keys: Sequence[str]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 500):  # SQLite's bound-parameter limit
            chunk = unique[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in self._db.execute(
                f"SELECT row_key, value_json FROM scores WHERE row_key IN ({marks})", chunk
            ):
                out[key] = json.loads(value)
        return out

    def put_many(self, items: Sequence[tuple[str, list[Any]]]) -> None:
        with self._db:  # one transaction per scored batch
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR REPLACE INTO scores (row_key, value_json) VALUES (?, ?)",
                [(k, json.dumps(v, allow_nan=True)) for k, v in items],
            )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def row_key(record: Record) -> str:
    """What a cached score is keyed by: the row's content (messages or text), not its id or source."""
    return content_id(record.messages, record.text)


# --------------------------------------------------------------------------------------------------
# scoring a batch


def score_records(
    name: str, scorer: Scorer, records: list[Record], cache: ScoreCache | None, stats: dict[str, Any]
) -> dict[str, list[Any]]:
    """Values of every column of ``scorer`` for ``records`` (in order): cached ones looked up, the
    rest scored in length-sorted batches of ``batch_size`` and added to the cache.

    ``stats`` accumulates rows, cache_hits, scored, batches, load_seconds, score_seconds.
    """
    columns = list(scorer.columns())
    keys = [row_key(r) for r in records]
    known = cache.get_many(keys) if cache is not None else {}
    todo: dict[str, Record] = {}
    for k, r in zip(keys, records, strict=True):
        if k not in known and k not in todo:
            todo[k] = r  # identical rows in one batch are scored once
    stats["rows"] = stats.get("rows", 0) + len(records)
    stats["cache_hits"] = stats.get("cache_hits", 0) + sum(k in known for k in keys)
    if todo:
        stats["load_seconds"] = round(stats.get("load_seconds", 0.0) + scorer.ensure_loaded(), 3)
        # longest first: the largest batch shapes come first, and similar lengths share a batch
        pending = sorted(todo.items(), key=lambda kv: -scorer.sort_key(kv[1]))
        size = scorer.settings.batch_size
        for i in range(0, len(pending), size):
            chunk = pending[i : i + size]
            started = time.perf_counter()
            values = scorer.score([r for _, r in chunk])
            stats["score_seconds"] = round(stats.get("score_seconds", 0.0) + time.perf_counter() - started, 3)
            _check_values(name, columns, values, len(chunk))
            # plain Python values, as the cache gives them back: a cached and a fresh run write the same bytes
            rows = [(k, [_plain(values[c][j]) for c in columns]) for j, (k, _) in enumerate(chunk)]
            known.update(rows)
            if cache is not None:
                cache.put_many(rows)
            stats["scored"] = stats.get("scored", 0) + len(chunk)
            stats["batches"] = stats.get("batches", 0) + 1
    return {c: [known[k][j] for k in keys] for j, c in enumerate(columns)}


def _plain(value: Any) -> Any:
    """A JSON-ready Python value (numpy scalars and arrays from model code become floats and lists)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return json.loads(json.dumps(value, allow_nan=True))


def _check_values(name: str, columns: list[str], values: Any, n: int) -> None:
    if not isinstance(values, dict) or set(values) != set(columns):
        got = sorted(values) if isinstance(values, dict) else type(values).__name__
        raise ScorerError(f"scorer {name!r} returned columns {got}, expected {columns}")
    for c in columns:
        if len(values[c]) != n:
            raise ScorerError(f"scorer {name!r} returned {len(values[c])} values of {c!r} for {n} records")


__all__ = [
    "Scorer",
    "ScorerSettings",
    "ScorerError",
    "ScoreCache",
    "cache_root",
    "get_scorer",
    "model_weights_digest",
    "row_key",
    "score_records",
    "scorer_class",
    "scorer_settings",
]
