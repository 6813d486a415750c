"""Length rules: ``empty`` (nothing meaningful), ``too_short`` (incl. asked-for long form), ``too_long``."""

from __future__ import annotations

import re

from pydantic import Field

from curation import textscan
from curation.quality.base import RuleConfig, RuleResult, TextView, rule


class EmptyRule(RuleConfig):
    """No letter, digit, CJK character or emoji at all (whitespace, punctuation, "...")."""


class TooShortRule(RuleConfig):
    # Real SFT data is full of correct one-word answers ("Texas.", "1984", "正面", "疫"), so the
    # absolute floor is off by default; the long-form floor only applies when the instruction asks
    # for an essay, story, detailed explanation...
    min_chars: int = Field(0, ge=0, description="fewer meaningful characters than this is too short")
    long_form_min_chars: int = Field(
        40, ge=0, description="floor when the instruction asks for long-form text"
    )


class TooLongRule(RuleConfig):
    max_chars: int = Field(30_000, ge=1, description="response characters")
    max_text_chars: int = Field(200_000, ge=1, description="plain-text record characters")


_LONG_FORM_RE = textscan.compile(
    r"\b(write|compose|draft)\b.{0,40}\b(essay|article|story|blog|letter|speech|report|paragraph)"
    r"|\b(explain|describe|discuss|elaborate)\b.{0,30}\b(in detail|detailed|thoroughly)"
    r"|(?:写|撰写|创作).{0,12}(?:文章|作文|故事|散文|报告|演讲稿|信|短文|小说)|详细(?:说明|介绍|解释|描述|阐述)|阐述|论述",
    re.I,
)


@rule("empty", config=EmptyRule, priority=10, for_text=True)
def check_empty(v: TextView, c: EmptyRule) -> RuleResult:
    n = v.n_meaningful
    return RuleResult(
        "empty",
        n == 0,
        f"{'response' if v.is_chat else 'text'} has no letter, digit or emoji ({len(v.response.strip())} characters)",
        1.0 if n == 0 else 0.0,
    )


@rule("too_short", config=TooShortRule, priority=20, for_text=True)
def check_too_short(v: TextView, c: TooShortRule) -> RuleResult:
    n = v.n_meaningful
    if n < c.min_chars:
        return RuleResult("too_short", True, f"{n} meaningful characters < min_chars {c.min_chars}", 1.0)
    if v.is_chat and c.long_form_min_chars and n < c.long_form_min_chars:
        # the directive asks for long form, not a pasted letter or article below it
        m = _LONG_FORM_RE.search(v.instruction.strip().split("\n", 1)[0])
        if m:
            return RuleResult(
                "too_short",
                True,
                f"{n} meaningful characters < long_form_min_chars {c.long_form_min_chars} "
                f"(instruction asks for long form: {m.group(0)[:30]!r})",
                1.0,
            )
    return RuleResult("too_short", False)


@rule("too_long", config=TooLongRule, priority=30, for_text=True)
def check_too_long(v: TextView, c: TooLongRule) -> RuleResult:
    limit = c.max_chars if v.is_chat else c.max_text_chars
    n = len(v.response)
    return RuleResult(
        "too_long",
        n > limit,
        f"{n} characters > {'max_chars' if v.is_chat else 'max_text_chars'} {limit}",
        1.0 if n > limit else 0.0,
    )
