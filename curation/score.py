"""The score stage: complexity, task type (:mod:`curation.features`) and optional embeddings per record."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from curation.diversity import EmbeddingModel, embed_texts, embedding_column, embedding_text
from curation.features import WEIGHTS, classify_task, complexity_features, complexity_score
from curation.records import Record
from curation.stage import Stage, StageOutput


class ScoreConfig(BaseModel):
    """Complexity + task type per record; optionally embeddings for selection."""

    model_config = ConfigDict(extra="forbid")

    embeddings: bool = Field(False, description="also store instruction embeddings (for select)")
    embedding_model: EmbeddingModel = Field(
        "minilm",
        description="minilm (all-MiniLM-L6-v2, offline) or hashing (char n-grams, fast, any language)",
    )


class ScoreStage(Stage):
    """Adds ``complexity``, ``task_type``, ``complexity_features`` (and ``embedding_<model>``)."""

    name: ClassVar[str] = "score"
    Config: ClassVar[type[BaseModel]] = ScoreConfig
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
        self._complexity_sum = 0.0
        self._hist = np.zeros(10, dtype=np.int64)

    def process(self, batch: list[Record]) -> StageOutput:
        for r in batch:
            feats = complexity_features(r)
            c = complexity_score(feats)
            r.attrs["complexity"] = c
            r.attrs["task_type"] = classify_task(r)
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
        return StageOutput(kept=list(batch))

    def stats(self) -> dict[str, Any]:
        n = int(self._hist.sum())
        task_types = {
            k.split(":", 1)[1]: v for k, v in sorted(self.counters.items()) if k.startswith("task_type:")
        }
        langs = {k.split(":", 1)[1]: v for k, v in sorted(self.counters.items()) if k.startswith("lang:")}
        return {
            "task_types": task_types,
            "langs": langs,
            "complexity_mean": round(self._complexity_sum / n, 4) if n else None,
            "complexity_histogram": {
                f"{i / 10:.1f}-{(i + 1) / 10:.1f}": int(v) for i, v in enumerate(self._hist)
            },
            "weights": WEIGHTS,
            "embeddings": embedding_column(self.config.embedding_model) if self.config.embeddings else None,
        }
