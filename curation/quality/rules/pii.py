"""``pii``: emails, phone numbers, Chinese ID numbers. Flag only (``quality_flags``), never a drop; on with ``pii``."""

from __future__ import annotations

import re

from curation.quality.base import RuleResult, TextView, rule

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


@rule("pii", config=None, priority=1000, for_text=True, flag_only=True)
def check_pii(v: TextView, c: None = None) -> RuleResult:
    text = v.record.full_text()
    found = []
    for name, rx in (("email", _EMAIL_RE), ("phone", _PHONE_RE), ("id_number", _CN_ID_RE)):
        n = len(rx.findall(text))
        if n:
            found.append(f"{n} {name}")
    return RuleResult("pii", bool(found), ", ".join(found), flag_only=True)
