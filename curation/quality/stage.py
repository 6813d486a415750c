"""The quality stage: score every record (rules, optional classifier), then drop by rule or classifier score."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from typing import Annotated, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.quality.base import RuleResult
from curation.quality.rules import RulesConfig, rule_plan, rules_score, run_plan
from curation.records import Record
from curation.stage import Drop, Stage, StageOutput
from curation.stats import Concat, Figures, Histogram, Same, Sum


class QualityConfig(BaseModel):
    """Quality stage settings. Rules only by default; a classifier when ``model`` names a file."""

    model_config = ConfigDict(extra="forbid")
    rules: RulesConfig = Field(default_factory=RulesConfig)
    model: str | None = Field(None, description="fastText model trained by `sftflow quality train`")
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="keep records with classifier p(high quality) >= threshold (0.5 if unset)",
    )
    top_percent: float | None = Field(
        None,
        gt=0,
        le=100,
        description="instead of a threshold: keep rows in the top X% of classifier scores (ranked over all input rows)",
    )
    pii: bool = Field(
        False, description="flag emails / phone numbers / ID numbers in quality_flags (never drops)"
    )
    annotate_only: bool = Field(False, description="score and flag every record, drop nothing")
    examples_per_reason: int = Field(3, ge=0, description="dropped examples kept per reason in stats")
    histogram_bins: int = Field(10, ge=1, le=100)

    @model_validator(mode="after")
    def _classifier_settings(self) -> QualityConfig:
        if self.model is None and (self.threshold is not None or self.top_percent is not None):
            raise ValueError("threshold/top_percent need a classifier: set model to a trained model file")
        if self.threshold is not None and self.top_percent is not None:
            raise ValueError("set either threshold or top_percent, not both")
        return self


class ClassifierFigures(Figures):
    """The classifier's part of the quality figures."""

    model: Annotated[str | None, Same] = None
    #: p(high quality) below which a row is dropped (the threshold, or the top-percent cut)
    cutoff: Annotated[float | None, Same] = None
    top_percent: Annotated[float | None, Same] = None
    score_histogram: Histogram = Field(default_factory=Histogram)


class QualityFigures(Figures):
    """What the quality stage reports (``stats.json`` ``extra``)."""

    #: rows dropped per rule: a row is dropped for its first rule (priority order)
    dropped_by_rule: Annotated[dict[str, int], Sum] = Field(default_factory=dict)
    #: every rule that fired, counted once per row (a row can fire several)
    rules_fired: Annotated[dict[str, int], Sum] = Field(default_factory=dict)
    #: the quality score of every row in
    score_histogram: Histogram = Field(default_factory=Histogram)
    dropped_examples: Annotated[dict[str, list[dict[str, str]]], Concat(cap="examples_per_reason")] = Field(
        default_factory=dict
    )
    classifier: ClassifierFigures | None = None


