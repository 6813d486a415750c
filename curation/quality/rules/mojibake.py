"""``mojibake``: U+FFFD, latin-1 / cp1252-decoded UTF-8, GBK-decoded UTF-8 (rare Han characters), control characters."""

from __future__ import annotations

import re

from pydantic import Field

from curation import textscan
from curation.quality.base import (
    HAN_RE,
    RuleConfig,
    RuleResult,
    TextView,
    common_cjk_chars,
    ratio_severity,
    rule,
)


class MojibakeRule(RuleConfig):
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
_ASCII_CONTROL = bytes(b for b in range(128) if _CONTROL_RE.match(chr(b)))
_GARBLED_RE = textscan.compile("锟斤拷|烫烫烫|屯屯屯")


def _controls(n_ctl: int, n_chars: int, c: MojibakeRule) -> RuleResult | None:
    """The firing result when control characters are too many (two at least), else None."""
    frac = n_ctl / max(1, n_chars)
    if n_ctl >= 2 and frac > c.max_control_fraction:
        return RuleResult(
            "mojibake",
            True,
            f"{n_ctl} control characters ({frac:.1%} > max_control_fraction {c.max_control_fraction:.1%})",
            1.0,
        )
    return None


@rule("mojibake", config=MojibakeRule, priority=70, for_text=True)
def check_mojibake(v: TextView, c: MojibakeRule) -> RuleResult:
    text = v.response
    if text.isascii():  # nothing can be mis-decoded; only control characters remain possible
        n_ctl = len(text) - len(text.encode("ascii").translate(None, _ASCII_CONTROL))
        return _controls(n_ctl, len(text), c) or RuleResult("mojibake", False)
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
    fired = _controls(n_ctl, len(text), c)
    if fired:
        return fired
    han = HAN_RE.findall(text[:3000])  # a sample decides: mis-decoding garbles the whole text
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
        ratio_severity(frac, c.max_control_fraction) if n_ctl else 0.0,
        ratio_severity(rare_frac, c.max_rare_cjk_fraction),
    )
    return RuleResult("mojibake", False, severity=sev)
