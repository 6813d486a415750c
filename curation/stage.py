"""The one shape every curation stage has.

A stage takes records + its config and returns, per batch, the records it keeps and the ones it
drops, each drop with a reason (data, not a log line). Stages that need a global view (dedup's
clusters, selection's ranking) make a first pass with :meth:`Stage.fit` that keeps only compact
state (signatures, scores), never the texts. A :class:`SourceStage` (ingest) has no input records:
it reads its sources and yields the same kept / dropped batches.

Running a stage — streaming batches, ``output.parquet`` / ``ledger.parquet`` / ``stats.json``,
the ledger invariant, cache hits, crash points, shards — is :mod:`curation.runner`'s job, for every
stage alike. Adding a stage is one module with a :class:`Stage` subclass and one line in
:data:`curation.registry.STAGES`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ValidationError

from curation.errors import ConfigError, format_validation_error
from curation.io import record_schema
from curation.records import Record
from curation.registry import STAGES
from curation.stats import Figures


@dataclass(slots=True)
class Drop:
    """One dropped input row: why, and (for duplicates) which kept row it duplicates."""

    record: Record
    reason: str
    detail: str = ""
    duplicate_of: str | None = None


@dataclass(slots=True)
class StageOutput:
    kept: list[Record] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)


class Stage:
    """Base class: subclasses set ``name``, ``Config`` and implement :meth:`process`."""

    name: ClassVar[str] = "stage"
    Config: ClassVar[type[BaseModel]]
    #: attribute columns this stage adds to records (name → arrow type)
    attr_fields: ClassVar[dict[str, pa.DataType]] = {}
    #: True when the stage needs a first pass over all input (``fit``) before ``process``
    needs_fit: ClassVar[bool] = False
    #: the stage's own figures (what :meth:`stats` returns), with a merge rule per field; None while
    #: ``stats`` still returns a plain dict
    Figures: ClassVar[type[Figures] | None] = None
    #: config fields naming files the stage reads (the mixer's general pool, a quality model): their
    #: content is part of the fingerprint, so editing them reruns the stage. Never list a file the
    #: stage itself writes (dedup's persistent index), or no run would ever be cached.
    input_file_fields: ClassVar[tuple[str, ...]] = ("general", "model")

    #: identifies one run of this stage (input fingerprint + output folder), set by :func:`run_stage`;
    #: a rerun after a crash has the same key. Stages with outside side effects (dedup's persistent
    #: index) use it to recognise what an earlier attempt of the same run already wrote.
    run_key: str | None = None

    def __init__(self, config: BaseModel | None = None):
        self.config = config if config is not None else self.Config()
        self.counters: Counter[str] = Counter()

    def fit(self, batches: Iterable[list[Record]]) -> None:  # pragma: no cover - default no-op
        for _ in batches:
            pass

    def process(self, batch: list[Record]) -> StageOutput:
        raise NotImplementedError

    def added(self) -> Iterator[list[Record]]:
        """Records the stage brings in from outside its input, after ``process`` saw every batch.

        Only the mixer does this (general-data replay rows). They are counted as ``rows_added``;
        the invariant becomes rows in + rows added = rows kept + rows dropped.
        """
        return iter(())

    def stats(self) -> Figures | dict[str, Any]:
        """Stage-specific figures: ``stats.json``'s ``extra`` (the report reads them).

        An instance of the stage's :attr:`Figures` (typed, merged across shards by its rules), or a
        plain dict from a stage that has not declared one.
        """
        return dict(self.counters)

    @property
    def per_row(self) -> bool:
        """True when the stage can run on shards: each row's fate depends on that row alone (no fit pass,
        no rows added) and its figures declare how they merge (:attr:`Figures`).

        Such a stage runs on contiguous shards whose outputs, concatenated in order, are the rows an
        unsharded run writes; the others (dedup, select, mix) run whole.
        """
        return not self.needs_fit and type(self).added is Stage.added and self.Figures is not None

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """The input's columns plus the attribute columns this stage adds."""
        return record_schema(self.attr_fields, base=input_schema)

    def fingerprint(self) -> str:
        """Hash of the stage's name, version, config and the content of the files its config names."""
        config = self.config.model_dump(mode="json")
        files = {k: files_digest(config[k]) for k in self.input_file_fields if config.get(k)}
        payload = {
            "stage": self.name,
            "version": getattr(self, "version", 1),
            "config": config,
            "files": files,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class SourceStage(Stage):
    """A stage that reads its own sources instead of input records (ingest).

    :meth:`read` yields ``(rows read, output)`` per batch, every row read ending up kept or dropped;
    the runner writes and checks them exactly as it does a record stage's batches.
    """

    needs_fit: ClassVar[bool] = False

    def read(self) -> Iterator[tuple[int, StageOutput]]:
        raise NotImplementedError

    def process(self, batch: list[Record]) -> StageOutput:  # pragma: no cover - sources have no input
        raise TypeError(f"{self.name} is a source stage: it reads its sources, not records")

    @property
    def per_row(self) -> bool:
        return False  # reading is sequential (ids are assigned in source order)

    def output_schema(self, input_schema: pa.Schema | None = None) -> pa.Schema:
        return record_schema(self.attr_fields)


def stage_class(name: str) -> type[Stage]:
    """The stage registered as ``name`` in :data:`curation.registry.STAGES`."""
    return STAGES.resolve(name)


def build_stage(name: str, config: dict[str, Any] | BaseModel | None = None, where: str = "") -> Stage:
    """Instantiate a stage from its name and a config dict, with a readable error on bad keys."""
    cls = stage_class(name)
    if isinstance(config, BaseModel):
        return cls(config)
    try:
        cfg = cls.Config.model_validate(config or {})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, prefix=f"{where}{name}")) from None
    return cls(cfg)


