"""The typed result of a regression eval: what :func:`evals.run.evaluate` returns and writes as ``verdict.json``.

Everything a reader needs to render or act on a verdict is a field here, so renderers (CLI, report,
Prefect artifacts) and later stages (experiments, decontamination) read attributes instead of dict keys.

- :class:`PairedTest`: one paired comparison on the same items (base vs tuned, or arm vs arm): the
  per-item score compared, means, delta, confidence interval (and how it was computed), p-value (and
  which test), Holm-adjusted p-value when the test is part of the gate's family.
- :class:`TaskResult`: one benchmark: its accuracy test (the task's own metric, exact McNemar p), its
  continuous-score test (probability on the gold choice), which of the two decides, and its status.
- :class:`SuiteResult`: the suite-level non-inferiority test, pooled over the gated tasks with equal
  weights.
- :class:`Verdict`: PASS / REGRESSED / INCONCLUSIVE with the reason, the rule in words, every task, the
  suite test, the held-out target-task gain, rigidity, and an optional decontamination block.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from curation.errors import SftflowError
from curation.io import atomic_path

PASS, REGRESSED, INCONCLUSIVE = "PASS", "REGRESSED", "INCONCLUSIVE"
VerdictName = Literal["PASS", "REGRESSED", "INCONCLUSIVE"]

#: ``regressed``: a significant loss beyond the margin. ``non_inferior``: the task's own interval excludes
#: a loss of the margin. ``within_margin``: estimated change above -margin, too few items to exclude a
#: margin-sized loss on its own (the suite test covers it). ``undecided``: estimated loss beyond the
#: margin, not significant. ``uninformative``: the base model is at chance, so the task cannot show
#: forgetting (left out of the gate). ``not_gated``: reported only (perplexity signals).
TaskStatus = Literal["regressed", "non_inferior", "within_margin", "undecided", "uninformative", "not_gated"]

#: the per-item score a gate decision rests on: ``prob`` = probability on the gold answer (continuous),
#: ``accuracy`` = the task's own 0/1 metric
GateScore = Literal["prob", "accuracy"]

SCHEMA_VERSION = 2


class VerdictFileError(SftflowError, ValueError):
    """A verdict.json that cannot be read as a :class:`Verdict` (missing, not JSON, older format)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PairedTest(_Model):
    """A paired comparison of two models (``base`` = reference, ``tuned`` = candidate) on the same items."""

    #: what was compared per item: prob | acc | acc_norm | mc2 | exact_match | greedy | neg_bits_per_byte
    score: str
    n: int
    base: float
    tuned: float
    #: mean(tuned - base); positive = the candidate is better
    delta: float
    ci_low: float
    ci_high: float
    #: how the interval was computed, in words
    interval: str
    #: ``mcnemar_exact`` (0/1 scores) or ``sign_flip`` (continuous scores), ``stratified_sign_flip`` (pooled)
    test: str
    p_value: float
    #: Holm-adjusted over the gate's family of tests; None when the test is not part of it
    p_holm: float | None = None
    #: items where the candidate scored lower / higher than the reference
    lost: int = 0
    gained: int = 0


class Interval(_Model):
    mean: float
    ci_low: float
    ci_high: float


class PerplexityStats(_Model):
    """Perplexity-type figures of a task (WikiText: per word/token/byte and KL; LAMBADA: target perplexity)."""

    base_perplexity: float | None = None
    tuned_perplexity: float | None = None
    base_word_perplexity: float | None = None
    tuned_word_perplexity: float | None = None
    base_token_perplexity: float | None = None
    tuned_token_perplexity: float | None = None
    base_bits_per_byte: float | None = None
    tuned_bits_per_byte: float | None = None
    #: mean over tokens of KL(base || tuned)
    kl_to_base: float | None = None


class TaskResult(_Model):
    """One benchmark of the suite, base vs tuned on the same items."""

    task: str
    output_type: str
    #: the task's own metric (lm-eval's): acc, acc_norm, mc2, exact_match, bits_per_byte
    metric: str
    #: the task's spec lets it decide the verdict (before the informativeness check)
    gated: bool
    status: TaskStatus
    #: one line: why this status
    note: str = ""
    n: int
    #: the task's own metric, per item (0/1 where it is binary: exact McNemar p, Tango score interval)
    accuracy: PairedTest | None = None
    #: probability on the gold answer, normalised over the choices like the metric (continuous)
    prob: PairedTest | None = None
    #: which of the two the gate tests for this task
    decisive: GateScore = "accuracy"
    #: accuracy of a model that guesses (mean of 1/#choices); None when not meaningful
    chance: float | None = None
    #: the base model's mean metric and its Wilson interval (the informativeness check)
    base_accuracy: float | None = None
    base_accuracy_ci: tuple[float, float] | None = None
    #: acc and acc_norm of both models (multiple-choice tasks report both of lm-eval's metrics)
    both_metrics: dict[str, dict[str, float]] | None = None
    #: summed log-prob of the gold continuation, tuned - base (MC and LAMBADA)
    logprob_delta: Interval | None = None
    perplexity: PerplexityStats | None = None
    #: items the undecided test would need to decide at the observed effect (normal approximation)
    items_needed: int | None = None
    seconds: float | None = None

    @property
    def test(self) -> PairedTest | None:
        """The test the gate reads for this task."""
        if self.decisive == "prob" and self.prob is not None:
            return self.prob
        return self.accuracy

    @property
    def counted(self) -> bool:
        """Part of the gate: gated by its spec and informative."""
        return self.status not in ("uninformative", "not_gated")


