"""``placeholder``: TODO / N/A / lorem ipsum / [insert answer] / 待补充 instead of an answer."""

from __future__ import annotations

import re

from curation import textscan
from curation.quality.base import RuleConfig, RuleResult, TextView, rule


class PlaceholderRule(RuleConfig):
    """TODO / N/A / lorem ipsum / [insert answer] / 待补充 in place of content."""


_PLACEHOLDER_WHOLE_RE = re.compile(
    r"(?:todo|tbd|tba|n/?a|null|nan|placeholder|fixme|xxx+|\?+|…+|\.{3,}|待补充|待完善|待填写|待定|暂无|略|此处省略"
    r"|(?:answer|response|content|text) (?:goes )?here|insert (?:answer|response|text) here|to be (?:added|completed))",
    re.I,
)
_PLACEHOLDER_ANY_RE = textscan.compile(
    r"lorem ipsum|dolor sit amet|\[(?:insert|add|your|placeholder|todo)[^\]]{0,40}(?:here|answer|response|text|content)[^\]]{0,20}\]"
    r"|<(?:insert|your)[^>]{0,40}(?:here|answer|response)>"
    r"|^\s*(?:todo|tbd|fixme)\b[:：]"
    r"|待补充|待完善|待填写|此处(?:填写|填入|插入|补充)|请在此处(?:输入|填写)|（略）|\(略\)",
    re.I | re.M,
)


@rule("placeholder", config=PlaceholderRule, priority=40, for_text=True)
def check_placeholder(v: TextView, c: PlaceholderRule) -> RuleResult:
    text = v.response.strip()
    if len(text) <= 40 and _PLACEHOLDER_WHOLE_RE.fullmatch(text.strip(" \t\n.。:：-—*#[]()（）")):
        return RuleResult("placeholder", True, f"the whole answer is a placeholder: {text[:40]!r}", 1.0)
    m = _PLACEHOLDER_ANY_RE.search(v.prose)
    if m:
        return RuleResult(
            "placeholder", True, f"placeholder text {m.group(0).strip()[:40]!r} at character {m.start()}", 1.0
        )
    return RuleResult("placeholder", False)