def files_digest(spec: str | list[str]) -> str:
    """Hash of the bytes of every local file a path / folder / glob (or a list of them) names.

    Names that are not local files (hub ids, redis URLs, model aliases) count by name only.
    """
    h = hashlib.sha256()
    for item in [spec] if isinstance(spec, str) else spec:
        if not isinstance(item, str):
            continue
        if os.path.isdir(item):
            paths = sorted(str(p) for p in Path(item).rglob("*") if p.is_file())
        else:
            paths = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        h.update(item.encode("utf-8", "surrogatepass"))
        for path in paths:
            if not os.path.isfile(path):
                continue
            h.update(path.encode("utf-8", "surrogatepass"))
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


#: test hook: ``SFTFLOW_CRASH_AFTER=<stage>:<point>`` ends the process at that point
CRASH_ENV = "SFTFLOW_CRASH_AFTER"


def crash_point(stage: str, point: str | int) -> None:
    """Die like ``kill -9`` (exit 137, nothing flushed) when ``$SFTFLOW_CRASH_AFTER`` names this point.

    Points: ``<stage>:fit`` (fit done), ``<stage>:<n>`` (n-th batch written to the temp files),
    ``<stage>:published`` (output + ledger renamed into place, stats.json not yet written),
    ``<stage>:done`` (ingest has them too: ``ingest:published``...); the pipeline adds
    ``final:output`` and ``final:ledger``; training adds ``train:weights`` (final weights written,
    not yet published). The resume tests use it to crash at exact places instead of racing a timer;
    unset, it costs one environment lookup.
    """
    want = os.environ.get(CRASH_ENV)
    if want and want == f"{stage}:{point}":
        os._exit(137)


def drop_row(d: Drop, stage: str) -> dict[str, Any]:
    r = d.record
    return {
        "id": r.id,
        "stage": stage,
        "reason": d.reason,
        "detail": d.detail,
        "duplicate_of": d.duplicate_of,
        "source": r.source,
        "line": r.line,
        "record": json.dumps(
            {"messages": r.messages, "text": r.text, "meta": r.meta, "attrs": r.attrs},
            ensure_ascii=False,
            default=str,
        ),
    }