class QualityStage(Stage):
    """Scores every record (rules, optional classifier), then drops by rule or by classifier score."""

    name: ClassVar[str] = "quality"
    Config: ClassVar[type[BaseModel]] = QualityConfig
    Figures: ClassVar[type[Figures]] = QualityFigures
    version = 1
    attr_fields: ClassVar[dict[str, pa.DataType]] = {
        "quality": pa.float64(),
        "quality_rules": pa.float64(),
        "quality_model": pa.float64(),
        "quality_flags": pa.string(),
        "quality_signals": pa.string(),
    }

    def __init__(self, config: QualityConfig | None = None):
        super().__init__(config)
        self.config: QualityConfig
        self.classifier = None
        if self.config.model is not None:
            from curation.quality_model import QualityClassifier

            self.classifier = QualityClassifier.load(self.config.model)
        # a top-percent cut needs every score first
        self.needs_fit = self.classifier is not None and self.config.top_percent is not None
        self.cutoff: float | None = None
        if self.classifier is not None and self.config.top_percent is None:
            self.cutoff = self.config.threshold if self.config.threshold is not None else 0.5
        bins = self.config.histogram_bins
        self.histogram = [0] * bins
        self.model_histogram = [0] * bins
        self.fired: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, str]]] = {}
        self.n_seen = 0

    def fingerprint(self) -> str:
        base = super().fingerprint()
        if self.classifier is None:
            return base
        return f"{base}-{self.classifier.fingerprint[:8]}"

    # -- first pass (top_percent only): scores → cutoff, nothing else kept --------------------------
    def fit(self, batches: Iterable[list[Record]]) -> None:
        """Score every row once to find the top-percent cutoff (8 bytes per row; ties at the cutoff stay)."""
        import numpy as np

        assert self.classifier is not None and self.config.top_percent is not None
        parts = [np.asarray(self.classifier.predict(batch), dtype=np.float64) for batch in batches]
        scores = np.concatenate(parts) if parts else np.zeros(0)
        if not len(scores):
            self.cutoff = 0.0
            return
        k = max(1, math.ceil(len(scores) * self.config.top_percent / 100))
        self.cutoff = float(np.partition(scores, len(scores) - k)[len(scores) - k])

    def process(self, batch: list[Record]) -> StageOutput:
        out = StageOutput()
        probs = self.classifier.predict(batch) if self.classifier is not None else [None] * len(batch)
        plan = rule_plan(self.config.rules, pii=self.config.pii)
        for rec, prob in zip(batch, probs, strict=True):
            results = run_plan(rec, plan)
            r_score = rules_score(results)
            fired = [r for r in results if r.fired]
            quality = r_score if prob is None else r_score * prob
            rec.attrs["quality"] = round(quality, 4)
            rec.attrs["quality_rules"] = r_score
            rec.attrs["quality_model"] = None if prob is None else round(prob, 4)
            rec.attrs["quality_flags"] = ",".join(r.rule for r in fired)
            rec.attrs["quality_signals"] = json.dumps(
                {r.rule: r.detail for r in fired}
                | {f"{r.rule}.severity": round(r.severity, 3) for r in results if 0 < r.severity < 1},
                ensure_ascii=False,
            )
            self._count(quality, prob, fired)
            drop = self._decide(fired, prob)
            if drop is None or self.config.annotate_only:
                out.kept.append(rec)
            else:
                out.dropped.append(Drop(rec, drop[0], drop[1]))
                self.dropped[drop[0]] += 1
                self._example(drop[0], drop[1], rec)
        return out

    def _decide(self, fired: list[RuleResult], prob: float | None) -> tuple[str, str] | None:
        dropping = [r for r in fired if not r.flag_only]
        if dropping:
            first = dropping[0]
            also = [r.rule for r in dropping[1:]]
            return first.rule, first.detail + (f" (also: {', '.join(also)})" if also else "")
        if prob is not None and self.cutoff is not None and prob < self.cutoff:
            how = (
                f"top_percent {self.config.top_percent:g}% cutoff {self.cutoff:.3f}"
                if self.config.top_percent is not None
                else f"threshold {self.cutoff:g}"
            )
            return "low_quality", f"classifier p(high quality) {prob:.3f} < {how}"
        return None

    def _count(self, quality: float, prob: float | None, fired: list[RuleResult]) -> None:
        bins = self.config.histogram_bins
        self.n_seen += 1
        self.histogram[min(bins - 1, int(quality * bins))] += 1
        if prob is not None:
            self.model_histogram[min(bins - 1, int(prob * bins))] += 1
        for r in fired:
            self.fired[r.rule] += 1

    def _example(self, reason: str, detail: str, rec: Record) -> None:
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.config.examples_per_reason:
            ex.append(
                {
                    "id": rec.id,
                    "detail": detail[:300],
                    "instruction": rec.instruction()[:200] if rec.messages is not None else "",
                    "response": (rec.response() if rec.messages is not None else rec.text or "")[:300],
                }
            )

    def stats(self) -> QualityFigures:
        bins = self.config.histogram_bins
        edges = [round(i / bins, 4) for i in range(bins + 1)]
        classifier = None
        if self.classifier is not None:
            classifier = ClassifierFigures(
                model=self.config.model,
                cutoff=self.cutoff,
                top_percent=self.config.top_percent,
                score_histogram=Histogram(edges=edges, counts=list(self.model_histogram)),
            )
        return QualityFigures(
            dropped_by_rule=dict(sorted(self.dropped.items())),
            rules_fired=dict(sorted(self.fired.items())),
            score_histogram=Histogram(edges=edges, counts=list(self.histogram)),
            dropped_examples=self.examples,
            classifier=classifier,
        )


__all__ = ["ClassifierFigures", "QualityConfig", "QualityFigures", "QualityStage"]
