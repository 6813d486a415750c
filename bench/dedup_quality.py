"""Dedup detection quality: pairwise precision / recall / F1.

    python bench/dedup_quality.py [--threshold 0.8] [--variants 2]

(a) Against brute force: every pair's exact Jaccard of its shingle sets (sparse matrix products,
    no sampling of pairs) on the labelled set below; truth = pairs with Jaccard >= threshold, each
    method against its own shingling.
(b) On a labelled near-duplicate set built from the shared data: every row of dolly_hhrlhf_sample
    (alpaca template stripped, as ingest does) and self_instruct_seed (seed + user-oriented tasks)
    is a base row; for a random third of them we add ``--variants`` edited copies. Each copy gets
    1 word edit per 25 words (at least 1): a dropped word, two adjacent words swapped, or a typo
    (one letter replaced); plus, at random, punctuation removed or changed, case changed, spaces
    doubled. Positives: (base, copy) and (copy, copy) pairs of one base; negatives: all other pairs.

A method predicts a pair when both rows end in the same cluster (the kept row + the rows whose
``duplicate_of`` it is), so transitive merges count against precision ("cluster pairs"). For (a)
the precision of the pairs the ledger states, (dropped row, duplicate_of), is shown too ("ledger
pairs"): is each stated duplicate really >= threshold? Methods, same threshold:
sftflow's DedupStage (default config, and word 5-grams) and a plain datasketch script (lower-case
whitespace words, word 5-grams, ``MinHash.bulk`` + ``MinHashLSH`` default params + union-find).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.dedup import DedupConfig, DedupStage  # noqa: E402
from curation.minhash import shingle_text, shingles  # noqa: E402
from curation.records import Record, normalize_text  # noqa: E402
from curation.runner import apply_stage  # noqa: E402

DATA = Path(os.environ.get("SFTFLOW_DATA_DIR", REPO.parent / "shared" / "data"))
_TEMPLATE = re.compile(r"### Instruction:\s*(.*?)\s*(?:### Input:\s*(.*?)\s*)?### Response:", re.S)


def base_rows() -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for line in (DATA / "dolly_hhrlhf_sample" / "dolly_hhrlhf_train_small.jsonl").open():
        r = json.loads(line)
        m = _TEMPLATE.search(r["prompt"])
        instr = "\n\n".join(x for x in (m.groups() if m else (r["prompt"],)) if x)
        rows.append((instr, r["response"]))
    for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl"):
        for line in (DATA / "self_instruct_seed" / name).open():
            r = json.loads(line)
            inst = r["instances"][0]
            rows.append(
                ("\n\n".join(x for x in (r["instruction"], inst.get("input", "")) if x), inst["output"])
            )
    return rows


def edit_text(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    n_edits = max(1, len(words) // 25)
    for _ in range(n_edits):
        if len(words) < 3:
            break
        i = rng.randrange(len(words) - 1)
        kind = rng.choice(("drop", "swap", "typo"))
        if kind == "drop":
            del words[i]
        elif kind == "swap":
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            w = words[i]
            if w:
                j = rng.randrange(len(w))
                words[i] = w[:j] + rng.choice(string.ascii_lowercase) + w[j + 1 :]
    out = " ".join(words)
    if rng.random() < 0.3:
        out = out.translate(str.maketrans("", "", string.punctuation))
    elif rng.random() < 0.3:
        out = out.replace(",", ";").replace(".", "!")
    if rng.random() < 0.3:
        out = out.lower()
    if rng.random() < 0.2:
        out = out.replace(" ", "  ")
    return out


def labelled_set(variants: int, seed: int = 0) -> tuple[list[Record], np.ndarray]:
    """Records and their group label (copies share their base's label)."""
    rng = random.Random(seed)
    records: list[Record] = []
    group: list[int] = []
    for g, (instr, resp) in enumerate(base_rows()):
        records.append(_record(f"g{g:05d}-0", instr, resp))
        group.append(g)
        if rng.random() < 1 / 3:
            for v in range(variants):
                records.append(_record(f"g{g:05d}-{v + 1}", edit_text(instr, rng), edit_text(resp, rng)))
                group.append(g)
    order = list(range(len(records)))
    rng.shuffle(order)
    return [records[i] for i in order], np.array([group[i] for i in order])


def _record(id_: str, instr: str, resp: str) -> Record:
    return Record(
        id=id_,
        messages=[{"role": "user", "content": instr}, {"role": "assistant", "content": resp}],
        source="dolly" if id_ < "g01000" else "self_instruct",
    )


# --------------------------------------------------------------------------------------------------


def pairs_from_labels(labels: np.ndarray) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    order = np.argsort(labels, kind="stable")
    sorted_l = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_l[1:] != sorted_l[:-1]])
    ends = np.r_[starts[1:], len(labels)]
    for s, e in zip(starts, ends, strict=True):
        members = sorted(order[s:e].tolist())
        out.update((a, b) for i, a in enumerate(members) for b in members[i + 1 :])
    return out


