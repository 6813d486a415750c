"""Dedup stage: exact duplicates (normalised-text hash) and near duplicates (MinHash LSH).

``fit`` makes one pass over the input keeping only compact per-row state (id, 8-byte text hash,
MinHash signature, the keep-priority key), then clusters:

1. exact: rows with the same :func:`~curation.records.normalize_text` hash form a group;
2. near: one row per exact group is banded (``bands x rows`` from datasketch's optimal-parameter
   search for ``threshold``, ``num_perm`` and the fp/fn weights); rows sharing a band are
   candidates, and a candidate pair becomes an edge when its estimated Jaccard (from the
   signatures; exact shingle-set Jaccard with ``verify_jaccard``) is >= ``threshold``;
3. clusters are the connected components of those edges (union-find); each keeps its best row:
   highest ``attrs["quality"]`` when present, else longest response, ties by smallest id. The
   edges and the winner depend only on the rows, never on their order or the batch size.

With ``index`` set, earlier runs' accepted rows take part as members that always win: a row
duplicating one of them is dropped with ``duplicate_of`` = that earlier id, and this run's kept
rows are added to the index once the last batch is processed.

Ledger reasons: ``exact_duplicate`` / ``near_duplicate`` (``duplicate_of`` = kept id, ``detail`` =
estimated Jaccard with it), ``empty_text`` (nothing left after normalisation), ``not_text`` (the
deduplicated field is not text).
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections import Counter, defaultdict
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curation.dedup_index import DedupIndex, open_index
from curation.minhash import (
    ShingleHash,
    SignatureBuilder,
    band_keys,
    candidate_probability,
    error_rates,
    lsh_params,
    remove_punctuation,
)
from curation.records import Record, normalize_text
from curation.stage import Drop, Stage, StageOutput
from curation.stats import Figures, Sum

_KEEP, _EXACT, _NEAR, _EMPTY, _NOT_TEXT = 0, 1, 2, 3, 4
_REASONS = {_EXACT: "exact_duplicate", _NEAR: "near_duplicate", _EMPTY: "empty_text", _NOT_TEXT: "not_text"}
# Buckets larger than this connect every member to the bucket's best member only (not all pairs),
# so a huge cluster of near-copies costs O(size) comparisons, not O(size^2).
_ALL_PAIRS_MAX = 32


class _ChunkedRows:
    """A 2-D array kept as the batches it arrived in: rows are gathered on demand, so the
    signatures never exist twice (a concatenation would double the peak memory of ``fit``)."""

    def __init__(self, width: int, dtype: type):
        self.width, self.dtype = width, dtype
        self.parts: list[np.ndarray] = []
        self.starts = np.zeros(1, dtype=np.int64)

    def append(self, part: np.ndarray) -> None:
        self.parts.append(part)
        self.starts = np.append(self.starts, self.starts[-1] + len(part))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def row(self, i: int) -> np.ndarray:
        p = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[p][i - self.starts[p]]

    def take(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), self.width), dtype=self.dtype)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        order = np.argsort(part, kind="stable")
        sorted_part = part[order]
        bounds = np.flatnonzero(np.r_[True, sorted_part[1:] != sorted_part[:-1]]) if len(idx) else []
        for lo, hi in zip(bounds, [*bounds[1:], len(idx)], strict=True):
            p = int(sorted_part[lo])
            sel = order[lo:hi]
            out[sel] = self.parts[p][idx[sel] - self.starts[p]]
        return out

    def chunks(self, idx: np.ndarray, size: int = 65536):
        """``(positions, rows)`` for ``idx`` in slices of ``size`` rows (bounded temporary memory)."""
        for lo in range(0, len(idx), size):
            yield idx[lo : lo + size], self.take(idx[lo : lo + size])


class DedupConfig(BaseModel):
    """Exact + near-duplicate removal."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(
        0.8, gt=0.0, lt=1.0, description="Jaccard similarity at which rows are near duplicates"
    )
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations")
    ngram: int = Field(3, ge=1, le=32, description="word n-gram size for space-delimited text")
    cjk_ngram: int = Field(3, ge=1, le=32, description="character n-gram size for CJK and mixed text")
    field: Literal["instruction", "prompt", "all"] = Field(
        "all", description="what is compared: first user turn, all non-assistant turns, or the whole record"
    )
    exact: bool = Field(True, description="drop rows whose normalised text is identical")
    near: bool = Field(True, description="drop MinHash-LSH near duplicates")
    punctuation_insensitive: bool = Field(False, description="exact matching ignores punctuation too")
    index: str | None = Field(
        None,
        description="persistent index of accepted rows: a folder, or redis://host:port/db[?basename=name]",
    )
    update_index: bool = Field(True, description="add this run's kept rows to the index")
    seed: int = Field(1, ge=0, description="MinHash permutation seed (datasketch's `seed`)")
    # Candidates are checked against their signatures before they count, so an LSH false positive
    # only costs a comparison while a false negative is a missed duplicate: weigh misses higher.
    fp_weight: float = Field(
        0.2, ge=0.0, le=1.0, description="weight of false positives in the bands/rows search"
    )
    fn_weight: float = Field(
        0.8, ge=0.0, le=1.0, description="weight of false negatives in the bands/rows search"
    )
    verify_jaccard: bool = Field(
        False,
        description="check candidate pairs with the exact Jaccard of their shingle sets (keeps shingle hashes)",
    )
    max_shingles: int = Field(
        20_000, ge=16, description="per-record cap: bigger records use a consistent sample of their shingles"
    )
    shingle_hash: ShingleHash = Field(
        "poly64", description="poly64 (vectorised) or sha1 (datasketch's default hash, slower)"
    )
    top_clusters: int = Field(10, ge=0, description="largest clusters shown in stats")

    @model_validator(mode="after")
    def _weights(self) -> DedupConfig:
        if self.fp_weight + self.fn_weight <= 0:
            raise ValueError("fp_weight + fn_weight must be > 0")
        return self


