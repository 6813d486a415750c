"""Diversity-aware selection: keep the best rows that are not near-copies of rows already kept.

Ranking score per row (``rank_by``), stored as ``selection_score``:

- ``[quality, complexity]`` (the default, Deita-style): the product of the columns. ``quality``
  counts as 1.0 when no quality stage ran; ``complexity`` is computed on the fly when the score
  stage did not run.
- one column, ``rank_by: ifd``: any numeric column a stage or a scorer wrote (IFD, a judge score).
- ``{ifd: 0.7, quality: 0.3}``: the weighted sum; a negative weight ranks low values first.

A row whose ranking column is empty (the scorer could not score it) ranks after every scored row
(its ledger detail repeats the scorer's ``<column>_note``, e.g. ``ifd_note``); a column no input row
has is a config error naming it.

Misaligned rows: when the score stage computed ``ifd`` (instruction-following difficulty, see
:mod:`training.ifd`), rows with ``ifd >= misaligned_ifd`` — the instruction does not help the model
predict the answer, typically an answer that belongs to another question — are dropped with reason
``misaligned`` before anything is ranked, whatever the method. Rows without an IFD are not affected.
This is the one place IFD drops rows.

DEITA-style combinations: ``rank_by: [quality, ifd]`` (the product, like DEITA's quality x
complexity score) or ``{ifd: 1.0, quality: 0.5}``; ``score_first`` then adds DEITA's diversity
filter (a row too similar to a kept one is skipped).

Methods (both deterministic: ties break by input order):

- ``score_first`` (Deita-style): walk rows by descending ranking score; keep a row only if its
  cosine similarity to the nearest already-kept row is below ``similarity_threshold``; stop at
  ``budget`` rows. Candidates are checked in blocks: one matrix product against all kept rows per
  block, then the rows inside the block are resolved in order, so the cost is
  O(rows x kept x dim) flops done by BLAS, and memory is the kept embeddings plus one block.
- ``kcenter``: greedy k-center (farthest-first traversal). Start from the best-ranked row, then
  repeatedly add the row farthest from everything selected, until ``budget`` rows are selected or
  every remaining row is within ``similarity_threshold`` of a selected one. It maximises coverage
  of the embedding space regardless of rank; cost O(budget x rows x dim).
- ``random``: a uniform random sample of ``budget`` rows (seeded), ignoring rank and similarity: the
  baseline a ranking has to beat at the same budget.

``fit`` keeps only compact per-row state (id, ranking score, float16 embedding, task type,
language); texts are only seen again in ``process``. Rows not selected go to the ledger with reason
``not_selected`` and the ranking score (and, for near-copies, the kept row they resemble) in the
detail. Stats report distributions and diversity before/after: "before" is a uniform random sample
of the input of the same size as the "after" sample of kept rows, so it doubles as the
random-selection baseline at equal size.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.diversity import (
    EmbeddingModel,
    coverage,
    distinct_n,
    embed_records,
    embedding_column,
    embedding_dim,
    embedding_metrics,
    entropy,
    max_similarity,
    sample_indices,
    verb_noun,
    verb_noun_stats,
)
from curation.errors import ConfigError
from curation.features import classify_tasks, complexity_features_many, complexity_score
from curation.records import Record
from curation.stage import Drop, Stage, StageOutput
from curation.stats import Figures, Same, Sum

_BLOCK = 1024
#: default IFD at or above which a row counts as misaligned (measured: bench/ifd_bench.py, bench/RESULTS.md)
MISALIGNED_IFD = 1.0
#: fixed IFD histogram bins (values above the last edge count in the last bin)
IFD_EDGES = [round(0.1 * i, 1) for i in range(16)]
#: examples per kind in the IFD figures (lowest, highest kept, misaligned)
IFD_EXAMPLES = 3


class SelectConfig(BaseModel):
    """Which rows to keep: a budget, a method, and how similar two kept rows may be."""

    model_config = ConfigDict(extra="forbid")

    budget: int | None = Field(
        None, ge=1, description="rows to keep (None: every row that passes the threshold)"
    )
    method: Literal["score_first", "kcenter", "random"] = "score_first"
    similarity_threshold: float = Field(
        0.9, gt=-1.0, le=1.0, description="cosine similarity at or above which a row counts as a near-copy"
    )
    embeddings: EmbeddingModel = Field(
        "auto",
        description="auto (MiniLM for non-Chinese rows, hashing for Chinese rows, never compared across), "
        "minilm (semantic, English-centric) or hashing (char n-grams, any language, fast)",
    )
    rank_by: str | list[str] | dict[str, float] = Field(
        default_factory=lambda: ["quality", "complexity"],
        description="ranking score: a column, a list of columns (their product) or {column: weight} "
        "(the weighted sum); default quality x complexity",
    )
    misaligned_ifd: float | None = Field(
        MISALIGNED_IFD,
        gt=0,
        description="drop rows whose ifd (score: {ifd: ...}) is at or above this as misaligned; "
        "null keeps them; rows without an ifd are not affected",
    )
    sample_rows: int = Field(2000, ge=10, description="rows sampled for the before/after diversity metrics")
    seed: int = 0

    @field_validator("rank_by")
    @classmethod
    def _some_column(cls, v: str | list[str] | dict[str, float]) -> str | list[str] | dict[str, float]:
        if not v:
            raise ValueError("name at least one column to rank by")
        return v

    def rank_columns(self) -> tuple[list[str], list[float] | None]:
        """(columns, weights): weights None means the product of the columns."""
        if isinstance(self.rank_by, str):
            return [self.rank_by], None
        if isinstance(self.rank_by, dict):
            return list(self.rank_by), list(self.rank_by.values())
        return list(self.rank_by), None

    def rank_description(self) -> str:
        cols, weights = self.rank_columns()
        if weights is None:
            return " x ".join(cols)
        return " + ".join(f"{w:g} x {c}" for c, w in zip(cols, weights, strict=True))


class IfdSummary(Figures):
    """IFD of a set of rows (the scored ones): count, mean, median, counts per bin of ``IfdFigures.edges``."""

    rows: int = 0
    mean: float | None = None
    median: float | None = None
    histogram: list[int] = Field(default_factory=list)


class IfdExample(Figures):
    """A row shown in the report's IFD section: its id, IFD, both losses, the start of its texts."""

    id: str
    ifd: float
    loss_given_instruction: float | None = None
    loss_answer_only: float | None = None
    instruction: str = ""
    answer: str = ""


