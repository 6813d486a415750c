"""General-data replay mixer: add general rows so they make up ``ratio`` of the final mixture.

Fine-tuning only on task data makes a model forget; replaying some general instruction data
limits that. Task rows pass through ``process`` unchanged but for ``mix_source="task"``; the
stage counts them (rows and approximate tokens). After the last batch, :meth:`MixStage.added`
samples the general pool and emits general rows (``mix_source="general"``, ``mix_origin`` = the
general file they came from).

Target size, for a task part of T rows (or T tokens with ``by="tokens"``):
``G = round(ratio x T / (1 - ratio))``, so G / (T + G) = ratio up to rounding.

Sampling is stratified and deterministic for a seed: the target is split across general sources
(``source_balance``: equally, or in proportion to their sizes; a source that runs out hands its
unused share to the others), and within a source across task types in proportion to their counts
(largest remainder). Inside a stratum rows are drawn by a permutation seeded from
(seed, source, task type), so adding a source does not reshuffle the others. Two passes over the
general files: the first keeps only (stratum, tokens) per row, the second emits the chosen rows.

General files: a records parquet (the output of ingest or of another stage) is read as records;
anything else goes through :mod:`curation.ingest` row conversion (same formats, ``field_map``).
Rows that cannot be converted are skipped and counted in the stats (they are not this stage's
input, so they have no ledger rows). Tokens are approximated as CJK characters + other characters
/ 4 (no tokenizer is needed; the ratio is what matters, not the absolute count).

A pool too small for the target is never silent: with ``strict`` the stage fails with a message
naming the numbers; otherwise it warns, emits the whole pool, and records the shortfall and the
achieved share in the stats.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import logging
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.decontam import DecontamConfig, DecontamStage
from curation.errors import SftflowError
from curation.features import classify_tasks, complexity_features_many, complexity_score
from curation.ingest import IngestConfig, SourceError, expand_sources, iter_records
from curation.io import iter_record_batches
from curation.records import Record, content_id
from curation.stage import Stage, StageOutput
from curation.stats import Figures, Sum

log = logging.getLogger(__name__)

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\u3040-\u30ff\uac00-\ud7af]")
_RECORD_COLUMNS = {"id", "source", "lang", "meta"}


class MixPoolTooSmall(SftflowError, ValueError):
    """The general pool cannot supply the requested share (raised with ``strict``)."""


def approx_tokens(text: str) -> int:
    """Approximate token count: one per CJK character, one per four other characters."""
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 4)


def record_tokens(record: Record) -> int:
    """Approximate tokens of a record's full text (all turns)."""
    return approx_tokens(record.full_text())


class MixConfig(BaseModel):
    """Which general data to replay, and how much of the final mixture it should be."""

    model_config = ConfigDict(extra="forbid")

    general: list[str] = Field(
        default_factory=list, description="general-data files/dirs/globs (any ingestable)"
    )
    ratio: float = Field(0.2, ge=0.0, lt=1.0, description="share of the final mixture that is general data")
    by: Literal["rows", "tokens"] = "rows"
    seed: int = 0
    strict: bool = Field(
        True, description="fail when the pool is too small (else warn and record the shortfall)"
    )
    source_balance: Literal["equal", "proportional"] = Field(
        "equal", description="split the general share equally across sources, or by their sizes"
    )
    field_map: dict[str, str] = Field(
        default_factory=dict, description="ingest field map for the general files"
    )
    batch_size: int = Field(2048, ge=1)
    decontam: DecontamConfig | None = Field(
        None,
        description="drop general rows holding a benchmark item (a recipe with a decontam stage fills this "
        "with that stage's settings; null turns it off)",
    )

    @field_validator("general")
    @classmethod
    def _no_empty(cls, v: list[str]) -> list[str]:
        if any(not s.strip() for s in v):
            raise ValueError("general: empty path")
        return v


class Shortfall(Figures):
    target: int
    available: int
    missing: int


class PoolDecontam(Figures):
    """General rows removed from the pool because they hold a benchmark item (``mix.decontam``)."""

    suite: str
    #: the benchmark index checked against (its cache key), the benchmarks in it, those skipped and why
    index: str = ""
    benchmarks: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)
    removed: int = 0
    removed_per_benchmark: dict[str, int] = Field(default_factory=dict)
    examples: list[dict[str, Any]] = Field(default_factory=list)