class LshFigures(Figures):
    """The banding chosen for the threshold and what it implies (dedup is a global stage: never merged)."""

    model_config = ConfigDict(populate_by_name=True)

    threshold: float
    num_perm: int
    bands: int
    rows: int
    #: (Jaccard similarity, probability that a pair that similar becomes a candidate)
    s_curve: list[tuple[float, float]] = Field(default_factory=list)
    false_positive_area: float = 0.0
    false_negative_area: float = 0.0
    p_candidate_at_threshold: float = 0.0
    p_candidate_below: float = Field(0.0, alias="p_candidate_at_threshold_minus_0.1")


class PairFigures(Figures):
    """Candidate pairs LSH proposed and how many the signature check confirmed."""

    candidates: Annotated[int, Sum] = 0
    verified: Annotated[int, Sum] = 0
    index_candidates: Annotated[int, Sum] = 0
    index_verified: Annotated[int, Sum] = 0
    rejected_by_exact_jaccard: Annotated[int, Sum] = 0
    accepted_by_exact_jaccard_below_estimate: Annotated[int, Sum] = 0
    #: candidates whose signatures disagree: LSH false positives caught by the check
    candidate_rejection_rate: float = 0.0
    #: near-duplicate pairs LSH probably never proposed (from the S-curve at the found pairs' similarities)
    estimated_missed_pairs: float = 0.0
    estimated_miss_rate: float = 0.0


class SourceDuplicates(Figures):
    rows: Annotated[int, Sum] = 0
    exact_duplicate: Annotated[int, Sum] = 0
    near_duplicate: Annotated[int, Sum] = 0
    duplicate_rate: float = 0.0


class ClusterMember(Figures):
    id: str
    kept: bool
    text: str


class Cluster(Figures):
    size: int
    members: list[ClusterMember] = Field(default_factory=list)


class IndexFigures(Figures):
    spec: str
    entries_before: int


class DedupFigures(Figures):
    """Dedup's own figures (``stats.json`` ``extra``)."""

    #: rows whose shingles were capped at ``max_shingles``
    capped_records: Annotated[int, Sum] = 0
    #: rows shingled by characters (CJK, or too short for word n-grams)
    char_shingled_records: Annotated[int, Sum] = 0
    lsh: LshFigures | None = None
    pairs: PairFigures = Field(default_factory=PairFigures)
    per_source: dict[str, SourceDuplicates] = Field(default_factory=dict)
    largest_clusters: list[Cluster] = Field(default_factory=list)
    #: the persistent index, when one is used
    index: IndexFigures | None = None