class IfdFigures(Figures):
    """IFD before/after selection: the misaligned threshold, histograms, unscored rows, examples
    (``lowest``, ``highest_kept``, ``misaligned``)."""

    threshold: float | None = None
    edges: list[float] = Field(default_factory=list, min_length=2)
    before: IfdSummary = Field(default_factory=IfdSummary)
    after: IfdSummary = Field(default_factory=IfdSummary)
    unscored: int = 0
    examples: dict[str, list[IfdExample]] = Field(default_factory=dict)


class SelectFigures(Figures):
    """What the select stage reports. Selection ranks all rows at once, so it never runs on shards;
    the merge rules only say what each figure is."""

    method: Annotated[str, Same] = "score_first"
    embeddings: Annotated[str, Same] = "auto"
    rows_in: Annotated[int, Sum] = 0
    rows_selected: Annotated[int, Sum] = 0
    budget: Annotated[int | None, Same] = None
    #: budget - rows selected, when not enough rows pass the similarity threshold
    budget_shortfall: Annotated[int, Sum] = 0
    #: the lowest ranking score kept when the budget was filled
    score_cutoff: float | None = None
    rank_by: Annotated[str, Same] = ""
    #: rows whose rank_by column was empty (ranked last)
    rank_missing: Annotated[int, Sum] = 0
    #: rows dropped as misaligned (ifd >= misaligned_ifd)
    misaligned: Annotated[int, Sum] = 0
    #: IFD before/after selection (only when the input has an ifd column)
    ifd: IfdFigures | None = None
    #: distributions of all input rows / of the kept rows (task types, languages, complexity)
    before: dict[str, Any] = Field(default_factory=dict)
    after: dict[str, Any] = Field(default_factory=dict)
    #: diversity of a random sample vs the selected sample, and their coverage of the input
    diversity: dict[str, Any] = Field(default_factory=dict)
    warning: str | None = None


