"""Quality filter: named heuristic rules (zh + en) and an optional fastText classifier.

Every record is scored first and decided second (data-juicer style): the measured values go on the
record, then the stage drops a record when an enabled rule fired (reason = the rule's name, detail =
the measured value against its threshold; the first rule in :data:`RULES` order names the drop) or
when the classifier puts it below the threshold / outside the top percent (reason ``low_quality``).
``annotate_only`` scores and flags without dropping. Columns added:

    quality          quality_rules x quality_model (just quality_rules without a model), in [0, 1]
    quality_rules    1 when no rule is near its threshold, falling to 0.5 as one approaches it, 0 once one fires
    quality_model    classifier p(high quality), null without a model
    quality_flags    comma-separated names of the rules that fired (pii included: flag only)
    quality_signals  JSON: each fired rule's detail, and the severity of rules close to firing

Rules (all thresholds in :class:`RulesConfig`, each rule can be switched off)::

    empty           response (or text) has no letter, digit, CJK character or emoji
    too_short       response shorter than min_chars, or than long_form_min_chars when the
                    instruction asks for long-form writing ("write an essay", "详细说明", ...)
    too_long        response (text) longer than max_chars (max_text_chars)
    echo            response mostly repeats the instruction
    repetition      repeated lines, repeated n-grams, one character run
    truncated       unbalanced code fence, ends on a comma / connective / mid-sentence, open bracket
    refusal         "I'm sorry, but I can't…", "抱歉，我无法…" near the start of a short answer
    boilerplate     "As an AI language model…", "作为一个人工智能语言模型…"
    mojibake        U+FFFD, latin-1 decoded UTF-8 ("â€™", "æˆ‘"), GBK decoded UTF-8 (rare-CJK share),
                    control characters
    html_spam       script/iframe tags, tag-heavy or link-heavy text, spam phrases (outside code)
    placeholder     TODO / N/A / lorem ipsum / [insert …] / 待补充 instead of an answer
    lang_mismatch   zh instruction answered in en or the reverse (translation requests excepted)
    pii             emails, phone numbers, Chinese ID numbers: flagged (quality_flags), not dropped,
                    when ``pii`` is on

Plain-text records (``text``, general corpora) only get the rules that make sense without an
instruction: empty, too_short (min_chars), too_long, repetition, mojibake, html_spam, placeholder, pii.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.records import Record, detect_lang
from curation.stage import Drop, Stage, StageOutput

# --------------------------------------------------------------------------------------------------
# config


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True


class EmptyRule(_Rule):
    """No letter, digit, CJK character or emoji at all (whitespace, punctuation, "...")."""


class TooShortRule(_Rule):
    # Real SFT data is full of correct one-word answers ("Texas.", "1984", "正面", "疫"), so the
    # absolute floor is off by default; the long-form floor only applies when the instruction asks
    # for an essay, story, detailed explanation...
    min_chars: int = Field(0, ge=0, description="fewer meaningful characters than this is too short")
    long_form_min_chars: int = Field(
        40, ge=0, description="floor when the instruction asks for long-form text"
    )


class TooLongRule(_Rule):
    max_chars: int = Field(30_000, ge=1, description="response characters")
    max_text_chars: int = Field(200_000, ge=1, description="plain-text record characters")


class EchoRule(_Rule):
    min_instruction_coverage: float = Field(
        0.9, ge=0, le=1, description="share of the instruction's character 4-grams repeated in the response"
    )
    max_novel_fraction: float = Field(
        0.2, ge=0, le=1, description="share of the response's 4-grams not found in the instruction"
    )


class RepetitionRule(_Rule):
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


class TruncatedRule(_Rule):
    check_code_fences: bool = True
    check_brackets: bool = True
    check_dangling_end: bool = Field(True, description="ends on a comma, colon, connective or article")
    # the noisiest check: answers that merely omit the final full stop look the same (~1.5% of clean rows)
    check_unpunctuated_end: bool = Field(True, description="a long prose last line without final punctuation")
    min_last_line_words: int = Field(
        10, ge=1, description="ends without punctuation on a prose line of at least this many words (en)"
    )
    min_last_line_cjk: int = Field(20, ge=1, description="same for CJK characters (zh)")


class RefusalRule(_Rule):
    window_chars: int = Field(
        160, ge=1, description="the refusal phrase must start within this many characters"
    )
    max_chars: int = Field(
        600, ge=1, description="longer answers that start with an apology usually help anyway"
    )


class BoilerplateRule(_Rule):
    """Assistant self-reference ("As an AI language model", "作为一个人工智能") opening an answer.

    Not when the user asks about the assistant itself ("你是什么？", "what can you do?").
    """

    window_chars: int = Field(
        200, ge=1, description="the phrase must start within this many characters of a turn"
    )


class MojibakeRule(_Rule):
    max_mojibake_sequences: int = Field(
        0, ge=0, description="U+FFFD and latin-1-decoded UTF-8 sequences ('â€™', 'Ã©', 'æˆ‘') allowed"
    )
    max_control_fraction: float = Field(
        0.01, ge=0, le=1, description="control / private-use characters per character"
    )
    max_rare_cjk_fraction: float = Field(
        0.3, ge=0, le=1, description="CJK characters outside the ~3500 common ones (GBK-decoded UTF-8)"
    )
    min_cjk_chars: int = Field(12, ge=1, description="rare-CJK check only from this many CJK characters")


class HtmlSpamRule(_Rule):
    max_tag_fraction: float = Field(0.15, ge=0, le=1, description="characters inside HTML tags / all")
    max_links: int = Field(8, ge=0, description="URLs outside code")
    max_link_fraction: float = Field(0.5, ge=0, le=1, description="characters in URLs / all (2+ links)")
    max_spam_phrases: int = Field(1, ge=0, description="'click here', '点击链接', '加微信'...")


class PlaceholderRule(_Rule):
    """TODO / N/A / lorem ipsum / [insert answer] / 待补充 in place of content."""


class LangMismatchRule(_Rule):
    min_chars: int = Field(20, ge=1, description="only responses with this many letters/CJK characters")


class RulesConfig(BaseModel):
    """One sub-config per rule: ``--set rules.too_short.min_chars=5``, ``rules.echo.enabled=false``."""

    model_config = ConfigDict(extra="forbid")
    empty: EmptyRule = EmptyRule()
    too_short: TooShortRule = TooShortRule()
    too_long: TooLongRule = TooLongRule()
    echo: EchoRule = EchoRule()
    repetition: RepetitionRule = RepetitionRule()
    truncated: TruncatedRule = TruncatedRule()
    refusal: RefusalRule = RefusalRule()
    boilerplate: BoilerplateRule = BoilerplateRule()
    mojibake: MojibakeRule = MojibakeRule()
    html_spam: HtmlSpamRule = HtmlSpamRule()
    placeholder: PlaceholderRule = PlaceholderRule()
    lang_mismatch: LangMismatchRule = LangMismatchRule()


class QualityConfig(BaseModel):
    """Quality stage settings. Rules only by default; a classifier when ``model`` names a file."""

    model_config = ConfigDict(extra="forbid")
    rules: RulesConfig = RulesConfig()
    model: str | None = Field(None, description="fastText model trained by `sftflow quality train`")
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="keep records with classifier p(high quality) >= threshold (0.5 if unset)",
    )
    top_percent: float | None = Field(
        None,
        gt=0,
        le=100,
        description="instead of a threshold: keep rows in the top X% of classifier scores (ranked over all input rows)",
    )
    pii: bool = Field(
        False, description="flag emails / phone numbers / ID numbers in quality_flags (never drops)"
    )
    annotate_only: bool = Field(False, description="score and flag every record, drop nothing")
    examples_per_reason: int = Field(3, ge=0, description="dropped examples kept per reason in stats")
    histogram_bins: int = Field(10, ge=1, le=100)

    @model_validator(mode="after")
    def _classifier_settings(self) -> QualityConfig:
        if self.model is None and (self.threshold is not None or self.top_percent is not None):
            raise ValueError("threshold/top_percent need a classifier: set model to a trained model file")
        if self.threshold is not None and self.top_percent is not None:
            raise ValueError("set either threshold or top_percent, not both")
        return self


# --------------------------------------------------------------------------------------------------
# text helpers

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_CJK_CHAR_RE = re.compile(f"[{_CJK}]")
_HAN_RE = re.compile(r"[\u4e00-\u9fff]")
# a "unit" is a word of a space-separated script or one CJK character
_UNIT_RE = re.compile(f"[{_CJK}]|(?:(?![{_CJK}])[^\\W_])+")
# letters, digits, CJK, and emoji (an emoji-only reply can be the requested answer)
_MEANINGFUL_RE = re.compile(r"[^\W_]|[\u2600-\u27bf\U0001f300-\U0001faff]")
_LETTER_RE = re.compile(f"[A-Za-z{_CJK}\u00c0-\u024f\u0400-\u04ff]")
_FENCE_RE = re.compile(r"```.*?(?:```|\Z)", re.S)
_WS_RE = re.compile(r"\s+")


def _strip_code(text: str) -> str:
    return _FENCE_RE.sub(" ", text) if "```" in text else text


def _meaningful_chars(text: str) -> int:
    return len(_MEANINGFUL_RE.findall(text))


def _shingles(text: str, n: int = 4) -> set[str]:
    t = _WS_RE.sub("", text.casefold())
    if len(t) < n:
        return {t} if t else set()
    return {t[i : i + n] for i in range(len(t) - n + 1)}


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
# patterns (zh + en)

_LONG_FORM_RE = re.compile(
    r"\b(write|compose|draft)\b.{0,40}\b(essay|article|story|blog|letter|speech|report|paragraph)"
    r"|\b(explain|describe|discuss|elaborate)\b.{0,30}\b(in detail|detailed|thoroughly)"
    r"|(?:写|撰写|创作).{0,12}(?:文章|作文|故事|散文|报告|演讲稿|信|短文|小说)|详细(?:说明|介绍|解释|描述|阐述)|阐述|论述",
    re.I,
)
_REFUSAL_RE = re.compile(
    r"i'?m (?:really |very )?sorry,? (?:but )?i (?:can(?:'|no)t|cannot|am unable|won'?t|am not able)"
    r"|i apologi[sz]e,? but (?:i|as)"
    r"|\bi (?:can(?:'|no)t|cannot|won'?t|am unable to|am not able to|must decline to) (?!help but)"
    r"(?:help|assist|provide|fulfill|comply|do that|answer|create|generate|write|engage|support|share|give)"
    r"|\bsorry,? (?:but )?i (?:can(?:'|no)t|cannot)"
    r"|(?:抱歉|对不起|不好意思)[，,。！!\s]*(?:但是?)?(?:我|本模型)?(?:无法|不能|没有办法|不可以|做不到)"
    r"|我(?:无法|不能|不可以|没有办法)(?:回答|提供|完成|满足|协助|帮助|帮你|帮您|为你|为您|执行|生成|处理)"
    r"|(?:这个|此)问题我(?:无法|不能)",
    re.I,
)
_BOILERPLATE_RE = re.compile(
    r"\bas an? (?:ai|artificial intelligence)(?: language model| model| assistant)?\b"
    r"|\bas a (?:large )?language model\b|\bi(?:'m| am) (?:just |only )?an? (?:ai|language model)\b"
    r"|作为(?:一[个名款位])?(?:人工智能|AI|ai|语言模型|大型语言模型|AI语言模型|人工智能语言模型|智能助手|AI助手)"
    r"|我(?:只是|是)一[个款](?:人工智能|AI|语言模型|AI语言模型)",
    re.I,
)
# UTF-8 read as latin-1 / cp1252: a lead byte's character followed by continuation bytes' characters
# ("Ã©" for é, "â€™" for ’, "æˆ‘" for 我). × and ÷ are excluded as 2-byte leads: "3 × 4" is maths.
_CONT = (
    "\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc"
    "\u2013\u2014\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122"
)
_LATIN1_MOJIBAKE_RE = re.compile(
    f"[\u00c2-\u00d6\u00d8-\u00df][{_CONT}]|[\u00e0-\u00ef][{_CONT}]{{2}}|[\u00f0-\u00f4][{_CONT}]{{3}}"
)
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ue000-\uf8ff]")
_GARBLED_RE = re.compile("锟斤拷|烫烫烫|屯屯屯")
_TAG_RE = re.compile(
    r"</?(?:a|abbr|b|body|br|button|center|div|em|font|form|h[1-6]|head|hr|html|i|img|input|label|li|nav|ol|option|p"
    r"|section|select|small|span|strong|table|tbody|td|th|thead|title|tr|u|ul)(?:\s[^<>]{0,300})?/?>",
    re.I,
)
_URL_END_RE = re.compile(r"(?:https?://|www\.)\S+$", re.I)
_DANGER_TAG_RE = re.compile(
    r"<\s*(?:script|iframe|style|object|embed|meta|link|html|body|head|!doctype)\b", re.I
)
_URL_RE = re.compile(r"(?:https?://|www\.)[^\s<>\"'）)\]]+", re.I)
_SPAM_RE = re.compile(
    r"click here|buy now|order now|visit our (?:website|site|store)|limited[- ]time offer|free download"
    r"|subscribe (?:now|today)|casino|viagra|cheap (?:pills|meds)|act now|100% free"
    r"|点击(?:这里|此处|链接|下方|购买)|加(?:微信|V信|vx|qq|QQ)|扫码|限时(?:优惠|抢购)|免费领取|立即(?:购买|下载|注册)",
    re.I,
)
_HTML_ASKED_RE = re.compile(r"html|css|xml|web ?page|网页|标签|markup|svg|jsx|react|vue", re.I)
_LINKS_ASKED_RE = re.compile(r"link|url|source|reference|website|链接|网址|网站|参考|来源", re.I)
_PLACEHOLDER_WHOLE_RE = re.compile(
    r"(?:todo|tbd|tba|n/?a|null|nan|placeholder|fixme|xxx+|\?+|…+|\.{3,}|待补充|待完善|待填写|待定|暂无|略|此处省略"
    r"|(?:answer|response|content|text) (?:goes )?here|insert (?:answer|response|text) here|to be (?:added|completed))",
    re.I,
)
_PLACEHOLDER_ANY_RE = re.compile(
    r"lorem ipsum|dolor sit amet|\[(?:insert|add|your|placeholder|todo)[^\]]{0,40}(?:here|answer|response|text|content)[^\]]{0,20}\]"
    r"|<(?:insert|your)[^>]{0,40}(?:here|answer|response)>"
    r"|^\s*(?:todo|tbd|fixme)\b[:：]"
    r"|待补充|待完善|待填写|此处(?:填写|填入|插入|补充)|请在此处(?:输入|填写)|（略）|\(略\)",
    re.I | re.M,
)
_TRANSLATE_RE = re.compile(
    r"translat|in english|into english|in chinese|into chinese|english version|chinese version|mandarin"
    r"|翻译|译成|译为|英文|英语|中文|汉语|用英|英译|中译|English|Chinese",
    re.I,
)
_CODE_ASKED_RE = re.compile(
    r"代码|程序|函数|脚本|编程|正则"
    r"|(?<![A-Za-z])(?:sql|python|java|c\+\+|golang|rust|regex|code|script|function|fen|json|yaml)(?![A-Za-z])",
    re.I,
)
# documentation domains (RFC 2606) are examples, not personal data
_EMAIL_RE = re.compile(
    r"\b[A-Za-z0-9._%+-]+@(?!example\.|[A-Za-z0-9.-]*\.example\b)[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"
)
_PHONE_RE = re.compile(
    r"(?<![\d\w])(?:\+?86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4}(?!\d)"
    r"|(?<![\d\w])(?:\+?1[-. ]?)?\(?\d{3}\)?[-. ]\d{3}[-. ]\d{4}(?!\d)"
)
_CN_ID_RE = re.compile(
    r"(?<!\d)[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?!\d)"
)

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
_BRACKETS = {"(": ")", "[": "]", "{": "}", "（": "）", "【": "】", "「": "」", "《": "》"}
_OPENER_RE = re.compile("[" + re.escape("".join(_BRACKETS)) + "]")


# --------------------------------------------------------------------------------------------------
# measuring one record


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


class _View:
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
        return _strip_code(self.response)

    @cached_property
    def n_meaningful(self) -> int:
        # only small counts matter (empty, too short): count the head, the rest only if the head is bare
        n = _meaningful_chars(self.response[:1000])
        return n if n or len(self.response) <= 1000 else _meaningful_chars(self.response)

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


def _ratio_severity(value: float, limit: float) -> float:
    return min(1.0, value / limit) if limit > 0 else (1.0 if value > 0 else 0.0)


def check_empty(v: _View, c: EmptyRule) -> RuleResult:
    n = v.n_meaningful
    return RuleResult(
        "empty",
        n == 0,
        f"{'response' if v.is_chat else 'text'} has no letter, digit or emoji ({len(v.response.strip())} characters)",
        1.0 if n == 0 else 0.0,
    )


def check_too_short(v: _View, c: TooShortRule) -> RuleResult:
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


def check_too_long(v: _View, c: TooLongRule) -> RuleResult:
    limit = c.max_chars if v.is_chat else c.max_text_chars
    n = len(v.response)
    return RuleResult(
        "too_long",
        n > limit,
        f"{n} characters > {'max_chars' if v.is_chat else 'max_text_chars'} {limit}",
        1.0 if n > limit else 0.0,
    )


def check_echo(v: _View, c: EchoRule) -> RuleResult:
    worst = (0.0, 1.0)
    for user, answer in v.pairs():
        # an echo has about the instruction's length; skip the shingling otherwise (most rows)
        if len(answer) > 1.5 * len(user) + 30 or len(answer) < 0.6 * len(user):
            continue
        u, a = _shingles(user), _shingles(answer)
        if not u or not a:
            continue
        common = len(u & a)
        coverage, novel = common / len(u), 1 - common / len(a)
        # a short prefix ("Question: ", "问题：") on a short instruction is still an echo
        if coverage >= c.min_instruction_coverage and (
            novel <= c.max_novel_fraction or len(a) - common <= 10
        ):
            # extractive answers copy a pasted passage, not the question above it
            first = _shingles(user.strip().split("\n", 1)[0])
            first_cov = len(first & a) / len(first) if first else 1.0
            if first_cov >= c.min_instruction_coverage:
                return RuleResult(
                    "echo",
                    True,
                    f"response repeats {coverage:.0%} of the instruction (>= {c.min_instruction_coverage:.0%}) "
                    f"with {novel:.0%} new text (<= {c.max_novel_fraction:.0%})",
                    1.0,
                )
        if coverage > worst[0]:
            worst = (coverage, novel)
    sev = 0.0 if worst[1] > c.max_novel_fraction else _ratio_severity(worst[0], c.min_instruction_coverage)
    return RuleResult("echo", False, severity=min(sev, 0.9))


def _dup_line_fraction(text: str) -> float:
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if _meaningful_chars(ln) >= 3]  # "}", "---", "1." repeat legitimately
    if len(lines) < 3:
        return 0.0
    counts = Counter(lines)
    dup = sum(len(ln) * (n - 1) for ln, n in counts.items() if n > 1)
    return dup / max(1, sum(len(ln) for ln in lines))


def _dup_ngram_fraction(units: list[str], n: int) -> float:
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


def _tail_loop(text: str, max_period: int = 60) -> tuple[str, int]:
    """The phrase the text ends in, looped, and how many times (degenerate generation)."""
    t = _WS_RE.sub(" ", text[-1500:]).rstrip()
    best = ("", 0)
    for p in range(2, min(max_period, len(t) // 4) + 1):
        unit = t[-p:]
        reps, end = 1, len(t) - p
        while end - p >= 0 and t[end - p : end] == unit:
            reps += 1
            end -= p
        if reps >= 4 and reps * p > best[1] * len(best[0]):
            best = (unit, reps)
    return best


_REPEAT_ASKED_RE = re.compile(
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
    units = _UNIT_RE.findall(text.casefold())
    ngram_frac = 0.0
    if len(units) >= c.min_units:
        cjk = len(_CJK_CHAR_RE.findall(text)) / len(units)
        n = 8 if cjk > 0.5 else 5
        ngram_frac = _dup_ngram_fraction(units, n)
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
        m = _char_run_re(c.max_char_run).search(text)
        if m:
            return (
                f"character {m.group(1)!r} repeated {len(m.group(0))} times >= max_char_run {c.max_char_run}"
            ), 1.0
    return "", max(
        _ratio_severity(line_frac, c.max_dup_line_fraction),
        _ratio_severity(ngram_frac, c.max_dup_ngram_fraction),
    )


def check_repetition(v: _View, c: RepetitionRule) -> RuleResult:
    if v.is_chat:
        # each answer on its own: later turns legitimately restate earlier ones (revisions)
        if _REPEAT_ASKED_RE.search(v.record.prompt()):
            return RuleResult("repetition", False)
        texts = [_strip_code(a) for a in v.assistant_turns]  # code repeats lines by nature
    else:
        texts = [v.response]
    worst = 0.0
    for text in texts:
        detail, sev = _repetition_in(text, c)
        if detail:
            return RuleResult("repetition", True, detail, 1.0)
        worst = max(worst, sev)
    return RuleResult("repetition", False, severity=worst)


def _unclosed_bracket(text: str) -> str | None:
    if not _OPENER_RE.search(text, max(0, len(text) - 200)):
        return None
    closers = {v: k for k, v in _BRACKETS.items()}
    stack: list[tuple[str, int]] = []
    for i, ch in enumerate(text):
        if ch in _BRACKETS:
            stack.append((ch, i))
        elif ch in closers and stack and stack[-1][0] == closers[ch]:
            stack.pop()
    # an opener left unclosed near the very end means the text stopped inside it
    if stack and stack[-1][1] >= len(text) - 200:
        return stack[-1][0]
    return None


def check_truncated(v: _View, c: TruncatedRule) -> RuleResult:
    text = v.last_response.rstrip()
    if not text:
        return RuleResult("truncated", False)
    if c.check_code_fences and text.count("```") % 2 == 1:
        return RuleResult(
            "truncated", True, f"{text.count('```')} code fences (unbalanced: a block never closes)", 1.0
        )
    prose = _strip_code(text).rstrip() if "```" in text else text
    if text.endswith("```") or not prose:
        return RuleResult("truncated", False)
    last = prose[-1]
    if c.check_dangling_end and last in _DANGLING_PUNCT and _meaningful_chars(prose[-300:]) >= 20:
        return RuleResult("truncated", True, f"ends on {last!r} (dangling punctuation)", 1.0)
    last_line = prose.splitlines()[-1].strip()
    words = _UNIT_RE.findall(last_line)
    if c.check_dangling_end and words and last not in _TERMINAL:
        w = words[-1].casefold()
        if len(words) >= 4 and w in _EN_DANGLING_WORDS and re.search(r"[A-Za-z]$", prose):
            return RuleResult("truncated", True, f"ends on {w!r} (a sentence cannot end on it)", 1.0)
        m = _ZH_DANGLING_RE.search(prose) if len(words) >= 6 else None
        if m:
            return RuleResult("truncated", True, f"ends on {m.group(0)!r} (a sentence cannot end on it)", 1.0)
    if c.check_brackets:
        b = _unclosed_bracket(prose[-2000:])
        if b is not None:
            return RuleResult("truncated", True, f"bracket {b!r} opened near the end is never closed", 1.0)
    if last in _TERMINAL or not _LETTER_RE.match(last) or _URL_END_RE.search(last_line):
        return RuleResult("truncated", False)
    # a prose line without final punctuation, in a text that otherwise punctuates its sentences
    n_cjk = len(_CJK_CHAR_RE.findall(last_line))
    n_words = len(words) - n_cjk
    long_line = n_words >= c.min_last_line_words or n_cjk >= c.min_last_line_cjk
    punctuates = re.search(r"[.!?。！？]\s", prose[:-1] + " ") is not None or prose.count("。") > 0
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


def check_refusal(v: _View, c: RefusalRule) -> RuleResult:
    for _, answer in v.pairs():
        if len(answer) > c.max_chars:
            continue
        m = _REFUSAL_RE.search(answer[: c.window_chars + 60])
        if m and m.start() <= c.window_chars:
            return RuleResult(
                "refusal",
                True,
                f"refusal {m.group(0)!r} at character {m.start()} "
                f"(<= window_chars {c.window_chars}) in a {len(answer)}-character answer "
                f"(<= max_chars {c.max_chars})",
                1.0,
            )
    return RuleResult("refusal", False)


# identity and capability questions are answered by saying what the assistant is; opinion questions
# answered with "as an AI I have no opinions" are the boilerplate this rule is for
_ABOUT_ASSISTANT_RE = re.compile(
    r"你是谁|你是什么|你是(?:一个)?(?:人|机器人|AI|人工智能)|你叫什么|介绍一下你|你会|你能|你可以|你有什么(?:功能|能力)"
    r"|\b(?:who|what) are you\b|\bare you (?:an? )?(?:ai|human|robot|bot|real|alive|conscious)\b|\bcan you\b"
    r"|\byour name\b",
    re.I,
)


def check_boilerplate(v: _View, c: BoilerplateRule) -> RuleResult:
    for user, answer in v.pairs():
        m = _BOILERPLATE_RE.search(answer[: c.window_chars + 40])
        if m and m.start() <= c.window_chars and not _ABOUT_ASSISTANT_RE.search(user):
            return RuleResult(
                "boilerplate",
                True,
                f"assistant boilerplate {m.group(0)!r} at character {m.start()} "
                f"(<= window_chars {c.window_chars})",
                1.0,
            )
    return RuleResult("boilerplate", False)


def check_mojibake(v: _View, c: MojibakeRule) -> RuleResult:
    text = v.response
    if text.isascii():  # nothing can be mis-decoded; only control characters remain possible
        n_ctl = len(_CONTROL_RE.findall(text))
        frac = n_ctl / max(1, len(text))
        if n_ctl >= 2 and frac > c.max_control_fraction:
            return RuleResult(
                "mojibake",
                True,
                f"{n_ctl} control characters ({frac:.1%} > max_control_fraction {c.max_control_fraction:.1%})",
                1.0,
            )
        return RuleResult("mojibake", False)
    m = _GARBLED_RE.search(text)
    if m:
        return RuleResult("mojibake", True, f"garbled sequence {m.group(0)!r}", 1.0)
    # both patterns are next to impossible in intact text, so a few occurrences suffice
    seqs = _LATIN1_MOJIBAKE_RE.findall(text)
    n_seq = len(seqs) + text.count("\ufffd")
    if n_seq > c.max_mojibake_sequences:
        example = seqs[0] if seqs else "\ufffd"
        return RuleResult(
            "mojibake",
            True,
            f"{n_seq} mojibake sequences (e.g. {example!r}) > "
            f"max_mojibake_sequences {c.max_mojibake_sequences}",
            1.0,
        )
    n_ctl = len(_CONTROL_RE.findall(text))
    frac = n_ctl / max(1, len(text))
    if n_ctl >= 2 and frac > c.max_control_fraction:
        return RuleResult(
            "mojibake",
            True,
            f"{n_ctl} control characters ({frac:.1%} > max_control_fraction {c.max_control_fraction:.1%})",
            1.0,
        )
    han = _HAN_RE.findall(text[:3000])  # a sample decides: mis-decoding garbles the whole text
    rare_frac = 0.0
    if len(han) >= c.min_cjk_chars:
        common = common_cjk_chars()
        rare_frac = 1 - sum(map(common.__contains__, han)) / len(han)
        if rare_frac > c.max_rare_cjk_fraction:
            return RuleResult(
                "mojibake",
                True,
                f"{rare_frac:.0%} of {len(han)} Han characters are rare "
                f"> max_rare_cjk_fraction {c.max_rare_cjk_fraction:.0%} (GBK-decoded UTF-8?)",
                1.0,
            )
    sev = max(
        _ratio_severity(frac, c.max_control_fraction) if n_ctl else 0.0,
        _ratio_severity(rare_frac, c.max_rare_cjk_fraction),
    )
    return RuleResult("mojibake", False, severity=sev)


def check_html_spam(v: _View, c: HtmlSpamRule) -> RuleResult:
    text = v.prose
    if "<" not in text and "http" not in text and "www." not in text and not _SPAM_RE.search(text):
        return RuleResult("html_spam", False)
    asked_html = v.is_chat and _HTML_ASKED_RE.search(v.instruction) is not None
    n = max(1, len(text))
    if not asked_html:
        m = _DANGER_TAG_RE.search(text)
        if m:
            return RuleResult("html_spam", True, f"{m.group(0)!r} tag outside a code block", 1.0)
        tag_chars = sum(len(t) for t in _TAG_RE.findall(text))
        if tag_chars / n > c.max_tag_fraction:
            return RuleResult(
                "html_spam",
                True,
                f"HTML tags are {tag_chars / n:.0%} of the text > max_tag_fraction {c.max_tag_fraction:.0%}",
                1.0,
            )
    urls = _URL_RE.findall(text)
    spam = _SPAM_RE.findall(text)
    if len(spam) > c.max_spam_phrases or (spam and urls):
        return RuleResult(
            "html_spam",
            True,
            f"{len(spam)} spam phrase(s) ({spam[0]!r}) with {len(urls)} link(s) "
            f"(max_spam_phrases {c.max_spam_phrases})",
            1.0,
        )
    asked_links = v.is_chat and _LINKS_ASKED_RE.search(v.instruction) is not None
    if urls and not asked_links:
        url_chars = sum(len(u) for u in urls)
        # one link is a citation; a wall of them is a link farm
        if len(urls) > c.max_links or (len(urls) >= 2 and url_chars / n > c.max_link_fraction):
            return RuleResult(
                "html_spam",
                True,
                f"{len(urls)} links (max_links {c.max_links}), "
                f"{url_chars / n:.0%} of the text (max_link_fraction {c.max_link_fraction:.0%})",
                1.0,
            )
    return RuleResult("html_spam", False)


def check_placeholder(v: _View, c: PlaceholderRule) -> RuleResult:
    text = v.response.strip()
    if len(text) <= 40 and _PLACEHOLDER_WHOLE_RE.fullmatch(text.strip(" \t\n.。:：-—*#[]()（）")):
        return RuleResult("placeholder", True, f"the whole answer is a placeholder: {text[:40]!r}", 1.0)
    m = _PLACEHOLDER_ANY_RE.search(v.prose)
    if m:
        return RuleResult(
            "placeholder", True, f"placeholder text {m.group(0).strip()[:40]!r} at character {m.start()}", 1.0
        )
    return RuleResult("placeholder", False)


_CODE_LINE_RE = re.compile(
    r"[;{}=<>]|^\s*(?:def|class|import|from|return|for|while|if|elif|else|print|select|insert|update|public|private"
    r"|#include|var|let|const|function|fn|func)\b|\)\s*:?\s*$|^\s*(?:#|//)",
    re.I,
)


def _natural_language(text: str) -> str:
    """The text without fenced code and without lines that look like code (BELLE answers carry bare code)."""
    return "\n".join(ln for ln in _strip_code(text).splitlines() if not _CODE_LINE_RE.search(ln))


def check_lang_mismatch(v: _View, c: LangMismatchRule) -> RuleResult:
    for user, answer in v.pairs():
        prose = _natural_language(answer)
        if len(_LETTER_RE.findall(prose)) < c.min_chars:
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


def check_pii(v: _View) -> RuleResult:
    text = v.record.full_text()
    found = []
    for name, rx in (("email", _EMAIL_RE), ("phone", _PHONE_RE), ("id_number", _CN_ID_RE)):
        n = len(rx.findall(text))
        if n:
            found.append(f"{n} {name}")
    return RuleResult("pii", bool(found), ", ".join(found), flag_only=True)


#: rule name → (check, applies to plain-text records); the order is the drop-reason priority
RULES: dict[str, tuple[Any, bool]] = {
    "empty": (check_empty, True),
    "too_short": (check_too_short, True),
    "too_long": (check_too_long, True),
    "placeholder": (check_placeholder, True),
    "refusal": (check_refusal, False),
    "boilerplate": (check_boilerplate, False),
    "mojibake": (check_mojibake, True),
    "html_spam": (check_html_spam, True),
    "echo": (check_echo, False),
    "repetition": (check_repetition, True),
    "truncated": (check_truncated, False),
    "lang_mismatch": (check_lang_mismatch, False),
}


def run_rules(record: Record, rules: RulesConfig, *, pii: bool = False) -> list[RuleResult]:
    """Every enabled rule that applies to the record, measured (fired or not)."""
    v = _View(record)
    out = []
    if v.n_meaningful == 0:
        # nothing else can be measured on an empty answer
        return [check_empty(v, rules.empty)] if rules.empty.enabled else []
    for name, (check, for_text) in RULES.items():
        cfg = getattr(rules, name)
        if not cfg.enabled or (not v.is_chat and not for_text):
            continue
        out.append(check(v, cfg))
    if pii:
        out.append(check_pii(v))
    return out


def rules_score(results: list[RuleResult]) -> float:
    """1 = clean; falls towards 0 as any rule approaches its threshold; 0 once one fires."""
    worst = 0.0
    for r in results:
        if r.flag_only:
            continue
        if r.fired:
            return 0.0
        worst = max(worst, r.severity)
    # only the upper half of the way to a threshold costs anything: most clean text sits far below
    return round(1.0 - max(0.0, (worst - 0.5) * 2) * 0.5, 4)


# --------------------------------------------------------------------------------------------------
# the stage


class QualityStage(Stage):
    """Scores every record (rules, optional classifier), then drops by rule or by classifier score."""

    name: ClassVar[str] = "quality"
    Config: ClassVar[type[BaseModel]] = QualityConfig
    version = 1
    attr_fields: ClassVar[dict[str, pa.DataType]] = {
        "quality": pa.float64(),
        "quality_rules": pa.float64(),
        "quality_model": pa.float64(),
        "quality_flags": pa.string(),
        "quality_signals": pa.string(),
    }

    def __init__(self, config: QualityConfig | None = None):
        super().__init__(config)
        self.config: QualityConfig
        self.classifier = None
        if self.config.model is not None:
            from curation.quality_model import QualityClassifier

            self.classifier = QualityClassifier.load(self.config.model)
        # a top-percent cut needs every score first
        self.needs_fit = self.classifier is not None and self.config.top_percent is not None
        self.cutoff: float | None = None
        if self.classifier is not None and self.config.top_percent is None:
            self.cutoff = self.config.threshold if self.config.threshold is not None else 0.5
        bins = self.config.histogram_bins
        self.histogram = [0] * bins
        self.model_histogram = [0] * bins
        self.fired: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, str]]] = {}
        self.n_seen = 0

    def fingerprint(self) -> str:
        base = super().fingerprint()
        if self.classifier is None:
            return base
        return f"{base}-{self.classifier.fingerprint[:8]}"

    # -- first pass (top_percent only): scores → cutoff, nothing else kept --------------------------
    def fit(self, batches: Iterable[list[Record]]) -> None:
        """Score every row once to find the top-percent cutoff (8 bytes per row; ties at the cutoff stay)."""
        import numpy as np

        assert self.classifier is not None and self.config.top_percent is not None
        parts = [np.asarray(self.classifier.predict(batch), dtype=np.float64) for batch in batches]
        scores = np.concatenate(parts) if parts else np.zeros(0)
        if not len(scores):
            self.cutoff = 0.0
            return
        k = max(1, math.ceil(len(scores) * self.config.top_percent / 100))
        self.cutoff = float(np.partition(scores, len(scores) - k)[len(scores) - k])

    def process(self, batch: list[Record]) -> StageOutput:
        out = StageOutput()
        probs = self.classifier.predict(batch) if self.classifier is not None else [None] * len(batch)
        for rec, prob in zip(batch, probs, strict=True):
            results = run_rules(rec, self.config.rules, pii=self.config.pii)
            r_score = rules_score(results)
            fired = [r for r in results if r.fired]
            quality = r_score if prob is None else r_score * prob
            rec.attrs["quality"] = round(quality, 4)
            rec.attrs["quality_rules"] = r_score
            rec.attrs["quality_model"] = None if prob is None else round(prob, 4)
            rec.attrs["quality_flags"] = ",".join(r.rule for r in fired)
            rec.attrs["quality_signals"] = json.dumps(
                {r.rule: r.detail for r in fired}
                | {f"{r.rule}.severity": round(r.severity, 3) for r in results if 0 < r.severity < 1},
                ensure_ascii=False,
            )
            self._count(quality, prob, fired)
            drop = self._decide(fired, prob)
            if drop is None or self.config.annotate_only:
                out.kept.append(rec)
            else:
                out.dropped.append(Drop(rec, drop[0], drop[1]))
                self.dropped[drop[0]] += 1
                self._example(drop[0], drop[1], rec)
        return out

    def _decide(self, fired: list[RuleResult], prob: float | None) -> tuple[str, str] | None:
        dropping = [r for r in fired if not r.flag_only]
        if dropping:
            first = dropping[0]
            also = [r.rule for r in dropping[1:]]
            return first.rule, first.detail + (f" (also: {', '.join(also)})" if also else "")
        if prob is not None and self.cutoff is not None and prob < self.cutoff:
            how = (
                f"top_percent {self.config.top_percent:g}% cutoff {self.cutoff:.3f}"
                if self.config.top_percent is not None
                else f"threshold {self.cutoff:g}"
            )
            return "low_quality", f"classifier p(high quality) {prob:.3f} < {how}"
        return None

    def _count(self, quality: float, prob: float | None, fired: list[RuleResult]) -> None:
        bins = self.config.histogram_bins
        self.n_seen += 1
        self.histogram[min(bins - 1, int(quality * bins))] += 1
        if prob is not None:
            self.model_histogram[min(bins - 1, int(prob * bins))] += 1
        for r in fired:
            self.fired[r.rule] += 1

    def _example(self, reason: str, detail: str, rec: Record) -> None:
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.config.examples_per_reason:
            ex.append(
                {
                    "id": rec.id,
                    "detail": detail[:300],
                    "instruction": rec.instruction()[:200] if rec.messages is not None else "",
                    "response": (rec.response() if rec.messages is not None else rec.text or "")[:300],
                }
            )

    def stats(self) -> dict[str, Any]:
        bins = self.config.histogram_bins
        edges = [round(i / bins, 4) for i in range(bins + 1)]
        out: dict[str, Any] = {
            # a row is dropped for its first rule (RULES order); rules_fired counts every rule that fired
            "dropped_by_rule": dict(sorted(self.dropped.items())),
            "rules_fired": dict(sorted(self.fired.items())),
            "score_histogram": {"edges": edges, "counts": self.histogram},
            "dropped_examples": self.examples,
            "classifier": None,
        }
        if self.classifier is not None:
            out["classifier"] = {
                "model": self.config.model,
                "cutoff": self.cutoff,
                "top_percent": self.config.top_percent,
                "score_histogram": {"edges": edges, "counts": self.model_histogram},
            }
        return out


__all__ = ["QualityConfig", "QualityStage", "RulesConfig", "RuleResult", "run_rules", "rules_score", "RULES"]
