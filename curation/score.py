"""The score stage: complexity, task type (:mod:`curation.features`), optional embeddings, and model-backed scorers.

Built-in columns: ``complexity``, ``task_type``, ``complexity_features`` (and ``embedding_<model>``
with ``embeddings: true``). Any scorer registered in :data:`curation.registry.SCORERS` is turned on
by its name, with its settings: ``score: {ifd: {model: smollm2-135m-instruct}}`` in a recipe,
``--set ifd.model=smollm2-135m-instruct`` on the command line; its columns are added next to the
built-in ones, cached per row (see :mod:`curation.scorers`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.diversity import EmbeddingModel, embed_texts, embedding_column, embedding_text
from curation.errors import ConfigError
from curation.features import WEIGHTS, classify_tasks, complexity_features_many, complexity_score
from curation.records import Record
from curation.scorers import ScoreCache, Scorer, ScorerSettings, get_scorer, score_records, scorer_settings
from curation.stage import Stage, StageOutput
from curation.stats import Figures, Mean, Same, Sum


class ScoreConfig(BaseModel):
    """Complexity + task type per record; optionally embeddings for selection; scorers by name.

    Every key besides the ones below names a registered scorer and holds its settings.
    """

    model_config = ConfigDict(extra="allow")

    embeddings: bool = Field(False, description="also store instruction embeddings (for select)")
    embedding_model: EmbeddingModel = Field(
        "minilm",
        description="minilm (all-MiniLM-L6-v2, offline) or hashing (char n-grams, fast, any language)",
    )

    @model_validator(mode="after")
    def _scorer_sections(self) -> ScoreConfig:
        extra = self.model_extra or {}
        for name, raw in list(extra.items()):
            extra[name] = scorer_settings(name, raw)
        return self

    def scorers(self) -> dict[str, ScorerSettings]:
        """The scorers turned on, by registered name, with their settings."""
        return dict(self.model_extra or {})


class ScoreFigures(Figures):
    """What the score stage reports (``stats.json`` ``extra``)."""

    task_types: Annotated[dict[str, int], Sum] = Field(default_factory=dict)
    langs: Annotated[dict[str, int], Sum] = Field(default_factory=dict)
    complexity_mean: Annotated[float | None, Mean] = None
    complexity_histogram: Annotated[dict[str, int], Sum] = Field(default_factory=dict)
    weights: Annotated[dict[str, float], Same] = Field(default_factory=dict)
    #: the embedding column written (None: no embeddings)
    embeddings: Annotated[str | None, Same] = None
    #: per model-backed scorer: rows, cache_hits, scored, batches, load_seconds, score_seconds
    scorers: Annotated[dict[str, dict[str, float]], Sum] = Field(default_factory=dict)
    #: the columns each scorer writes
    scorer_columns: Annotated[dict[str, list[str]], Same] = Field(default_factory=dict)


class ScoreStage(Stage):
    """Adds ``complexity``, ``task_type``, ``complexity_features`` (and ``embedding_<model>``)."""

    name: ClassVar[str] = "score"
    Config: ClassVar[type[BaseModel]] = ScoreConfig
    Figures: ClassVar[type[Figures]] = ScoreFigures
    version = 1
    attr_fields: ClassVar[dict[str, pa.DataType]] = {
        "complexity": pa.float64(),
        "task_type": pa.string(),
        "complexity_features": pa.string(),
    }

    def __init__(self, config: ScoreConfig | None = None):
        super().__init__(config)
        self.config: ScoreConfig
        if self.config.embeddings:
            # instance-level copy: the class dict is shared by every ScoreStage
            self.attr_fields = {
                **type(self).attr_fields,
                embedding_column(self.config.embedding_model): pa.list_(pa.float32()),
            }
        # model-backed scorers: one process-wide instance each (the model loads once per process)
        self.scorers: dict[str, Scorer] = {n: get_scorer(n, st) for n, st in self.config.scorers().items()}
        for name, scorer in self.scorers.items():
            for col, typ in scorer.columns().items():
                if col in self.attr_fields:
                    raise ConfigError(f"score.{name}: column {col!r} is already written by the score stage")
                self.attr_fields = {**self.attr_fields, col: typ}
        self._caches: dict[str, ScoreCache | None] = {}  # opened on first use, in the process that scores
        self._scorer_stats: dict[str, dict[str, Any]] = {
            n: {"rows": 0, "cache_hits": 0, "scored": 0, "batches": 0, "load_seconds": 0.0, "score_seconds": 0.0}
            for n in self.scorers
        }
        self._complexity_sum = 0.0
        self._hist = np.zeros(10, dtype=np.int64)

    def fingerprint(self) -> str:
        """The stage's fingerprint, plus every scorer's (which covers its model weights)."""
        base = super().fingerprint()
        if not self.scorers:
            return base
        parts = "|".join(f"{n}:{s.fingerprint()}" for n, s in sorted(self.scorers.items()))
        return f"{base}-{hashlib.sha256(parts.encode()).hexdigest()[:8]}"

    def process(self, batch: list[Record]) -> StageOutput:
        # every pattern runs over the whole batch at once (curation.features)
        for r, feats, task in zip(batch, complexity_features_many(batch), classify_tasks(batch), strict=True):
            c = complexity_score(feats)
            r.attrs["complexity"] = c
            r.attrs["task_type"] = task
            r.attrs["complexity_features"] = json.dumps(feats, ensure_ascii=False, sort_keys=True)
            self.counters[f"task_type:{r.attrs['task_type']}"] += 1
            self.counters[f"lang:{r.lang}"] += 1
            self._complexity_sum += c
            self._hist[min(9, int(c * 10))] += 1
        if self.config.embeddings and batch:
            emb = embed_texts([embedding_text(r) for r in batch], self.config.embedding_model)
            col = embedding_column(self.config.embedding_model)
            for r, e in zip(batch, emb, strict=True):
                r.attrs[col] = e.tolist()
        for name, scorer in self.scorers.items():
            if name not in self._caches:
                self._caches[name] = ScoreCache.for_scorer(name, scorer) if scorer.settings.cache else None
            values = score_records(name, scorer, batch, self._caches[name], self._scorer_stats[name])
            for col, vals in values.items():
                for r, v in zip(batch, vals, strict=True):
                    r.attrs[col] = v
        return StageOutput(kept=list(batch))

    def stats(self) -> ScoreFigures:
        n = int(self._hist.sum())
        task_types = {
            k.split(":", 1)[1]: v for k, v in sorted(self.counters.items()) if k.startswith("task_type:")
        }
        langs = {k.split(":", 1)[1]: v for k, v in sorted(self.counters.items()) if k.startswith("lang:")}
        return ScoreFigures(
            task_types=task_types,
            langs=langs,
            complexity_mean=round(self._complexity_sum / n, 4) if n else None,
            complexity_histogram={f"{i / 10:.1f}-{(i + 1) / 10:.1f}": int(v) for i, v in enumerate(self._hist)},
            weights=WEIGHTS,
            embeddings=embedding_column(self.config.embedding_model) if self.config.embeddings else None,
            scorers={n: dict(st) for n, st in self._scorer_stats.items()},
            scorer_columns={n: list(s.columns()) for n, s in self.scorers.items()},
        )
