"""Short summaries of a run: markdown (Prefect artifacts) and rich tables (terminal)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from curation.pipeline import CurateSummary


def funnel_rows(summary: CurateSummary) -> list[dict[str, Any]]:
    return [
        {
            "stage": st.stage,
            "rows_in": st.rows_in,
            "added": st.rows_added,
            "rows_out": st.rows_out,
            "dropped": ", ".join(f"{k}={v}" for k, v in st.dropped_by_reason.items()) or "-",
            "cached": st.cached,
        }
        for st in summary.stages
    ]


def curate_markdown(summary: CurateSummary, run_dir: str | Path) -> str:
    lines = [
        f"# Curation: {summary.rows_in} rows in → {summary.rows_out} out",
        "",
        f"Run folder: `{run_dir}`; ledger balanced: **{summary.balanced}** "
        f"({summary.rows_dropped} dropped rows, each with stage and reason in `ledger.parquet`).",
        "",
        "| stage | in | added | out | dropped (reason=count) |",
        "|---|---:|---:|---:|---|",
    ]
    for r in funnel_rows(summary):
        lines.append(f"| {r['stage']} | {r['rows_in']} | {r['added']} | {r['rows_out']} | {r['dropped']} |")
    return "\n".join(lines)


def train_markdown(summary: dict[str, Any]) -> str:
    keys = ["method", "precision", "steps", "first_loss", "final_loss", "tokens_per_s", "trainable_params",
            "total_params", "padding_waste_pct", "peak_memory_mb"]
    lines = ["# SFT summary", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {summary.get(k)} |" for k in keys if k in summary]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def eval_markdown(verdict: dict[str, Any]) -> str:
    lines = [
        f"# Verdict: **{verdict.get('verdict')}**",
        "",
        "| task | n | base | tuned | delta | 95% CI | p (McNemar) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for name, t in verdict.get("tasks", {}).items():
        lines.append(
            f"| {name} | {t.get('n')} | {_fmt(t.get('base'))} | {_fmt(t.get('tuned'))} | {_fmt(t.get('delta'))} "
            f"| [{_fmt(t.get('ci_low'))}, {_fmt(t.get('ci_high'))}] | {_fmt(t.get('p_value'))} |"
        )
    if verdict.get("recommendation"):
        lines += ["", f"**Recommendation:** {verdict['recommendation']}"]
    return "\n".join(lines)


def print_curation(summary: CurateSummary, console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title=f"Curation funnel ({summary.rows_in} in → {summary.rows_out} out, ledger balanced)")
    for col in ("stage", "in", "added", "out", "dropped by reason"):
        t.add_column(col, justify="right" if col in ("in", "added", "out") else "left")
    for r in funnel_rows(summary):
        name = r["stage"] + (" (cached)" if r["cached"] else "")
        t.add_row(name, str(r["rows_in"]), str(r["added"]), str(r["rows_out"]), r["dropped"])
    console.print(t)


def print_contamination(fig: Any, console: Console | None = None) -> None:
    """The decontam stage's figures (:class:`curation.decontam.DecontamFigures`) in a few lines."""
    console = console or Console()
    idx = fig.index
    removed = sum(fig.removed_per_benchmark.values())
    per = ", ".join(f"{b} {n}" for b, n in sorted(fig.removed_per_benchmark.items(), key=lambda kv: -kv[1]))
    console.print(
        f"Decontaminated against suite {fig.suite!r}: {len(idx.benchmarks)} benchmarks, {idx.documents} texts "
        f"(index {'/'.join(idx.cache) or '?'}, {idx.seconds:.1f} s); {removed} rows removed" + (f" ({per})" if per else "")
    )
    for bench, why in idx.skipped.items():
        console.print(f"[yellow]skipped[/] {bench}: {why}", soft_wrap=True, highlight=False)
    for bench, examples in fig.examples.items():
        for e in examples[:1]:
            console.print(f"  {bench} item {e['item']} ({e['field']}): \"{e['span'][:100]}\"", highlight=False)


def print_verdict(verdict: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    colour = {"PASS": "green", "REGRESSED": "red"}.get(verdict.get("verdict"), "yellow")
    t = Table(title="Before vs after fine-tuning")
    for col in ("task", "n", "base", "tuned", "delta", "95% CI", "p"):
        t.add_column(col, justify="left" if col == "task" else "right")
    for name, r in verdict.get("tasks", {}).items():
        t.add_row(name, str(r.get("n")), _fmt(r.get("base")), _fmt(r.get("tuned")), _fmt(r.get("delta")),
                  f"[{_fmt(r.get('ci_low'))}, {_fmt(r.get('ci_high'))}]", _fmt(r.get("p_value")))
    console.print(t)
    tg = verdict.get("target")
    if tg:
        console.print(
            f"Target task (held-out curated data, n={tg.get('n')}): NLL per assistant token "
            f"{_fmt(tg.get('base_nll'))} → {_fmt(tg.get('tuned_nll'))} (gain {_fmt(tg.get('gain'))}, "
            f"95% CI [{_fmt(tg.get('ci_low'))}, {_fmt(tg.get('ci_high'))}])"
        )
    rig = verdict.get("rigidity") or {}
    if rig.get("base") and rig.get("tuned"):
        keys = [k for k in ("distinct_1", "distinct_2", "self_similarity", "same_opening_share", "mean_length")
                if k in rig["tuned"]]
        console.print("Rigidity (base → tuned): " + ", ".join(
            f"{k} {_fmt(rig['base'].get(k))} → {_fmt(rig['tuned'].get(k))}" for k in keys))
    console.print(f"Verdict: [bold {colour}]{verdict.get('verdict')}[/]")
    contamination = verdict.get("contamination") or {}
    if contamination.get("warning"):
        console.print(f"[yellow]contamination:[/] {contamination['warning']}", soft_wrap=True, highlight=False)
    elif contamination.get("covers_eval"):
        console.print(f"Training data decontaminated against every eval task (suite {contamination.get('suite')!r}, "
                      f"{contamination.get('rows_removed', 0)} rows removed)", highlight=False)
    if verdict.get("recommendation"):
        console.print(f"Recommendation: {verdict['recommendation']}")