class MixFigures(Figures):
    """The mixer's own figures (``stats.json`` ``extra``; the mixer adds rows, so it never runs on shards)."""

    by: Literal["rows", "tokens"] = "rows"
    ratio: float = 0.0
    task_rows: Annotated[int, Sum] = 0
    task_tokens: Annotated[int, Sum] = 0
    #: general rows (or tokens) the ratio asks for
    target_general: int = 0
    general_sources: list[str] = Field(default_factory=list)
    #: usable rows in the general pool, their size in the unit of ``by``, bad rows per file and reason
    pool_rows: int | None = None
    pool_total: int | None = None
    pool_bad_rows: dict[str, dict[str, int]] = Field(default_factory=dict)
    general_rows: int = 0
    general_tokens: int = 0
    #: the general share of the final mixture, in the unit of ``by``
    achieved_ratio: float = 0.0
    general_per_source: dict[str, int] = Field(default_factory=dict)
    general_task_types: dict[str, int] = Field(default_factory=dict)
    task_task_types: dict[str, int] = Field(default_factory=dict)
    #: general rows dropped for holding a benchmark item (with ``decontam``)
    pool_decontam: PoolDecontam | None = None
    #: with ``strict: false``, how far the pool fell short (and the warning said so)
    shortfall: Shortfall | None = None
    warning: str | None = None


