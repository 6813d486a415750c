"""The dataset card of an exported run (``README.md``): hub YAML front matter + a body written from the run.

Front matter: license(s) of the sources (as the recipe's ``export.license`` or the user gave them),
languages present, size category, task categories, and ``configs`` naming the data files (so
``datasets.load_dataset(DIR)`` finds the splits). Body: how the rows were made — sources with row
counts, the funnel (rows in / out per stage, drop reasons), dedup settings with the S-curve's
estimated false positives / negatives, quality rules, decontamination, replay, score distributions
and, when the run trained and evaluated a model, the verdict table. Everything is read through
:class:`curation.rundir.RunDir` and the typed stage figures, never by spelling paths.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from curation.decontam import DecontamFigures
from curation.dedup import DedupFigures
from curation.ingest import IngestFigures
from curation.io import read_json
from curation.mix import MixFigures
from curation.pipeline import CurateSummary
from curation.quality.stage import QualityFigures
from curation.rundir import RunDir
from curation.stats import StageStats
from evals.verdict import Verdict

# the report's readers of a run: one way to read stage figures and output columns
from flows.report import _figures, _stage, load_stages, read_output_columns, run_name
from flows.summary import verdict_table_markdown

#: the hub's size categories, by row count
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def size_category(n: int) -> str:
    """The hub's ``size_categories`` value for ``n`` rows."""
    return next((label for limit, label in _SIZES if n < limit), "n>1B")


