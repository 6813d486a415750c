"""Contaminated instruction rows for the decontamination stage's tests and bench: benchmark items planted
into real clean rows the ways they turn up in public instruction sets.

Each planted row starts from a clean instruction row (:func:`tests.curation.quality_junk.load_clean_records`)
and a benchmark item's main text (the question with its choices for multiple-choice items, else the
first text the ``benchmark_documents`` service gives for the item: question, passage, completed sentence). Variants:

=================  =====================================================================================
``verbatim``       the item is the instruction
``embedded``       the item sits inside a longer prompt, between the clean row's instruction and a request
``lower_nopunct``  the item lower-cased with its punctuation deleted (``str.translate`` style)
``multi_turn``     the item is the second user turn of a chat whose first exchange is the clean row's
``input_field``    alpaca ``input`` field under a generic instruction
``in_answer``      the item is quoted at the end of the assistant's answer
``punct_as_spaces`` (hard) punctuation replaced by spaces instead of deleted (``don't`` → ``don t``)
``first_two_thirds`` (hard) only the first two thirds of the item's words (characters for Chinese)
``edited_every_15`` (hard) every 15th word (character) replaced, as a light rewrite would
=================  =====================================================================================

Rows are raw source rows converted by ingest's own :func:`curation.ingest.row_to_record`, so ``input``
really travels the way ingest merges it. Every row carries ``meta["planted"]`` = ``{benchmark, item,
field, variant, lang}``. Nothing here reads benchmark files itself: callers pass the documents.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Iterable
from typing import Any

from curation.ingest import IngestConfig, row_to_record
from curation.records import Record, content_id, detect_lang

VARIANTS = ("verbatim", "embedded", "lower_nopunct", "multi_turn", "input_field", "in_answer")
#: harder than the issue's cases, for choosing settings (bench only): partial copies and light edits
HARD_VARIANTS = ("punct_as_spaces", "first_two_thirds", "edited_every_15")

_EN = {
    "embedded": "{instr}\n\nAlso, while you are at it, here is something from my homework: {item} Please explain briefly.",
    "input_field": "Answer the question below.",
    "in_answer": "{resp}\n\nA related practice question: {item}",
    "follow_up": "Thanks. Next one: {item}",
}
_ZH = {
    "embedded": "{instr}\n\n另外，顺便看看我作业里的这一题：{item} 请简要解释。",
    "input_field": "回答下面的问题。",
    "in_answer": "{resp}\n\n相关练习题：{item}",
    "follow_up": "谢谢。下一题：{item}",
}


def strip_punctuation(text: str) -> str:
    """Lower case, punctuation and symbols deleted, whitespace collapsed (how people strip a copied question)."""
    kept = "".join(ch for ch in text.lower() if unicodedata.category(ch)[0] not in "PS")
    return " ".join(kept.split())


def _units(text: str) -> tuple[list[str], str]:
    """Words, or characters for Chinese, and the joiner that puts them back together."""
    if detect_lang(text) == "zh":
        return list(text), ""
    return text.split(), " "


def _hard(variant: str, item: str) -> str:
    units, join = _units(item)
    if variant == "punct_as_spaces":
        return " ".join("".join(" " if unicodedata.category(c)[0] in "PS" else c for c in item.lower()).split())
    if variant == "first_two_thirds":
        return join.join(units[: max(1, (2 * len(units) + 2) // 3)])
    # edited_every_15
    filler = "某" if join == "" else "something"
    return join.join(filler if i % 15 == 14 else u for i, u in enumerate(units))


def main_texts(documents: Iterable[Any], prefer: Iterable[str] = ()) -> dict[tuple[str, str], Any]:
    """(benchmark, item) → the item's main text: its first document with a field in ``prefer``, else its first."""
    prefer = tuple(prefer)
    out: dict[tuple[str, str], Any] = {}
    for d in documents:
        key = (d.benchmark, str(d.item))
        if key not in out or (d.field in prefer and out[key].field not in prefer):
            out[key] = d
    return out


def plant(
    documents: Iterable[Any],
    clean: list[Record],
    *,
    per_benchmark: int = 20,
    variants: Iterable[str] = VARIANTS,
    prefer: Iterable[str] = ("question_choices",),
    seed: int = 0,
) -> list[Record]:
    """``per_benchmark`` items of every benchmark in ``documents``, each planted once per variant.

    The planted text is the item's main text (:func:`main_texts`; by default multiple-choice items with
    their lettered choices, as they appear in instruction sets). Chinese items go into Chinese clean
    rows, others into English ones.
    """
    rng = random.Random(seed)
    by_bench: dict[str, list[Any]] = {}
    for d in main_texts(documents, prefer).values():
        by_bench.setdefault(d.benchmark, []).append(d)
    hosts = {
        lang: [r for r in clean if r.lang == lang and r.messages and len(r.messages) >= 2]
        for lang in ("en", "zh")
    }
    cfg = IngestConfig()
    out: list[Record] = []
    for bench in sorted(by_bench):
        docs = by_bench[bench]
        for d in rng.sample(docs, min(per_benchmark, len(docs))):
            lang = "zh" if detect_lang(d.text) == "zh" else "en"
            for variant in variants:
                host = rng.choice(hosts[lang] or hosts["en"] or hosts["zh"])
                row = _planted_row(variant, d.text, host, _ZH if lang == "zh" else _EN)
                rec, _ = row_to_record(row, f"planted/{bench}", len(out) + 1, cfg)
                rec.id = f"planted-{bench}-{d.item}-{variant}-{content_id(rec.messages, rec.text)[:6]}"
                rec.meta["planted"] = {
                    "benchmark": bench, "item": str(d.item), "field": d.field, "variant": variant, "lang": lang
                }
                out.append(rec)
    return out


def _planted_row(variant: str, item: str, host: Record, words: dict[str, str]) -> dict[str, Any]:
    instr, resp = host.instruction(), host.response()
    if variant == "verbatim":
        return {"instruction": item, "output": resp}
    if variant == "embedded":
        return {"instruction": words["embedded"].format(instr=instr, item=item), "output": resp}
    if variant == "lower_nopunct":
        return {"instruction": strip_punctuation(item), "output": resp}
    if variant == "multi_turn":
        return {
            "messages": [
                {"role": "user", "content": instr},
                {"role": "assistant", "content": resp},
                {"role": "user", "content": words["follow_up"].format(item=item)},
                {"role": "assistant", "content": resp[: max(20, len(resp) // 3)]},
            ]
        }
    if variant == "input_field":
        return {"instruction": words["input_field"], "input": item, "output": resp}
    if variant in HARD_VARIANTS:
        return {"instruction": words["embedded"].format(instr=instr, item=_hard(variant, item)), "output": resp}
    if variant == "in_answer":
        return {"instruction": instr, "output": words["in_answer"].format(resp=resp, item=item)}
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS + HARD_VARIANTS)}")


__all__ = ["VARIANTS", "HARD_VARIANTS", "plant", "main_texts", "strip_punctuation"]
