"""Rigidity: does the tuned model answer open prompts in a narrower, more templated way than the base?

Both models answer the same open prompts (MT-Bench first turns and Self-Instruct seed tasks when the
benchmark copies are there, else the project's own ``data/probe/open_prompts.jsonl``) with greedy decoding
through the chat template. Over the set of answers we measure:

- ``distinct_1`` / ``distinct_2``: unique word uni-/bigrams over all uni-/bigrams (lower = more repetitive);
- ``self_similarity``: mean pairwise Jaccard similarity of the answers' word-bigram sets (higher = answers
  look alike whatever the question);
- ``mean_length``: mean answer length in words (CJK characters count as words);
- ``same_opening_share``: share of answers that open with the most common first three words.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter
from pathlib import Path

from evals.tasks import REPO_ROOT

PROJECT_PROMPTS = REPO_ROOT / "data" / "probe" / "open_prompts.jsonl"

_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W_]+(?:'[^\W_]+)?", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased words; each CJK character is a word."""
    return _WORD.findall(text.lower())


def open_prompts(data_dir: str | None, n: int, seed: int = 0) -> list[str]:
    """``n`` open prompts: half MT-Bench, half Self-Instruct (seeded sample), else the project's own set."""
    pools: list[list[str]] = []
    if data_dir is not None:
        mt = Path(data_dir) / "mt_bench" / "question.jsonl"
        si = Path(data_dir) / "self_instruct_seed" / "seed_tasks.jsonl"
        if mt.exists():
            pools.append(
                [json.loads(line)["turns"][0] for line in mt.read_text(encoding="utf-8").splitlines() if line]
            )
        if si.exists():
            rows = [json.loads(line) for line in si.read_text(encoding="utf-8").splitlines() if line]
            pools.append([_self_instruct_prompt(r) for r in rows])
    if not pools:
        pools = [
            [
                json.loads(line)["prompt"]
                for line in PROJECT_PROMPTS.read_text(encoding="utf-8").splitlines()
                if line
            ]
        ]
    rng = random.Random(seed)
    picked: list[str] = []
    share = -(-n // len(pools))
    for pool in pools:
        picked.extend(rng.sample(pool, min(share, len(pool))))
    return picked[:n]


def _self_instruct_prompt(row: dict) -> str:
    inp = (row.get("instances") or [{}])[0].get("input", "")
    return row["instruction"] + (f"\n\n{inp}" if inp else "")


def chat_prompt(tokenizer, prompt: str) -> str:
    """The prompt as a single user turn, rendered with the model's chat template."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def _distinct(tokens_per_answer: list[list[str]], n: int) -> float:
    grams = [tuple(t[i : i + n]) for t in tokens_per_answer for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def rigidity_metrics(answers: list[str]) -> dict[str, float]:
    """Diversity / templating measures over a set of answers (see module docstring)."""
    toks = [words(a) for a in answers]
    bigram_sets = [set(zip(t, t[1:], strict=False)) or set(t) for t in toks]
    pairs = list(itertools.combinations(range(len(answers)), 2))
    sims = []
    for i, j in pairs:
        a, b = bigram_sets[i], bigram_sets[j]
        sims.append(len(a & b) / len(a | b) if a | b else 1.0)
    openings = Counter(" ".join(t[:3]) for t in toks if t)
    return {
        "distinct_1": _distinct(toks, 1),
        "distinct_2": _distinct(toks, 2),
        "self_similarity": sum(sims) / len(sims) if sims else 0.0,
        "mean_length": sum(len(t) for t in toks) / len(toks) if toks else 0.0,
        "same_opening_share": (openings.most_common(1)[0][1] / len(answers)) if openings else 0.0,
        "n": len(answers),
    }