class DedupStage(Stage):
    """Exact and near-duplicate removal; see the module docstring."""

    name: ClassVar[str] = "dedup"
    Config: ClassVar[type[BaseModel]] = DedupConfig
    attr_fields: ClassVar[dict[str, pa.DataType]] = {"dedup_cluster_size": pa.int64()}
    needs_fit: ClassVar[bool] = True
    Figures: ClassVar[type[Figures]] = DedupFigures
    version = 1

    config: DedupConfig

    def __init__(self, config: DedupConfig | None = None):
        super().__init__(config)
        c = self.config
        self.bands, self.rows = lsh_params(c.threshold, c.num_perm, c.fp_weight, c.fn_weight)
        self.builder = SignatureBuilder(
            num_perm=c.num_perm,
            seed=c.seed,
            ngram=c.ngram,
            cjk_ngram=c.cjk_ngram,
            max_shingles=c.max_shingles,
            shingle_hash=c.shingle_hash,
        )
        self._reset()

    # -- settings that make signatures comparable across runs ------------------------------------
    def index_settings(self) -> dict[str, Any]:
        c = self.config
        return {
            "num_perm": c.num_perm,
            "seed": c.seed,
            "ngram": c.ngram,
            "cjk_ngram": c.cjk_ngram,
            "field": c.field,
            "punctuation_insensitive": c.punctuation_insensitive,
            "max_shingles": c.max_shingles,
            "shingle_hash": c.shingle_hash,
            "scheme": "affine32",
        }

    def _reset(self) -> None:
        self.counters = Counter()
        self._ids: list[str] = []
        self._exact: list[np.ndarray] = []
        self._sigs = _ChunkedRows(self.config.num_perm, np.uint32)
        self._band_keys: list[np.ndarray] = []
        self._status: list[np.ndarray] = []
        self._near_ok: list[np.ndarray] = []
        self._quality: list[np.ndarray] = []
        self._resp_len: list[np.ndarray] = []
        self._shingles: list[tuple[np.ndarray, np.ndarray]] = []
        self._status_detail: dict[int, str] = {}
        self._pos = 0
        self._n = 0
        self._index: DedupIndex | None = None
        self._per_source: dict[str, Counter] = defaultdict(Counter)
        self._cluster_texts: dict[int, list[dict[str, Any]]] = {}
        self._top: list[tuple[int, int]] = []
        self._pairs = Counter()
        self._committed = False
        self._pos_processed = 0
        self._missed_pairs = 0.0
        self._index_entries_before = 0

    # -- fit: compact state, then clusters --------------------------------------------------------
    def fit(self, batches) -> None:
        self._reset()
        c = self.config
        for batch in batches:
            self._fit_batch(batch)
        n = self._n = len(self._ids)
        status = np.concatenate(self._status) if self._status else np.zeros(0, np.int8)
        exact = np.concatenate(self._exact) if self._exact else np.zeros(0, np.uint64)
        near_ok = np.concatenate(self._near_ok) if self._near_ok else np.zeros(0, bool)
        sigs = self._sigs  # the big state (num_perm x 4 bytes per row), kept in its batches
        band_keys_all = (
            np.concatenate(self._band_keys) if self._band_keys else np.zeros((0, self.bands), np.uint64)
        )
        self._band_keys.clear()
        self._exact_all = exact
        self._near_ok_all = near_ok
        self._exact.clear()

        # rank 0 = the row every cluster would rather keep: quality, then response length, then id
        quality = np.concatenate(self._quality) if self._quality else np.zeros(0)
        resp_len = np.concatenate(self._resp_len) if self._resp_len else np.zeros(0, np.int64)
        has_q = ~np.isnan(quality)
        ids_arr = np.array(self._ids, dtype=object)
        order = np.lexsort((ids_arr.astype(str), -resp_len, -np.where(has_q, quality, 0.0), ~has_q))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)

        if c.index is not None:
            # a rerun of the same run (crash between index commit and publish) must not meet its own rows
            tag = hashlib.sha256(self.run_key.encode()).hexdigest()[:24] if self.run_key else None
            self._index = open_index(c.index, self.index_settings(), self.bands, self.rows, run_tag=tag)
            self._index_entries_before = len(self._index)

        valid = np.flatnonzero(status == _KEEP)
        # nodes: this run's rows (0..n-1) then earlier index entries that some row matches
        edges_a: list[np.ndarray] = []
        edges_b: list[np.ndarray] = []
        old_ids: list[str] = []
        old_seq: list[int] = []
        old_node: dict[str, int] = {}
        old_sig: dict[int, np.ndarray] = {}
        old_exact: dict[int, str] = {}  # exact key -> earlier entry with that text

        def old(entry_ids: list[str], seqs: np.ndarray, entry_sigs: np.ndarray | None = None) -> np.ndarray:
            out = np.empty(len(entry_ids), dtype=np.int64)
            for j, (eid, s) in enumerate(zip(entry_ids, seqs, strict=True)):
                if eid not in old_node:
                    old_node[eid] = n + len(old_ids)
                    old_ids.append(eid)
                    old_seq.append(int(s))
                out[j] = old_node[eid]
                if entry_sigs is not None:
                    old_sig[int(out[j])] = entry_sigs[j]
            return out

        # 1. exact groups: connect each row to its group's best row
        if c.exact and len(valid):
            keys = exact[valid]
            grp_order = np.lexsort((rank[valid], keys))
            sorted_keys = keys[grp_order]
            first = np.ones(len(valid), dtype=bool)
            first[1:] = sorted_keys[1:] != sorted_keys[:-1]
            head = valid[grp_order][np.maximum.accumulate(np.where(first, np.arange(len(valid)), 0))]
            members = valid[grp_order]
            dup = members != head
            edges_a.append(members[dup])
            edges_b.append(head[dup])
            reps = members[first]
            if self._index is not None:
                m = self._index.exact_matches(exact[reps])
                if len(m.row):
                    edges_a.append(reps[m.row])
                    edges_b.append(old(m.entry_id, m.entry_seq))
                    old_exact.update(zip(exact[reps[m.row]].tolist(), m.entry_id, strict=True))
        else:
            reps = valid

        # 2. near duplicates among one row per exact group (+ earlier index entries)
        if c.near:
            reps = reps[near_ok[reps]]
            reps = reps[np.argsort(rank[reps], kind="stable")]
            a, b = self._candidate_pairs(band_keys_all[reps])
            del band_keys_all
            self._pairs["candidates"] += len(a)
            a, b = reps[a], reps[b]
            keep, est = self._similar(a, b)
            self._pairs["verified"] += int(keep.sum())
            # Each found pair of similarity s had probability P(s) of becoming a candidate, so it
            # stands for 1/P(s) pairs like it, (1-P(s))/P(s) of them missed (Horvitz-Thompson).
            p = candidate_probability(est[keep], self.bands, self.rows)
            self._missed_pairs += float(np.sum((1 - p) / np.maximum(p, 1e-12)))
            edges_a.append(a[keep])
            edges_b.append(b[keep])
            for chunk, chunk_sigs in sigs.chunks(reps) if self._index is not None else ():
                m = self._index.near_matches(chunk_sigs, self.bands, self.rows)
                if len(m.row):
                    rows_ = chunk[m.row]
                    self._pairs["index_candidates"] += len(rows_)
                    est = (chunk_sigs[m.row] == m.entry_sig).mean(axis=1)
                    ok = est >= c.threshold
                    self._pairs["index_verified"] += int(ok.sum())
                    edges_a.append(rows_[ok])
                    edges_b.append(
                        old(
                            [e for e, k in zip(m.entry_id, ok, strict=True) if k],
                            m.entry_seq[ok],
                            m.entry_sig[ok],
                        )
                    )

        # 3. connected components; the winner is the earliest index entry, else the best-ranked row
        n_nodes = n + len(old_ids)
        ea = np.concatenate(edges_a) if edges_a else np.zeros(0, np.int64)
        eb = np.concatenate(edges_b) if edges_b else np.zeros(0, np.int64)
        graph = coo_matrix((np.ones(len(ea), dtype=np.int8), (ea, eb)), shape=(n_nodes, n_nodes))
        _, label = connected_components(graph, directed=False)
        node_key = np.concatenate(
            [rank + len(old_ids), np.argsort(np.argsort(old_seq, kind="stable"))]
        ).astype(np.int64)
        best = np.full(label.max() + 1 if n_nodes else 0, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(best, label, node_key)
        key_to_node = np.empty(n_nodes, dtype=np.int64)
        key_to_node[node_key] = np.arange(n_nodes)
        winner = key_to_node[best[label[:n]]] if n else np.zeros(0, np.int64)

        decision = status.astype(np.int8).copy()
        dropped = (status == _KEEP) & (winner != np.arange(n))
        same_text = np.zeros(n, dtype=bool)
        to_new = dropped & (winner < n)
        same_text[to_new] = exact[to_new] == exact[winner[to_new]]
        for r in np.flatnonzero(dropped & (winner >= n)):
            same_text[r] = old_exact.get(int(exact[r])) == old_ids[winner[r] - n]
        decision[dropped] = np.where(same_text[dropped] & c.exact, _EXACT, _NEAR)
        self._decision = decision
        self._winner = winner
        self._old_ids = old_ids
        self._old_sig = old_sig
        cluster_size = (
            np.bincount(label[:n][status == _KEEP], minlength=len(best)) if n else np.zeros(0, np.int64)
        )
        self._cluster_size = cluster_size[label[:n]] if n else np.zeros(0, np.int64)
        self._label = label[:n]
        self._pick_top_clusters(cluster_size, label, n)

    def _fit_batch(self, batch: list[Record]) -> None:
        c = self.config
        m = len(batch)
        status = np.zeros(m, dtype=np.int8)
        exact = np.zeros(m, dtype=np.uint64)
        quality = np.full(m, np.nan)
        resp_len = np.zeros(m, dtype=np.int64)
        normalized: list[str] = []
        for j, r in enumerate(batch):
            self._ids.append(r.id)
            q = r.attrs.get("quality")
            if isinstance(q, numbers.Real) and not isinstance(q, bool) and math.isfinite(q):
                quality[j] = float(q)
            try:
                text = self._field_text(r)
                resp_len[j] = len(r.response() if r.messages is not None else text)
            except (TypeError, AttributeError, KeyError) as err:
                status[j] = _NOT_TEXT
                self._status_detail[self._pos + j] = f"field {c.field!r} is not text: {err}"
                normalized.append("")
                continue
            norm = normalize_text(text)
            if not norm:
                status[j] = _EMPTY
                self._status_detail[self._pos + j] = f"field {c.field!r} is empty after normalisation"
                normalized.append("")
                continue
            # = normalize_text(text, punctuation=True), from the normalised text we already have
            key_text = remove_punctuation(norm) if c.punctuation_insensitive else norm
            exact[j] = int.from_bytes(
                hashlib.blake2b(key_text.encode("utf-8"), digest_size=8).digest(), "little"
            )
            normalized.append(norm)
        if c.near:
            sigs, sh = self.builder.signatures(normalized, keep_hashes=c.verify_jaccard)
            near_ok = (np.diff(sh.offsets) > 0) & (status == _KEEP)
            self.counters["capped_records"] += int(sh.capped.sum())
            self.counters["char_shingled_records"] += int((sh.char_mode & near_ok).sum())
            if c.verify_jaccard:
                self._shingles.append((sh.hashes, sh.offsets))
        else:
            # exact only: no signatures; a zero-copy view keeps the shapes uniform
            sigs = np.broadcast_to(np.zeros(c.num_perm, dtype=np.uint32), (m, c.num_perm))
            near_ok = np.zeros(m, dtype=bool)
        self._pos += m
        self._status.append(status)
        self._exact.append(exact)
        self._sigs.append(sigs)
        if c.near:
            self._band_keys.append(band_keys(sigs, self.bands, self.rows))
        self._near_ok.append(near_ok)
        self._quality.append(quality)
        self._resp_len.append(resp_len)

    def _field_text(self, r: Record) -> str:
        field = self.config.field
        text = (
            r.instruction() if field == "instruction" else r.prompt() if field == "prompt" else r.full_text()
        )
        if not isinstance(text, str):
            raise TypeError(f"got {type(text).__name__}")
        return text

    def _candidate_pairs(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (i < j) of rows of ``keys`` (band keys, rows in rank order) sharing a band."""
        n_reps = len(keys)
        if n_reps < 2:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pa_, pb_ = [], []
        for band in range(self.bands):
            order = np.argsort(keys[:, band], kind="stable")  # stable: members stay in rank order
            k = keys[order, band]
            new_run = np.ones(len(k), dtype=bool)
            new_run[1:] = k[1:] != k[:-1]
            run_id = np.cumsum(new_run) - 1
            run_start = np.flatnonzero(new_run)
            run_len = np.diff(np.append(run_start, len(k)))
            in_group = run_len[run_id] > 1
            if not in_group.any():
                continue
            # star: every member to the run's first (best-ranked) member
            head = order[run_start[run_id]]
            star = in_group & (order != head)
            pa_.append(head[star])
            pb_.append(order[star])
            # all pairs inside small runs (3.._ALL_PAIRS_MAX), so the edges do not hinge on one member
            for s, ln in zip(
                run_start[(run_len > 2) & (run_len <= _ALL_PAIRS_MAX)],
                run_len[(run_len > 2) & (run_len <= _ALL_PAIRS_MAX)],
                strict=True,
            ):
                members = order[s : s + ln]
                i, j = np.triu_indices(ln, k=1)
                keep = i > 0
                pa_.append(members[i[keep]])
                pb_.append(members[j[keep]])
        if not pa_:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        a = np.concatenate(pa_)
        b = np.concatenate(pb_)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        pair = np.unique(lo.astype(np.int64) * n_reps + hi)
        return pair // n_reps, pair % n_reps

    def _similar(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which candidate pairs (row positions) are near duplicates (estimated, or exact
        shingle-set, Jaccard), and their estimated Jaccard."""
        c = self.config
        est = np.empty(len(a))
        for s in range(0, len(a), 65536):
            sa, sb = self._sigs.take(a[s : s + 65536]), self._sigs.take(b[s : s + 65536])
            est[s : s + 65536] = (sa == sb).mean(axis=1)
        if not c.verify_jaccard:
            return est >= c.threshold, est
        hashes, offsets = self._all_shingles()
        out = np.zeros(len(a), dtype=bool)
        for k, (i, j) in enumerate(zip(a, b, strict=True)):
            x = np.unique(hashes[offsets[i] : offsets[i + 1]])
            y = np.unique(hashes[offsets[j] : offsets[j + 1]])
            inter = len(np.intersect1d(x, y, assume_unique=True))
            out[k] = inter / (len(x) + len(y) - inter) >= c.threshold
        self._pairs["rejected_by_exact_jaccard"] += int(((est >= c.threshold) & ~out).sum())
        self._pairs["accepted_by_exact_jaccard_below_estimate"] += int(((est < c.threshold) & out).sum())
        return out, est

    def _all_shingles(self) -> tuple[np.ndarray, np.ndarray]:
        if len(self._shingles) != 1:
            hashes = (
                np.concatenate([h for h, _ in self._shingles]) if self._shingles else np.zeros(0, np.uint32)
            )
            offsets = [np.zeros(1, np.int64)]
            base = 0
            for h, o in self._shingles:
                offsets.append(o[1:] + base)
                base += len(h)
            self._shingles = [(hashes, np.concatenate(offsets))]
        return self._shingles[0]

    def _pick_top_clusters(self, cluster_size: np.ndarray, label: np.ndarray, n: int) -> None:
        k = self.config.top_clusters
        if k == 0 or n == 0:
            return
        big = np.flatnonzero(cluster_size > 1)
        big = big[np.lexsort((big, -cluster_size[big]))][:k]
        self._top = [(int(lab), int(cluster_size[lab])) for lab in big]
        self._cluster_texts = {int(lab): [] for lab in big}

    # -- process: apply the decisions ---------------------------------------------------------------
    def process(self, batch: list[Record]) -> StageOutput:
        out = StageOutput()
        for r in batch:
            i = self._pos_in_process()
            if i >= self._n or self._ids[i] != r.id:
                raise RuntimeError(
                    f"dedup: process() saw row {r.id!r} at position {i}, but fit() saw "
                    f"{self._ids[i] if i < self._n else 'nothing'!r} there; fit and process need the same input"
                )
            decision = int(self._decision[i])
            src = self._per_source[r.source]
            src["rows"] += 1
            lab = int(self._label[i])
            shown = self._cluster_texts.get(lab)
            # the kept row always, and up to 4 of its duplicates
            if shown is not None and (decision == _KEEP or sum(not m["kept"] for m in shown) < 4):
                shown.append({"id": r.id, "kept": decision == _KEEP, "text": _preview(r)})
            if decision == _KEEP:
                r.attrs["dedup_cluster_size"] = int(self._cluster_size[i])
                out.kept.append(r)
                continue
            src[_REASONS[decision]] += 1
            if decision in (_EMPTY, _NOT_TEXT):
                out.dropped.append(Drop(r, _REASONS[decision], self._status_detail.get(i, "")))
                continue
            w = int(self._winner[i])
            if w < self._n:
                dup_of = self._ids[w]
                est = float((self._sigs.row(i) == self._sigs.row(w)).mean()) if self.config.near else 1.0
            else:
                dup_of = self._old_ids[w - self._n]
                old_sig = self._old_sig.get(w)
                est = float((self._sigs.row(i) == old_sig).mean()) if old_sig is not None else 1.0
            if decision == _EXACT:
                detail = "same normalised text" + (
                    " (punctuation ignored)" if self.config.punctuation_insensitive else ""
                )
                detail += "; estimated_jaccard=1.000"
            else:
                detail = f"estimated_jaccard={est:.3f}"
            if w >= self._n:
                detail += "; accepted in an earlier run"
            out.dropped.append(Drop(r, _REASONS[decision], detail, dup_of))
        if self._pos_processed >= self._n:
            self._commit_index()
        return out

    def _pos_in_process(self) -> int:
        i = self._pos_processed
        self._pos_processed += 1
        return i

    def _commit_index(self) -> None:
        if self._index is None or self._committed or not self.config.update_index:
            return
        kept = np.flatnonzero(self._decision == _KEEP)
        for chunk, chunk_sigs in self._sigs.chunks(kept):
            self._index.add(
                [self._ids[i] for i in chunk], self._exact_all[chunk], chunk_sigs, self._near_ok_all[chunk]
            )
        self._index.commit()
        self._committed = True

    # -- report -----------------------------------------------------------------------------------
    def stats(self) -> DedupFigures:
        c = self.config
        s_points = [round(x, 2) for x in np.linspace(0.0, 1.0, 21)]
        curve = [(s, round(float(candidate_probability(s, self.bands, self.rows)), 4)) for s in s_points]
        rates = error_rates(c.threshold, self.bands, self.rows)
        per_source = {}
        for src, cnt in sorted(self._per_source.items()):
            dups = cnt["exact_duplicate"] + cnt["near_duplicate"]
            per_source[src] = SourceDuplicates(
                rows=cnt["rows"],
                exact_duplicate=cnt["exact_duplicate"],
                near_duplicate=cnt["near_duplicate"],
                duplicate_rate=round(dups / cnt["rows"], 4) if cnt["rows"] else 0.0,
            )
        pairs = self._pairs
        return DedupFigures(
            capped_records=self.counters["capped_records"],
            char_shingled_records=self.counters["char_shingled_records"],
            lsh=LshFigures(
                threshold=c.threshold,
                num_perm=c.num_perm,
                bands=self.bands,
                rows=self.rows,
                s_curve=curve,
                **{k: round(v, 5) for k, v in rates.items()},
                p_candidate_at_threshold=round(float(candidate_probability(c.threshold, self.bands, self.rows)), 4),
                p_candidate_below=round(
                    float(candidate_probability(max(0.0, c.threshold - 0.1), self.bands, self.rows)), 4
                ),
            ),
            pairs=PairFigures(
                **dict(pairs),
                candidate_rejection_rate=round(1 - pairs["verified"] / pairs["candidates"], 4)
                if pairs["candidates"]
                else 0.0,
                estimated_missed_pairs=round(self._missed_pairs, 1),
                estimated_miss_rate=round(self._missed_pairs / (pairs["verified"] + self._missed_pairs), 4)
                if pairs["verified"]
                else 0.0,
            ),
            per_source=per_source,
            largest_clusters=[
                Cluster(size=size, members=self._cluster_texts.get(lab, [])) for lab, size in self._top
            ],
            index=None
            if self._index is None
            else IndexFigures(spec=str(c.index), entries_before=self._index_entries_before),
        )


def _preview(r: Record, limit: int = 200) -> str:
    try:
        text = r.full_text()
    except TypeError:
        return "<not text>"
    return text if len(text) <= limit else text[:limit] + "…"
