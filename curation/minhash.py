"""MinHash signatures for whole batches at once, bit-identical to :class:`datasketch.MinHash`.

datasketch (>= 2.0, scheme ``"affine32"``) turns each shingle into a 32-bit hash ``h``, pre-mixes it
with the MurmurHash3 finalizer and keeps, per permutation ``(a, b)``, ``min(a * fmix32(h) + b mod 2^32)``.
We compute exactly that for a whole batch of documents at once instead of one Python call per
shingle: with numba installed, one compiled pass per document (clean, shingle, hash, permute, min);
without it, a few numpy passes over the whole batch. Both give the same values.

* shingle text: :func:`shingle_text` (NFKC + case fold + punctuation to spaces + single spaces);
* shingles: word n-grams, or character n-grams for CJK / mixed text (:func:`uses_char_shingles`);
* shingle hash: ``"poly64"`` (default) hashes every shingle of the batch with one prefix-sum over the
  code points (a polynomial hash mod 2^64, then fmix64, top 32 bits: :func:`poly64_hash32`);
  ``"sha1"`` calls datasketch's default ``sha1_hash32`` per shingle (slower, identical to a
  ``MinHash()`` built with no ``hashfunc``).

Feeding datasketch the same hash function gives the same ``hashvalues``:
``MinHash(num_perm, seed, hashfunc=poly64_hash32)`` updated with ``s.encode()`` for each shingle
``s`` of :func:`shingles` — the tests check it.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from curation.records import normalize_text

ShingleHash = Literal["poly64", "sha1"]

_M64 = (1 << 64) - 1
# Polynomial base (odd, so it is invertible mod 2^64) and the constant that mixes in the length.
_BASE = 0x9E3779B97F4A7C15
_BASE_INV = pow(_BASE, -1, 1 << 64)
_LEN_MIX = 0xC2B2AE3D27D4EB4F
_SPACE = 32

_CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x3040, 0x30FF), (0xAC00, 0xD7AF))


# --------------------------------------------------------------------------------------------------
# reference (per-string) definitions: the vectorised code below computes exactly these


def shingle_text(text: str) -> str:
    """The text that is shingled: :func:`normalize_text` with punctuation turned into spaces.

    Punctuation splits words (``"end.start"`` → ``"end start"``) instead of gluing them, and
    punctuation-only edits do not change any shingle.
    """
    return clean_for_shingles(normalize_text(text))


def clean_for_shingles(normalized: str) -> str:
    """Punctuation → spaces, spaces collapsed, for a :func:`normalize_text` output (what the
    batch paths receive)."""
    t = normalized.translate(_bmp_punct_map())
    if not t.isascii() and max(t) > "\uffff":  # astral-plane punctuation is rare: check it per char
        t = "".join(" " if _is_punct(ch) else ch for ch in t)
    return " ".join(t.split())


def remove_punctuation(normalized: str) -> str:
    """``normalize_text(text, punctuation=True)`` computed from ``normalized = normalize_text(text)``:
    punctuation deleted, spaces collapsed (one C-level translate instead of a per-character loop)."""
    t = normalized.translate(_bmp_punct_delete_map())
    if not t.isascii() and max(t) > "\uffff":
        t = "".join(ch for ch in t if not _is_punct(ch))
    return " ".join(t.split())


def uses_char_shingles(text: str) -> bool:
    """Character n-grams when CJK characters carry at least as much of the text as latin letters.

    Same weighting as :func:`curation.records.detect_lang` (a CJK character ~ a word, a latin
    letter ~ a fifth of one), so Chinese rows and Chinese rows with some English use characters.
    """
    cjk = sum(1 for ch in text if any(lo <= ord(ch) <= hi for lo, hi in _CJK_RANGES))
    latin = sum(1 for ch in text if "a" <= ch <= "z")
    return cjk > 0 and cjk * 5 >= latin


def shingles(text: str, ngram: int = 5, cjk_ngram: int = 3) -> list[str]:
    """Shingles of an already :func:`shingle_text`-normalised string (a short text is one shingle)."""
    if not text:
        return []
    if uses_char_shingles(text):
        return [text[i : i + cjk_ngram] for i in range(max(1, len(text) - cjk_ngram + 1))]
    words = text.split(" ")
    return [" ".join(words[i : i + ngram]) for i in range(max(1, len(words) - ngram + 1))]


def poly64_hash32(data: bytes) -> int:
    """The ``"poly64"`` shingle hash of UTF-8 ``data``, as a datasketch ``hashfunc`` (32-bit int)."""
    s = data.decode("utf-8")
    h = 0
    for ch in s:
        h = (h * _BASE + ord(ch)) & _M64
    h = (h + len(s) * _LEN_MIX) & _M64
    return _fmix64_int(h) >> 32


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    return h ^ (h >> 33)


@functools.lru_cache(maxsize=1)
def _bmp_punct_map() -> dict[int, int]:
    return {int(c): _SPACE for c in np.flatnonzero(_punct_table())}


@functools.lru_cache(maxsize=1)
def _bmp_punct_delete_map() -> dict[int, None]:
    return dict.fromkeys(int(c) for c in np.flatnonzero(_punct_table()))


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


# --------------------------------------------------------------------------------------------------
# permutations and LSH parameters (datasketch's own definitions)


@functools.lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` of datasketch's ``affine32`` scheme for ``(num_perm, seed)`` (uint32 arrays)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    a.setflags(write=False)
    b.setflags(write=False)
    return a, b


@functools.lru_cache(maxsize=64)
def lsh_params(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive/negative areas (datasketch's search).

    The same search as datasketch's ``MinHashLSH`` (``_optimal_param``: every ``b * r <= num_perm``,
    first minimum in ``b``-then-``r`` order), with the areas from :func:`_s_curve_areas` instead of
    ``scipy.integrate.quad``: importing datasketch's LSH module (and scipy.integrate) cost a stage
    command ~0.3 s of CPU for an 11 ms computation. The tests check both give the same choice.
    With a weight of 0 the other area falls below float precision for many (b, r) and datasketch's
    pick among those near-ties is quad's rounding: that case is left to datasketch itself.
    """
    if fp_weight == 0 or fn_weight == 0:
        from datasketch.lsh import _optimal_param

        return _optimal_param(threshold, num_perm, fp_weight, fn_weight)
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    fp, fn = _s_curve_areas(threshold, np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
    error = fp * fp_weight + fn * fn_weight
    return pairs[int(np.argmin(error))]  # argmin: the first minimum, as datasketch's strict ``<``


def candidate_probability(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(two sets of Jaccard ``s`` share at least one band): the LSH S-curve ``1 - (1 - s^r)^b``."""
    return 1.0 - (1.0 - np.power(s, rows)) ** bands


def error_rates(threshold: float, bands: int, rows: int) -> dict[str, float]:
    """Areas under the S-curve left/right of the threshold (datasketch's FP/FN definitions)."""
    fp, fn = _s_curve_areas(threshold, np.array([bands]), np.array([rows]))
    return {"false_positive_area": float(fp[0]), "false_negative_area": float(fn[0])}


@functools.lru_cache(maxsize=4)
def _gauss_legendre(points: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(points)


def _s_curve_areas(threshold: float, bands: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (b, r): false positive area ``∫_0^t 1 - (1 - s^r)^b ds`` and false negative area
    ``∫_t^1 (1 - s^r)^b ds``.

    The integrands are polynomials of degree ``b * r``; n-point Gauss–Legendre is exact for degree
    <= 2n - 1, so the rule is sized to the largest ``b * r`` (up to rounding: within 1e-14 of
    datasketch's ``quad``).
    """
    x, w = _gauss_legendre(max(64, int((bands * rows).max()) // 2 + 1))
    t = float(threshold)
    areas: list[np.ndarray] = []
    for lo, hi in ((0.0, t), (t, 1.0)):
        s = (hi - lo) / 2 * x + (hi + lo) / 2  # nodes mapped onto [lo, hi]
        # log P(no band matches) = b * log(1 - s^r); expm1/log1p keep tiny areas accurate
        log_below = bands[:, None] * np.log1p(-(s[None, :] ** rows[:, None]))
        areas.append((hi - lo) / 2 * (-np.expm1(log_below) if lo == 0.0 else np.exp(log_below)) @ w)
    return areas[0], areas[1]


def band_keys(signatures: np.ndarray, bands: int, rows: int, which: np.ndarray | None = None) -> np.ndarray:
    """One 64-bit key per (row, band) of ``signatures[which]`` (all rows by default): equal bands →
    equal keys (collisions ~2^-64, and every candidate pair is checked against the signatures
    afterwards). Works a column at a time, so no widened copy of the signatures is made."""
    n = signatures.shape[0] if which is None else len(which)
    keys = np.empty((n, bands), dtype=np.uint64)
    for band in range(bands):
        h = np.full(n, ((band + 1) * _LEN_MIX) & _M64, dtype=np.uint64)
        for col in range(band * rows, (band + 1) * rows):
            column = signatures[:, col] if which is None else signatures[which, col]
            h ^= column
            h *= np.uint64(_BASE)
            h = _fmix64(h)
        keys[:, band] = h
    return keys


# --------------------------------------------------------------------------------------------------
# vectorised batch computation


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


# --------------------------------------------------------------------------------------------------
# optional JIT kernels (numba): the same arithmetic, one pass per document, no temporaries


try:  # numba is optional: without it the numpy path computes the same values, slower
    import numba as _numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    _numba = None

_U32_MAX = np.uint32(0xFFFFFFFF)
_B64 = np.uint64(_BASE)
_LEN64 = np.uint64(_LEN_MIX)
_FM1 = np.uint64(0xFF51AFD7ED558CCD)
_FM2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_S32 = np.uint64(32)
_C1 = np.uint32(0x85EBCA6B)
_C2 = np.uint32(0xC2B2AE35)


def _minhash_from_hashes_py(hashes, offsets, a, b, out):  # pragma: no cover - compiled by numba
    """out[d] = min over doc d's shingle hashes h of a * fmix32(h) + b (mod 2^32)."""
    n_perm = a.shape[0]
    for d in range(offsets.shape[0] - 1):
        for s in range(offsets[d], offsets[d + 1]):
            h = hashes[s]
            h = h ^ (h >> np.uint32(16))
            h = np.uint32(h * _C1)
            h = h ^ (h >> np.uint32(13))
            h = np.uint32(h * _C2)
            h = h ^ (h >> np.uint32(16))
            for p in range(n_perm):
                v = np.uint32(a[p] * h + b[p])
                if v < out[d, p]:
                    out[d, p] = v


def _minhash_from_text_py(
    cps, sep, offsets, ngram, cjk_ngram, pw, ipw, a, b, out, counts, char_mode
):  # pragma: no cover
    """Fused clean + shingle + poly64 hash + MinHash per document (see module docstring).

    ``sep[i]``: code point i is a space or punctuation; ``pw[k]`` = B^k, ``ipw[k]`` = B^-k. Writes
    signatures into ``out`` (pre-filled with 0xFFFFFFFF), shingle counts and the char-mode flag per
    document. A shingle's hash is B^(s1-1) * (Q[s1] - Q[s0]) with Q[t] = sum_{u<t} c_u B^-u: the
    Horner sum over its code points, with no multiply chain (as in the numpy path).
    """
    n_perm = a.shape[0]
    max_len = 0
    for d in range(offsets.shape[0] - 1):
        max_len = max(max_len, offsets[d + 1] - offsets[d])
    buf = np.empty(max_len + 1, dtype=np.uint32)
    prefix = np.empty(max_len + 2, dtype=np.uint64)
    word_start = np.empty(max_len + 1, dtype=np.int64)
    word_end = np.empty(max_len + 1, dtype=np.int64)
    for d in range(offsets.shape[0] - 1):
        # 1. punctuation -> space, collapse and strip spaces (= shingle_text)
        m = 0
        n_words = 0
        pending = False
        cjk = 0
        latin = 0
        q = np.uint64(0)  # running prefix sum, kept in a register rather than re-read from memory
        prefix[0] = q
        for i in range(offsets[d], offsets[d + 1]):
            if sep[i]:
                pending = m > 0
                continue
            if pending:
                word_end[n_words - 1] = m
                buf[m] = 32
                q += np.uint64(32) * ipw[m]
                m += 1
                prefix[m] = q
                pending = False
                word_start[n_words] = m
                n_words += 1
            elif m == 0:
                word_start[0] = 0
                n_words = 1
            c = cps[i]
            buf[m] = c
            q += np.uint64(c) * ipw[m]
            m += 1
            prefix[m] = q
            if c >= 0x3040:
                if (
                    (0x3400 <= c <= 0x4DBF)
                    or (0x4E00 <= c <= 0x9FFF)
                    or (0xF900 <= c <= 0xFAFF)
                    or (c <= 0x30FF)
                    or (0xAC00 <= c <= 0xD7AF)
                ):
                    cjk += 1
            elif 97 <= c <= 122:
                latin += 1
        if m == 0:
            counts[d] = 0
            continue
        word_end[n_words - 1] = m
        is_char = cjk > 0 and cjk * 5 >= latin
        char_mode[d] = is_char
        # 2. shingles: character or word n-grams; a shorter text is one shingle
        if is_char:
            n_sh = max(1, m - cjk_ngram + 1)
        else:
            n_sh = max(1, n_words - ngram + 1)
        counts[d] = n_sh
        for k in range(n_sh):
            if is_char:
                s0 = k
                s1 = min(k + cjk_ngram, m)
            else:
                s0 = word_start[k]
                s1 = word_end[min(k + ngram - 1, n_words - 1)]
            h = pw[s1 - 1] * (prefix[s1] - prefix[s0])
            # 3. poly64 -> 32 bits, then datasketch's fmix32 + affine permutations + min
            h = h + np.uint64(s1 - s0) * _LEN64
            h = h ^ (h >> _S33)
            h = h * _FM1
            h = h ^ (h >> _S33)
            h = h * _FM2
            h = h ^ (h >> _S33)
            x = np.uint32(h >> _S32)
            x = x ^ (x >> np.uint32(16))
            x = np.uint32(x * _C1)
            x = x ^ (x >> np.uint32(13))
            x = np.uint32(x * _C2)
            x = x ^ (x >> np.uint32(16))
            for p in range(n_perm):
                v = np.uint32(a[p] * x + b[p])
                if v < out[d, p]:
                    out[d, p] = v


if _numba is not None:
    _jit = _numba.njit(cache=True, nogil=True, boundscheck=False)
    _minhash_from_hashes = _jit(_minhash_from_hashes_py)
    _minhash_from_text = _jit(_minhash_from_text_py)
else:  # pragma: no cover
    _minhash_from_hashes = _minhash_from_text = None


def jit_available() -> bool:
    """True when numba is installed (the fast path); the numpy path gives identical values."""
    return _numba is not None


class _Powers:
    """B^k and B^-k mod 2^64, grown on demand and shared by all batches."""

    def __init__(self) -> None:
        self.pw = np.ones(1, dtype=np.uint64)
        self.ipw = np.ones(1, dtype=np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.pw) < n:
            size = max(n, 2 * len(self.pw), 1 << 16)
            self.pw, self.ipw = _power_table(_BASE, size), _power_table(_BASE_INV, size)
        return self.pw[:n], self.ipw[:n]


def _power_table(base: int, size: int) -> np.ndarray:
    """base^k mod 2^64 for k < size, by doubling (uint64 products wrap mod 2^64, as wanted)."""
    out = np.empty(size, dtype=np.uint64)
    out[0] = 1
    k = 1
    step = base  # base^k
    while k < size:
        m = min(k, size - k)
        np.multiply(out[:m], np.uint64(step), out=out[k : k + m])
        step = step * step & _M64
        k += m
    return out


_POWERS = _Powers()


@functools.lru_cache(maxsize=1)
def _punct_table() -> np.ndarray:
    """Basic-multilingual-plane code point → is punctuation (category P*)."""
    return np.array([unicodedata.category(chr(c)).startswith("P") for c in range(0x10000)], dtype=bool)


def _codepoints(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    cps = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in texts], out=offsets[1:])
    return cps, offsets


def _clean(cps: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Punctuation → space, then collapse spaces and strip each document (input is normalize_text output)."""
    is_p = _punct_table()[np.minimum(cps, 0xFFFF)]
    astral = np.flatnonzero(cps > 0xFFFF)
    if len(astral):
        is_p[astral] = [_is_punct(chr(int(c))) for c in cps[astral]]
    cps = np.where(is_p, np.uint32(_SPACE), cps)
    space = cps == _SPACE
    n_docs = len(offsets) - 1
    doc_of = np.repeat(np.arange(n_docs), np.diff(offsets))
    # keep a space only if it is the first of its run, not at a doc's start, and a non-space
    # character of the same doc follows it: exactly " ".join(text.split()) per document
    first_of_run = space.copy()
    first_of_run[1:] &= ~space[:-1]
    first_of_run[offsets[:-1][offsets[:-1] < offsets[1:]]] = False
    cand = np.flatnonzero(first_of_run)
    nonspace = np.flatnonzero(~space)
    j = np.searchsorted(nonspace, cand)
    has_next = j < len(nonspace)
    has_next[has_next] = nonspace[j[has_next]] < offsets[1:][doc_of[cand[has_next]]]
    keep = ~space
    keep[cand[has_next]] = True
    new_len = np.bincount(doc_of[keep], minlength=n_docs)
    new_offsets = np.zeros(len(offsets), dtype=np.int64)
    np.cumsum(new_len, out=new_offsets[1:])
    return cps[keep], new_offsets


@dataclass
class ShingleHashes:
    """Every shingle hash of a batch: ``hashes[offsets[i]:offsets[i+1]]`` belong to document i."""

    hashes: np.ndarray  # uint32
    offsets: np.ndarray  # int64, len(docs) + 1
    char_mode: np.ndarray  # bool per doc
    capped: np.ndarray  # bool per doc: more than max_shingles distinct shingles, sampled down

    def of(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i] : self.offsets[i + 1]]


class SignatureBuilder:
    """Computes datasketch-identical MinHash signatures for batches of texts.

    ``texts`` given to :meth:`shingle_hashes` / :meth:`signatures` are :func:`normalize_text`
    outputs (the stage has them anyway for exact hashing); punctuation handling happens here.
    """

    def __init__(
        self,
        num_perm: int = 128,
        seed: int = 1,
        ngram: int = 5,
        cjk_ngram: int = 3,
        max_shingles: int = 50_000,
        shingle_hash: ShingleHash = "poly64",
        chunk_rows: int = 4096,
        backend: Literal["auto", "numba", "numpy"] = "auto",
    ):
        self.num_perm = num_perm
        self.seed = seed
        self.ngram = ngram
        self.cjk_ngram = cjk_ngram
        self.max_shingles = max_shingles
        self.shingle_hash = shingle_hash
        self.chunk_rows = chunk_rows
        if backend == "numba" and not jit_available():
            raise RuntimeError("backend='numba' needs numba installed (pip install numba)")
        self.use_jit = backend != "numpy" and jit_available()
        self.a, self.b = permutations(num_perm, seed)
        self._buf = np.empty((chunk_rows, num_perm), dtype=np.uint32)

    # -- shingles -------------------------------------------------------------------------------
    def shingle_hashes(self, normalized: Sequence[str]) -> ShingleHashes:
        """32-bit hashes of every shingle of every document (a doc with no text has none)."""
        if self.shingle_hash == "sha1":
            return self._sha1_hashes(normalized)
        cps, offsets = _codepoints(normalized)
        cps, offsets = _clean(cps, offsets)
        n_docs = len(offsets) - 1
        lengths = np.diff(offsets)
        char_mode = self._char_mode(cps, offsets)

        is_space = cps == _SPACE
        starts_flag = ~is_space
        if len(cps):
            starts_flag[1:] &= is_space[:-1]
            starts_flag[offsets[:-1][lengths > 0]] = ~is_space[offsets[:-1][lengths > 0]]
        word_starts = np.flatnonzero(starts_flag)
        ends_flag = ~is_space
        if len(cps):
            ends_flag[:-1] &= is_space[1:]
            last = offsets[1:][lengths > 0] - 1
            ends_flag[last] = ~is_space[last]
        word_ends = np.flatnonzero(ends_flag) + 1
        first_word = np.searchsorted(word_starts, offsets[:-1])
        n_words = np.searchsorted(word_starts, offsets[1:]) - first_word

        # shingle spans per document: word n-grams or character n-grams
        w_count = np.where(n_words > 0, np.maximum(1, n_words - self.ngram + 1), 0)
        c_count = np.where(lengths > 0, np.maximum(1, lengths - self.cjk_ngram + 1), 0)
        count = np.where(char_mode, c_count, w_count)
        sh_off = np.zeros(n_docs + 1, dtype=np.int64)
        np.cumsum(count, out=sh_off[1:])
        doc = np.repeat(np.arange(n_docs), count)
        k = np.arange(sh_off[-1], dtype=np.int64) - sh_off[:-1][doc]
        cm = char_mode[doc]
        fw = first_word[doc]
        w_last = fw + np.minimum(k + self.ngram - 1, n_words[doc] - 1)
        w_first = fw + k
        span_start = np.where(
            cm, offsets[:-1][doc] + k, word_starts[np.where(cm, 0, w_first)] if len(word_starts) else 0
        )
        span_end = np.where(
            cm,
            offsets[:-1][doc] + np.minimum(k + self.cjk_ngram, lengths[doc]),
            word_ends[np.where(cm, 0, w_last)] if len(word_ends) else 0,
        )
        hashes = self._span_hashes(cps, span_start, span_end)
        capped = np.zeros(n_docs, dtype=bool)
        out = ShingleHashes(hashes, sh_off, char_mode, capped)
        return self._cap(out)

    def _span_hashes(self, cps: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        if len(start) == 0:
            return np.empty(0, dtype=np.uint32)
        pw, ipw = _POWERS.get(len(cps))
        q = np.zeros(len(cps) + 1, dtype=np.uint64)
        np.cumsum(cps.astype(np.uint64) * ipw, out=q[1:])
        h = pw[end - 1] * (q[end] - q[start])
        h += (end - start).astype(np.uint64) * np.uint64(_LEN_MIX)
        return (_fmix64(h) >> np.uint64(32)).astype(np.uint32)

    def _char_mode(self, cps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        n_docs = len(offsets) - 1
        high = np.flatnonzero(cps >= _CJK_RANGES[3][0])  # the lowest CJK code point; mostly none
        if len(high) == 0:
            return np.zeros(n_docs, dtype=bool)
        cjk = np.zeros(len(cps), dtype=bool)
        for lo, hi in _CJK_RANGES:
            cjk[high] |= (cps[high] >= lo) & (cps[high] <= hi)
        latin = (cps >= ord("a")) & (cps <= ord("z"))
        doc_of = np.repeat(np.arange(n_docs), np.diff(offsets))
        n_cjk = np.bincount(doc_of, weights=cjk, minlength=n_docs)
        n_latin = np.bincount(doc_of, weights=latin, minlength=n_docs)
        return (n_cjk > 0) & (n_cjk * 5 >= n_latin)

    def _sha1_hashes(self, normalized: Sequence[str]) -> ShingleHashes:
        from datasketch.hashfunc import sha1_hash32

        per_doc = []
        char_mode = np.zeros(len(normalized), dtype=bool)
        for i, t in enumerate(normalized):
            s = clean_for_shingles(t)
            char_mode[i] = bool(s) and uses_char_shingles(s)
            per_doc.append([sha1_hash32(x.encode("utf-8")) for x in shingles(s, self.ngram, self.cjk_ngram)])
        offsets = np.zeros(len(normalized) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in per_doc], out=offsets[1:])
        hashes = np.fromiter((h for p in per_doc for h in p), dtype=np.uint32, count=int(offsets[-1]))
        return self._cap(ShingleHashes(hashes, offsets, char_mode, np.zeros(len(normalized), dtype=bool)))

    def _cap(self, sh: ShingleHashes) -> ShingleHashes:
        """Documents with more than ``max_shingles`` distinct shingles keep the ``max_shingles``
        smallest hashes: a consistent sample, so two copies of a huge document keep the same one."""
        counts = np.diff(sh.offsets)
        big = np.flatnonzero(counts > self.max_shingles)
        if len(big) == 0:
            return sh
        parts = []
        prev = 0
        new_counts = counts.copy()
        for i in big:
            parts.append(sh.hashes[prev : sh.offsets[i]])
            distinct = np.unique(sh.of(i))
            kept = distinct[: self.max_shingles]
            sh.capped[i] = len(kept) < len(distinct)
            parts.append(kept)
            new_counts[i] = len(kept)
            prev = sh.offsets[i + 1]
        parts.append(sh.hashes[prev:])
        offsets = np.zeros_like(sh.offsets)
        np.cumsum(new_counts, out=offsets[1:])
        return ShingleHashes(np.concatenate(parts), offsets, sh.char_mode, sh.capped)

    # -- signatures -----------------------------------------------------------------------------
    def signatures(
        self, normalized: Sequence[str], keep_hashes: bool = False
    ) -> tuple[np.ndarray, ShingleHashes]:
        """``(signatures uint32 [n_docs, num_perm], shingles)``; a doc without shingles gets the
        all-0xFFFFFFFF signature (datasketch's empty MinHash).

        With the JIT path and ``keep_hashes=False`` the returned :class:`ShingleHashes` carries the
        per-document counts (``offsets``) and flags but no ``hashes``.
        """
        if keep_hashes or not self.use_jit or self.shingle_hash != "poly64":
            sh = self.shingle_hashes(normalized)
            return self.signatures_from_hashes(sh), sh
        n_docs = len(normalized)
        cps, offsets = _codepoints(normalized)
        sep = _punct_table()[np.minimum(cps, 0xFFFF)]
        astral = np.flatnonzero(cps > 0xFFFF)
        if len(astral):
            sep[astral] = [_is_punct(chr(int(c))) for c in cps[astral]]
        sep |= cps == _SPACE
        out = np.full((n_docs, self.num_perm), _U32_MAX, dtype=np.uint32)
        counts = np.zeros(n_docs, dtype=np.int64)
        char_mode = np.zeros(n_docs, dtype=np.bool_)
        max_len = int(np.diff(offsets).max()) if n_docs else 0
        pw, ipw = _POWERS.get(max_len + 1)
        _minhash_from_text(
            cps, sep, offsets, self.ngram, self.cjk_ngram, pw, ipw, self.a, self.b, out, counts, char_mode
        )
        capped = np.zeros(n_docs, dtype=bool)
        big = np.flatnonzero(counts > self.max_shingles)
        if len(big):
            # rare: recompute the few huge documents through the sampling path
            sub = self.shingle_hashes([normalized[i] for i in big])
            out[big] = self.signatures_from_hashes(sub)
            counts[big] = np.diff(sub.offsets)
            capped[big] = sub.capped
        sh_off = np.zeros(n_docs + 1, dtype=np.int64)
        np.cumsum(counts, out=sh_off[1:])
        return out, ShingleHashes(np.empty(0, dtype=np.uint32), sh_off, char_mode, capped)

    def signatures_from_hashes(self, sh: ShingleHashes) -> np.ndarray:
        """MinHash over precomputed shingle hashes (datasketch's affine32 permutation + min)."""
        n_docs = len(sh.offsets) - 1
        out = np.full((n_docs, self.num_perm), np.uint32(0xFFFFFFFF), dtype=np.uint32)
        if len(sh.hashes) == 0:
            return out
        if self.use_jit:
            _minhash_from_hashes(sh.hashes, sh.offsets, self.a, self.b, out)
            return out
        mixed = _fmix32(sh.hashes)
        counts = np.diff(sh.offsets)
        docs = np.flatnonzero(counts > 0)
        starts = sh.offsets[docs]
        ends = sh.offsets[docs + 1]
        i = 0
        while i < len(docs):
            # a chunk of whole documents of at most chunk_rows shingles (a bigger doc goes alone)
            j = int(np.searchsorted(ends, starts[i] + self.chunk_rows, side="right"))
            j = max(j, i + 1)
            lo, hi = int(starts[i]), int(ends[j - 1])
            m = hi - lo
            buf = self._buf[:m] if m <= len(self._buf) else np.empty((m, self.num_perm), dtype=np.uint32)
            np.multiply(mixed[lo:hi, None], self.a[None, :], out=buf)
            np.add(buf, self.b[None, :], out=buf)
            out[docs[i:j]] = np.minimum.reduceat(buf, starts[i:j] - lo, axis=0)
            i = j
        return out
