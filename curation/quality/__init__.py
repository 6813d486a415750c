"""Quality filter: named heuristic rules (zh + en) and an optional fastText classifier.

Every record is scored first and decided second (data-juicer style): the measured values go on the
record, then the stage drops a record when an enabled rule fired (reason = the rule's name, detail =
the measured value against its threshold; when several fire, the one listed first below, i.e. with
the lowest registered ``priority``, names the drop) or when the classifier puts it below the
threshold / outside the top percent (reason ``low_quality``). ``annotate_only`` scores and flags without dropping. Columns added:

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
    placeholder     TODO / N/A / lorem ipsum / [insert …] / 待补充 instead of an answer
    refusal         "I'm sorry, but I can't…", "抱歉，我无法…" near the start of a short answer
    boilerplate     "As an AI language model…", "作为一个人工智能语言模型…"
    mojibake        U+FFFD, latin-1 decoded UTF-8 ("â€™", "æˆ‘"), GBK decoded UTF-8 (rare-CJK share),
                    control characters
    html_spam       script/iframe tags, tag-heavy or link-heavy text, spam phrases (outside code)
    echo            response mostly repeats the instruction
    repetition      repeated lines, repeated n-grams, one character run
    truncated       unbalanced code fence, ends on a comma / connective / mid-sentence, open bracket
    lang_mismatch   zh instruction answered in en or the reverse (translation requests excepted)
    pii             emails, phone numbers, Chinese ID numbers: flagged (quality_flags), not dropped,
                    when ``pii`` is on

Plain-text records (``text``, general corpora) only get the rules that make sense without an
instruction: empty, too_short (min_chars), too_long, repetition, mojibake, html_spam, placeholder, pii.

Layout: :mod:`curation.quality.base` (the rule registry, the record view, shared text helpers),
:mod:`curation.quality.rules` (one module per rule or rule family; the ``rules`` config model is
built from the registry), :mod:`curation.quality.stage` (the stage), ``curation.quality_model``
(the classifier).
"""

from __future__ import annotations

from curation.quality.base import RULES, RuleResult, rule
from curation.quality.rules import RulesConfig, rules_score, run_rules
from curation.quality.stage import ClassifierFigures, QualityConfig, QualityFigures, QualityStage

__all__ = [
    "RULES",
    "ClassifierFigures",
    "QualityConfig",
    "QualityFigures",
    "QualityStage",
    "RuleResult",
    "RulesConfig",
    "rule",
    "rules_score",
    "run_rules",
]
