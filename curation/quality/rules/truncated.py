"""``truncated``: an unbalanced code fence, a dangling end (comma, connective, article), an open bracket, a long
prose last line without final punctuation."""

from __future__ import annotations

import re

from pydantic import Field

from curation.quality.base import (
    CJK_CHAR_RE,
    LETTER_RE,
    RuleConfig,
    RuleResult,
    TextView,
    meaningful_chars,
    rule,
    strip_code,
    units,
)


class TruncatedRule(RuleConfig):
    check_code_fences: bool = True
    check_brackets: bool = True
    check_dangling_end: bool = Field(True, description="ends on a comma, colon, connective or article")
    # the noisiest check: answers that merely omit the final full stop look the same (~1.5% of clean rows)
    check_unpunctuated_end: bool = Field(True, description="a long prose last line without final punctuation")
    min_last_line_words: int = Field(
        10, ge=1, description="ends without punctuation on a prose line of at least this many words (en)"
    )
    min_last_line_cjk: int = Field(20, ge=1, description="same for CJK characters (zh)")


_URL_END_RE = re.compile(r"(?:https?://|www\.)\S+$", re.I)
_TERMINAL = set(".!?。！？…~～)）]】」』\"'”’》>`*|:;；：-—_/\\")
_DANGLING_PUNCT = set(",，、:：;；([{（【「『<“‘-—=+&")
_EN_DANGLING_WORDS = frozenset(
    "the a an and or but of to in on at by for with from as that which who whose whom is are was were be "
    "been being this these those their his her its our your my than then if because while when where "
    "into onto about over under between such very more most also not".split()
)
# connectives that need a continuation; single characters like 的/了/和 end real sentences too
# ("是应该的", "我吃了", "暖和"), so only words count
_ZH_DANGLING_RE = re.compile(
    "(?:以及|并且|而且|但是|因为|所以|如果|或者|例如|比如|包括|由于|为了|关于|根据|以便|然后|其中|即|如下)$"
)
_ASCII_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_SENTENCE_ENDS = frozenset(".!?。！？")
_SENTENCE_END_RE = re.compile(r"[.!?。！？]\s")
_BRACKETS = {"(": ")", "[": "]", "{": "}", "（": "）", "【": "】", "「": "」", "《": "》"}
_OPENER_RE = re.compile("[" + re.escape("".join(_BRACKETS)) + "]")


_CLOSERS = {v: k for k, v in _BRACKETS.items()}
_BRACKET_RE = re.compile("[" + re.escape("".join(_BRACKETS) + "".join(_CLOSERS)) + "]")


def _unclosed_bracket(text: str) -> str | None:
    if not _OPENER_RE.search(text, max(0, len(text) - 200)):
        return None
    stack: list[tuple[str, int]] = []
    for m in _BRACKET_RE.finditer(text):  # only the brackets, not every character
        ch, i = m.group(), m.start()
        if ch in _BRACKETS:
            stack.append((ch, i))
        elif stack and stack[-1][0] == _CLOSERS[ch]:
            stack.pop()
    # an opener left unclosed near the very end means the text stopped inside it
    if stack and stack[-1][1] >= len(text) - 200:
        return stack[-1][0]
    return None


def _word(unit: str | bytes) -> str:
    return unit.decode("ascii") if isinstance(unit, bytes) else unit


@rule("truncated", config=TruncatedRule, priority=110, for_text=False)
def check_truncated(v: TextView, c: TruncatedRule) -> RuleResult:
    text = v.last_response.rstrip()
    if not text:
        return RuleResult("truncated", False)
    if c.check_code_fences and text.count("```") % 2 == 1:
        return RuleResult(
            "truncated", True, f"{text.count('```')} code fences (unbalanced: a block never closes)", 1.0
        )
    prose = strip_code(text).rstrip() if "```" in text else text
    if text.endswith("```") or not prose:
        return RuleResult("truncated", False)
    last = prose[-1]
    if c.check_dangling_end and last in _DANGLING_PUNCT and meaningful_chars(prose[-300:]) >= 20:
        return RuleResult("truncated", True, f"ends on {last!r} (dangling punctuation)", 1.0)
    last_line = prose.splitlines()[-1].strip()
    words = units(last_line)
    if c.check_dangling_end and words and last not in _TERMINAL:
        w = _word(words[-1]).casefold()
        # prose ends on a non-space (rstripped): "[A-Za-z]$" is its last character
        if len(words) >= 4 and w in _EN_DANGLING_WORDS and last in _ASCII_LETTERS:
            return RuleResult("truncated", True, f"ends on {w!r} (a sentence cannot end on it)", 1.0)
        m = _ZH_DANGLING_RE.search(prose) if len(words) >= 6 else None
        if m:
            return RuleResult("truncated", True, f"ends on {m.group(0)!r} (a sentence cannot end on it)", 1.0)
    if c.check_brackets:
        b = _unclosed_bracket(prose[-2000:])
        if b is not None:
            return RuleResult("truncated", True, f"bracket {b!r} opened near the end is never closed", 1.0)
    if last in _TERMINAL or not LETTER_RE.match(last) or _URL_END_RE.search(last_line):
        return RuleResult("truncated", False)
    # a prose line without final punctuation, in a text that otherwise punctuates its sentences
    n_cjk = 0 if last_line.isascii() else len(CJK_CHAR_RE.findall(last_line))
    n_words = len(words) - n_cjk
    long_line = n_words >= c.min_last_line_words or n_cjk >= c.min_last_line_cjk
    # a sentence end followed by white space anywhere but at the very end (which was cut off)
    punctuates = (
        _SENTENCE_END_RE.search(prose, 0, len(prose) - 1) is not None
        or prose[-2:-1] in _SENTENCE_ENDS
        or "。" in prose
    )
    if (
        c.check_unpunctuated_end
        and long_line
        and punctuates
        and not last_line.startswith(("#", "|", "-", "*", "+"))
    ):
        return RuleResult(
            "truncated",
            True,
            f"ends mid-sentence on {last_line[-12:]!r}: a prose line of {n_words} words (>= min_last_line_words "
            f"{c.min_last_line_words}) / {n_cjk} CJK characters (>= min_last_line_cjk {c.min_last_line_cjk}) "
            "without final punctuation",
            1.0,
        )
    return RuleResult("truncated", False)