def score(pred: set[tuple[int, int]], truth: set[tuple[int, int]]) -> dict[str, float]:
    tp = len(pred & truth)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(truth) if truth else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"pairs_predicted": len(pred), "pairs_true": len(truth), "precision": p, "recall": r, "f1": f}


def brute_force_pairs(shingle_sets: list[list[str]], threshold: float) -> set[tuple[int, int]]:
    """All pairs with exact Jaccard >= threshold (sparse incidence matrix X, intersections X X^T)."""
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, sh in enumerate(shingle_sets):
        for s in set(sh):
            rows.append(i)
            cols.append(vocab.setdefault(s, len(vocab)))
    x = csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(shingle_sets), len(vocab)))
    sizes = np.asarray(x.sum(axis=1)).ravel()
    inter = (x @ x.T).tocoo()
    keep = inter.row < inter.col
    i, j, n = inter.row[keep], inter.col[keep], inter.data[keep]
    jac = n / (sizes[i] + sizes[j] - n)
    ok = jac >= threshold
    return set(zip(i[ok].tolist(), j[ok].tolist(), strict=True))


def clusters_sftflow(records: list[Record], **cfg) -> np.ndarray:
    """Cluster label per record: the position of the kept row it duplicates (or its own)."""
    stage = DedupStage(DedupConfig(**cfg))
    kept, dropped, _ = apply_stage(stage, records, batch_size=512)
    pos = {r.id: i for i, r in enumerate(records)}
    label = np.arange(len(records))
    for d in dropped:
        if d.duplicate_of is not None:
            label[pos[d.record.id]] = pos[d.duplicate_of]
    return label


def ledger_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """The (dropped row, kept row) pairs the ledger claims (cluster label = kept row's position)."""
    rows = np.flatnonzero(labels != np.arange(len(labels)))
    return {(min(int(i), int(labels[i])), max(int(i), int(labels[i]))) for i in rows}


def plain_words(r: Record, n: int = 5) -> list[str]:
    w = r.full_text().lower().split()
    return [" ".join(w[i : i + n]) for i in range(max(1, len(w) - n + 1))]


def clusters_datasketch(records: list[Record], threshold: float, num_perm: int = 128) -> np.ndarray:
    from dedup_bench import plain_datasketch_clusters  # bench/ is on sys.path when run as a script

    return np.array(plain_datasketch_clusters([plain_words(r) for r in records], threshold, num_perm))


def hard_negatives(threshold: float) -> None:
    """(c) Templated benchmark items (BBH + GSM8K test): distinct tasks that share long templates.

    Jaccard calls many of them near duplicates, so this is not a precision score: it shows how much
    each shingle size merges template-heavy data.
    """
    records = []
    for f in sorted((DATA / "bbh").glob("*.json")):
        for i, e in enumerate(json.loads(f.read_text())["examples"]):
            records.append(_record_qa(f"{f.stem}-{i}", e["input"], e["target"]))
    for i, line in enumerate((DATA / "gsm8k" / "test.jsonl").open()):
        e = json.loads(line)
        records.append(_record_qa(f"gsm8k-{i}", e["question"], e["answer"]))
    print(f"\n(c) templated benchmark items, {len(records)} distinct rows (BBH + GSM8K): rows dropped")
    print("| method | rows dropped | share |")
    print("|---|---|---|")
    runs = [
        (f"sftflow word {n}-grams", lambda n=n: clusters_sftflow(records, threshold=threshold, ngram=n))
        for n in (1, 2, 3, 5)
    ]
    runs.append(
        ("datasketch LSH, word 5-grams (plain script)", lambda: clusters_datasketch(records, threshold))
    )
    for name, run in runs:
        labels = run()
        dropped = int((labels != np.arange(len(labels))).sum())
        print(f"| {name} | {dropped} | {dropped / len(records):.1%} |")


