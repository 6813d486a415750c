"""Exclude stage: drop rows that copy a row of a reference file, exactly or nearly.

Used to keep evaluation rows out of training data that did not go through dedup with them: the
curated-vs-raw experiment trains one arm on the raw sources, and the held-out rows (drawn from the
curated set) must not be in it — neither verbatim nor as a near copy that the raw data still holds.

A row is a copy when its normalised text (:func:`~curation.records.normalize_text` of the whole
record) equals a reference row's, or when the MinHash-estimated Jaccard similarity of their shingle
sets (the dedup stage's signatures) is at least ``threshold``. The reference is small (held-out rows),
so every row is compared with every reference row; no LSH banding, so no missed pair.

Ledger reason: ``excluded_copy`` (``duplicate_of`` = the reference row's id, ``detail`` = exact or
the estimated Jaccard).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curation.io import iter_record_batches
from curation.minhash import SignatureBuilder
from curation.records import Record, normalize_text
from curation.stage import Drop, Stage, StageOutput
from curation.stats import Figures, Same, Sum


class ExcludeConfig(BaseModel):
    """Which rows to keep out, and how close a copy must be."""

    model_config = ConfigDict(extra="forbid")
    reference: str = Field(..., description="records parquet whose rows (and near copies of them) are dropped")
    threshold: float = Field(0.7, gt=0.0, le=1.0, description="estimated Jaccard at which a row is a near copy")
    num_perm: int = Field(128, ge=8, le=1024)
    ngram: int = Field(3, ge=1, le=32, description="word n-gram size (as dedup)")
    cjk_ngram: int = Field(3, ge=1, le=32, description="character n-gram size for CJK text (as dedup)")


class ExcludeFigures(Figures):
    reference_rows: Annotated[int, Same] = 0
    exact: Annotated[int, Sum] = 0
    near: Annotated[int, Sum] = 0


def _exact_key(norm: str) -> bytes:
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=8).digest()


class ExcludeStage(Stage):
    """Drops copies of the reference rows; see the module docstring."""

    name: ClassVar[str] = "exclude"
    Config: ClassVar[type[BaseModel]] = ExcludeConfig
    Figures: ClassVar[type[Figures]] = ExcludeFigures
    input_file_fields: ClassVar[tuple[str, ...]] = ("reference",)
    version = 1

    config: ExcludeConfig

    def __init__(self, config: ExcludeConfig | None = None):
        super().__init__(config)
        c = self.config
        self.builder = SignatureBuilder(num_perm=c.num_perm, seed=1, ngram=c.ngram, cjk_ngram=c.cjk_ngram)
        ids, texts = [], []
        for batch in iter_record_batches(c.reference):
            for r in batch:
                ids.append(r.id)
                texts.append(normalize_text(r.full_text()))
        self._ref_ids = ids
        self._ref_exact = {_exact_key(t): i for i, t in enumerate(texts)}
        self._ref_sigs = self.builder.signatures(texts)[0] if texts else np.zeros((0, c.num_perm), np.uint32)
        self.figures = ExcludeFigures(reference_rows=len(ids))

    def process(self, batch: list[Record]) -> StageOutput:
        out = StageOutput()
        norms = [normalize_text(r.full_text()) for r in batch]
        sims = np.zeros((len(batch), len(self._ref_ids)))
        if len(self._ref_ids) and batch:
            sigs = self.builder.signatures(norms)[0]
            # the reference is small: all pairs, one row of the batch at a time
            sims = np.stack([(s[None, :] == self._ref_sigs).mean(axis=1) for s in sigs])
        for j, (r, norm) in enumerate(zip(batch, norms, strict=True)):
            hit = self._ref_exact.get(_exact_key(norm)) if norm else None
            if hit is not None:
                self.figures.exact += 1
                out.dropped.append(Drop(r, "excluded_copy", "exact copy", duplicate_of=self._ref_ids[hit]))
                continue
            if len(self._ref_ids) and norm:
                best = int(np.argmax(sims[j]))
                if sims[j, best] >= self.config.threshold:
                    self.figures.near += 1
                    out.dropped.append(Drop(r, "excluded_copy", f"near copy (estimated Jaccard {sims[j, best]:.2f})",
                                            duplicate_of=self._ref_ids[best]))
                    continue
            out.kept.append(r)
        return out

    def stats(self) -> ExcludeFigures:
        return self.figures
