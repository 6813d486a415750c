"""Prefiltered regexes give exactly what ``re`` gives, on every pattern the curation stages use."""

from __future__ import annotations

import importlib
import random
import re
from typing import Any

import pytest

from curation import textscan
from curation.textscan import (
    CASE_PARTNERS,
    BatchPattern,
    Prefiltered,
    TextColumn,
    fold,
    required_literals,
    split_branches,
    to_re2,
)

#: modules whose module-level Prefiltered patterns are checked against plain ``re``
MODULES = [
    "curation.features",
    "curation.quality.rules.assistant",
    "curation.quality.rules.html_spam",
    "curation.quality.rules.lang_mismatch",
    "curation.quality.rules.length",
    "curation.quality.rules.mojibake",
    "curation.quality.rules.placeholder",
    "curation.quality.rules.repetition",
]


def _patterns(kind: type) -> list[tuple[str, Any]]:
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if isinstance(value, kind):
                found.append((f"{name}.{attr}", value))
            elif isinstance(value, list | tuple):
                found += [(f"{name}.{attr}[{i}]", v[1]) for i, v in enumerate(value)
                          if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], kind)]
    return found


BATCH = _patterns(BatchPattern)
PATTERNS = _patterns(Prefiltered) + [(f"{n}.python", b.python) for n, b in BATCH]