class SelectStage(Stage):
    """Keeps a high-scoring, diverse subset; the rest go to the ledger as ``not_selected``."""

    name: ClassVar[str] = "select"
    Config: ClassVar[type[BaseModel]] = SelectConfig
    Figures: ClassVar[type[Figures]] = SelectFigures
    needs_fit: ClassVar[bool] = True
    version = 1
    attr_fields: ClassVar[dict[str, pa.DataType]] = {"selection_score": pa.float64()}

    def __init__(self, config: SelectConfig | None = None):
        super().__init__(config)
        self.config: SelectConfig
        self._reset()

    def _reset(self) -> None:
        self._ids: list[str] = []
        self._rank = np.zeros(0, dtype=np.float64)
        self._emb = np.zeros((0, embedding_dim(self.config.embeddings)), dtype=np.float16)
        self._task: list[str] = []
        self._lang: list[str] = []
        self._complexity = np.zeros(0, dtype=np.float32)
        self._keep = np.zeros(0, dtype=bool)
        self._nn_sim = np.zeros(0, dtype=np.float32)
        self._nn_idx = np.zeros(0, dtype=np.int64)
        self._pos = 0
        self._rank_seen: set[str] = set()
        self._rank_missing = 0
        self._missing_note: dict[int, str] = {}
        self._ifd = np.zeros(0, dtype=np.float64)
        self._misaligned = np.zeros(0, dtype=bool)
        self._ifd_examples: dict[int, str] = {}  # row -> which example list it belongs to
        self._ifd_example_rows: dict[str, list[dict[str, Any]]] = {}
        self._before_sample: set[int] = set()
        self._after_sample: set[int] = set()
        self._texts: dict[str, list[tuple[str, str]]] = {"before": [], "after": []}

    # --- first pass: compact state, then the selection ------------------------------------------
    def fit(self, batches: Iterable[list[Record]]) -> None:
        self._reset()
        col = embedding_column(self.config.embeddings)
        dim = embedding_dim(self.config.embeddings)
        rank_cols, weights = self.config.rank_columns()
        ranks: list[np.ndarray] = []
        embs: list[np.ndarray] = []
        cplx: list[float] = []
        ifd: list[float] = []
        for batch in batches:
            if not batch:
                continue
            r_batch = np.empty(len(batch), dtype=np.float64)
            # rows the score stage did not see: their features, a batch at a time
            missing_cx = iter(complexity_features_many([r for r in batch if r.attrs.get("complexity") is None]))
            missing_task = iter(classify_tasks([r for r in batch if not r.attrs.get("task_type")]))
            for i, r in enumerate(batch):
                c = r.attrs.get("complexity")
                if c is None:
                    c = complexity_score(next(missing_cx))
                v = r.attrs.get("ifd")
                ifd.append(math.nan if v is None else float(v))
                r_batch[i] = self._rank_value(r, float(c), rank_cols, weights)
                if math.isnan(r_batch[i]):
                    self._note_missing(r, rank_cols)
                cplx.append(float(c))
                self._ids.append(r.id)
                self._task.append(r.attrs.get("task_type") or next(missing_task))
                self._lang.append(r.lang)
            ranks.append(r_batch)
            stored = [r.attrs.get(col) for r in batch]
            if all(e is not None and len(e) == dim for e in stored):
                e_batch = np.asarray(stored, dtype=np.float32)  # computed by the score stage
            else:
                e_batch = embed_records(batch, self.config.embeddings)
            embs.append(e_batch.astype(np.float16))
        unseen = [c for c in rank_cols if c not in ("quality", "complexity") and c not in self._rank_seen]
        if unseen and self._ids:
            raise ConfigError(
                f"select.rank_by: no input row has a column {unseen[0]!r}; turn on the scorer that writes it "
                f"in the score stage (score: {{{unseen[0]}: {{...}}}}) or rank by another column"
            )
        if ranks:
            self._rank = np.concatenate(ranks)
            self._emb = np.concatenate(embs)
            self._complexity = np.asarray(cplx, dtype=np.float32)
            self._ifd = np.asarray(ifd, dtype=np.float64)
        n = len(self._ids)
        self._nn_sim = np.full(n, np.nan, dtype=np.float32)
        self._nn_idx = np.full(n, -1, dtype=np.int64)
        self._misaligned = np.zeros(n, dtype=bool)
        if self.config.misaligned_ifd is not None:
            with np.errstate(invalid="ignore"):
                self._misaligned = self._ifd >= self.config.misaligned_ifd
        if self.config.method == "kcenter":
            self._keep = self._select_kcenter()
        elif self.config.method == "random":
            self._keep = self._select_random()
        else:
            self._keep = self._select_score_first()
        self._pick_ifd_examples()
        kept = np.flatnonzero(self._keep)
        m = min(self.config.sample_rows, len(kept))
        self._before_sample = set(sample_indices(n, m, self.config.seed).tolist())
        self._after_sample = set(kept[sample_indices(len(kept), m, self.config.seed)].tolist())

    def _rank_value(self, r: Record, complexity: float, cols: list[str], weights: list[float] | None) -> float:
        """The ranking score of one row (NaN when a ranking column is empty on it)."""
        values = []
        for col in cols:
            if col == "complexity":
                v: Any = complexity
            elif col == "quality":
                v = r.attrs.get("quality")
                v = 1.0 if v is None else v
            else:
                if col in r.attrs:
                    self._rank_seen.add(col)
                v = r.attrs.get(col)
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    self._rank_missing += 1
                    return math.nan
            if isinstance(v, str) or not isinstance(v, (int, float)):
                raise ConfigError(f"select.rank_by: column {col!r} is not numeric (row {r.id}: {v!r})")
            values.append(float(v))
        if weights is not None:
            return sum(w * v for w, v in zip(weights, values, strict=True))
        score = values[0]
        for v in values[1:]:
            score *= v
        return score

    def _note_missing(self, r: Record, cols: list[str]) -> None:
        """Remember why a row has no ranking score, when its scorer said so (``<column>_note``)."""
        for col in cols:
            note = r.attrs.get(f"{col}_note")
            if r.attrs.get(col) is None and note:
                self._missing_note[len(self._ids)] = f"{col}_note: {note}"
                return

    def _order(self) -> np.ndarray:
        """Candidate row indices by descending ranking score (unscored rows last), input order breaking
        ties; misaligned rows are never candidates."""
        order = np.lexsort((np.arange(len(self._rank)), -self._rank_key()))
        return order[~self._misaligned[order]]

    def _select_random(self) -> np.ndarray:
        n = len(self._ids)
        keep = np.zeros(n, dtype=bool)
        candidates = np.flatnonzero(~self._misaligned)
        budget = self.config.budget if self.config.budget is not None else len(candidates)
        picked = np.random.default_rng(self.config.seed).permutation(candidates)[:budget]
        keep[picked] = True
        return keep

    def _rank_key(self) -> np.ndarray:
        return np.where(np.isnan(self._rank), -np.inf, self._rank)

    def _select_score_first(self) -> np.ndarray:
        n = len(self._ids)
        keep = np.zeros(n, dtype=bool)
        budget = self.config.budget if self.config.budget is not None else n
        thr = self.config.similarity_threshold
        dim = self._emb.shape[1]
        kept_emb = np.empty((min(budget, n, 4096), dim), dtype=np.float32)
        kept_rows: list[int] = []
        order = self._order()
        for start in range(0, n, _BLOCK):
            if len(kept_rows) >= budget:
                break
            block = order[start : start + _BLOCK]
            x = self._emb[block].astype(np.float32)
            best, arg = max_similarity(x, kept_emb[: len(kept_rows)])
            inner = x @ x.T
            local_kept: list[int] = []
            for i, row in enumerate(block):
                if len(kept_rows) >= budget:
                    break
                sim, nn = float(best[i]), int(kept_rows[arg[i]]) if arg[i] >= 0 else -1
                if local_kept:
                    j = int(np.argmax(inner[i, local_kept]))
                    if inner[i, local_kept[j]] > sim:
                        sim, nn = float(inner[i, local_kept[j]]), int(block[local_kept[j]])
                self._nn_sim[row], self._nn_idx[row] = sim, nn
                if sim < thr:
                    keep[row] = True
                    local_kept.append(i)
                    kept_rows.append(int(row))
            if local_kept:
                needed = len(kept_rows)
                if needed > len(kept_emb):
                    grown = np.empty((min(max(needed, 2 * len(kept_emb)), n), dim), dtype=np.float32)
                    grown[: needed - len(local_kept)] = kept_emb[: needed - len(local_kept)]
                    kept_emb = grown
                kept_emb[needed - len(local_kept) : needed] = x[local_kept]
        return keep

    def _select_kcenter(self) -> np.ndarray:
        n = len(self._ids)
        keep = np.zeros(n, dtype=bool)
        if n == 0:
            return keep
        budget = self.config.budget if self.config.budget is not None else n
        thr = self.config.similarity_threshold
        best_sim = np.full(n, -np.inf, dtype=np.float32)  # similarity to the nearest selected row
        nn = np.full(n, -1, dtype=np.int64)
        # The active set: rows that may still be picked, as one contiguous float32 matrix. Rows
        # within the threshold of a centre never can be: they leave it every 32 steps, so later
        # steps scan fewer rows and no step copies the full matrix.
        active = np.arange(n)
        rank_key = self._rank_key()
        xa = self._emb.astype(np.float32)
        sim_a = best_sim.copy()
        sim_a[self._misaligned] = np.inf  # never picked, like a centre
        nn_a = nn.copy()
        order = self._order()
        if len(order) == 0:
            return keep
        pos = int(order[0])  # the first centre: the best-ranked row
        for step in range(budget):
            center = int(active[pos])
            keep[center] = True
            sims = xa @ xa[pos]
            better = sims > sim_a
            sim_a[better] = sims[better]
            nn_a[better] = center
            sim_a[pos] = np.inf  # a centre is never picked again
            if step % 32 == 31:
                stay = sim_a < thr
                gone = active[~stay]
                best_sim[gone], nn[gone] = sim_a[~stay], nn_a[~stay]
                active, xa, sim_a, nn_a = active[stay], xa[stay], sim_a[stay], nn_a[stay]
            if len(active) == 0:
                break
            # farthest row = lowest similarity to the centres; ties: better-ranked, then earlier row
            lowest = sim_a.min()
            if lowest >= thr:
                break
            tied = np.flatnonzero(sim_a == lowest)
            pos = (
                int(tied[np.lexsort((active[tied], -rank_key[active[tied]]))[0]])
                if len(tied) > 1
                else int(tied[0])
            )
        best_sim[active], nn[active] = sim_a, nn_a
        self._nn_sim[:] = best_sim
        self._nn_idx[:] = nn
        self._nn_sim[keep] = np.nan
        self._nn_idx[keep] = -1
        return keep

    # --- second pass: decisions and text-level stats -----------------------------------------------
    def process(self, batch: list[Record]) -> StageOutput:
        out = StageOutput()
        for r in batch:
            p = self._pos
            if p >= len(self._ids) or self._ids[p] != r.id:
                raise RuntimeError(
                    f"select: row {p} is {r.id!r} but fit saw {self._ids[p] if p < len(self._ids) else 'nothing'!r}; "
                    "the input changed between the two passes"
                )
            self._pos += 1
            rank = float(self._rank[p])
            r.attrs["selection_score"] = None if math.isnan(rank) else round(rank, 6)
            if p in self._before_sample:
                self._texts["before"].append((r.instruction(), r.lang))
            if p in self._ifd_examples:
                self._ifd_example_rows.setdefault(self._ifd_examples[p], []).append(_example(r, self._ifd[p]))
            if self._keep[p]:
                if p in self._after_sample:
                    self._texts["after"].append((r.instruction(), r.lang))
                out.kept.append(r)
                continue
            if self._misaligned[p]:
                out.dropped.append(self._drop_misaligned(r, p))
                continue
            out.dropped.append(self._drop(r, p, rank))
        return out

    def _drop_misaligned(self, r: Record, p: int) -> Drop:
        with_i, without = r.attrs.get("ifd_loss_given_instruction"), r.attrs.get("ifd_loss_answer_only")
        losses = (
            f" (answer loss {with_i:.3f} nats/token with the instruction, {without:.3f} without)"
            if isinstance(with_i, float) and isinstance(without, float)
            else ""
        )
        return Drop(
            r,
            "misaligned",
            f"ifd {self._ifd[p]:.3f} >= {self.config.misaligned_ifd:g}: the instruction does not help "
            f"predict the answer{losses}",
        )

    def _drop(self, r: Record, p: int, rank: float) -> Drop:
        # a row whose rank_by column is empty ranked last
        if math.isnan(rank):
            why = f"; {self._missing_note[p]}" if p in self._missing_note else ""
            score = f"no score ({self.config.rank_description()} empty{why})"
        else:
            score = f"score {rank:.4f}"
        thr = self.config.similarity_threshold
        sim, nn = float(self._nn_sim[p]), int(self._nn_idx[p])
        if nn >= 0 and sim >= thr:
            return Drop(
                r,
                "not_selected",
                f"{score}; similarity {sim:.3f} >= {thr} to kept row {self._ids[nn]}",
                duplicate_of=self._ids[nn],
            )
        if np.isnan(sim):
            return Drop(
                r, "not_selected", f"{score}; budget {self.config.budget} filled before this row"
            )
        return Drop(
            r,
            "not_selected",
            f"{score}; budget {self.config.budget} filled (nearest kept similarity {sim:.3f})",
        )

    # --- report -------------------------------------------------------------------------------------
    def stats(self) -> SelectFigures:
        n = len(self._ids)
        kept = np.flatnonzero(self._keep)
        before_idx = np.asarray(sorted(self._before_sample), dtype=np.int64)
        after_idx = np.asarray(sorted(self._after_sample), dtype=np.int64)
        emb_before = self._emb[before_idx].astype(np.float32)
        emb_after = self._emb[after_idx].astype(np.float32)
        all_idx = np.arange(n)
        out: dict[str, Any] = {
            "method": self.config.method,
            "embeddings": self.config.embeddings,
            "rows_in": n,
            "rows_selected": int(len(kept)),
            "budget": self.config.budget,
            "budget_shortfall": max(0, self.config.budget - len(kept)) if self.config.budget else 0,
            "score_cutoff": self._cutoff(kept),
            "rank_by": self.config.rank_description(),
            "rank_missing": self._rank_missing,
            "misaligned": int(self._misaligned.sum()),
            "ifd": self._ifd_figures(kept),
            "before": self._distribution(all_idx),
            "after": self._distribution(kept),
            "diversity": {
                "sample_rows": int(len(after_idx)),
                "note": "before = uniform random sample of the input, same size as the after sample of kept rows",
                "before": {
                    **embedding_metrics(emb_before, seed=self.config.seed),
                    **self._text_metrics("before"),
                },
                "after": {
                    **embedding_metrics(emb_after, seed=self.config.seed),
                    **self._text_metrics("after"),
                },
                "coverage_of_input": {
                    "random_same_size": coverage(self._emb, emb_before, seed=self.config.seed),
                    "selected": coverage(self._emb, emb_after, seed=self.config.seed),
                },
            },
        }
        if out["budget_shortfall"]:
            out["warning"] = (
                f"only {len(kept)} rows pass similarity_threshold {self.config.similarity_threshold}; "
                f"budget {self.config.budget} not filled (raise the threshold to fill it)"
            )
        return SelectFigures(**out)

    def _pick_ifd_examples(self) -> None:
        """Rows shown as IFD examples: the lowest, the highest kept, the highest dropped as misaligned."""
        self._ifd_examples, self._ifd_example_rows = {}, {}
        scored = np.flatnonzero(~np.isnan(self._ifd))
        if not len(scored):
            return
        by_ifd = scored[np.lexsort((scored, self._ifd[scored]))]  # ascending, input order breaking ties
        kinds = {
            "lowest": by_ifd[:IFD_EXAMPLES],
            "highest_kept": by_ifd[self._keep[by_ifd]][::-1][:IFD_EXAMPLES],
            "misaligned": by_ifd[self._misaligned[by_ifd]][::-1][:IFD_EXAMPLES],
        }
        for kind, rows in kinds.items():
            for p in rows:
                self._ifd_examples.setdefault(int(p), kind)

    def _ifd_figures(self, kept: np.ndarray) -> IfdFigures | None:
        scored = ~np.isnan(self._ifd)
        if not scored.any():
            return None

        def hist(values: np.ndarray) -> list[int]:
            clipped = np.clip(values[~np.isnan(values)], IFD_EDGES[0], IFD_EDGES[-1])
            return [int(v) for v in np.histogram(clipped, bins=IFD_EDGES)[0]]

        def summary(values: np.ndarray) -> dict[str, Any]:
            v = values[~np.isnan(values)]
            if not len(v):
                return {"rows": 0}
            return {"rows": int(len(v)), "mean": round(float(v.mean()), 4), "median": round(float(np.median(v)), 4)}

        examples = {
            kind: sorted(rows, key=lambda e: e["ifd"], reverse=kind != "lowest")
            for kind, rows in self._ifd_example_rows.items()
        }
        return IfdFigures(
            threshold=self.config.misaligned_ifd,
            edges=IFD_EDGES,
            before={**summary(self._ifd), "histogram": hist(self._ifd)},
            after={**summary(self._ifd[kept]), "histogram": hist(self._ifd[kept])},
            unscored=int((~scored).sum()),
            examples=examples,
        )

    def _cutoff(self, kept: np.ndarray) -> float | None:
        """The lowest ranking score kept when the budget was filled (rows without one left out)."""
        if not (self.config.budget and len(kept) >= self.config.budget):
            return None
        scores = self._rank[kept]
        scores = scores[~np.isnan(scores)]
        return round(float(scores.min()), 6) if len(scores) else None

    def _distribution(self, idx: np.ndarray) -> dict[str, Any]:
        tasks = Counter(self._task[i] for i in idx)
        langs = Counter(self._lang[i] for i in idx)
        c = self._complexity[idx] if len(idx) else np.zeros(0)
        hist = np.histogram(c, bins=10, range=(0.0, 1.0))[0] if len(c) else np.zeros(10, dtype=int)
        return {
            "rows": int(len(idx)),
            "task_types": dict(sorted(tasks.items())),
            "task_type_entropy": entropy(tasks),
            "langs": dict(sorted(langs.items())),
            "complexity_mean": round(float(c.mean()), 4) if len(c) else None,
            "complexity_histogram": [int(v) for v in hist],
        }

    def _text_metrics(self, which: str) -> dict[str, Any]:
        rows = self._texts[which]
        texts = [t for t, _ in rows]
        return {
            "distinct_1": distinct_n(texts, 1),
            "distinct_2": distinct_n(texts, 2),
            "verb_noun": verb_noun_stats((verb_noun(t, lang) for t, lang in rows), top=10),
        }


def _example(r: Record, ifd: float) -> dict[str, Any]:
    """A row shown in the IFD figures: its id, IFD, losses and the start of its instruction and answer."""
    return {
        "id": r.id,
        "ifd": round(float(ifd), 4),
        "loss_given_instruction": r.attrs.get("ifd_loss_given_instruction"),
        "loss_answer_only": r.attrs.get("ifd_loss_answer_only"),
        "instruction": r.instruction()[:300],
        "answer": r.response()[:300],
    }
