"""``html_spam``: script/iframe tags, tag-heavy or link-heavy text, spam phrases (outside code)."""

from __future__ import annotations

import re

from pydantic import Field

from curation import textscan
from curation.quality.base import RuleConfig, RuleResult, TextView, rule


class HtmlSpamRule(RuleConfig):
    max_tag_fraction: float = Field(0.15, ge=0, le=1, description="characters inside HTML tags / all")
    max_links: int = Field(8, ge=0, description="URLs outside code")
    max_link_fraction: float = Field(0.5, ge=0, le=1, description="characters in URLs / all (2+ links)")
    max_spam_phrases: int = Field(1, ge=0, description="'click here', '点击链接', '加微信'...")


_TAG_RE = re.compile(
    r"</?(?:a|abbr|b|body|br|button|center|div|em|font|form|h[1-6]|head|hr|html|i|img|input|label|li|nav|ol|option|p"
    r"|section|select|small|span|strong|table|tbody|td|th|thead|title|tr|u|ul)(?:\s[^<>]{0,300})?/?>",
    re.I,
)
_DANGER_TAG_RE = textscan.compile(
    r"<\s*(?:script|iframe|style|object|embed|meta|link|html|body|head|!doctype)\b", re.I
)
_URL_RE = re.compile(r"(?:https?://|www\.)[^\s<>\"'）)\]]+", re.I)
_SPAM_RE = textscan.compile(
    r"click here|buy now|order now|visit our (?:website|site|store)|limited[- ]time offer|free download"
    r"|subscribe (?:now|today)|casino|viagra|cheap (?:pills|meds)|act now|100% free"
    r"|点击(?:这里|此处|链接|下方|购买)|加(?:微信|V信|vx|qq|QQ)|扫码|限时(?:优惠|抢购)|免费领取|立即(?:购买|下载|注册)",
    re.I,
)
_HTML_ASKED_RE = textscan.compile(r"html|css|xml|web ?page|网页|标签|markup|svg|jsx|react|vue", re.I)
_LINKS_ASKED_RE = textscan.compile(r"link|url|source|reference|website|链接|网址|网站|参考|来源", re.I)


@rule("html_spam", config=HtmlSpamRule, priority=80, for_text=True)
def check_html_spam(v: TextView, c: HtmlSpamRule) -> RuleResult:
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