class SuiteResult(_Model):
    """The suite-level non-inferiority test: the mean over gated tasks (equal weights) of each task's delta."""

    tasks: list[str]
    weighting: Literal["equal"] = "equal"
    test: PairedTest
    #: what the hidden-loss floor of the interval counts as its sample size: #tasks x smallest task
    n_effective: int
    status: TaskStatus
    note: str = ""
    items_needed: int | None = None


class TargetResult(_Model):
    """Fit to held-out curated target data: NLL per assistant token, base vs tuned (gain > 0 = better)."""

    data: str | None = None
    n: int
    metric: str = "nll_per_assistant_token"
    base_nll: float | None = None
    tuned_nll: float | None = None
    gain: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    base_perplexity: float | None = None
    tuned_perplexity: float | None = None
    note: str | None = None
    #: per held-out record (same order): its id and NLL per assistant token, base and tuned, so two tuned
    #: models evaluated on the same rows can be compared row by row (``flows.experiments``)
    ids: list[str] = Field(default_factory=list)
    base_nll_rows: list[float] = Field(default_factory=list)
    tuned_nll_rows: list[float] = Field(default_factory=list)


class RigidityResult(_Model):
    """How templated open-ended answers are, base vs tuned (see :mod:`evals.rigidity`)."""

    base: dict[str, float]
    tuned: dict[str, float]
    delta: dict[str, float]
    examples: list[dict[str, str]] = Field(default_factory=list)


class Contamination(_Model):
    """Was the training data decontaminated against the benchmarks this eval ran?

    Added to the verdict by the run wiring (``flows.runner.step_eval``) from the figures of the stages that made
    the training data (``curation.decontam.contamination_block``); the eval itself cannot know.
    """

    #: a decontam stage made the training data
    decontaminated: bool
    #: every eval task was checked, none skipped, and a replayed general pool was checked too
    covers_eval: bool = False
    suite: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    #: the decontamination index's cache key
    index: str | None = None
    benchmarks_checked: list[str] = Field(default_factory=list)
    eval_tasks_not_checked: list[str] = Field(default_factory=list)
    #: benchmark → why it was skipped
    skipped: dict[str, str] = Field(default_factory=dict)
    #: training rows dropped as overlapping a benchmark
    rows_removed: int = 0
    removed_per_benchmark: dict[str, int] = Field(default_factory=dict)
    #: the mixer's general pool: rows_removed, removed_per_benchmark (None: no pool was checked)
    general_pool: dict[str, Any] | None = None
    #: what was not checked, when something was not
    warning: str | None = None


class CacheStats(_Model):
    """Base-model results served from / added to the content-addressed cache (``$SFTFLOW_CACHE/eval``)."""

    hits: int = 0
    misses: int = 0
    folder: str | None = None


class Verdict(_Model):
    """The outcome of one before/after eval (``verdict.json``)."""

    schema_version: int = SCHEMA_VERSION
    verdict: VerdictName
    reason: str
    #: the rule, in words, with this run's margin and alpha
    verdict_rule: str
    recommendation: str | None = None
    margin: float
    alpha: float
    gate_score: GateScore
    tasks: dict[str, TaskResult]
    suite: SuiteResult | None = None
    #: per undecided test (task name or ``suite``): items it would need at the observed effect
    items_needed: dict[str, int | None] = Field(default_factory=dict)
    target: TargetResult | None = None
    rigidity: RigidityResult | None = None
    #: tasks not run, with why (data missing, no items)
    skipped: dict[str, str] = Field(default_factory=dict)
    #: None = unknown (the decontamination stage did not run or did not report)
    contamination: Contamination | None = None
    base: str
    adapter: str | None = None
    #: identical | adapter_toggle | merged_adapter | two_models
    comparison: str
    device: str
    config: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0
    task_seconds: dict[str, float] = Field(default_factory=dict)
    base_cache: CacheStats | None = None

    @property
    def gated_tasks(self) -> list[str]:
        """Tasks the gate counted (gated and informative)."""
        return [name for name, t in self.tasks.items() if t.counted]

    @property
    def uninformative(self) -> list[str]:
        return [name for name, t in self.tasks.items() if t.status == "uninformative"]

    def write(self, path: str | os.PathLike) -> Path:
        """Write as JSON, atomically."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Verdict:
        """Read a ``verdict.json``; one-line :class:`VerdictFileError` when it is not one of this version."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VerdictFileError(f"{path}: no such file") from None
        except (OSError, ValueError) as e:
            raise VerdictFileError(f"{path}: not a JSON file ({e})") from None
        if not isinstance(raw, dict) or raw.get("schema_version") != SCHEMA_VERSION:
            got = raw.get("schema_version", "none") if isinstance(raw, dict) else "none"
            raise VerdictFileError(
                f"{path}: verdict format {got}, this sftflow reads format {SCHEMA_VERSION} "
                "(re-run the eval to rebuild it)"
            )
        try:
            return cls.model_validate(raw)
        except ValueError as e:
            first = str(e).splitlines()
            raise VerdictFileError(f"{path}: not a valid verdict ({' '.join(first[:3])})") from None


__all__ = [
    "PASS",
    "REGRESSED",
    "INCONCLUSIVE",
    "CacheStats",
    "Contamination",
    "GateScore",
    "Interval",
    "PairedTest",
    "PerplexityStats",
    "RigidityResult",
    "SuiteResult",
    "TargetResult",
    "TaskResult",
    "TaskStatus",
    "Verdict",
    "VerdictFileError",
]
