"""Decontamination: drop every row that contains an item of an eval benchmark.

The "did it get dumber?" gate compares benchmark scores before and after fine-tuning; a training row
holding a benchmark question lifts the tuned score for the wrong reason and hides forgetting. This
stage indexes **every item of every benchmark** of an eval suite (default ``full``; the texts come from
``evals.benchmarks`` through the ``benchmark_documents`` service, see :mod:`curation.registry`) and
drops rows whose text — any turn of any role, or a plain-text record — overlaps one. Ledger reason
``contaminated``; the detail names the benchmark, the item, the field and the overlap.

Matching (all values measured, see ``bench/RESULTS.md``):

* **Units.** NFKC, case folded; punctuation and symbols (Unicode P* and S*) are *deleted*, as
  ``str.translate(..., string.punctuation)`` does, so ``Don't`` and ``dont`` agree; whitespace
  separates. A unit is a run of letters/digits, or one CJK character (Chinese has no spaces).
* **Long texts** (at least ``ngram`` units; ``cjk_ngram`` for texts that are mostly CJK): a row matches
  when it holds at least ``min_coverage`` of the text's distinct n-grams.
* **Short texts** (``min_words``/``min_cjk_chars`` up to n - 1 units, e.g. a 6-word TruthfulQA
  question): a row matches when it contains the whole normalised text. Shorter texts ("Predators eat")
  say too little to match on and are counted as ``unmatchable`` in the index stats.

Speed: every n-gram is a 64-bit polynomial hash computed for a whole batch with numpy prefix sums
(no Python loop per word); the index is a sorted ``uint64`` array probed with ``searchsorted`` behind a
bit-array prefilter. The index is cached under ``$SFTFLOW_CACHE/decontam/<key>/`` (``.npy`` + parquet +
json, no pickle, published atomically), keyed by the bytes of the benchmark files and task specs and
the matching settings: the full suite is built once (~seconds) and loaded afterwards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.errors import SftflowError
from curation.minhash import _CJK_RANGES, _LEN_MIX, _POWERS, _fmix64
from curation.records import Record
from curation.registry import SERVICES
from curation.stage import Drop, Stage, StageOutput
from curation.stats import Concat, Figures, Max, Same, Sum

#: bump when units, hashing or the index layout change (part of the cache key)
INDEX_VERSION = 1
REASON = "contaminated"
_CODE_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


class DecontamError(SftflowError, ValueError):
    """The benchmarks to decontaminate against cannot be read (message names the benchmark and file)."""


# --------------------------------------------------------------------------------------------------
# config


class DecontamConfig(BaseModel):
    """Which benchmarks a row must not contain, and how overlap is decided (recipe key ``decontam``)."""

    model_config = ConfigDict(extra="forbid")

    suite: str = Field("full", description="eval suite (or comma-separated tasks) whose every item is indexed")
    data_dir: str | None = Field(
        None, description="local benchmark copies, as the eval's data_dir (default $SFTFLOW_DATA_DIR, else the hub)"
    )
    ngram: int = Field(8, ge=2, le=64, description="n-gram size in words (space-separated scripts)")
    cjk_ngram: int = Field(13, ge=2, le=128, description="n-gram size in characters for mostly-CJK texts")
    min_coverage: float = Field(
        0.4, gt=0, le=1, description="share of a benchmark text's distinct n-grams a row must hold"
    )
    min_words: int = Field(
        5, ge=1, description="texts shorter than ngram words match when contained whole, from this length"
    )
    min_cjk_chars: int = Field(
        8, ge=1, description="the same for mostly-CJK texts shorter than cjk_ngram characters"
    )
    template_items: int = Field(
        2,
        ge=1,
        description="an n-gram or short text found in more items than this is template wording: not matched",
    )
    skip_missing: bool = Field(
        False, description="skip (and report) benchmarks whose data is missing instead of failing"
    )
    cache: bool = Field(True, description="keep the index under $SFTFLOW_CACHE/decontam (keyed by content)")
    examples: int = Field(3, ge=0, description="matched examples kept per benchmark in stats.json")

    @model_validator(mode="after")
    def _short_below_n(self) -> DecontamConfig:
        if self.min_words >= self.ngram:
            raise ValueError(f"min_words ({self.min_words}) must be below ngram ({self.ngram})")
        if self.min_cjk_chars >= self.cjk_ngram:
            raise ValueError(f"min_cjk_chars ({self.min_cjk_chars}) must be below cjk_ngram ({self.cjk_ngram})")
        return self

    def matching(self) -> dict[str, Any]:
        """The settings the index depends on (its cache key)."""
        return {
            "ngram": self.ngram,
            "cjk_ngram": self.cjk_ngram,
            "min_words": self.min_words,
            "min_cjk_chars": self.min_cjk_chars,
            "template_items": self.template_items,
        }


# --------------------------------------------------------------------------------------------------
# units: the reference definition (per string) and the batch computation (numpy)

_SEP, _DELETE, _WORD, _CJK = 0, 1, 2, 3
# CJK ideograph extensions B.. in the astral planes; everything else up there (emoji, ...) is a symbol
_ASTRAL_CJK = (0x20000, 0x3FFFF)


def _char_class(c: int) -> int:
    if any(lo <= c <= hi for lo, hi in _CJK_RANGES) or _ASTRAL_CJK[0] <= c <= _ASTRAL_CJK[1]:
        return _CJK
    cat = unicodedata.category(chr(c))
    if cat[0] in "PS":
        return _DELETE
    if cat[0] in "LNM":
        return _WORD
    return _SEP  # whitespace, controls, unassigned


@functools.lru_cache(maxsize=1)
def _bmp_classes() -> np.ndarray:
    return np.array([_char_class(c) for c in range(0x10000)], dtype=np.uint8)


def normalize_for_matching(text: str) -> str:
    """NFKC + case fold; the batch code and :func:`match_units` start from this."""
    return unicodedata.normalize("NFKC", text).casefold()


def match_units(text: str) -> list[str]:
    """The units a text is matched on (reference definition; the stage computes the same in batches).

    >>> match_units("Don't  PANIC: 42-ish! 中文")
    ['dont', 'panic', '42ish', '中', '文']
    """
    units: list[str] = []
    word: list[str] = []
    for ch in normalize_for_matching(text):
        k = _char_class(ord(ch))
        if k == _DELETE:
            continue
        if k == _WORD:
            word.append(ch)
            continue
        if word:
            units.append("".join(word))
            word = []
        if k == _CJK:
            units.append(ch)
    if word:
        units.append("".join(word))
    return units


@dataclass
class Units:
    """The units of a batch of texts: ``hashes[offsets[i]:offsets[i+1]]`` are text i's, in order."""

    hashes: np.ndarray  # uint64, one per unit
    offsets: np.ndarray  # int64, len(texts) + 1
    is_cjk: np.ndarray  # bool per unit
    #: the cleaned code points and each unit's [start, end) in them (to show matched spans)
    cps: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    _prefix: np.ndarray | None = None
    _rows: np.ndarray | None = None
    _row_end: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def prefix(self) -> np.ndarray:
        """``q[k] = sum_{j<k} hash_j * B^-j`` (mod 2^64): any run of units hashes in O(1) from it."""
        if self._prefix is None:
            _, ipw = _POWERS.get(len(self.hashes) + 1)
            q = np.zeros(len(self.hashes) + 1, dtype=np.uint64)
            np.cumsum(self.hashes * ipw[: len(self.hashes)], out=q[1:])
            self._prefix = q
        return self._prefix

    def run_hashes(self, start: np.ndarray, length: np.ndarray | int) -> np.ndarray:
        """Hash of units ``[start, start + length)`` (callers keep runs inside one text)."""
        q = self.prefix()
        pw, _ = _POWERS.get(len(self.hashes) + 1)
        end = start + length
        h = pw[end - 1] * (q[end] - q[start])
        h += np.asarray(length, dtype=np.uint64) * np.uint64(_NGRAM_MIX)
        return _fmix64(h)

    def ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hash, first unit) of every n-gram that lies inside one text."""
        total = len(self.hashes)
        if total < n:
            return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
        m = total - n + 1
        q = self.prefix()
        pw, _ = _POWERS.get(total + 1)
        # run_hashes for every start at once, with slices instead of gathers
        h = pw[n - 1 : total] * (q[n:] - q[:m])
        h += np.uint64(n * _NGRAM_MIX & 0xFFFFFFFFFFFFFFFF)
        first = np.flatnonzero(np.arange(n, m + n) <= self.row_end()[:m])
        return _fmix64(h[first]), first

    def row_end(self) -> np.ndarray:
        """Per unit, the end (exclusive) of its text's units."""
        if self._row_end is None:
            self._row_end = np.repeat(self.offsets[1:], np.diff(self.offsets))
        return self._row_end

    def row_of_unit(self) -> np.ndarray:
        if self._rows is None:
            self._rows = np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.offsets))
        return self._rows

    def span_text(self, first: int, last: int) -> str:
        """The normalised text of units ``first..last`` (inclusive)."""
        return self.cps[self.starts[first] : self.ends[last]].tobytes().decode("utf-32-le")


