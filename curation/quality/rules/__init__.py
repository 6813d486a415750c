"""The built-in quality rules (one module per rule or rule family) and the config model built from them.

Adding a rule: a module here with its config model and a ``@rule(...)``-decorated check, plus one
import line below. Its settings appear as ``rules.<name>`` in the stage config (and ``--set
rules.<name>.<key>=...``) because :data:`RulesConfig` is built from the registry.
"""

from __future__ import annotations

from importlib import import_module

from pydantic import ConfigDict, Field, create_model

from curation.quality.base import RuleConfig, RuleResult, RuleSpec, TextView, ordered_rules
from curation.records import Record

#: the registry lines: importing a rule module registers its rules (their order does not matter: each
#: rule's ``priority`` decides which one names a drop)
RULE_MODULES = (
    "length",  # empty, too_short, too_long
    "placeholder",
    "assistant",  # refusal, boilerplate
    "mojibake",
    "html_spam",
    "echo",
    "repetition",
    "truncated",
    "lang_mismatch",
    "pii",
)
for _module in RULE_MODULES:
    import_module(f"{__name__}.{_module}")


def build_rules_config() -> type[RuleConfig]:
    """The ``rules`` config model: one sub-config per registered rule that has settings."""
    fields = {
        spec.name: (spec.config, Field(default_factory=spec.config))
        for spec in ordered_rules()
        if spec.config is not None
    }
    return create_model(
        "RulesConfig",
        __config__=ConfigDict(extra="forbid"),
        __doc__="One sub-config per rule: ``--set rules.too_short.min_chars=5``, ``rules.echo.enabled=false``.",
        __module__=__name__,
        **fields,
    )


RulesConfig = build_rules_config()


def rule_plan(rules: RulesConfig, *, pii: bool = False) -> list[tuple[RuleSpec, RuleConfig | None]]:
    """The rules to run with these settings, in priority order, each with its settings.

    Disabled rules are left out; rules without settings are opt-in flags of the stage (``pii``);
    a rule registered after ``rules``' model was built has no settings there and is left out.
    """
    plan: list[tuple[RuleSpec, RuleConfig | None]] = []
    for spec in ordered_rules():
        if spec.config is None:
            if spec.name == "pii" and pii:
                plan.append((spec, None))
            continue
        cfg = getattr(rules, spec.name, None)
        if cfg is not None and cfg.enabled:
            plan.append((spec, cfg))
    return plan


def run_plan(record: Record, plan: list[tuple[RuleSpec, RuleConfig | None]]) -> list[RuleResult]:
    """Measure ``record`` with every rule of ``plan`` that applies to it (fired or not)."""
    v = TextView(record)
    if v.n_meaningful == 0:
        # nothing else can be measured on an empty answer
        return [spec.check(v, cfg) for spec, cfg in plan if spec.name == "empty"]
    if v.is_chat:
        return [spec.check(v, cfg) for spec, cfg in plan]
    return [spec.check(v, cfg) for spec, cfg in plan if spec.for_text]


def run_rules(record: Record, rules: RulesConfig, *, pii: bool = False) -> list[RuleResult]:
    """Every enabled rule that applies to the record, measured (fired or not), in priority order."""
    return run_plan(record, rule_plan(rules, pii=pii))


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


__all__ = ["RulesConfig", "build_rules_config", "rule_plan", "rules_score", "run_plan", "run_rules"]