def _record_qa(id_: str, question: str, answer: str) -> Record:
    return Record(
        id=id_, messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--variants", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t = args.threshold

    records, groups = labelled_set(args.variants, args.seed)
    truth_labelled = pairs_from_labels(groups)
    print(
        f"labelled set: {len(records)} rows, {len(set(groups.tolist()))} distinct bases, "
        f"{len(truth_labelled)} positive pairs, {len(records) * (len(records) - 1) // 2 - len(truth_labelled)} "
        f"negative pairs; threshold {t}\n"
    )
    default = DedupConfig(threshold=t)
    methods: list[tuple[str, Callable[[], np.ndarray], Callable[[Record], list[str]]]] = []
    for label, cfg in (
        (f"sftflow default (word {default.ngram}-grams)", {}),
        ("sftflow default + verify_jaccard", {"verify_jaccard": True}),
        ("sftflow word 2-grams", {"ngram": 2}),
        ("sftflow word 5-grams", {"ngram": 5}),
        ("sftflow word 5-grams, datasketch fp/fn 0.5/0.5", {"ngram": 5, "fp_weight": 0.5, "fn_weight": 0.5}),
    ):
        n = cfg.get("ngram", default.ngram)
        methods.append(
            (
                label,
                lambda cfg=cfg: clusters_sftflow(records, threshold=t, **cfg),
                lambda r, n=n: shingles(shingle_text(normalize_text(r.full_text())), n, default.cjk_ngram),
            )
        )
    methods.append(
        ("datasketch LSH, word 5-grams (plain script)", lambda: clusters_datasketch(records, t), plain_words)
    )

    false_positives: dict[str, set[tuple[int, int]]] = {}
    print(
        "| method | (a) P ledger pairs | (a) P cluster pairs | (a) R | (a) F1 (cluster) "
        "| (b) P labelled | (b) R | (b) F1 | CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, run, shingler in methods:
        start = time.process_time()
        labels = run()
        secs = time.process_time() - start
        pred = pairs_from_labels(labels)
        false_positives[name] = pred - truth_labelled
        truth_bf = brute_force_pairs([shingler(r) for r in records], t)
        a = score(pred, truth_bf)
        a_ledger = score(ledger_pairs(labels), truth_bf)
        b = score(pred, truth_labelled)
        print(
            f"| {name} | {a_ledger['precision']:.4f} | {a['precision']:.4f} | {a['recall']:.4f} | {a['f1']:.4f} | "
            f"{b['precision']:.4f} | {b['recall']:.4f} | {b['f1']:.4f} | {secs:.2f} |"
        )
    first = methods[0][0]
    print(f"\n(b) false positives of '{first}' (distinct base rows it merged):")
    for i, j in sorted(false_positives[first])[:5]:
        print(
            f"  {records[i].id} ~ {records[j].id}: {records[i].full_text()[:90]!r} / {records[j].full_text()[:90]!r}"
        )
    hard_negatives(t)
    # how separable the labelled set is at all: exact Jaccard of the positives under each shingling
    for n in (default.ngram, 5):
        sets = [
            set(shingles(shingle_text(normalize_text(r.full_text())), n, default.cjk_ngram)) for r in records
        ]
        jac = np.array([len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i, j in truth_labelled])
        print(
            f"\npositives' exact Jaccard with sftflow word {n}-grams: median {np.median(jac):.3f}, "
            f">= {t}: {np.mean(jac >= t):.1%}"
        )


if __name__ == "__main__":
    main()
