"""``lang_mismatch``: a zh instruction answered in en or the reverse (translation and code requests excepted)."""

from __future__ import annotations

import re

from pydantic import Field

from curation import textscan
from curation.quality.base import CJK, RuleConfig, RuleResult, TextView, rule, strip_code
from curation.records import detect_lang
from curation.textscan import split_ascii


class LangMismatchRule(RuleConfig):
    min_chars: int = Field(20, ge=1, description="only responses with this many letters/CJK characters")


_TRANSLATE_RE = textscan.compile(
    r"translat|in english|into english|in chinese|into chinese|english version|chinese version|mandarin"
    r"|翻译|译成|译为|英文|英语|中文|汉语|用英|英译|中译|English|Chinese",
    re.I,
)
_CODE_ASKED_RE = textscan.compile(
    r"代码|程序|函数|脚本|编程|正则"
    r"|(?<![A-Za-z])(?:sql|python|java|c\+\+|golang|rust|regex|code|script|function|fen|json|yaml)(?![A-Za-z])",
    re.I,
)
# a line that looks like code: r"[;{}=<>]|^\s*(?:def|...)\b|\)\s*:?\s*$|^\s*(?:#|//)" (re.I), checked
# branch by branch with string methods, the keyword branch as an anchored match
_CODE_KEYWORD_RE = re.compile(
    r"\s*(?:def|class|import|from|return|for|while|if|elif|else|print|select|insert|update|public|private"
    r"|#include|var|let|const|function|fn|func)\b",
    re.I,
)


def _is_code_line(line: str) -> bool:
    if "=" in line or ";" in line or "{" in line or "}" in line or "<" in line or ">" in line:
        return True
    if _CODE_KEYWORD_RE.match(line):
        return True
    if ")" in line:
        end = line.rstrip()
        if end.endswith(":"):
            end = end[:-1].rstrip()
        if end.endswith(")"):
            return True
    return line.lstrip().startswith(("#", "//"))


def _natural_language(text: str) -> str:
    """The text without fenced code and without lines that look like code (BELLE answers carry bare code)."""
    return "\n".join(ln for ln in strip_code(text).splitlines() if not _is_code_line(ln))


def _letters(text: str) -> int:
    """``len(LETTER_RE.findall(text))``: letters (Latin, Cyrillic) and CJK characters."""
    if text.isascii():
        return len(text.encode("ascii").translate(None, _ASCII_NOT_LETTER))
    head, rest = split_ascii(text)
    # the non-ASCII part without the characters that are not letters: few runs to cut out
    return len(head.translate(None, _ASCII_NOT_LETTER)) + len(_NOT_LETTER_RUNS_RE.sub("", rest))


_ASCII_NOT_LETTER = bytes(b for b in range(128) if not (65 <= b <= 90 or 97 <= b <= 122))
_NOT_LETTER_RUNS_RE = re.compile(f"[^A-Za-z{CJK}\u00c0-\u024f\u0400-\u04ff]+")


@rule("lang_mismatch", config=LangMismatchRule, priority=120, for_text=False)
def check_lang_mismatch(v: TextView, c: LangMismatchRule) -> RuleResult:
    for user, answer in v.pairs:
        prose = _natural_language(answer)
        if _letters(prose) < c.min_chars:
            continue
        # the directive decides the language asked for, not a pasted English passage or code below it
        first = _natural_language(user.strip().split("\n", 1)[0])
        asked = detect_lang(first)
        if asked not in ("zh", "en"):
            asked = detect_lang(_natural_language(user))
        got = detect_lang(prose)
        if asked in ("zh", "en") and got in ("zh", "en") and asked != got:
            # translations switch language by request; code answers are English whatever was asked
            if _TRANSLATE_RE.search(user) or (got == "en" and _CODE_ASKED_RE.search(user)):
                continue
            return RuleResult("lang_mismatch", True, f"instruction is {asked}, response is {got}", 1.0)
    return RuleResult("lang_mismatch", False)