def _md(v: Any) -> str:
    """A value in a markdown table cell."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def front_matter(licenses: list[str], data_files: dict[str, str], rows: dict[str, int], langs: list[str],
                 pretty_name: str) -> dict[str, Any]:
    """The hub's card metadata (``license: unknown`` when the sources' licenses were not given)."""
    meta: dict[str, Any] = {
        "license": (licenses[0] if len(licenses) == 1 else list(licenses)) if licenses else "unknown",
        "language": langs or ["en"],
        "size_categories": [size_category(sum(rows.values()))],
        "task_categories": ["text-generation"],
        "tags": ["sft", "instruction-tuning", "chat", "sftflow"],
        "pretty_name": pretty_name,
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": p} for s, p in data_files.items()]}],
    }
    return meta


def dataset_card(rd: RunDir, data_files: dict[str, str], rows: dict[str, int], *, licenses: list[str],
                 pretty_name: str | None = None, repo_id: str | None = None, text_rows: bool = False) -> str:
    """The whole ``README.md`` of an export of ``rd``: ``data_files`` / ``rows`` per split, the sources'
    ``licenses``, the hub ``repo_id`` it goes to (for the usage example), ``text_rows``: plain-text rows kept."""
    summary = CurateSummary.model_validate(read_json(rd.curate.summary))
    stages = load_stages(rd.root)
    output = read_output_columns(rd.curate.output)
    info = read_json(rd.info) if rd.info.exists() else {}
    recipe = info.get("recipe") or {}
    name = run_name(rd.root)
    langs = [k for k, _ in sorted((output["counts"].get("lang") or {}).items(), key=lambda kv: -kv[1])
             if k not in ("other", "None", "")]
    pretty = pretty_name or f"{name} (curated with sftflow)"
    meta = front_matter(licenses, data_files, rows, langs, pretty)
    parts = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(), "---", "", f"# {pretty}", ""]
    parts += _intro(summary, rows, text_rows, name, licenses, repo_id)
    for section in (_sources(stages, output), _funnel(summary), _dedup(stages), _quality(stages),
                    _decontam(stages), _mix(stages), _scores(output), _verdict(rd, recipe)):
        if section:
            parts += section + [""]
    parts += _provenance(rd, summary)
    return "\n".join(parts).rstrip() + "\n"


def _intro(summary: CurateSummary, rows: dict[str, int], text_rows: bool, name: str, licenses: list[str],
           repo_id: str | None) -> list[str]:
    split_txt = ", ".join(f"`{s}` {n:,}" for s, n in rows.items())
    lines = [
        f"Instruction data curated by sftflow from the recipe `{name}`: "
        f"**{summary.rows_in:,} rows in → {summary.rows_out:,} rows out** "
        f"(rows_in = {summary.rows_in}, rows_out = {summary.rows_out}"
        + (f", of which {summary.rows_added:,} general rows replayed by the mixer" if summary.rows_added else "")
        + f"). Splits: {split_txt}."
        + (" `test` is the held-out target-task split the run kept out of training." if "test" in rows else ""),
        "",
        "Each row is a conversation in the chat `messages` form (a list of `{role, content}`, roles `system`, "
        "`user`, `assistant`) that TRL's `SFTTrainer`, LLaMA-Factory (`formatting: sharegpt` with "
        "`messages`) and axolotl (`type: chat_template`) read."
        + (" Plain-text rows (general replay data) have `messages` null and their text in `text`." if text_rows
           else ""),
        "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("{repo_id or "path/to/this/folder"}")',
        'ds["train"][0]["messages"]',
        "```",
        "",
    ]
    if not licenses:
        lines += ["**License: unknown** — the run's recipe did not name the sources' licenses (`export.license`, "
                  "or `sftflow export --license`). Check each source's license before sharing.", ""]
    else:
        lines += [f"License(s) of the sources: {', '.join(f'`{x}`' for x in licenses)}; the curated set "
                  "inherits them.", ""]
    return lines


def _sources(stages: list[StageStats], output: dict[str, Any]) -> list[str]:
    ingest = _figures(stages, "ingest", IngestFigures)
    kept = output["counts"].get("source") or {}
    rows = []
    if ingest is not None:
        for src, counts in ingest.per_source.items():
            short = src if "://" in src else Path(src).name
            rows.append([short, counts.get("rows_in"), counts.get("rows_out"), kept.get(src, 0)])
    mix = _figures(stages, "mix", MixFigures)
    if mix is not None:
        for src, n in mix.general_per_source.items():
            rows.append([f"{Path(src).name} (general replay)", None, None, n])
    if not rows:
        return []
    return ["## Sources", "",
            _table(["source", "rows read", "rows ingested", "rows in this dataset"], rows)]


def _funnel(summary: CurateSummary) -> list[str]:
    rows = [[s.stage, s.rows_in, s.rows_added, s.rows_out,
             ", ".join(f"{k}={v:,}" for k, v in s.dropped_by_reason.items()) or "–"] for s in summary.stages]
    return ["## Curation funnel", "",
            f"rows_in {summary.rows_in:,} → rows_out {summary.rows_out:,}; {summary.rows_dropped:,} rows dropped, "
            "each with its stage and reason in the run's ledger (`curate/ledger.parquet`); "
            f"ledger balanced: {summary.balanced}.", "",
            _table(["stage", "rows in", "rows added", "rows out", "dropped (reason=rows)"], rows)]


def _dedup(stages: list[StageStats]) -> list[str]:
    st = _stage(stages, "dedup")
    if st is None:
        return []
    fig: DedupFigures | None = _figures(stages, "dedup", DedupFigures)
    lines = ["## Deduplication", "",
             f"{st.rows_dropped:,} of {st.rows_in:,} rows removed: "
             + (", ".join(f"{k} {v:,}" for k, v in st.dropped_by_reason.items()) or "none") + "."]
    if fig is not None and fig.lsh is not None:
        lsh = fig.lsh
        lines += ["", f"Exact duplicates by normalised hash; near duplicates by MinHash-LSH at Jaccard threshold "
                  f"{lsh.threshold} ({lsh.num_perm} permutations, {lsh.bands} bands × {lsh.rows} rows), each "
                  "candidate pair confirmed on its signatures.", "",
                  _table(["figure", "value"], [
                      ["P(candidate) at the threshold", lsh.p_candidate_at_threshold],
                      ["P(candidate) at threshold − 0.1", lsh.p_candidate_below],
                      ["S-curve false-positive area (pairs below the threshold proposed)", lsh.false_positive_area],
                      ["S-curve false-negative area (pairs above the threshold missed)", lsh.false_negative_area],
                      ["candidate pairs / confirmed", f"{fig.pairs.candidates:,} / {fig.pairs.verified:,}"],
                      ["candidates rejected by the check (LSH false positives)", fig.pairs.candidate_rejection_rate],
                      ["estimated near-duplicate pairs missed", fig.pairs.estimated_missed_pairs],
                      ["estimated miss rate", fig.pairs.estimated_miss_rate],
                  ])]
    return lines


def _quality(stages: list[StageStats]) -> list[str]:
    st = _stage(stages, "quality")
    if st is None:
        return []
    fig: QualityFigures | None = _figures(stages, "quality", QualityFigures)
    lines = ["## Quality rules", "", f"{st.rows_dropped:,} of {st.rows_in:,} rows dropped by named rules "
             "(a row is dropped for its first rule; every rule that fired is counted)."]
    if fig is not None:
        rules = sorted(set(fig.rules_fired) | set(fig.dropped_by_rule),
                       key=lambda r: (-fig.dropped_by_rule.get(r, 0), -fig.rules_fired.get(r, 0), r))
        if rules:
            lines += ["", _table(["rule", "rows dropped", "rows it fired on"],
                                 [[r, fig.dropped_by_rule.get(r, 0), fig.rules_fired.get(r, 0)] for r in rules])]
        if fig.classifier is not None:
            c = fig.classifier
            lines += ["", f"Classifier `{c.model}`: rows with p(high quality) below {_md(c.cutoff)} dropped"
                      + (f" (top {c.top_percent}% kept)" if c.top_percent else "") + "."]
    return lines


def _decontam(stages: list[StageStats]) -> list[str]:
    st = _stage(stages, "decontam")
    if st is None:
        return []
    fig: DecontamFigures | None = _figures(stages, "decontam", DecontamFigures)
    lines = ["## Decontamination", "", f"{st.rows_dropped:,} of {st.rows_in:,} rows dropped for holding a benchmark "
             "item"]
    if fig is None:
        return [lines[0], "", lines[2] + "."]
    lines[2] += (f" (suite `{fig.suite}`, every item of {len(fig.index.benchmarks)} benchmarks: "
                 f"{', '.join(fig.index.benchmarks) or 'none'}).")
    if fig.index.skipped:
        lines += ["", "Not checked (data missing): " + "; ".join(f"{k}: {v}" for k, v in fig.index.skipped.items())]
    removed = {k: v for k, v in fig.removed_per_benchmark.items() if v}
    if removed:
        lines += ["", _table(["benchmark", "rows removed"], [[k, v] for k, v in sorted(removed.items())])]
    mix = _figures(stages, "mix", MixFigures)
    if mix is not None and mix.pool_decontam is not None:
        lines += ["", f"The general replay pool was checked with the same settings: "
                  f"{mix.pool_decontam.removed:,} pool rows removed."]
    return lines


def _mix(stages: list[StageStats]) -> list[str]:
    fig: MixFigures | None = _figures(stages, "mix", MixFigures)
    if fig is None:
        return []
    pool = ", ".join(Path(s).name for s in fig.general_sources) or "–"
    return ["## General-data replay", "",
            f"General data replayed into the task data against forgetting: ratio {fig.ratio} by {fig.by} "
            f"(achieved {fig.achieved_ratio:.4f}); {fig.general_rows:,} general rows from a pool of "
            f"{_md(fig.pool_rows)} usable rows ({pool}) next to {fig.task_rows:,} task rows. "
            "The column `mix_source` says which is which."
            + (f" Warning: {fig.warning}" if fig.warning else "")]


def _scores(output: dict[str, Any]) -> list[str]:
    scores: dict[str, np.ndarray] = output["scores"]
    counts = output["counts"]
    lines: list[str] = []
    if scores:
        rows = [[c, int(a.size), float(a.mean()), *(float(np.quantile(a, q)) for q in (0.1, 0.5, 0.9)),
                 float(a.min()), float(a.max())] for c, a in scores.items()]
        lines += ["## Score distributions", "", "Per-row scores of the curated rows (columns of the same name).", "",
                  _table(["score", "rows", "mean", "p10", "median", "p90", "min", "max"], rows)]
    for col, title in (("task_type", "task types"), ("lang", "languages")):
        c = counts.get(col)
        if c:
            lines += ["", f"Rows by {title}: " + ", ".join(f"{k} {v:,}" for k, v in c.items()) + "."]
    return lines


def _verdict(rd: RunDir, recipe: dict[str, Any]) -> list[str]:
    """The regression gate of the model the run trained on this data (absent when it did not train+evaluate)."""
    if not rd.eval.verdict.exists():
        return []
    v = Verdict.load(rd.eval.verdict)
    train = recipe.get("train") or {}
    tr = read_json(rd.train.summary) if rd.train.summary.exists() else {}
    lines = ["## Did a model tuned on it get dumber?", "",
             f"The run fine-tuned `{train.get('model') or v.base}` ({tr.get('method') or train.get('method')}, "
             f"{_md(tr.get('steps'))} steps) on the `train` split and compared it with the base model on the same "
             f"items of general benchmarks (paired tests, margin {v.margin:g}, alpha {v.alpha:g}). "
             f"Verdict: **{v.verdict}** — {v.reason}", "", *verdict_table_markdown(v), "", f"_Rule:_ {v.verdict_rule}"]
    if v.target is not None and v.target.n:
        t = v.target
        lines += ["", f"Held-out target task (n={t.n}): NLL per assistant token {_md(t.base_nll)} → "
                  f"{_md(t.tuned_nll)} (gain {_md(t.gain)})."]
    if v.recommendation:
        lines += ["", f"Recommendation: {v.recommendation}"]
    return lines


def _provenance(rd: RunDir, summary: CurateSummary) -> list[str]:
    when = dt.datetime.fromtimestamp(rd.curate.summary.stat().st_mtime, dt.timezone.utc)
    return ["## Provenance", "",
            f"Curated {when:%Y-%m-%d %H:%M} UTC in run folder `{rd.root.name}`; curation fingerprint "
            f"`{summary.fingerprint[:16]}` (input bytes + every stage's config). The run's `report.html` holds the "
            "full report, its `curate/ledger.parquet` every dropped row with stage and reason."]


__all__ = ["dataset_card", "front_matter", "size_category"]
