"""What every quality rule shares: its config base, its result, the record view, the registry.

A rule is one function ``check(view, config) -> RuleResult`` registered with :func:`rule`, which
names it, gives its config model (the ``rules.<name>`` section of the stage config, built from the
registry) and its place in the drop-reason priority. Rules read the record through a
:class:`TextView`, which derives each text (instruction, response, prose without code, ...) at most
once per record however many rules read it.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache

from pydantic import BaseModel, ConfigDict

from curation.records import Record
from curation.textscan import alnum_count, ascii_alnum_count, ascii_words, split_ascii

# --------------------------------------------------------------------------------------------------
# config, result, registry


class RuleConfig(BaseModel):
    """Base of every rule's settings: each rule can be switched off (``rules.<name>.enabled=false``)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True


@dataclass(slots=True)
class RuleResult:
    """What one rule measured on one record."""

    rule: str
    fired: bool
    detail: str = ""
    #: 0 = nowhere near the threshold, 1 = at or past it; feeds the continuous quality_rules score
    severity: float = 0.0
    #: flag-only rules (pii) never drop and never lower the score
    flag_only: bool = False


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A registered rule."""

    name: str
    check: Callable[..., RuleResult]
    #: the rule's settings (``rules.<name>`` in the stage config); None: no settings section
    config: type[RuleConfig] | None
    #: drop-reason priority: when several rules fire, the lowest number names the drop
    priority: int
    #: whether the rule also judges plain-text records (general corpora have no instruction)
    for_text: bool
    #: flags (``quality_flags``) but never drops or lowers the score
    flag_only: bool = False


#: every registered rule by name (``curation.quality.rules`` imports the built-in ones)
RULES: dict[str, RuleSpec] = {}


def rule(
    name: str,
    *,
    config: type[RuleConfig] | None,
    priority: int,
    for_text: bool,
    flag_only: bool = False,
) -> Callable[[Callable[..., RuleResult]], Callable[..., RuleResult]]:
    """Register ``check(view, config) -> RuleResult`` as the rule ``name`` (a decorator)."""

    def register(check: Callable[..., RuleResult]) -> Callable[..., RuleResult]:
        spec = RuleSpec(name, check, config, priority, for_text, flag_only)
        old = RULES.get(name)
        if old is not None and old.check.__qualname__ != check.__qualname__:
            raise ValueError(f"quality rule {name!r} is already registered by {old.check.__module__}")
        clash = [s.name for s in RULES.values() if s.priority == priority and s.name != name]
        if clash:
            raise ValueError(f"quality rule {name!r}: priority {priority} is taken by {clash[0]!r}")
        RULES[name] = spec
        return check

    return register


def ordered_rules() -> list[RuleSpec]:
    """Registered rules in drop-reason priority order."""
    return sorted(RULES.values(), key=lambda s: s.priority)


# --------------------------------------------------------------------------------------------------
# text helpers shared by several rules

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
CJK_CHAR_RE = re.compile(f"[{CJK}]")
HAN_RE = re.compile(r"[\u4e00-\u9fff]")
# a "unit" is a word of a space-separated script or one CJK character
UNIT_RE = re.compile(f"[{CJK}]|(?:(?![{CJK}])[^\\W_])+")
# the same matches without a lookahead per character: a run of word characters that are not CJK
_UNIT_FAST_RE = re.compile(f"[{CJK}]|[^\\W_{CJK}]+")
# letters, digits, CJK, and emoji (an emoji-only reply can be the requested answer)
MEANINGFUL_RE = re.compile(r"[^\W_]|[\u2600-\u27bf\U0001f300-\U0001faff]")
LETTER_RE = re.compile(f"[A-Za-z{CJK}\u00c0-\u024f\u0400-\u04ff]")
FENCE_RE = re.compile(r"```.*?(?:```|\Z)", re.S)
WS_RE = re.compile(r"\s+")


def strip_code(text: str) -> str:
    """``text`` with fenced code blocks replaced by a space (code is judged by other means)."""
    return FENCE_RE.sub(" ", text) if "```" in text else text


_EMOJI_RE = re.compile(r"[\u2600-\u27bf\U0001f300-\U0001faff]")


def meaningful_chars(text: str) -> int:
    """Letters, digits, CJK characters and emoji in ``text`` (``len(MEANINGFUL_RE.findall(text))``)."""
    if text.isascii():  # [^\W_] is str.isalnum: on ASCII, [A-Za-z0-9]
        return ascii_alnum_count(text)
    n = alnum_count(text)
    if _EMOJI_RE.search(text):  # emoji that are not also alphanumeric (dingbat digits are)
        n += sum(1 for ch in _EMOJI_RE.findall(text) if not ch.isalnum())
    return n


def units(text: str) -> list[str] | list[bytes]:
    """``UNIT_RE.findall(text)``: words of space-separated scripts and single CJK characters.

    ASCII text gives its words as bytes (same sequence, cheaper to get): use them for counting and
    comparing, decode one to show it.
    """
    if text.isascii():
        return ascii_words(text)
    head, rest = split_ascii(text)
    if not any(map(str.isalnum, rest)):
        # the other characters are all separators (curly quotes, dashes): the ASCII words are the units
        return ascii_words(text.encode("ascii", "replace").decode("ascii"))
    return _UNIT_FAST_RE.findall(text)


def ratio_severity(value: float, limit: float) -> float:
    """How close ``value`` is to the ``limit`` it must stay under (0..1, 1 = at or past it)."""
    return min(1.0, value / limit) if limit > 0 else (1.0 if value > 0 else 0.0)


@lru_cache(maxsize=1)
def common_cjk_chars() -> frozenset[str]:
    """The ~3500 most frequent Han characters, by the word frequencies of jieba's dictionary.

    Text whose Han characters are mostly outside this set is GBK-decoded UTF-8 ("浣犲ソ") or
    similar garbage; ordinary Chinese uses well under 5% of rarer characters.
    """
    import jieba

    counts: Counter[str] = Counter()
    with open(os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), encoding="utf-8") as fh:
        for line in fh:
            parts = line.split(" ")
            if len(parts) < 2:
                continue
            freq = int(parts[1])
            for ch in parts[0]:
                if "\u4e00" <= ch <= "\u9fff":
                    counts[ch] += freq
    return frozenset(ch for ch, _ in counts.most_common(3500))


# --------------------------------------------------------------------------------------------------
# the record as the rules see it


class TextView:
    """A record's texts, each derived at most once (many rules read the same ones)."""

    def __init__(self, record: Record):
        self.record = record
        self.is_chat = record.messages is not None

    @cached_property
    def instruction(self) -> str:
        return self.record.instruction()

    @cached_property
    def response(self) -> str:
        return self.record.response() if self.is_chat else (self.record.text or "")

    @cached_property
    def assistant_turns(self) -> list[str]:
        return [m["content"] for m in self.record.messages or [] if m["role"] == "assistant"]

    @cached_property
    def last_response(self) -> str:
        if not self.is_chat:
            return self.response
        turns = self.assistant_turns
        return turns[-1] if turns else ""

    @cached_property
    def prose(self) -> str:
        """The response without fenced code (HTML/lang/placeholder rules must not judge code)."""
        return strip_code(self.response)

    @cached_property
    def n_meaningful(self) -> int:
        # only small counts matter (empty, too short): count the head, the rest only if the head is bare
        n = meaningful_chars(self.response[:1000])
        return n if n or len(self.response) <= 1000 else meaningful_chars(self.response)

    @cached_property
    def prompt(self) -> str:
        """Everything but the assistant turns (:meth:`Record.prompt`)."""
        return self.record.prompt()

    @cached_property
    def pairs(self) -> list[tuple[str, str]]:
        """(user turn, the assistant turn answering it) for every exchange."""
        out = []
        prev_user = None
        for m in self.record.messages or []:
            if m["role"] == "user":
                prev_user = m["content"]
            elif m["role"] == "assistant" and prev_user is not None:
                out.append((prev_user, m["content"]))
                prev_user = None
        return out


__all__ = [
    "RULES",
    "RuleConfig",
    "RuleResult",
    "RuleSpec",
    "TextView",
    "common_cjk_chars",
    "meaningful_chars",
    "ordered_rules",
    "ratio_severity",
    "rule",
    "strip_code",
    "units",
]