#: mixes the run length into a run's hash, so runs of different lengths never share a hash space
_NGRAM_MIX = 0x94D049BB133111EB


_FOLD_IN_PYTHON = np.uint32(0xFFFFFFFF)
_JAMO = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xA960, 0xA97F), (0xD7B0, 0xD7FF))


@functools.lru_cache(maxsize=1)
def _fold_table() -> np.ndarray:
    """BMP code point → ``casefold(NFKC(ch))`` where that is one code point composing with nothing, else a marker.

    Marks (which compose with what precedes them), Hangul jamo (which compose with each other) and
    characters that fold to several (ligatures, ``ß``) are marked: texts holding one are normalised by
    Python instead. Every other character folds on its own, so a table lookup equals NFKC + case fold
    of the whole text (NFKC in Python costs ~40 µs per Chinese row, the table a fraction of that).
    """
    table = np.empty(0x10000, dtype=np.uint32)
    for c in range(0x10000):
        if 0xD800 <= c <= 0xDFFF:  # lone surrogates: left as they are
            table[c] = c
            continue
        ch = chr(c)
        folded = unicodedata.normalize("NFKC", ch).casefold()
        if (
            len(folded) != 1
            or unicodedata.category(ch)[0] == "M"
            or unicodedata.category(folded)[0] == "M"
            or any(lo <= c <= hi or lo <= ord(folded) <= hi for lo, hi in _JAMO)
        ):
            table[c] = _FOLD_IN_PYTHON
        else:
            table[c] = ord(folded)
    return table


