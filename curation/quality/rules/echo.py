"""``echo``: the response mostly repeats the instruction."""

from __future__ import annotations

from pydantic import Field

from curation.quality.base import WS_RE, RuleConfig, RuleResult, TextView, ratio_severity, rule


class EchoRule(RuleConfig):
    min_instruction_coverage: float = Field(
        0.9, ge=0, le=1, description="share of the instruction's character 4-grams repeated in the response"
    )
    max_novel_fraction: float = Field(
        0.2, ge=0, le=1, description="share of the response's 4-grams not found in the instruction"
    )


def _shingles(text: str, n: int = 4) -> set[str]:
    t = WS_RE.sub("", text.casefold())
    if len(t) < n:
        return {t} if t else set()
    return {t[i : i + n] for i in range(len(t) - n + 1)}


@rule("echo", config=EchoRule, priority=90, for_text=False)
def check_echo(v: TextView, c: EchoRule) -> RuleResult:
    worst = (0.0, 1.0)
    for user, answer in v.pairs:
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
    sev = 0.0 if worst[1] > c.max_novel_fraction else ratio_severity(worst[0], c.min_instruction_coverage)
    return RuleResult("echo", False, severity=min(sev, 0.9))
