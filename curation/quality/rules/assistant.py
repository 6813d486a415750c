"""Assistant-speak rules: ``refusal`` ("I'm sorry, but I can't…") and ``boilerplate`` ("As an AI language model…")."""

from __future__ import annotations

import re

from pydantic import Field

from curation import textscan
from curation.quality.base import RuleConfig, RuleResult, TextView, rule


class RefusalRule(RuleConfig):
    window_chars: int = Field(
        160, ge=1, description="the refusal phrase must start within this many characters"
    )
    max_chars: int = Field(
        600, ge=1, description="longer answers that start with an apology usually help anyway"
    )


class BoilerplateRule(RuleConfig):
    """Assistant self-reference ("As an AI language model", "作为一个人工智能") opening an answer.

    Not when the user asks about the assistant itself ("你是什么？", "what can you do?").
    """

    window_chars: int = Field(
        200, ge=1, description="the phrase must start within this many characters of a turn"
    )


_REFUSAL_RE = textscan.compile(
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
_BOILERPLATE_RE = textscan.compile(
    r"\bas an? (?:ai|artificial intelligence)(?: language model| model| assistant)?\b"
    r"|\bas a (?:large )?language model\b|\bi(?:'m| am) (?:just |only )?an? (?:ai|language model)\b"
    r"|作为(?:一[个名款位])?(?:人工智能|AI|ai|语言模型|大型语言模型|AI语言模型|人工智能语言模型|智能助手|AI助手)"
    r"|我(?:只是|是)一[个款](?:人工智能|AI|语言模型|AI语言模型)",
    re.I,
)
# identity and capability questions are answered by saying what the assistant is; opinion questions
# answered with "as an AI I have no opinions" are the boilerplate this rule is for
_ABOUT_ASSISTANT_RE = textscan.compile(
    r"你是谁|你是什么|你是(?:一个)?(?:人|机器人|AI|人工智能)|你叫什么|介绍一下你|你会|你能|你可以|你有什么(?:功能|能力)"
    r"|\b(?:who|what) are you\b|\bare you (?:an? )?(?:ai|human|robot|bot|real|alive|conscious)\b|\bcan you\b"
    r"|\byour name\b",
    re.I,
)


@rule("refusal", config=RefusalRule, priority=50, for_text=False)
def check_refusal(v: TextView, c: RefusalRule) -> RuleResult:
    for _, answer in v.pairs:
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


@rule("boilerplate", config=BoilerplateRule, priority=60, for_text=False)
def check_boilerplate(v: TextView, c: BoilerplateRule) -> RuleResult:
    for user, answer in v.pairs:
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