def test_case_partners_are_every_non_ascii_match_of_an_ascii_letter() -> None:
    letters = re.compile("[a-z]", re.I)
    found = {}
    for cp in range(128, 0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        if letters.fullmatch(ch):
            found[ch] = next(c for c in "abcdefghijklmnopqrstuvwxyz" if re.fullmatch(c, ch, re.I))
    assert found == CASE_PARTNERS


def test_fold_lower_cases_ascii_and_maps_partners() -> None:
    assert fold("Click HERE") == "click here"
    assert fold("CLİCK \u212aEY \u017fpam") == "click key spam"
    assert fold("中文 ABC") == "中文 abc"


def test_split_branches_respects_groups_classes_and_escapes() -> None:
    assert split_branches(r"a|b(c|d)|[|x]|\|y") == ["a", "b(c|d)", "[|x]", r"\|y"]
    assert split_branches(r"[]|]|z|[^]|]") == ["[]|]", "z", "[^]|]"]


@pytest.mark.parametrize(
    ("pattern", "flags", "want"),
    [
        (r"\bclick here\b", re.I, {"click here"}),
        (r"\d+ ?(?:times|遍|次)", re.I, {"times", "遍", "次"}),
        (r"Buy (?:NOW|later)", re.I, {"buy "}),
        (r"\d+\s*=", 0, {"="}),
        (r"[=<>]\s*-?\d", 0, None),
        (r"x*", 0, None),
        (r"(?:a|)b", 0, {"b"}),
    ],
)
def test_required_literals(pattern: str, flags: int, want: set[str] | None) -> None:
    got = required_literals(pattern, flags)
    assert (None if got is None else set(got)) == want


def _texts(p: Prefiltered, n: int, seed: int) -> list[str]:
    """Texts made of the pattern's own pieces: literals, case variants, partners, CJK, digits, space."""
    rng = random.Random(seed)
    lits = [lit for _, lits in p._anchored for lit in lits] or ["x"]
    pieces = lits + [lit.upper() for lit in lits] + [lit.title() for lit in lits]
    pieces += [" ", "\n", "  ", "1", "42", "=", "$", "?", "。", "中文", "(", ")", ":", "-", ".", "İ", "ı", "ſ", "\u212a"]
    pieces += ["the", "word", "how many", "please", "```", "<p>", "http://x.example", "Translate", "\t"]
    out = []
    for _ in range(n):
        k = rng.randint(0, 12)
        text = "".join(rng.choice(pieces) for _ in range(k))
        if lits and rng.random() < 0.3:  # a literal with one character changed: near misses
            lit = rng.choice(lits)
            if lit:
                i = rng.randrange(len(lit))
                text += lit[:i] + rng.choice("aZ1 中") + lit[i + 1 :]
        out.append(text)
    return out


@pytest.mark.parametrize(("name", "pattern"), PATTERNS, ids=[n for n, _ in PATTERNS])
def test_prefiltered_pattern_gives_what_re_gives(name: str, pattern: Prefiltered) -> None:
    plain = re.compile(pattern.pattern, pattern.flags)
    for text in _texts(pattern, 400, seed=len(name)):
        assert pattern.findall(text) == plain.findall(text), text
        m1, m2 = pattern.search(text), plain.search(text)
        assert (m1 and (m1.span(), m1.group())) == (m2 and (m2.span(), m2.group())), text
        assert bool(pattern.match(text)) == bool(plain.match(text)), text


def test_every_module_declares_prefiltered_patterns() -> None:
    assert len(PATTERNS) >= 20  # the modules above use them; an import that lost them shows here


def test_subsets_are_cached_and_capped(monkeypatch) -> None:
    p = textscan.compile(r"\balpha\b|\bbeta\b|\bgamma\b|\d+=", re.I)
    assert p.search("nothing here") is None
    assert p.findall("ALPHA and 3=3 gamma") == plain_findall(p, "ALPHA and 3=3 gamma")
    n = len(p._subsets)
    assert p.findall("Gamma, alpha; 1=1") == plain_findall(p, "Gamma, alpha; 1=1")
    assert len(p._subsets) == n  # the same branches possible: the same compiled sub-alternation
    monkeypatch.setattr(textscan, "_MAX_SUBSETS", 0)
    q = textscan.compile(r"\balpha\b|\bbeta\b", re.I)
    assert q.candidate("alpha") is q.regex  # over the cap: the full pattern, still exact


def plain_findall(p: Prefiltered, text: str) -> list:
    return re.compile(p.pattern, p.flags).findall(text)


# --------------------------------------------------------------------------------------------------
# RE2 over whole batches


def test_re2_folds_exactly_the_two_characters_the_input_maps_away() -> None:
    import pyarrow as pa
    import pyarrow.compute as pc

    chars = [chr(cp) for cp in range(128, 0x110000) if not 0xD800 <= cp <= 0xDFFF]
    hits = pc.match_substring_regex(pa.array(chars), pattern="(?i)^[a-z]$").to_numpy(zero_copy_only=False)
    assert {c for c, h in zip(chars, hits, strict=True) if h} == {"\u212a", "\u017f"}


@pytest.mark.parametrize(
    ("pattern", "flags", "translates"),
    [
        (r"\bmust\b|必须", re.I | re.A, True),
        (r"\d+\s*$", re.A, True),
        (r"^\s*\d+[.)]\s+\S", re.M, True),  # Unicode \d and \s spelled out by Python's tables
        (r"(?<!应用)程序", re.I | re.A, False),
        (r"(.)\1", 0, False),
        (r"\bword\b", re.I, False),  # Unicode case folding and \b: Python decides
        (r"a$b", 0, False),
    ],
)
def test_to_re2_translates_or_declines(pattern: str, flags: int, translates: bool) -> None:
    assert (to_re2(pattern, flags) is not None) == translates


def _batch_texts(p: BatchPattern, n: int, seed: int) -> list[str]:
    texts = _texts(p.python, n, seed)
    rng = random.Random(seed)
    extra = ["١٢٣. item", "３）x", "\u3000\u30001. a", "x\u212ay", "ſelect", "K", "line\n", "a\n\n", "\v1. b",
             "价格是30元", "3+4=7\n", "$x^2$", "def f():\n  return 1;", "翻译成英文", "```py\n```"]
    return texts + [rng.choice(extra) + t + rng.choice(extra) for t in texts[: n // 2]]


@pytest.mark.parametrize(("name", "pattern"), BATCH, ids=[n for n, _ in BATCH])
def test_batch_pattern_gives_what_python_gives(name: str, pattern: BatchPattern) -> None:
    plain = re.compile(pattern.pattern, pattern.flags)
    texts = _batch_texts(pattern, 300, seed=len(name))
    column = TextColumn(texts)
    assert column.array is not None
    assert pattern.search(column).tolist() == [plain.search(t) is not None for t in texts]
    assert pattern.count(column).tolist() == [len(plain.findall(t)) for t in texts]


def test_batch_texts_that_arrow_cannot_hold_are_matched_in_python() -> None:
    p = BatchPattern(r"\bhow many\b", re.I | re.A)
    texts = ["How many?", "bad \ud800 how many"] * 10
    column = TextColumn(texts)
    assert column.array is None
    assert p.search(column).tolist() == [True, True] * 10
    assert p.count(column).tolist() == [1, 1] * 10


def test_counts_of_patterns_that_look_back_are_not_taken_from_a_consumed_text() -> None:
    # pyarrow counts by consuming the text: after "a", "\bb" would see a fresh start and match
    p = BatchPattern(r"a|\bb", re.A)
    column = TextColumn(["ab", "a b", "b"] * 10)
    assert p.count(column).tolist() == [1, 2, 1] * 10