def _folded_codepoints(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Code points of ``normalize_for_matching(t)`` for every text, concatenated, and each text's offsets."""
    cps = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    folded = _fold_table()[np.minimum(cps, 0xFFFF)]
    odd = np.flatnonzero((folded == _FOLD_IN_PYTHON) | (cps > 0xFFFF))
    if not len(odd):
        return folded, offsets
    pieces, at = [], 0
    for r in np.unique(np.searchsorted(offsets, odd, side="right") - 1).tolist():
        own = normalize_for_matching(texts[r]).encode("utf-32-le", "surrogatepass")
        pieces += [folded[offsets[at] : offsets[r]], np.frombuffer(own, dtype=np.uint32)]
        lengths[r] = len(own) // 4
        at = r + 1
    pieces.append(folded[offsets[at] :])
    np.cumsum(lengths, out=offsets[1:])
    return np.concatenate(pieces), offsets


def units_of(texts: Sequence[str]) -> Units:
    """:func:`match_units` of every text, as 64-bit unit hashes, computed for the whole batch at once."""
    cps, offsets = _folded_codepoints(texts)
    cls = _bmp_classes()[np.minimum(cps, 0xFFFF)]
    astral = np.flatnonzero(cps > 0xFFFF)
    if len(astral):
        a = cps[astral]
        cls[astral] = np.where((a >= _ASTRAL_CJK[0]) & (a <= _ASTRAL_CJK[1]), _CJK, _DELETE)
    keep = cls != _DELETE
    kept_before = np.zeros(len(cps) + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    offsets = kept_before[offsets]
    cps, cls = cps[keep], cls[keep]
    n = len(cps)
    word = cls == _WORD
    cjk = cls == _CJK
    text_start = np.zeros(n + 1, dtype=bool)
    text_start[offsets] = True  # also marks the end (n): a word never runs past its text
    prev_word = np.zeros(n, dtype=bool)
    prev_word[1:] = word[:-1]
    next_word = np.zeros(n, dtype=bool)
    next_word[:-1] = word[1:]
    starts = np.flatnonzero(cjk | (word & ~(prev_word & ~text_start[:n])))
    ends = np.flatnonzero(cjk | (word & ~(next_word & ~text_start[1:]))) + 1
    # unit hash: polynomial over its code points, with its length, finalised with fmix64
    pw, ipw = _POWERS.get(n + 1)
    q = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(cps.astype(np.uint64) * ipw[:n], out=q[1:])
    h = pw[ends - 1] * (q[ends] - q[starts]) if len(starts) else np.empty(0, dtype=np.uint64)
    h += (ends - starts).astype(np.uint64) * np.uint64(_LEN_MIX)
    return Units(
        hashes=_fmix64(h),
        offsets=np.searchsorted(starts, offsets).astype(np.int64),
        is_cjk=cjk[starts] if len(starts) else np.zeros(0, dtype=bool),
        cps=cps,
        starts=starts,
        ends=ends,
    )


# --------------------------------------------------------------------------------------------------
# the index


class DocumentSource(Protocol):
    """What the ``benchmark_documents`` service returns (``evals.benchmarks.SuiteDocuments``)."""

    sources: list[Any]  # each with .benchmark, .kind, .location, .files
    skipped: dict[str, str]
    version: str

    def documents(self, benchmark: str) -> Iterable[Any]: ...  # each with .benchmark .item .field .text


@dataclass
class Match:
    """Why a row is contaminated: the benchmark text it overlaps most, and how."""

    benchmark: str
    item: str
    field: str
    #: share of the text's n-grams found in the row (1.0 for a short text contained whole)
    coverage: float
    matched: int
    total: int
    whole: bool
    span: str
    unit: str

    def detail(self) -> str:
        how = (
            f"whole text ({self.total} {self.unit}) contained"
            if self.whole
            else f"{self.matched}/{self.total} {self.unit} n-grams (coverage {self.coverage:.2f})"
        )
        span = self.span if len(self.span) <= 160 else self.span[:157] + "..."
        return f"{self.benchmark} item {self.item} {self.field}: {how}: \"{span}\""

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "item": self.item,
            "field": self.field,
            "coverage": round(self.coverage, 4),
            "matched": self.matched,
            "total": self.total,
            "whole": self.whole,
            "span": self.span[:300],
        }


DOC_SCHEMA = pa.schema(
    [
        ("benchmark", pa.string()),
        ("item", pa.string()),
        ("field", pa.string()),
        ("cjk", pa.bool_()),
        ("units", pa.int32()),
        # long: distinct n-grams indexed; short: 1 (the text's first min-length run is its anchor)
        ("ngrams", pa.int32()),
        ("short", pa.bool_()),
        # short texts: hash of the whole text's units (checked where the anchor is found)
        ("whole_hash", pa.uint64()),
    ]
)


class DecontamIndex:
    """Hashed n-grams of benchmark texts; :meth:`match` finds, per row, the text it overlaps most."""

    def __init__(
        self,
        settings: dict[str, Any],
        keys: np.ndarray,
        docs_of_keys: np.ndarray,
        docs: pa.Table,
        meta: dict[str, Any],
    ):
        self.settings = settings
        self.keys = keys  # sorted uint64
        self.docs_of_keys = docs_of_keys  # uint32, aligned with keys
        self.meta = meta
        self.benchmark = np.asarray(docs.column("benchmark").to_pylist(), dtype=object)
        self.item = docs.column("item").to_pylist()
        self.field = docs.column("field").to_pylist()
        self.cjk = docs.column("cjk").to_numpy()
        self.units = docs.column("units").to_numpy().astype(np.int64)
        self.ngrams = docs.column("ngrams").to_numpy().astype(np.int64)
        self.short = docs.column("short").to_numpy()
        self.whole_hash = docs.column("whole_hash").to_numpy()
        self._docs = docs
        self.sizes = sorted(
            {settings["ngram"], settings["cjk_ngram"], settings["min_words"], settings["min_cjk_chars"]}
        )
        self._filter_bits, self._filter = _bit_filter(keys)

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        documents: Iterable[Any],
        settings: dict[str, Any],
        meta: dict[str, Any] | None = None,
        batch_size: int = 4096,
    ) -> DecontamIndex:
        """Index ``documents`` (objects with ``benchmark``, ``item``, ``field``, ``text``).

        Wording many items share is template, not an item: an n-gram found in more than
        ``template_items`` items is left out of every text's n-grams, and a short text contained in more
        than ``template_items`` items ("which of the following is true", "下列说法正确的是") is not
        matched on its own (counted as ``template``).
        """
        st = settings
        docs = list(documents)  # read twice (n-grams, then short-text containment): ~50k texts for `full`
        item_key = [(d.benchmark, str(d.item)) for d in docs]
        item_index: dict[tuple[str, str], int] = {}
        item_of_doc = np.fromiter(
            (item_index.setdefault(k, len(item_index)) for k in item_key), dtype=np.int64, count=len(docs)
        )
        n_docs = len(docs)
        units = np.zeros(n_docs, dtype=np.int64)
        is_cjk = np.zeros(n_docs, dtype=bool)
        short = np.zeros(n_docs, dtype=bool)
        whole = np.zeros(n_docs, dtype=np.uint64)
        long_keys: list[np.ndarray] = []
        long_docs: list[np.ndarray] = []
        anchors = np.zeros(n_docs, dtype=np.uint64)
        for lo in range(0, n_docs, batch_size):
            batch = docs[lo : lo + batch_size]
            u = units_of([d.text for d in batch])
            length = np.diff(u.offsets)
            cjk = np.bincount(u.row_of_unit(), weights=u.is_cjk, minlength=len(batch)) * 2 >= np.maximum(length, 1)
            size = np.where(cjk, st["cjk_ngram"], st["ngram"])
            min_len = np.where(cjk, st["min_cjk_chars"], st["min_words"])
            long_ = length >= size
            short_ = ~long_ & (length >= min_len)
            for k in {st["ngram"], st["cjk_ngram"]}:
                h, first = u.ngrams(k)
                r = u.row_of_unit()[first]
                sel = long_[r] & (size[r] == k)
                long_keys.append(h[sel])
                long_docs.append(r[sel] + lo)
            s_idx = np.flatnonzero(short_)
            if len(s_idx):
                start = u.offsets[s_idx]
                whole[lo + s_idx] = u.run_hashes(start, length[s_idx])
                anchors[lo + s_idx] = u.run_hashes(start, min_len[s_idx])
            units[lo : lo + len(batch)] = length
            is_cjk[lo : lo + len(batch)] = cjk
            short[lo : lo + len(batch)] = short_
        limit = st["template_items"]
        # long texts: distinct n-grams, minus those found in more than `limit` items
        keys = np.concatenate(long_keys) if long_keys else np.empty(0, dtype=np.uint64)
        kdocs = np.concatenate(long_docs) if long_docs else np.empty(0, dtype=np.int64)
        pairs = np.unique(np.stack([keys, kdocs.astype(np.uint64)], axis=1), axis=0)
        keys, kdocs = pairs[:, 0], pairs[:, 1].astype(np.int64)
        by_item = np.unique(np.stack([keys, item_of_doc[kdocs].astype(np.uint64)], axis=1), axis=0)
        uniq, n_items = np.unique(by_item[:, 0], return_counts=True)
        common = uniq[n_items > limit]
        keep = ~np.isin(keys, common)
        keys, kdocs = keys[keep], kdocs[keep]
        ngrams = np.bincount(kdocs, minlength=n_docs)
        template = (units > 0) & ~short & (ngrams == 0) & (units >= np.where(is_cjk, st["cjk_ngram"], st["ngram"]))
        # short texts: anchored on their first min-length run, checked whole where the anchor is found
        s_idx = np.flatnonzero(short)
        if len(s_idx):
            probe = cls(st, *_sorted(anchors[s_idx], s_idx), _doc_table(docs, is_cjk, units, ngrams, short, whole), {})
            containing: list[np.ndarray] = []
            for lo in range(0, n_docs, batch_size):
                h = probe._hits([d.text for d in docs[lo : lo + batch_size]])
                if h is not None:
                    containing.append(np.stack([h.docs, item_of_doc[h.rows + lo]], axis=1))
            found = np.unique(np.concatenate(containing), axis=0) if containing else np.zeros((0, 2), np.int64)
            shared = np.bincount(found[:, 0], minlength=n_docs)
            generic = short & (shared > limit)
            template |= generic
            s_idx = np.flatnonzero(short & ~generic)
            ngrams[s_idx] = 1
            keys = np.concatenate([keys, anchors[s_idx]])
            kdocs = np.concatenate([kdocs, s_idx])
        unmatchable = ~short & (units < np.where(is_cjk, st["cjk_ngram"], st["ngram"]))
        bench = np.asarray([d.benchmark for d in docs], dtype=object)
        meta = dict(meta or {})
        meta.update(
            documents=n_docs,
            items=len(item_index),
            keys=int(len(keys)),
            template_ngrams=int(len(common)),
            documents_per_benchmark=dict(sorted(Counter(bench.tolist()).items())),
            unmatchable=dict(sorted(Counter(bench[unmatchable].tolist()).items())),
            template=dict(sorted(Counter(bench[template].tolist()).items())),
        )
        table = _doc_table(docs, is_cjk, units, ngrams, short & ~template, whole)
        return cls(st, *_sorted(keys, kdocs), table, meta)

    # -- persistence (numpy + parquet + json: nothing executable) ---------------------------------
    def save(self, folder: Path) -> Path:
        """Publish the index as ``folder`` atomically (a complete folder or none).

        Not :func:`curation.io.atomic_dir`: shards of one run (process pool, Dask) may build the same
        content-keyed index at once, and atomic_dir's clean-up of stale temp folders would remove a
        sibling's folder mid-write; here the first complete folder wins and the others are dropped.
        """
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            np.save(tmp / "keys.npy", self.keys, allow_pickle=False)
            np.save(tmp / "docs_of_keys.npy", self.docs_of_keys, allow_pickle=False)
            pq.write_table(self._docs, tmp / "docs.parquet")
            (tmp / "index.json").write_text(
                json.dumps({"settings": self.settings, "meta": self.meta}, indent=2, sort_keys=True)
            )
            try:
                os.replace(tmp, folder)
            except OSError:  # another process published the same key first: theirs is identical
                if not (folder / "index.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def load(cls, folder: Path) -> DecontamIndex:
        folder = Path(folder)
        head = json.loads((folder / "index.json").read_text())
        return cls(
            head["settings"],
            np.load(folder / "keys.npy", allow_pickle=False),
            np.load(folder / "docs_of_keys.npy", allow_pickle=False),
            pq.read_table(folder / "docs.parquet"),
            head["meta"],
        )

    # -- matching --------------------------------------------------------------------------------
    def _lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions in ``hashes`` found in the index and the first index slot of each."""
        bit = hashes >> np.uint64(64 - self._filter_bits)
        maybe = np.flatnonzero((self._filter[bit >> np.uint64(6)] >> (bit & np.uint64(63))) & np.uint64(1))
        cand = hashes[maybe]
        slot = np.searchsorted(self.keys, cand)
        slot_ok = np.minimum(slot, len(self.keys) - 1)
        found = (slot < len(self.keys)) & (self.keys[slot_ok] == cand)
        return maybe[found], slot[found]

    def _size_of(self, doc: np.ndarray) -> np.ndarray:
        """The run length a text's index entries have: n (long texts) or the anchor length (short texts)."""
        st = self.settings
        return np.where(
            self.short[doc],
            np.where(self.cjk[doc], st["min_cjk_chars"], st["min_words"]),
            np.where(self.cjk[doc], st["cjk_ngram"], st["ngram"]),
        )

    def _hits(self, texts: Sequence[str]) -> _Hits | None:
        """Every (row, text) n-gram hit of a batch (short texts: verified whole), or None without any."""
        if not len(texts) or not len(self.keys):
            return None
        u = units_of(texts)
        row_of_unit = u.row_of_unit()
        parts: list[tuple[np.ndarray, ...]] = []
        for k in self.sizes:
            h, first = u.ngrams(k)
            pos, slot = self._lookup(h)
            if not len(pos):
                continue
            # every index entry with this hash (one n-gram can belong to several texts)
            reps = np.searchsorted(self.keys, h[pos], side="right") - slot
            entry = np.repeat(slot - (np.cumsum(reps) - reps), reps) + np.arange(int(reps.sum()))
            doc = self.docs_of_keys[entry].astype(np.int64)
            f, hh = np.repeat(first[pos], reps), np.repeat(h[pos], reps)
            keep = self._size_of(doc) == k  # a long text's n-grams, or a short text's anchor, of this size
            doc, f, hh = doc[keep], f[keep], hh[keep]
            # a short text is found where its anchor is and the whole text follows, inside the row
            span = np.full(len(doc), k, dtype=np.int64)
            s = np.flatnonzero(self.short[doc])
            if len(s):
                length = self.units[doc[s]]
                ok = f[s] + length <= u.offsets[row_of_unit[f[s]] + 1]
                ok[ok] = u.run_hashes(f[s][ok], length[ok]) == self.whole_hash[doc[s][ok]]
                span[s] = length
                keep = np.ones(len(doc), dtype=bool)
                keep[s[~ok]] = False
                doc, f, hh, span = doc[keep], f[keep], hh[keep], span[keep]
            parts.append((row_of_unit[f], doc, f, hh, span))
        if not parts:
            return None
        rows, docs, firsts, hashes, spans = (np.concatenate(x) for x in zip(*parts, strict=True))
        return _Hits(u, rows, docs, firsts, hashes, spans)

    def match(self, texts: Sequence[str], min_coverage: float) -> list[Match | None]:
        """Per text, its strongest match at or above ``min_coverage`` (short texts: contained whole), or None."""
        out: list[Match | None] = [None] * len(texts)
        hits = self._hits(texts)
        if hits is None:
            return out
        n_docs = len(self.units)
        pair, inv = np.unique(hits.rows * n_docs + hits.docs, return_inverse=True)
        pair_row, pair_doc = pair // n_docs, pair % n_docs
        # coverage per (row, text): its distinct n-grams present in the row (a repeat counts once)
        distinct_hits = np.unique(np.stack([inv.astype(np.uint64), hits.hashes], axis=1), axis=0)
        distinct = np.bincount(distinct_hits[:, 0].astype(np.int64), minlength=len(pair))
        coverage = np.minimum(distinct / np.maximum(self.ngrams[pair_doc], 1), 1.0)
        good = np.flatnonzero(coverage >= min_coverage)
        if not len(good):
            return out
        # matched span per pair: first to last unit of its hits
        lo = np.full(len(pair), np.iinfo(np.int64).max, dtype=np.int64)
        hi = np.zeros(len(pair), dtype=np.int64)
        np.minimum.at(lo, inv, hits.firsts)
        np.maximum.at(hi, inv, hits.firsts + hits.spans - 1)
        # best per row: highest coverage, then the longest text
        order = np.lexsort((-self.units[pair_doc[good]], -coverage[good], pair_row[good]))
        best = good[order]
        first_of_row = np.ones(len(best), dtype=bool)
        first_of_row[1:] = pair_row[best][1:] != pair_row[best][:-1]
        for p in best[first_of_row]:
            d = int(pair_doc[p])
            short = bool(self.short[d])
            out[int(pair_row[p])] = Match(
                benchmark=str(self.benchmark[d]),
                item=self.item[d],
                field=self.field[d],
                coverage=float(coverage[p]),
                matched=int(distinct[p]) if not short else int(self.units[d]),
                total=int(self.units[d] if short else self.ngrams[d]),
                whole=short,
                span=hits.units.span_text(int(lo[p]), int(hi[p])),
                unit=self._unit_name(d),
            )
        return out

    def _unit_name(self, d: int) -> str:
        st = self.settings
        if self.short[d]:
            return "characters" if self.cjk[d] else "words"
        return f"{st['cjk_ngram']}-character" if self.cjk[d] else f"{st['ngram']}-word"


@dataclass
class _Hits:
    units: Units
    rows: np.ndarray  # row of each hit
    docs: np.ndarray  # indexed text of each hit
    firsts: np.ndarray  # first unit of the hit in the batch
    hashes: np.ndarray  # the n-gram (or anchor) hash
    spans: np.ndarray  # units the hit covers


def _sorted(keys: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    return keys[order], docs[order].astype(np.uint32)


def _doc_table(
    docs: list[Any], cjk: np.ndarray, units: np.ndarray, ngrams: np.ndarray, short: np.ndarray, whole: np.ndarray
) -> pa.Table:
    return pa.table(
        {
            "benchmark": [d.benchmark for d in docs],
            "item": [str(d.item) for d in docs],
            "field": [d.field for d in docs],
            "cjk": cjk,
            "units": units.astype(np.int32),
            "ngrams": ngrams.astype(np.int32),
            "short": short,
            "whole_hash": whole,
        },
        schema=DOC_SCHEMA,
    )


def _bit_filter(keys: np.ndarray) -> tuple[int, np.ndarray]:
    """A one-hash bit array over the keys' top bits (~1/64 filled): most probes skip the binary search."""
    bits = int(max(16, min(31, np.ceil(np.log2(max(len(keys), 1) * 64)))))
    words = np.zeros((1 << bits) >> 6, dtype=np.uint64)
    if len(keys):
        b = keys >> np.uint64(64 - bits)
        np.bitwise_or.at(words, (b >> np.uint64(6)).astype(np.int64), np.uint64(1) << (b & np.uint64(63)))
    return bits, words


# --------------------------------------------------------------------------------------------------
# building or loading the index for a suite (cached)


def cache_root() -> Path:
    return Path(os.environ.get("SFTFLOW_CACHE", Path.home() / ".cache" / "sftflow")) / "decontam"


def content_digest(paths: Iterable[str]) -> str:
    """Hash of the bytes of files (a folder: every file under it, by relative name), not of where they are:
    moving the benchmark folder keeps the cache valid."""
    h = hashlib.sha256()
    for p in paths:
        path = Path(p)
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update((str(f.relative_to(path)) if path.is_dir() else f.name).encode("utf-8", "surrogatepass"))
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def resolve_documents(config: DecontamConfig) -> DocumentSource:
    """The suite's benchmark documents from the ``benchmark_documents`` service (registered by flows/)."""
    provider = SERVICES.resolve("benchmark_documents")
    try:
        return provider(config.suite, config.data_dir, skip_missing=config.skip_missing)
    except SftflowError as e:
        raise DecontamError(f"decontam: {e} (skip_missing: true / --skip-missing skips it and reports it)") from None


def index_key(docs: DocumentSource, config: DecontamConfig) -> str:
    """Cache key: index version, matching settings, and per benchmark its source and the bytes it is read from."""
    payload = {
        "index_version": INDEX_VERSION,
        # the code that cuts units and builds the index: a change to it never reuses an old index
        "code": _CODE_DIGEST,
        "documents_version": getattr(docs, "version", 0),
        "settings": config.matching(),
        "sources": [
            {
                "benchmark": s.benchmark,
                "kind": s.kind,
                # hub data counts by name; local data by content only
                "location": s.location if s.kind == "hub" else "",
                "content": content_digest(s.files),
            }
            for s in docs.sources
        ],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def load_or_build_index(
    docs: DocumentSource, config: DecontamConfig, *, key: str | None = None
) -> tuple[DecontamIndex, dict[str, Any]]:
    """The suite's index from the cache, or built now (and cached unless a benchmark was skipped while reading).

    Returns the index and a report: key, cache hit or miss, seconds, skipped benchmarks.
    """
    key = key or index_key(docs, config)
    folder = cache_root() / key
    started = time.perf_counter()
    skipped = dict(docs.skipped)
    if config.cache and (folder / "index.json").exists():
        index = DecontamIndex.load(folder)
        skipped.update(index.meta.get("skipped", {}))
        return index, _report(index, key, "hit", started, skipped, folder)

    read_skips: dict[str, str] = {}

    def all_documents() -> Iterator[Any]:
        for s in docs.sources:
            try:
                yield from docs.documents(s.benchmark)
            except SftflowError as e:
                if not config.skip_missing:
                    raise DecontamError(
                        f"decontam: benchmark {s.benchmark} ({s.location}): {e} "
                        "(skip_missing: true / --skip-missing skips it and reports it)"
                    ) from None
                read_skips[s.benchmark] = str(e)

    meta = {
        "key": key,
        "suite": config.suite,
        "sources": [{"benchmark": s.benchmark, "kind": s.kind, "location": s.location} for s in docs.sources],
        "skipped": skipped,
    }
    index = DecontamIndex.build(all_documents(), config.matching(), meta)
    skipped.update(read_skips)
    index.meta["skipped"] = skipped
    # an index missing a benchmark it should have (read failed, skipped) is not cached under the full key
    if config.cache and not read_skips:
        index.save(folder)
    return index, _report(index, key, "miss", started, skipped, folder if config.cache and not read_skips else None)


def _report(
    index: DecontamIndex, key: str, cache: str, started: float, skipped: dict[str, str], folder: Path | None
) -> dict[str, Any]:
    return {
        "key": key,
        "cache": cache,
        "path": str(folder) if folder else None,
        "seconds": round(time.perf_counter() - started, 3),
        "documents": index.meta.get("documents"),
        "keys": index.meta.get("keys"),
        "documents_per_benchmark": index.meta.get("documents_per_benchmark"),
        "unmatchable": index.meta.get("unmatchable"),
        "template": index.meta.get("template"),
        "benchmarks": [s["benchmark"] for s in index.meta.get("sources", []) if s["benchmark"] not in skipped],
        "skipped": skipped,
    }


# --------------------------------------------------------------------------------------------------
# the stage


class IndexFigures(Figures):
    """What the rows were checked against (the same for every shard of one run)."""

    key: Annotated[str, Same] = ""
    #: ``hit`` or ``miss`` per piece of the run (a sharded run: the first shard builds, the others load)
    cache: Annotated[list[str], Concat()] = []
    path: Annotated[str | None, Same] = None
    seconds: Annotated[float, Max] = 0.0
    documents: Annotated[int, Same] = 0
    keys: Annotated[int, Same] = 0
    documents_per_benchmark: Annotated[dict[str, int], Same] = {}
    #: texts too short to identify an item, per benchmark
    unmatchable: Annotated[dict[str, int], Same] = {}
    #: template wording shared by many items, not matched on its own, per benchmark
    template: Annotated[dict[str, int], Same] = {}
    benchmarks: Annotated[list[str], Same] = []
    #: benchmark → why it was skipped (``skip_missing``)
    skipped: Annotated[dict[str, str], Same] = {}


class DecontamFigures(Figures):
    """``stats.json`` ``extra`` of the decontam stage (the report's contamination section reads it)."""

    suite: Annotated[str, Same] = ""
    settings: Annotated[dict[str, Any], Same] = {}
    index: IndexFigures = IndexFigures()
    removed_per_benchmark: Annotated[dict[str, int], Sum] = {}
    #: per benchmark, a few dropped rows: id, item, field, coverage, the matched span
    examples: Annotated[dict[str, list[dict[str, Any]]], Concat(cap="examples")] = {}


class DecontamStage(Stage):
    """Drops rows that contain an item of an eval-suite benchmark (see module docstring)."""

    name: ClassVar[str] = "decontam"
    Config: ClassVar[type[BaseModel]] = DecontamConfig
    Figures: ClassVar[type[DecontamFigures]] = DecontamFigures
    version = 1
    input_file_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: DecontamConfig | None = None, documents: DocumentSource | None = None):
        super().__init__(config)
        self.config: DecontamConfig
        self._documents = documents
        self._key: str | None = None
        self._index: DecontamIndex | None = None
        self._index_report: dict[str, Any] = {}
        self._removed: Counter[str] = Counter()
        self._examples: dict[str, list[dict[str, Any]]] = {}
        self._rows = 0

    def documents(self) -> DocumentSource:
        if self._documents is None:
            self._documents = resolve_documents(self.config)
        return self._documents

    def key(self) -> str:
        if self._key is None:
            self._key = index_key(self.documents(), self.config)
        return self._key

    def index(self) -> DecontamIndex:
        if self._index is None:
            self._index, self._index_report = load_or_build_index(self.documents(), self.config, key=self.key())
        return self._index

    def fingerprint(self) -> str:
        # the benchmark files' bytes decide what is dropped: editing them reruns the stage on --resume
        return hashlib.sha256(f"{super().fingerprint()}|{self.key()}".encode()).hexdigest()[:16]

    def check(self, records: Sequence[Record]) -> list[Match | None]:
        """The match of each record (all turns of every role, or the plain text), or None."""
        return self.index().match([r.full_text() for r in records], self.config.min_coverage)

    def process(self, batch: list[Record]) -> StageOutput:
        out = StageOutput()
        self._rows += len(batch)
        for r, m in zip(batch, self.check(batch), strict=True):
            if m is None:
                out.kept.append(r)
                continue
            out.dropped.append(Drop(r, REASON, m.detail()))
            self._removed[m.benchmark] += 1
            ex = self._examples.setdefault(m.benchmark, [])
            if len(ex) < self.config.examples:
                ex.append({"id": r.id, **m.as_dict()})
        return out

    def stats(self) -> DecontamFigures:
        if self._index is None:
            self.index()  # an empty input still reports what it was checked against
        return DecontamFigures(
            suite=self.config.suite,
            settings={**self.config.matching(), "min_coverage": self.config.min_coverage},
            index=IndexFigures(**{**self._index_report, "cache": [self._index_report["cache"]]}),
            removed_per_benchmark=dict(sorted(self._removed.items())),
            examples=self._examples,
        )


# --------------------------------------------------------------------------------------------------
# what the verdict and the report say about it


def contamination_block(
    decontam: DecontamFigures | dict[str, Any] | None,
    eval_tasks: Iterable[str] = (),
    *,
    pool: dict[str, Any] | None = None,
    general_rows: int = 0,
) -> dict[str, Any]:
    """Was the training data decontaminated against the benchmarks the eval ran? (the verdict's ``contamination``)

    ``decontam``: the figures of the decontam stage of the curation that made the training data (None: the
    curation had no such stage); ``eval_tasks``: the tasks the eval scored; ``pool``: the mix stage's
    ``pool_decontam`` report; ``general_rows``: general rows the mix replayed (their pool needs checking too).
    ``covers_eval`` is True only when every eval task was checked, none was skipped, and a replayed pool
    was checked as well; otherwise ``warning`` says what was not.
    """
    tasks = list(dict.fromkeys(eval_tasks))
    fig = DecontamFigures.model_validate(decontam) if isinstance(decontam, dict) else decontam
    checked = list(fig.index.benchmarks) if fig is not None else []
    not_checked = [t for t in tasks if t not in checked]
    warnings = []
    if fig is None:
        warnings.append(
            "the training data was not decontaminated against the eval benchmarks, so a gain may come from "
            "benchmark items in it (add `- decontam: {}` to the recipe's stages)"
        )
    elif not_checked:
        why = {t: fig.index.skipped[t] for t in not_checked if t in fig.index.skipped}
        warnings.append(
            f"the training data was not checked against {', '.join(not_checked)} "
            f"(decontam suite {fig.suite!r}{'; skipped: ' + '; '.join(why.values()) if why else ''})"
        )
    if general_rows and (pool is None or not pool):
        warnings.append(f"the {general_rows} general rows the mixer replayed were not decontaminated")
    elif pool:
        pool_missing = [t for t in tasks if t not in pool.get("benchmarks", [])]
        if pool_missing:
            warnings.append(f"the general pool was not checked against {', '.join(pool_missing)}")
    return {
        "decontaminated": fig is not None,
        "covers_eval": fig is not None and not warnings,
        "suite": fig.suite if fig is not None else None,
        "settings": dict(fig.settings) if fig is not None else {},
        "index": fig.index.key if fig is not None else None,
        "benchmarks_checked": checked,
        "eval_tasks_not_checked": not_checked,
        "skipped": dict(fig.index.skipped) if fig is not None else {},
        "rows_removed": sum(fig.removed_per_benchmark.values()) if fig is not None else 0,
        "removed_per_benchmark": dict(fig.removed_per_benchmark) if fig is not None else {},
        "general_pool": (
            {"rows_removed": pool.get("removed", 0), "removed_per_benchmark": pool.get("removed_per_benchmark", {})}
            if pool else None
        ),
        "warning": "; ".join(warnings) or None,
    }


__all__ = [
    "contamination_block",
    "DecontamConfig",
    "DecontamStage",
    "DecontamIndex",
    "DecontamError",
    "DecontamFigures",
    "IndexFigures",
    "Match",
    "Units",
    "units_of",
    "match_units",
    "normalize_for_matching",
    "load_or_build_index",
    "index_key",
    "resolve_documents",
    "REASON",
]
