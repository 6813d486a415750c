"""Short summaries of a run: markdown (Prefect artifacts) and rich tables (terminal)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from curation.pipeline import CurateSummary
from evals.verdict import Verdict


def funnel_rows(summary: CurateSummary) -> list[dict[str, Any]]:
    return [
        {
            "stage": st.stage,
            "rows_in": st.rows_in,
            "added": st.rows_added,
            "rows_out": st.rows_out,
            # "none", not "-": the Prefect UI renders table cells as markdown, where "-" is a list bullet
            "dropped": ", ".join(f"{k}={v}" for k, v in st.dropped_by_reason.items()) or "none",
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


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.4f}"


def _ci(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{low:+.4f}, {high:+.4f}]"


def _p(v: float | None) -> str:
    return "-" if v is None else f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


def verdict_rows(verdict: Verdict) -> list[dict[str, Any]]:
    """One flat row per task (and one for the suite test): what the tables and artifacts show."""
    rows = []
    for name, t in verdict.tasks.items():
        acc, prob = t.accuracy, t.prob
        rows.append(
            {
                "task": name,
                "status": t.status,
                "n": t.n,
                "metric": t.metric,
                "base_acc": acc.base if acc else t.base_accuracy,
                "tuned_acc": acc.tuned if acc else None,
                "acc_delta": acc.delta if acc else None,
                "acc_ci": [acc.ci_low, acc.ci_high] if acc else None,
                "acc_p": acc.p_value if acc else None,
                "prob_delta": prob.delta if prob else None,
                "prob_ci": [prob.ci_low, prob.ci_high] if prob else None,
                "prob_p": prob.p_value if prob else None,
                "p_holm": t.test.p_holm if t.test else None,
                "decisive": t.decisive if t.counted else None,
                "chance": t.chance,
                "note": t.note,
            }
        )
    if verdict.suite is not None:
        s = verdict.suite.test
        rows.append(
            {
                "task": f"suite ({len(verdict.suite.tasks)} tasks, equal weights)",
                "status": verdict.suite.status,
                "n": s.n,
                "metric": s.score,
                "base_acc": None,
                "tuned_acc": None,
                "acc_delta": None,
                "acc_ci": None,
                "acc_p": None,
                "prob_delta": s.delta,
                "prob_ci": [s.ci_low, s.ci_high],
                "prob_p": s.p_value,
                "p_holm": s.p_holm,
                "decisive": verdict.gate_score,
                "chance": None,
                "note": verdict.suite.note,
            }
        )
    return rows


def _task_cells(r: dict[str, Any]) -> list[str]:
    acc = f"{_fmt(r['base_acc'])} → {_fmt(r['tuned_acc'])}" if r["tuned_acc"] is not None else _fmt(r["base_acc"])
    return [
        r["task"],
        r["status"],
        str(r["n"]),
        acc,
        _signed(r["acc_delta"]) + (" " + _ci(*r["acc_ci"]) if r["acc_ci"] else ""),
        _p(r["acc_p"]),
        _signed(r["prob_delta"]) + (" " + _ci(*r["prob_ci"]) if r["prob_ci"] else ""),
        _p(r["prob_p"]),
        _p(r["p_holm"]),
    ]


_HEAD = ["task", "status", "n", "accuracy base → tuned", "acc Δ [95% CI]", "p (McNemar)", "prob Δ [95% CI]",
         "p (sign-flip)", "p Holm"]


def verdict_table_markdown(verdict: Verdict) -> list[str]:
    """The per-task (and suite) before/after table as markdown lines (Prefect artifact, dataset card)."""
    lines = ["| " + " | ".join(_HEAD) + " |", "|---|---|---:|---|---|---:|---|---:|---:|"]
    for r in verdict_rows(verdict):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _task_cells(r)) + " |")
    return lines


def eval_markdown(verdict: Verdict) -> str:
    lines = [f"# Verdict: **{verdict.verdict}**", "", verdict.reason, "", *verdict_table_markdown(verdict)]
    if verdict.uninformative:
        lines += ["", "Uninformative (base model at chance, left out of the gate): " + ", ".join(
            f"{t} ({verdict.tasks[t].note})" for t in verdict.uninformative)]
    if verdict.recommendation:
        lines += ["", f"**Recommendation:** {verdict.recommendation}"]
    lines += ["", f"_Rule:_ {verdict.verdict_rule}"]
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


def print_verdict(verdict: Verdict, console: Console | None = None) -> None:
    console = console or Console()
    colour = {"PASS": "green", "REGRESSED": "red"}.get(verdict.verdict, "yellow")
    t = Table(title=f"Before vs after fine-tuning (gate score: {verdict.gate_score}, margin {verdict.margin:g})")
    for col in _HEAD:
        t.add_column(col, justify="right" if col in ("n",) or col.startswith("p ") else "left")
    for r in verdict_rows(verdict):
        t.add_row(*_task_cells(r))
    console.print(t)
    tg = verdict.target
    if tg and tg.n:
        console.print(
            f"Target task (held-out curated data, n={tg.n}): NLL per assistant token "
            f"{_fmt(tg.base_nll)} → {_fmt(tg.tuned_nll)} (gain {_fmt(tg.gain)}, "
            f"95% CI [{_fmt(tg.ci_low)}, {_fmt(tg.ci_high)}])"
        )
    elif tg and tg.note:
        console.print(f"Target task: {tg.note}")
    rig = verdict.rigidity
    if rig is not None:
        keys = [k for k in ("distinct_1", "distinct_2", "self_similarity", "same_opening_share", "mean_length")
                if k in rig.tuned]
        console.print("Rigidity (base → tuned): " + ", ".join(
            f"{k} {_fmt(rig.base.get(k))} → {_fmt(rig.tuned.get(k))}" for k in keys))
    if verdict.base_cache is not None and (verdict.base_cache.hits or verdict.base_cache.misses):
        c = verdict.base_cache
        console.print(f"Base results: {c.hits} from cache, {c.misses} computed ({c.folder})")
    console.print(f"Verdict: [bold {colour}]{verdict.verdict}[/] — {verdict.reason}")
    cont = verdict.contamination
    if cont is not None and cont.warning:
        console.print(f"[yellow]contamination:[/] {cont.warning}", soft_wrap=True, highlight=False)
    elif cont is not None and cont.covers_eval:
        console.print(f"Training data decontaminated against every eval task (suite {cont.suite!r}, "
                      f"{cont.rows_removed} rows removed)", highlight=False)
    if verdict.recommendation:
        console.print(f"Recommendation: {verdict.recommendation}")