class MixStage(Stage):
    """Tags task rows and adds a stratified, seeded sample of general rows (see module docstring)."""

    name: ClassVar[str] = "mix"
    Config: ClassVar[type[BaseModel]] = MixConfig
    version = 1
    attr_fields: ClassVar[dict[str, pa.DataType]] = {"mix_source": pa.string(), "mix_origin": pa.string()}
    Figures: ClassVar[type[Figures]] = MixFigures

    def __init__(self, config: MixConfig | None = None):
        super().__init__(config)
        self.config: MixConfig
        self._task_rows = 0
        self._task_tokens = 0
        self._task_types: Counter[str] = Counter()
        self._task_id_hashes = array.array("Q")  # 8 bytes per task row, for id collisions
        self._report: dict[str, Any] = {}
        self._decontam: DecontamStage | None = None
        self._pool_removed: Counter[str] = Counter()
        self._pool_examples: list[dict[str, Any]] = []
        self._sources()  # a missing general file fails now, not after the task data was read

    def process(self, batch: list[Record]) -> StageOutput:
        for r in batch:
            r.attrs["mix_source"] = "task"
            r.attrs["mix_origin"] = None
            self._task_rows += 1
            self._task_tokens += record_tokens(r)
            self._task_types[r.attrs.get("task_type") or "unscored"] += 1
            self._task_id_hashes.append(_id_hash(r.id))
        return StageOutput(kept=list(batch))

    # --- the general pool ---------------------------------------------------------------------------
    def _sources(self) -> list[str]:
        try:
            return expand_sources(self.config.general)
        except SourceError as e:
            raise SourceError(f"mix: general data: {e}") from None

    def _iter_pool(self, path: str) -> Iterator[tuple[Record | None, str]]:
        """(record or None for a bad row, reason) for every row of one general source."""
        if path.endswith(".parquet") and _RECORD_COLUMNS <= set(pq.read_schema(path).names):
            for batch in iter_record_batches(path, self.config.batch_size):
                for r in batch:
                    yield r, ""
            return
        icfg = IngestConfig(field_map=self.config.field_map, batch_size=self.config.batch_size)
        seen: Counter[str] = Counter()
        for _, rec, err in iter_records(path, icfg):
            if rec is None:
                yield None, err.reason
                continue
            if not rec.id:
                base = content_id(rec.messages, rec.text)
                rec.id = base if seen[base] == 0 else f"{base}~{seen[base]}"
                seen[base] += 1
            yield rec, ""

    def _decontaminated(self, rows: Iterator[tuple[Record | None, str]]) -> Iterator[tuple[Record | None, str]]:
        """The pool rows, those holding a benchmark item turned into bad rows (reason ``contaminated``).

        Only the first pass needs this: a row that is no stratum member is never chosen in the second.
        """
        if self.config.decontam is None:
            yield from rows
            return
        if self._decontam is None:
            self._decontam = DecontamStage(self.config.decontam)
        chunk: list[tuple[Record | None, str]] = []
        for row in itertools.chain(rows, [None]):  # None flushes the last chunk
            if row is not None:
                chunk.append(row)
                if len(chunk) < self.config.batch_size:
                    continue
            matches = iter(self._decontam.check([r for r, _ in chunk if r is not None]))
            for r, reason in chunk:
                m = next(matches) if r is not None else None
                if m is not None:
                    self._pool_removed[m.benchmark] += 1
                    if len(self._pool_examples) < 5:
                        self._pool_examples.append({"id": r.id, "source": r.source, "line": r.line, **m.as_dict()})
                    yield None, "contaminated"
                else:
                    yield r, reason
            chunk = []

    def _scan(
        self, sources: list[str]
    ) -> tuple[dict[tuple[int, str], np.ndarray], np.ndarray, dict[str, Any]]:
        """First pass: each pool row's stratum (source index, task type) and tokens; no texts kept."""
        strata: dict[tuple[int, str], list[int]] = {}
        tokens: list[int] = []
        bad: dict[str, Counter] = {}
        pos = 0
        for s_idx, path in enumerate(sources):
            pending: list[tuple[int, Record]] = []  # task types are found a batch at a time
            for rec, reason in self._decontaminated(self._iter_pool(path)):
                if rec is None:
                    bad.setdefault(path, Counter())[reason] += 1
                    tokens.append(0)
                else:
                    pending.append((pos, rec))
                    tokens.append(record_tokens(rec))
                    if len(pending) >= self.config.batch_size:
                        self._strata_of(pending, s_idx, strata)
                        pending = []
                pos += 1
            self._strata_of(pending, s_idx, strata)
        arrays = {k: np.asarray(v, dtype=np.int64) for k, v in strata.items()}
        return arrays, np.asarray(tokens, dtype=np.int64), {p: dict(c) for p, c in bad.items()}

    @staticmethod
    def _strata_of(pending: list[tuple[int, Record]], s_idx: int, strata: dict[tuple[int, str], list[int]]) -> None:
        """Add pool rows (position, record) to their (source, task type) strata, in order."""
        found = iter(classify_tasks([rec for _, rec in pending if not rec.attrs.get("task_type")]))
        for pos, rec in pending:
            task = rec.attrs.get("task_type") or next(found)
            strata.setdefault((s_idx, task), []).append(pos)

    @staticmethod
    def _label(rows: list[tuple[Record, str]], per_source: Counter[str], per_task: Counter[str]) -> list[Record]:
        """Task type and complexity (found a batch at a time) and the mix columns of chosen pool rows."""
        need_task = [rec for rec, _ in rows if "task_type" not in rec.attrs]
        for rec, task in zip(need_task, classify_tasks(need_task), strict=True):
            rec.attrs["task_type"] = task
        need_cx = [rec for rec, _ in rows if "complexity" not in rec.attrs]
        for rec, feats in zip(need_cx, complexity_features_many(need_cx), strict=True):
            rec.attrs["complexity"] = complexity_score(feats)
        for rec, path in rows:
            rec.attrs["mix_source"] = "general"
            rec.attrs["mix_origin"] = path
            per_source[path] += 1
            per_task[rec.attrs["task_type"]] += 1
        return [rec for rec, _ in rows]

    def added(self) -> Iterator[list[Record]]:
        cfg = self.config
        sources = self._sources()
        unit = "tokens" if cfg.by == "tokens" else "rows"
        task_total = self._task_tokens if cfg.by == "tokens" else self._task_rows
        target = round(cfg.ratio * task_total / (1.0 - cfg.ratio)) if cfg.ratio > 0 else 0
        self._report = {
            "by": cfg.by,
            "ratio": cfg.ratio,
            "task_rows": self._task_rows,
            "task_tokens": self._task_tokens,
            "target_general": target,
            "general_sources": sources,
        }
        if target == 0:
            self._report.update(general_rows=0, general_tokens=0, achieved_ratio=0.0)
            return
        if not sources:
            self._fail_or_warn(
                f"mix: ratio {cfg.ratio} needs {target} general {unit} but no general data is given "
                "(set mix.general to one or more files)",
                target,
                0,
            )
            return
        strata, tokens, bad = self._scan(sources)
        weight = tokens if cfg.by == "tokens" else np.ones(len(tokens), dtype=np.int64)
        pool_total = int(sum(weight[idx].sum() for idx in strata.values()))
        self._report.update(
            pool_rows=int(sum(len(v) for v in strata.values())), pool_total=pool_total, pool_bad_rows=bad
        )
        if self._decontam is not None:
            idx = self._decontam.stats().index
            self._report["pool_decontam"] = {
                "suite": self.config.decontam.suite,
                "index": idx.key,
                "benchmarks": idx.benchmarks,
                "skipped": idx.skipped,
                "removed": sum(self._pool_removed.values()),
                "removed_per_benchmark": dict(sorted(self._pool_removed.items())),
                "examples": self._pool_examples,
            }
        if pool_total < target:
            self._fail_or_warn(
                f"mix: the general pool has {pool_total} {unit} ({len(sources)} source(s)) but ratio {cfg.ratio} "
                f"of {task_total} task {unit} needs {target}; add general data, lower mix.ratio, or set "
                "mix.strict=false to use the whole pool",
                target,
                pool_total,
            )
        chosen = self._choose(strata, weight, target, len(sources))
        chosen_set = set(chosen.tolist())
        task_ids = np.unique(np.frombuffer(self._task_id_hashes, dtype=np.uint64))
        per_source: Counter[str] = Counter()
        per_task: Counter[str] = Counter()
        out: list[tuple[Record, str]] = []
        n_rows = n_tokens = 0
        pos = 0
        for path in sources:
            for rec, _ in self._iter_pool(path):
                here = pos
                pos += 1
                if rec is None or here not in chosen_set:
                    continue
                h = np.uint64(_id_hash(rec.id))
                i = np.searchsorted(task_ids, h)
                if i < len(task_ids) and task_ids[i] == h:
                    rec.id = f"{rec.id}~general"  # ids stay unique in the mixture
                n_rows += 1
                n_tokens += int(tokens[here])
                out.append((rec, path))
                if len(out) >= cfg.batch_size:
                    yield self._label(out, per_source, per_task)
                    out = []
        if out:
            yield self._label(out, per_source, per_task)
        general = n_tokens if cfg.by == "tokens" else n_rows
        self._report.update(
            general_rows=n_rows,
            general_tokens=n_tokens,
            achieved_ratio=round(general / (general + task_total), 4) if general + task_total else 0.0,
            general_per_source=dict(per_source),
            general_task_types=dict(sorted(per_task.items())),
            task_task_types=dict(sorted(self._task_types.items())),
        )

    def _fail_or_warn(self, message: str, target: int, available: int) -> None:
        if self.config.strict:
            raise MixPoolTooSmall(message)
        self._report["shortfall"] = {"target": target, "available": available, "missing": target - available}
        self._report["warning"] = message
        warnings.warn(message, stacklevel=2)
        log.warning(message)

    def _choose(
        self, strata: dict[tuple[int, str], np.ndarray], weight: np.ndarray, target: int, n_sources: int
    ) -> np.ndarray:
        """Pool positions to emit: source shares, then task-type shares, then seeded draws."""
        by_source: dict[int, dict[str, np.ndarray]] = {}
        for (s, task), idx in strata.items():
            by_source.setdefault(s, {})[task] = idx
        size = {s: int(sum(weight[i].sum() for i in d.values())) for s, d in by_source.items()}
        if self.config.source_balance == "proportional":
            shares = {s: size[s] for s in by_source}
        else:
            shares = {s: 1 for s in by_source}
        alloc = _water_fill(target, shares, size)
        chosen: list[np.ndarray] = []
        for s, tasks in sorted(by_source.items()):
            t_size = {t: int(weight[idx].sum()) for t, idx in tasks.items()}
            t_alloc = _water_fill(alloc.get(s, 0), t_size, t_size)
            for task, idx in sorted(tasks.items()):
                perm = idx[_rng(self.config.seed, s, task).permutation(len(idx))]
                want = t_alloc.get(task, 0)
                if want <= 0:
                    continue
                cum = np.cumsum(weight[perm])
                # the prefix whose size is closest to the stratum's share (exact for rows)
                k = min(int(np.searchsorted(cum, want, side="left")) + 1, len(perm))
                if k > 1 and abs(int(cum[k - 2]) - want) <= abs(int(cum[k - 1]) - want):
                    k -= 1
                chosen.append(perm[:k])
        return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)

    def stats(self) -> MixFigures:
        return MixFigures.model_validate(self._report)

    def fingerprint(self) -> str:
        if self.config.decontam is None:
            return super().fingerprint()
        # the benchmark files decide which pool rows may be replayed: editing them reruns the mix
        key = DecontamStage(self.config.decontam).key()
        return hashlib.sha256(f"{super().fingerprint()}|{key}".encode()).hexdigest()[:16]


def _water_fill(total: int, shares: dict[Any, int], capacity: dict[Any, int]) -> dict[Any, int]:
    """Split ``total`` in proportion to ``shares`` (largest remainder), capped by ``capacity``;
    what a capped key cannot take is split again among the others."""
    alloc = {k: 0 for k in shares}
    open_keys = [k for k in shares if capacity.get(k, 0) > 0 and shares[k] > 0]
    remaining = total
    while remaining > 0 and open_keys:
        weights = np.asarray([shares[k] for k in open_keys], dtype=np.float64)
        exact = remaining * weights / weights.sum()
        base = np.floor(exact).astype(np.int64)
        # largest remainder; ties by key order so the split is deterministic
        for j in np.argsort(-(exact - base), kind="stable")[: remaining - int(base.sum())]:
            base[j] += 1
        progressed = False
        for k, b in zip(open_keys, base, strict=True):
            give = min(int(b), capacity[k] - alloc[k])
            alloc[k] += give
            remaining -= give
            progressed = progressed or give > 0
        open_keys = [k for k in open_keys if alloc[k] < capacity[k]]
        if not progressed:
            break
    return alloc


def _rng(seed: int, source: int, task: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{seed}|{source}|{task}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _id_hash(rid: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )
