"""``repetition``: repeated lines, repeated n-grams, a looped tail, one character run."""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from pydantic import Field

from curation import textscan
from curation.quality.base import (
    CJK_CHAR_RE,
    RuleConfig,
    RuleResult,
    TextView,
    meaningful_chars,
    ratio_severity,
    rule,
    strip_code,
    units,
)


class RepetitionRule(RuleConfig):
    max_dup_line_fraction: float = Field(0.3, ge=0, le=1, description="characters in repeated lines / all")
    max_dup_ngram_fraction: float = Field(
        0.7, ge=0, le=1, description="units covered by a repeated n-gram (en: 5 words, zh: 8 characters)"
    )
    max_char_run: int = Field(30, ge=2, description="longest run of one character")
    min_units: int = Field(12, ge=1, description="n-gram check only from this many words / CJK characters")
    min_tail_loop_chars: int = Field(
        40,
        ge=1,
        description="the answer ends in one phrase looped at least 4 times over this many characters",
    )


def _dup_line_fraction(text: str) -> float:
    lines = text.splitlines()
    if len(lines) < 3:  # (fewer still after the filter below)
        return 0.0
    lines = [ln.strip() for ln in lines]
    lines = [ln for ln in lines if meaningful_chars(ln) >= 3]  # "}", "---", "1." repeat legitimately
    if len(lines) < 3:
        return 0.0
    counts = Counter(lines)
    dup = sum(len(ln) * (n - 1) for ln, n in counts.items() if n > 1)
    return dup / max(1, sum(len(ln) for ln in lines))


def _dup_ngram_fraction(units: list[str] | list[bytes], n: int) -> float:
    """Share of units covered by an n-gram that occurs more than once (Gopher's measure, on units)."""
    if len(units) < n * 2:
        return 0.0
    grams = list(zip(*(units[i:] for i in range(n)), strict=False))
    counts = Counter(grams)
    if len(counts) == len(grams):
        return 0.0
    covered = bytearray(len(units))
    ones = b"\x01" * n
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i : i + n] = ones
    return covered.count(1) / len(units)


@lru_cache(maxsize=8)
def _char_run_re(n: int) -> re.Pattern[str]:
    # markdown rules and table borders ("-----", "=====", "|---|") are layout, not degeneration
    return re.compile(r"([^\s\-=_*#~.·|+])\1{" + str(n - 1) + ",}")


def _char_run(text: str, n: int) -> re.Match[str] | None:
    """``_char_run_re(n).search(text)``, after a cheap test that rules most texts out.

    A run of n equal characters holds at least n // k of the characters at multiples of k, all
    equal and next to each other in ``text[::k]``: no such run in that sample (a 1/k-size
    string), no run in the text.
    """
    k = n // 4
    if k >= 2 and _char_run_re(n // k).search(text[::k]) is None:
        return None
    return _char_run_re(n).search(text)


def _tail_loop(text: str, max_period: int = 60) -> tuple[str, int]:
    """The phrase the text ends in, looped, and how many times (degenerate generation)."""
    tail = text[-1500:]
    # WS_RE.sub(" ", tail).rstrip(): \s is str.isspace(), what split() splits on
    words = tail.split()
    t = ((" " if tail[:1].isspace() else "") + " ".join(words)) if words else ""
    best = ("", 0)
    if not t:
        return best
    last = t[-1]
    for p in range(2, min(max_period, len(t) // 4) + 1):
        # 4 loops of period p end in the same character 4 times, p apart: most periods fail here
        if t[-1 - p] != last or t[-1 - 2 * p] != last or t[-1 - 3 * p] != last:
            continue
        unit = t[-p:]
        reps, end = 1, len(t) - p
        while end - p >= 0 and t[end - p : end] == unit:
            reps += 1
            end -= p
        if reps >= 4 and reps * p > best[1] * len(best[0]):
            best = (unit, reps)
    return best


_REPEAT_ASKED_RE = textscan.compile(
    r"\brepeat|\d+ ?(?:times|遍|次)|\b(?:two|three|four|five|ten) times|重复|复述|[两三四五六七八九十]遍",
    re.I,
)


def _repetition_in(text: str, c: RepetitionRule) -> tuple[str, float]:
    """(detail, 0) when ``text`` is repetitive, else ("", severity)."""
    line_frac = _dup_line_fraction(text)
    if line_frac > c.max_dup_line_fraction:
        return (
            f"repeated lines cover {line_frac:.0%} of characters > max_dup_line_fraction "
            f"{c.max_dup_line_fraction:.0%}"
        ), 1.0
    words = units(text.casefold())
    ngram_frac = 0.0
    if len(words) >= c.min_units:
        cjk = (0 if text.isascii() else len(CJK_CHAR_RE.findall(text))) / len(words)
        n = 8 if cjk > 0.5 else 5
        ngram_frac = _dup_ngram_fraction(words, n)
        if ngram_frac > c.max_dup_ngram_fraction:
            return (
                f"repeated {n}-grams cover {ngram_frac:.0%} of words > max_dup_ngram_fraction "
                f"{c.max_dup_ngram_fraction:.0%}"
            ), 1.0
    phrase, reps = _tail_loop(text)
    if reps and reps * len(phrase) >= c.min_tail_loop_chars:
        return (
            f"ends in {phrase[:30]!r} looped {reps} times ({reps * len(phrase)} characters >= "
            f"min_tail_loop_chars {c.min_tail_loop_chars})"
        ), 1.0
    if len(text) >= c.max_char_run:
        m = _char_run(text, c.max_char_run)
        if m:
            return (
                f"character {m.group(1)!r} repeated {len(m.group(0))} times >= max_char_run {c.max_char_run}"
            ), 1.0
    return "", max(
        ratio_severity(line_frac, c.max_dup_line_fraction),
        ratio_severity(ngram_frac, c.max_dup_ngram_fraction),
    )


@rule("repetition", config=RepetitionRule, priority=100, for_text=True)
def check_repetition(v: TextView, c: RepetitionRule) -> RuleResult:
    if v.is_chat:
        # each answer on its own: later turns legitimately restate earlier ones (revisions)
        if _REPEAT_ASKED_RE.search(v.prompt):
            return RuleResult("repetition", False)
        texts = [strip_code(a) for a in v.assistant_turns]  # code repeats lines by nature
    else:
        texts = [v.response]
    worst = 0.0
    for text in texts:
        detail, sev = _repetition_in(text, c)
        if detail:
            return RuleResult("repetition", True, detail, 1.0)
        worst = max(worst, sev)
    return RuleResult("repetition", False, severity=worst)
