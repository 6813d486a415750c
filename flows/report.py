"""The HTML report of a run folder (``RUN/report.html``) and the trend of key figures across runs.

``build_report(run_dir)`` reads whatever the run produced — the curation funnel and each stage's
``stats.json`` (their ``extra`` holds the stage's own report data), the dropped-row ledger, the
curated output, the training log and summary, the eval verdict — and writes one self-contained
HTML file: CSS and plotly.js are inline, so it opens offline and makes no network request.
Parts a run did not produce (a curation-only run has no training) are shown as "not run"; keys a
stage does not publish are skipped, and every stage's raw figures are listed at the end, so a new
stage figure is visible before anyone writes a chart for it.

All text from the data (instructions, sources, reasons, task names) is HTML-escaped, both in the
page and in chart labels.

Trend: every report appends the run's key figures (rows in/out, duplicate rate, mean quality,
task-type entropy, final loss, verdict) to ``<runs folder>/history/<recipe name>.jsonl`` — one
JSON line per run (a newer line for the same run folder supersedes the older one) — and draws
them as a trend. ``SFTFLOW_HISTORY_DIR`` moves that folder. Nothing here imports Prefect.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import html
import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from curation.dedup import DedupFigures
from curation.errors import SftflowError
from curation.io import atomic_path
from curation.mix import MixFigures
from curation.pipeline import CurateSummary
from curation.rundir import RunDir
from curation.select import IfdFigures, SelectFigures
from curation.stats import Figures, StageStats
from evals.verdict import Verdict, VerdictFileError

#: dropped rows shown per (stage, reason)
EXAMPLES_PER_REASON = 3
#: characters of a text shown before it is cut (the full row stays in the ledger)
TEXT_CHARS = 700
#: duplicate clusters shown
CLUSTERS_SHOWN = 8
#: shown in place of a section whose data could not be drawn
SECTION_FAILED = "This section could not be drawn"

log = logging.getLogger(__name__)


class ReportError(SftflowError):
    """The report cannot be built (no run folder there)."""

SECTIONS: list[tuple[str, str]] = [
    ("overview", "Overview"),
    ("funnel", "Funnel"),
    ("drops", "Dropped rows"),
    ("scores", "Scores"),
    ("ifd", "Instruction-following difficulty"),
    ("dedup", "Duplicates"),
    ("contamination", "Contamination"),
    ("distributions", "Task types & languages"),
    ("diversity", "Diversity"),
    ("mix", "Mixture"),
    ("training", "Training"),
    ("eval", "Before/after eval"),
    ("replay", "Replay experiment"),
    ("curation", "Curated vs raw"),
    ("arms", "Experiment arms"),
    ("trend", "Trend"),
    ("stage-details", "Stage details"),
]

_PLOT_CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["sendDataToCloud"]}
_COLORS = {"before": "#9aa5b1", "after": "#2563eb", "base": "#9aa5b1", "tuned": "#2563eb"}


# ------------------------------------------------------------------------------------------------
# small helpers


def esc(value: Any) -> str:
    """HTML-escape any value's text (None → empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_verdict(path: Path) -> Verdict | str | None:
    """The typed verdict; a one-line problem (older format, unreadable) as a string; None when absent."""
    if not path.exists():
        return None
    try:
        return Verdict.load(path)
    except VerdictFileError as e:
        return str(e)


def _verdict_name(v: Verdict | str | None) -> str | None:
    return v.verdict if isinstance(v, Verdict) else None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return None if isinstance(v, float) and not math.isfinite(v) else float(v)


def fmt(v: Any, digits: int = 4) -> str:
    """A number for people: ints with separators, floats to ``digits`` significant digits."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"
    return str(v)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _cut(text: Any, n: int = TEXT_CHARS) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= n else s[:n] + f" … [+{len(s) - n} chars]"


def _label(value: Any) -> str:
    # plotly renders a subset of HTML in labels: escape, it decodes entities back for display
    return html.escape(_cut(value, 80), quote=False)


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _counts(v: Any) -> dict[str, float]:
    """A {name: count} figure, keeping only numeric counts."""
    return {str(k): n for k, n in _dict(v).items() if _num(n) is not None}


def _get(d: Any, *path: str, default: Any = None) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def entropy_bits(counts: dict[str, int] | Counter) -> float | None:
    """Shannon entropy (bits) of a count distribution."""
    total = sum(v for v in counts.values() if v > 0)
    if total == 0:
        return None
    return float(-sum((v / total) * math.log2(v / total) for v in counts.values() if v > 0))


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "run"


# ------------------------------------------------------------------------------------------------
# reading a run folder


def load_stages(run_dir: Path) -> list[StageStats]:
    """Each curation step's stats.json, in pipeline order (steps that never finished, or whose stats.json
    cannot be read as stage stats, are absent)."""
    out = []
    for d in RunDir(run_dir).curate.stages():
        raw = _read_json(d / "stats.json")
        if not isinstance(raw, dict):
            continue
        raw.setdefault("stage", d.name.split("_", 1)[1])
        try:
            out.append(StageStats.model_validate(raw))
        except ValidationError as e:
            log.warning("%s/stats.json is not readable as stage stats: %s", d, e)
    return out


def _stage(stages: list[StageStats], name: str) -> StageStats | None:
    return next((s for s in stages if s.stage == name), None)


def _extra(stages: list[StageStats], name: str) -> dict:
    """A stage's figures as plain JSON (for stages that do not declare typed figures)."""
    st = _stage(stages, name)
    return st.extra if st is not None else {}


F = TypeVar("F", bound=Figures)


def _figures(stages: list[StageStats], name: str, model: type[F]) -> F | None:
    """A stage's typed figures; None when the stage did not run or its figures do not read as ``model``."""
    st = _stage(stages, name)
    if st is None:
        return None
    try:
        return st.figures(model)
    except ValidationError:
        log.warning("the %s figures of this run are not readable; only its counts are shown", name)
        return None


def read_ledger(path: Path, per_reason: int = EXAMPLES_PER_REASON) -> dict[str, Any]:
    """Drop counts per (stage, reason) and the first ``per_reason`` dropped rows of each, streamed."""
    counts: Counter[tuple[str, str]] = Counter()
    examples: dict[tuple[str, str], list[dict]] = defaultdict(list)
    if not path.exists():
        return {"counts": counts, "examples": examples}
    pf = pq.ParquetFile(path)
    cols = [c for c in ("id", "stage", "reason", "detail", "duplicate_of", "source", "line", "record")
            if c in pf.schema_arrow.names]
    for rb in pf.iter_batches(batch_size=8192, columns=cols):
        stages = rb.column("stage").to_pylist() if "stage" in cols else ["?"] * rb.num_rows
        reasons = rb.column("reason").to_pylist() if "reason" in cols else ["?"] * rb.num_rows
        wanted = []
        for i, key in enumerate(zip(map(str, stages), map(str, reasons), strict=True)):
            counts[key] += 1
            if counts[key] <= per_reason:
                wanted.append(i)
        # only the example rows become Python objects (a ledger can hold millions of drops)
        for row in rb.take(wanted).to_pylist() if wanted else []:
            examples[(str(row.get("stage")), str(row.get("reason")))].append(row)
    return {"counts": counts, "examples": examples}


def read_output_columns(path: Path) -> dict[str, Any]:
    """Per-row figures of the curated output: score arrays and category counts (no texts)."""
    out: dict[str, Any] = {"rows": 0, "scores": {}, "counts": {}}
    if not path.exists():
        return out
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    numeric = [c for c in ("quality", "complexity", "ifd", "selection_score") if c in names and
               (pa.types.is_floating(pf.schema_arrow.field(c).type) or pa.types.is_integer(pf.schema_arrow.field(c).type))]
    categorical = [c for c in ("task_type", "lang", "mix_source", "source") if c in names]
    values: dict[str, list[np.ndarray]] = {c: [] for c in numeric}
    counts: dict[str, Counter] = {c: Counter() for c in categorical}
    out["rows"] = pf.metadata.num_rows
    if not numeric + categorical:
        return out
    for rb in pf.iter_batches(batch_size=16384, columns=numeric + categorical):
        for c in numeric:
            arr = rb.column(c).to_numpy(zero_copy_only=False)
            values[c].append(np.asarray(arr, dtype=np.float64))
        for c in categorical:
            counts[c].update(str(v) for v in rb.column(c).to_pylist())
    for c in numeric:
        arr = np.concatenate(values[c]) if values[c] else np.zeros(0)
        arr = arr[np.isfinite(arr)]
        if arr.size:
            out["scores"][c] = arr
    out["counts"] = {c: dict(v.most_common()) for c, v in counts.items() if v}
    return out


def read_train_log(path: Path) -> list[dict[str, Any]]:
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(row, dict) and isinstance(row.get("step"), int | float):
            rows.append(row)
    return rows


def run_name(run_dir: Path) -> str:
    """The recipe name of a run (run.json), else the folder name without its time stamp."""
    info = _read_json(RunDir(run_dir).info)
    name = _get(info, "recipe", "name")
    if isinstance(name, str) and name:
        return name
    return re.sub(r"-\d{8}-\d{6}$", "", run_dir.name) or "run"


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Everything the report shows, read from the run folder (absent parts are None / empty)."""
    rd = RunDir(run_dir)
    summary = _read_json(rd.curate.summary)
    try:
        summary = CurateSummary.model_validate(summary) if isinstance(summary, dict) else None
    except ValidationError:
        summary = None
    return {
        "run_dir": rd.root,
        "name": run_name(rd.root),
        "info": _dict(_read_json(rd.info)),
        "summary": summary,
        "stages": load_stages(rd.root),
        "ledger": read_ledger(rd.curate.ledger),
        "output": read_output_columns(rd.curate.output),
        "train": _read_json(rd.train.summary),
        "train_log": read_train_log(rd.train.log),
        "verdict": _read_verdict(rd.eval.verdict),
        "replay": _read_json(rd.replay_json),
        "curation": _read_json(rd.experiment_json("curation")),
        "arms": _read_json(rd.experiment_json("arms")),
    }


# ------------------------------------------------------------------------------------------------
# key figures and the trend across runs


def _finished_at(run_dir: Path) -> str:
    """When the run's curation finished (summary.json written), else now; UTC, ISO 8601."""
    marker = RunDir(run_dir).curate.summary
    stamp = marker.stat().st_mtime if marker.exists() else dt.datetime.now().timestamp()
    return dt.datetime.fromtimestamp(stamp, dt.timezone.utc).isoformat(timespec="seconds")


def key_figures(run: dict[str, Any]) -> dict[str, Any]:
    """The figures tracked across runs of one recipe."""
    stages: list[StageStats] = run["stages"]
    summary: CurateSummary | None = run["summary"]
    dedup = _stage(stages, "dedup")
    dup_rate = None
    if dedup and dedup.rows_in:
        dup_rate = dedup.rows_dropped / dedup.rows_in
    scores = run["output"]["scores"]
    task_counts = run["output"]["counts"].get("task_type") or _counts(_get(_extra(stages, "select"), "after",
                                                                           "task_types"))
    train = _dict(run["train"])
    verdict = _verdict_name(run["verdict"])
    return {
        "run_dir": str(Path(run["run_dir"]).resolve()),
        "run": Path(run["run_dir"]).name,
        "time": _finished_at(Path(run["run_dir"])),
        "rows_in": summary.rows_in if summary else stages[0].rows_in if stages else None,
        "rows_out": summary.rows_out if summary else stages[-1].rows_out if stages else None,
        "duplicate_rate": round(dup_rate, 4) if dup_rate is not None else None,
        "mean_quality": round(float(scores["quality"].mean()), 4) if "quality" in scores else None,
        "mean_complexity": round(float(scores["complexity"].mean()), 4) if "complexity" in scores else None,
        "task_type_entropy": round(entropy_bits(task_counts), 4) if task_counts else None,
        "final_loss": _num(train.get("final_loss")),
        "verdict": verdict,
        "fingerprint": summary.fingerprint if summary else None,
    }


def history_path(run_dir: str | os.PathLike, name: str) -> Path:
    """Where the trend of recipe ``name`` is kept: beside the run folders (or $SFTFLOW_HISTORY_DIR)."""
    base = os.environ.get("SFTFLOW_HISTORY_DIR")
    folder = Path(base) if base else Path(run_dir).resolve().parent / "history"
    return folder / f"{slug(name)}.jsonl"


def _append_line(path: Path, line: str, skip_if: Any = None) -> bool:
    """Append one line under an exclusive lock, in one write (concurrent runs never interleave).

    ``skip_if(path)`` is asked under the lock; True leaves the file as it is.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if skip_if is not None and skip_if(path):
            return False
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # a writer killed mid-line: keep its fragment apart from this line
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
        return True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """One entry per run folder (its latest line), oldest run first; unreadable lines are skipped."""
    p = Path(path)
    if not p.exists():
        return []
    latest: dict[str, dict] = {}
    order: dict[str, int] = {}
    for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("run_dir"):
            order.setdefault(row["run_dir"], i)
            latest[row["run_dir"]] = row
    return [latest[k] for k in sorted(latest, key=order.__getitem__)]


_COMPARED = ("rows_in", "rows_out", "duplicate_rate", "mean_quality", "mean_complexity", "task_type_entropy",
             "final_loss", "verdict", "fingerprint")


def record_history(run: dict[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Append the run's key figures to its recipe's history (not again when nothing changed)."""
    figures = key_figures(run)
    hp = Path(path) if path else history_path(run["run_dir"], run["name"])

    def unchanged(p: Path) -> bool:
        prev = next((r for r in read_history(p) if r["run_dir"] == figures["run_dir"]), None)
        return prev is not None and all(prev.get(k) == figures.get(k) for k in _COMPARED)

    _append_line(hp, json.dumps(figures, ensure_ascii=False, sort_keys=True) + "\n", unchanged)
    return hp


# ------------------------------------------------------------------------------------------------
# HTML pieces


class _Figures:
    """Renders plotly figures as divs; plotly.js itself goes once into the page head."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, fig: Any, height: int = 340) -> str:
        import plotly.io as pio

        self.n += 1
        fig.update_layout(template="plotly_white", height=height, margin={"l": 60, "r": 20, "t": 56, "b": 50},
                          font={"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12})
        return '<div class="fig">' + pio.to_html(
            fig, include_plotlyjs=False, full_html=False, div_id=f"fig-{self.n}", config=_PLOT_CONFIG,
            default_height=f"{height}px", validate=False,
        ) + "</div>"


def _table(headers: list[str], rows: list[list[Any]], cls: str = "", raw_cols: set[int] | None = None) -> str:
    """A table; cells are escaped unless their column index is in ``raw_cols`` (pre-built HTML)."""
    raw_cols = raw_cols or set()
    num = [all(isinstance(r[i], int | float) and not isinstance(r[i], bool) or r[i] is None for r in rows)
           if rows else False for i in range(len(headers))]
    head = "".join(f'<th class="{"num" if num[i] else ""}">{esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for r in rows:
        cells = []
        for i, v in enumerate(r):
            text = v if i in raw_cols else esc(fmt(v) if not isinstance(v, str) else v)
            cells.append(f'<td class="{"num" if num[i] else ""}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _kv_table(d: dict[str, Any], keys: list[str] | None = None) -> str:
    keys = keys or [k for k, v in d.items() if not isinstance(v, dict | list)]
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(fmt(d[k]) if not isinstance(d[k], str) else d[k])}</td></tr>"
                   for k in keys if k in d)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _pairs_table(pairs: list[tuple[str, Any]]) -> str:
    return _kv_table(dict(pairs))


def _not_run(what: str) -> str:
    return f'<p class="not-run">{esc(what)}: not run.</p>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>'


def _messages_html(record: dict[str, Any]) -> str:
    msgs = record.get("messages")
    if isinstance(msgs, list) and msgs:
        parts = []
        for m in msgs[:6]:
            if isinstance(m, dict):
                parts.append(f'<div class="turn"><span class="role">{esc(m.get("role"))}</span>'
                             f'<pre>{esc(_cut(m.get("content")))}</pre></div>')
        return "".join(parts)
    return f'<pre>{esc(_cut(record.get("text")))}</pre>'


# ------------------------------------------------------------------------------------------------
# sections


def _overview(run: dict[str, Any], figures: dict[str, Any]) -> str:
    verdict = _verdict_name(run["verdict"])
    badge = (f'<span class="badge v-{esc(str(verdict).lower())}">{esc(verdict)}</span>' if verdict
             else '<span class="badge v-none">no eval</span>')
    recipe = _dict(run["info"].get("recipe"))
    cards = [
        ("rows in", fmt(figures["rows_in"])), ("rows out", fmt(figures["rows_out"])),
        ("duplicate rate", _pct(figures["duplicate_rate"])), ("mean quality", fmt(figures["mean_quality"], 3)),
        ("task-type entropy", f'{fmt(figures["task_type_entropy"], 3)} bits' if figures["task_type_entropy"]
         is not None else "–"),
        ("final train loss", fmt(figures["final_loss"], 3)), ("verdict", badge),
    ]
    cards_html = "".join(f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v if k == "verdict" else esc(v)}'
                         f"</div></div>" for k, v in cards)
    stages = " → ".join(esc(next(iter(s))) for s in recipe.get("stages", []) if isinstance(s, dict))
    train = _dict(recipe.get("train"))
    meta = [
        ("run folder", str(run["run_dir"])), ("recipe", run["name"]),
        ("stages", None if not stages else html.unescape(stages)),
        ("model", train.get("model")), ("method", train.get("method")),
        ("report built", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    rows = [(k, v) for k, v in meta if v]
    balanced = run["summary"] is not None and run["summary"].balanced
    note = ""
    if balanced:
        note = ('<p class="ok">Ledger balanced: every input row is either in the output or in '
                "<code>curate/ledger.parquet</code> with its stage and reason.</p>")
    return f'<div class="cards">{cards_html}</div>{note}' + _pairs_table(rows)


def _funnel(run: dict[str, Any], figure: _Figures) -> str:
    import plotly.graph_objects as go

    stages = run["stages"]
    if not stages:
        return _not_run("Curation")
    labels = ["rows in"] + [f"after {s.stage}" for s in stages]
    values = [stages[0].rows_in] + [s.rows_out for s in stages]
    parts = [figure(go.Figure(go.Funnel(y=[_label(x) for x in labels], x=values, textinfo="value+percent initial",
                                        marker={"color": "#2563eb"})), height=60 + 48 * len(labels))]
    reasons = sorted({r for s in stages for r in s.dropped_by_reason})
    if reasons:
        fig = go.Figure()
        for reason in reasons:
            fig.add_bar(name=_label(reason), x=[_label(s.stage) for s in stages],
                        y=[s.dropped_by_reason.get(reason, 0) for s in stages])
        fig.update_layout(barmode="stack", title="dropped rows by stage and reason", yaxis_title="rows")
        parts.append(figure(fig, height=360))
    cached = {f.stage: f.cached for f in run["summary"].stages} if run["summary"] is not None else {}
    rows = []
    for s in stages:
        drops = ", ".join(f"{k}={v}" for k, v in s.dropped_by_reason.items()) or "–"
        rows.append([s.stage, s.rows_in, s.rows_added, s.rows_out, drops, s.seconds,
                     "yes" if cached.get(s.stage) else ""])
    parts.append(_table(["stage", "in", "added", "out", "dropped (reason=count)", "seconds", "cached"], rows))
    return "".join(parts)


def _drops(run: dict[str, Any]) -> str:
    counts: Counter = run["ledger"]["counts"]
    if not counts:
        return _not_run("Ledger") if not RunDir(run["run_dir"]).curate.ledger.exists() else \
            "<p>No row was dropped.</p>"
    out = [f"<p>{sum(counts.values()):,} dropped rows; the first {EXAMPLES_PER_REASON} of each stage and reason "
           "are shown (all of them are in <code>curate/ledger.parquet</code>, with the full row).</p>"]
    order = sorted(counts.items(), key=lambda kv: (kv[0][0] != "ingest", -kv[1]))
    for i, ((stage, reason), n) in enumerate(order):
        items = []
        for row in run["ledger"]["examples"][(stage, reason)]:
            try:
                rec = json.loads(row.get("record") or "{}")
            except ValueError:
                rec = {"text": row.get("record")}
            where = f"{Path(str(row.get('source') or '')).name}:{row.get('line')}" if row.get("source") else ""
            dup = (f' · duplicate of <code>{esc(row["duplicate_of"])}</code>' if row.get("duplicate_of") else "")
            items.append(
                f'<div class="example"><div class="meta"><code>{esc(row.get("id"))}</code> {esc(where)}{dup}</div>'
                f'<div class="detail">{esc(row.get("detail"))}</div>{_messages_html(_dict(rec))}</div>'
            )
        out.append(f'<details class="reason"{" open" if i < 2 else ""}><summary><b>{esc(stage)}</b> / {esc(reason)} '
                   f'<span class="count">{n:,}</span></summary>{"".join(items)}</details>')
    return "".join(out)


def _hist_from_edges(hist: Any) -> tuple[list[str], list[int]] | None:
    """(labels, counts) from {'edges': [...], 'counts': [...]}, {'a-b': n} or a plain list over [0, 1]."""
    if isinstance(hist, dict) and isinstance(hist.get("edges"), list) and isinstance(hist.get("counts"), list):
        e, c = hist["edges"], hist["counts"]
        if len(e) != len(c) + 1 or not all(_num(x) is not None for x in e + c):
            return None
        return [f"{fmt(e[i], 2)}–{fmt(e[i + 1], 2)}" for i in range(len(c))], list(c)
    if isinstance(hist, dict) and hist and all(isinstance(v, int | float) for v in hist.values()):
        return [str(k) for k in hist], list(hist.values())
    if isinstance(hist, list) and hist and all(isinstance(v, int | float) for v in hist):
        n = len(hist)
        return [f"{i / n:.1f}–{(i + 1) / n:.1f}" for i in range(n)], list(hist)
    return None


def _scores(run: dict[str, Any], figure: _Figures) -> str:
    import plotly.graph_objects as go

    stages = run["stages"]
    parts = []
    q = _extra(stages, "quality")
    for title, hist in (("quality rule score (all rows into the quality stage)", q.get("score_histogram")),
                        ("quality classifier score", _get(q, "classifier", "score_histogram"))):
        h = _hist_from_edges(hist)
        if h:
            parts.append(figure(go.Figure(go.Bar(x=h[0], y=h[1], marker_color="#2563eb")).update_layout(
                title=title, xaxis_title="score", yaxis_title="rows"), height=300))
    sel = _extra(stages, "select")
    before, after = _hist_from_edges(_get(sel, "before", "complexity_histogram")), \
        _hist_from_edges(_get(sel, "after", "complexity_histogram"))
    if before and after:
        fig = go.Figure([go.Bar(name="before selection", x=before[0], y=before[1], marker_color=_COLORS["before"]),
                         go.Bar(name="after selection", x=after[0], y=after[1], marker_color=_COLORS["after"])])
        parts.append(figure(fig.update_layout(title="complexity, before/after selection", barmode="group",
                                              xaxis_title="complexity", yaxis_title="rows"), height=300))
    else:
        h = _hist_from_edges(_extra(stages, "score").get("complexity_histogram"))
        if h:
            parts.append(figure(go.Figure(go.Bar(x=h[0], y=h[1], marker_color="#2563eb")).update_layout(
                title="complexity (rows scored)", xaxis_title="complexity", yaxis_title="rows"), height=300))
    scores = run["output"]["scores"]
    if scores:
        fig = go.Figure()
        for col, arr in scores.items():
            fig.add_histogram(x=arr, name=col, nbinsx=30, opacity=0.7)
        fig.update_layout(barmode="overlay", title="scores of the curated output", xaxis_title="score",
                          yaxis_title="rows")
        parts.append(figure(fig, height=320))
        rows = [[c, int(a.size), float(a.mean()), float(np.median(a)), float(a.min()), float(a.max())]
                for c, a in scores.items()]
        parts.append(_table(["score", "rows", "mean", "median", "min", "max"], rows))
    if q.get("rules_fired"):
        parts.append("<h3>Quality rules fired</h3>" + _table(
            ["rule", "rows"], [[k, v] for k, v in sorted(_counts(q["rules_fired"]).items(), key=lambda kv: -kv[1])]))
    return "".join(parts) or _not_run("Quality and score stages")


def _select_ifd(run: dict[str, Any]) -> IfdFigures | None:
    fig = _figures(run["stages"], "select", SelectFigures)
    return fig.ifd if fig is not None else None


def _has_ifd(run: dict[str, Any]) -> bool:
    return _select_ifd(run) is not None or "ifd" in run["output"]["scores"]


def _ifd(run: dict[str, Any], figure: _Figures) -> str:
    """IFD before/after selection (select's figures) and the rows at both ends; else the curated output's."""
    import plotly.graph_objects as go

    parts = ['<p>IFD = perplexity of the answer given the instruction / without it, under the base model '
             '(<code>score: {ifd: ...}</code>). Low: the instruction nearly gives the answer away; close to 1: '
             'the row teaches the model something; at or above the threshold the instruction does not help '
             'predict the answer at all, and select drops the row as <code>misaligned</code>.</p>']
    f = _select_ifd(run)
    if f is not None:
        sel = _figures(run["stages"], "select", SelectFigures)
        edges, before, after = f.edges, f.before, f.after
        parts.append(_table(["", "rows scored", "mean", "median"], [
            ["before selection", before.rows, before.mean, before.median],
            ["after selection", after.rows, after.mean, after.median]]))
        parts.append(_pairs_table([("misaligned threshold (ifd >=)", f.threshold),
                                   ("dropped as misaligned", sel.misaligned if sel else None),
                                   ("rows without an IFD (see ifd_note)", f.unscored)]))
        labels = [f"{edges[i]:.1f}–{edges[i + 1]:.1f}" for i in range(len(edges) - 1)]
        labels[-1] = f"≥ {edges[-2]:.1f}"
        fig = go.Figure([
            go.Bar(name="before selection", x=labels, y=before.histogram, marker_color=_COLORS["before"]),
            go.Bar(name="after selection", x=labels, y=after.histogram, marker_color=_COLORS["after"])])
        if f.threshold is not None:
            at = min(range(len(edges) - 1), key=lambda i: abs(edges[i] - f.threshold))
            fig.add_vline(x=at - 0.5, line_dash="dash", line_color="#b91c1c")
        parts.append(figure(fig.update_layout(title="IFD before/after selection (dashed: misaligned threshold)",
                                              barmode="group", xaxis_title="IFD", yaxis_title="rows"), height=320))
        titles = {"lowest": "Lowest IFD (the instruction makes the answer easiest)",
                  "highest_kept": "Highest IFD kept (hardest rows the model will learn from)",
                  "misaligned": "Dropped as misaligned (highest IFD)"}
        for kind, title in titles.items():
            rows = f.examples.get(kind) or []
            if rows:
                parts.append(f"<h3>{esc(title)}</h3>" + _table(
                    ["id", "IFD", "loss with / without instruction", "instruction", "answer"],
                    [[e.id, e.ifd, f"{fmt(e.loss_given_instruction, 3)} / {fmt(e.loss_answer_only, 3)}",
                      _cut(e.instruction, 200), _cut(e.answer, 200)] for e in rows]))
        return "".join(parts)
    arr = run["output"]["scores"].get("ifd")
    if arr is None:
        return _not_run("IFD scoring")
    fig = go.Figure(go.Histogram(x=arr, nbinsx=30, marker_color=_COLORS["after"]))
    parts.append(figure(fig.update_layout(title="IFD of the curated output (no select stage)", xaxis_title="IFD",
                                          yaxis_title="rows"), height=300))
    return "".join(parts)


def _dedup(run: dict[str, Any], figure: _Figures) -> str:
    st = _stage(run["stages"], "dedup")
    if st is None:
        return _not_run("Dedup")
    drops = st.dropped_by_reason
    rate = st.rows_dropped / st.rows_in if st.rows_in else 0.0
    parts = [f"<p>{st.rows_dropped:,} of {st.rows_in:,} rows removed ({_pct(rate)}): "
             + esc(", ".join(f"{k} {v:,}" for k, v in drops.items()) or "none") + ".</p>"]
    fig = _figures(run["stages"], "dedup", DedupFigures)
    if fig is None:
        return "".join(parts)
    if fig.lsh is not None:
        parts.append(_kv_table(fig.lsh.model_dump(by_alias=True)))
    if fig.per_source:
        rows = [[Path(k).name, v.rows, v.exact_duplicate, v.near_duplicate, _pct(v.duplicate_rate)]
                for k, v in fig.per_source.items()]
        parts.append("<h3>Per source</h3>" + _table(["source", "rows", "exact", "near", "duplicate rate"], rows))
    clusters = fig.largest_clusters
    if clusters:
        parts.append(f"<h3>Largest duplicate clusters ({len(clusters)} reported, {min(len(clusters), CLUSTERS_SHOWN)} "
                     "shown)</h3>")
        for i, c in enumerate(clusters[:CLUSTERS_SHOWN], 1):
            rows = []
            for m in c.members:
                kept = '<span class="kept">kept</span>' if m.kept else '<span class="dropped">dropped</span>'
                rows.append([kept, f"<code>{esc(m.id)}</code>", f"<pre>{esc(_cut(m.text, 400))}</pre>"])
            parts.append(f'<details class="cluster"{" open" if i <= 2 else ""}><summary>cluster {i}: '
                         f"{esc(c.size)} rows</summary>"
                         + _table(["", "id", "text"], rows, raw_cols={0, 1, 2}) + "</details>")
    return "".join(parts)


def _contamination(run: dict[str, Any]) -> str:
    """Rows removed per benchmark, examples with the matched span, and whether the eval's benchmarks were covered."""
    from curation.decontam import DecontamFigures, contamination_block
    from curation.mix import MixFigures

    st = _stage(run["stages"], "decontam")
    fig = _figures(run["stages"], "decontam", DecontamFigures)
    mix = _figures(run["stages"], "mix", MixFigures)
    pool = mix.pool_decontam if mix is not None else None
    verdict = run["verdict"] if isinstance(run["verdict"], Verdict) else None
    block: dict[str, Any] = {}
    if verdict is not None and verdict.contamination is not None:
        block = verdict.contamination.model_dump()
    elif st is not None or verdict is not None:
        block = contamination_block(fig, list(verdict.tasks) if verdict is not None else [],
                                    pool=pool.model_dump() if pool is not None else None,
                                    general_rows=mix.general_rows if mix is not None else 0)
    parts = []
    if block.get("warning"):
        parts.append(f'<p class="warn">{esc(block["warning"])}</p>')
    elif verdict and block.get("covers_eval"):
        parts.append("<p>Every benchmark the eval ran was checked against the training data.</p>")
    if fig is None:
        return "".join(parts) or _not_run("Decontamination")
    index = fig.index
    removed = fig.removed_per_benchmark
    pool_removed = pool.removed_per_benchmark if pool is not None else {}
    total = sum(removed.values())
    rate = total / st.rows_in if st.rows_in else 0.0
    parts.append(
        f"<p>Checked against every item of suite <code>{esc(fig.suite)}</code>: {len(index.benchmarks)} benchmarks, "
        f"{index.documents:,} texts (index {esc('/'.join(index.cache))}, {fmt(index.seconds, 2)} s). "
        f"{total:,} of {st.rows_in:,} training rows removed ({_pct(rate)})"
        + (f"; {pool.removed:,} rows of the general pool left out of the replay" if pool is not None else "")
        + ".</p>")
    docs, short, template = index.documents_per_benchmark, index.unmatchable, index.template
    names = sorted(set(docs) | set(removed) | set(pool_removed),
                   key=lambda b: (-removed.get(b, 0) - pool_removed.get(b, 0), b))
    rows = [[b, removed.get(b, 0), pool_removed.get(b, 0) if pool is not None else "–", docs.get(b, 0),
             short.get(b, 0), template.get(b, 0)] for b in names]
    parts.append(_table(["benchmark", "training rows removed", "general-pool rows removed", "texts indexed",
                         "too short to match", "template wording"], rows))
    for b, why in index.skipped.items():
        parts.append(f'<p class="warn">Skipped {esc(b)}: {esc(why)}</p>')
    examples = [(b, e) for b, es in fig.examples.items() for e in es]
    examples += [("general pool: " + str(e.get("benchmark")), e) for e in (pool.examples if pool is not None else [])]
    if examples:
        parts.append("<h3>Examples (the matched span, normalised)</h3>" + _table(
            ["benchmark", "row", "item", "field", "overlap", "matched span"],
            [[b, f"<code>{esc(e.get('id'))}</code>", e.get("item"), e.get("field"),
              "whole text" if e.get("whole") else f"{fmt(_num(e.get('coverage')), 2)} of {esc(e.get('total'))} n-grams",
              f"<pre>{esc(_cut(e.get('span'), 300))}</pre>"] for b, e in examples],
            raw_cols={1, 5}))
    if fig.settings:
        parts.append("<h3>Settings</h3>" + _kv_table(fig.settings))
    return "".join(parts)


def _bars_before_after(title: str, before: dict | None, after: dict | None, figure: _Figures) -> str:
    import plotly.graph_objects as go

    keys = sorted(set(_dict(before)) | set(_dict(after)), key=lambda k: -(_dict(after).get(k) or _dict(before).get(k) or 0))
    fig = go.Figure()
    if before:
        fig.add_bar(name="before selection", x=[_label(k) for k in keys], y=[before.get(k, 0) for k in keys],
                    marker_color=_COLORS["before"])
    if after:
        fig.add_bar(name="after selection" if before else "curated output", x=[_label(k) for k in keys],
                    y=[after.get(k, 0) for k in keys], marker_color=_COLORS["after"])
    return figure(fig.update_layout(title=title, barmode="group", yaxis_title="rows"), height=320)


def _distributions(run: dict[str, Any], figure: _Figures) -> str:
    sel = _extra(run["stages"], "select")
    out_counts = run["output"]["counts"]
    parts = []
    for what, key, col in (("task type", "task_types", "task_type"), ("language", "langs", "lang")):
        before, after = _counts(_get(sel, "before", key)), _counts(_get(sel, "after", key))
        if not (before or after):
            after = _counts(_extra(run["stages"], "score").get(key)) or out_counts.get(col)
        if before or after:
            parts.append(_bars_before_after(f"{what} distribution", before, after, figure))
    if sel.get("before") or sel.get("after"):
        rows = []
        for label, d in (("before selection", _dict(sel.get("before"))), ("after selection", _dict(sel.get("after")))):
            ent = _dict(d.get("task_type_entropy"))
            rows.append([label, d.get("rows"), _num(ent.get("bits")), _num(ent.get("normalized")),
                         _num(d.get("complexity_mean"))])
        parts.append(_table(["", "rows", "task-type entropy (bits)", "normalised entropy", "mean complexity"], rows))
    if out_counts.get("task_type"):
        ent = entropy_bits(out_counts["task_type"])
        parts.append(f"<p>Curated output: {len(out_counts['task_type'])} task types, entropy {fmt(ent, 3)} bits.</p>")
    return "".join(parts) or _not_run("Score / select stages")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif _num(v) is not None:
            out[f"{prefix}{k}"] = float(v)
    return out


def _diversity(run: dict[str, Any], figure: _Figures) -> str:
    div = _dict(_extra(run["stages"], "select").get("diversity"))
    if not div:
        return _not_run("Selection (diversity metrics)")
    before, after = _flatten(_dict(div.get("before"))), _flatten(_dict(div.get("after")))
    keys = [k for k in before if k in after and not k.endswith("rows")]
    rows = [[k, before[k], after[k], after[k] - before[k]] for k in keys]
    cov = _dict(div.get("coverage_of_input"))
    for k, v in cov.items():
        if _num(v) is not None:
            rows.append([f"coverage of input: {k}", None, float(v), None])
    parts = []
    if div.get("note"):
        parts.append(f'<p class="note">{esc(div["note"])} ({esc(div.get("sample_rows"))} rows each).</p>')
    parts.append(_table(["metric", "before", "after", "change"], rows))
    tops = []
    for side in ("before", "after"):
        top = _get(div, side, "verb_noun", "top_verb_noun")
        if isinstance(top, list) and top:
            tops.append(f"<div><h3>top verb–noun pairs, {side}</h3>" + _table(
                ["pair", "rows"], [[str(p[0]), p[1]] for p in top if isinstance(p, list | tuple) and len(p) == 2])
                + "</div>")
    if tops:
        parts.append('<div class="cols">' + "".join(tops) + "</div>")
    return "".join(parts)


def _mix(run: dict[str, Any], figure: _Figures) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    st = _stage(run["stages"], "mix")
    if st is None:
        return _not_run("Mix (general-data replay)")
    ex = _figures(run["stages"], "mix", MixFigures)
    task_rows = ex.task_rows if ex is not None else st.rows_out - st.rows_added
    general_rows = ex.general_rows if ex is not None else st.rows_added
    specs = [{"type": "domain"}, {"type": "xy"}]
    fig = make_subplots(rows=1, cols=2, specs=[specs], subplot_titles=("task vs general rows",
                                                                        "general rows per source"))
    fig.add_trace(go.Pie(labels=["task", "general (replay)"], values=[task_rows, general_rows], hole=0.45,
                         marker={"colors": ["#2563eb", "#f59e0b"]}), 1, 1)
    per_source = ex.general_per_source if ex is not None else {}
    fig.add_trace(go.Bar(x=[_label(Path(k).name) for k in per_source], y=list(per_source.values()),
                         marker_color="#f59e0b", showlegend=False), 1, 2)
    parts = [figure(fig, height=320)]
    if ex is None:
        return "".join(parts)
    tt, gt = ex.task_task_types, ex.general_task_types
    if tt or gt:
        keys = sorted(set(tt) | set(gt), key=lambda k: -(tt.get(k, 0) + gt.get(k, 0)))
        fig = go.Figure([go.Bar(name="task", x=[_label(k) for k in keys], y=[tt.get(k, 0) for k in keys],
                                marker_color="#2563eb"),
                         go.Bar(name="general", x=[_label(k) for k in keys], y=[gt.get(k, 0) for k in keys],
                                marker_color="#f59e0b")])
        parts.append(figure(fig.update_layout(barmode="stack", title="mixture by task type", yaxis_title="rows"),
                            height=320))
    shown = ex.to_json()
    keys = [k for k in ("by", "ratio", "achieved_ratio", "task_rows", "general_rows", "task_tokens", "general_tokens",
                        "target_general", "pool_rows") if k in shown]
    parts.append(_kv_table(shown, keys))
    if ex.warning:
        parts.append(f'<p class="warn">{esc(ex.warning)}</p>')
    return "".join(parts)


def _training(run: dict[str, Any], figure: _Figures) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    log, summary = run["train_log"], _dict(run["train"])
    if not log and not summary:
        return _not_run("Training")
    parts = []
    if log:
        metrics = [m for m in ("loss", "lr", "grad_norm", "tokens_per_s", "eval_loss")
                   if any(_num(r.get(m)) is not None for r in log)]
        cols = 2
        nrows = max(1, math.ceil(len(metrics) / cols))
        fig = make_subplots(rows=nrows, cols=cols, subplot_titles=metrics, vertical_spacing=0.2)
        for i, m in enumerate(metrics):
            pts = [(r["step"], r[m]) for r in log if _num(r.get(m)) is not None]
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=m,
                                     showlegend=False, marker={"size": 4}), i // cols + 1, i % cols + 1)
        fig.update_xaxes(title_text="step")
        parts.append(figure(fig, height=260 * nrows + 40))
    keys = ["model", "method", "precision", "device", "steps", "first_loss", "final_loss", "eval_loss",
            "trainable_params", "total_params", "trainable_percent", "tokens_per_s", "train_tokens",
            "padding_waste_percent", "train_time_s", "peak_memory_mb", "examples", "dropped", "truncated"]
    if summary:
        parts.append(_kv_table(summary, [k for k in keys if k in summary]))
    return "".join(parts)


def _eval(run: dict[str, Any], figure: _Figures) -> str:
    import plotly.graph_objects as go

    from flows.summary import verdict_rows

    v = run["verdict"]
    if isinstance(v, str):
        return f'<p class="warn">{esc(v)}</p>'
    if v is None:
        return _not_run("Eval")
    parts = [f'<p class="verdict">Verdict: <span class="badge v-{esc(v.verdict.lower())}">{esc(v.verdict)}</span> '
             f"{esc(v.reason)}</p>"]
    if v.recommendation:
        parts.append(f'<p class="warn"><b>Recommendation:</b> {esc(v.recommendation)}</p>')
    rows = verdict_rows(v)
    if rows:
        def ci(pair: list[float] | None) -> str:
            return "–" if not pair else f"[{fmt(pair[0])}, {fmt(pair[1])}]"

        table = [[r["task"], r["status"], r["n"], r["metric"], r["base_acc"], r["tuned_acc"], r["acc_delta"],
                  ci(r["acc_ci"]), r["acc_p"], r["prob_delta"], ci(r["prob_ci"]), r["prob_p"], r["p_holm"]]
                 for r in rows]
        parts.append(_table(["task", "status", "n", "metric", "base acc", "tuned acc", "acc Δ", "acc 95% CI",
                             "p (McNemar)", "prob Δ", "prob 95% CI", "p (sign-flip)", "p Holm"], table))
        tested = [r for r in rows if r["prob_ci"] or r["acc_ci"]]
        names = [r["task"] for r in tested]
        delta = [r["prob_delta"] if r["prob_ci"] else r["acc_delta"] for r in tested]
        lo = [(r["prob_ci"] or r["acc_ci"])[0] for r in tested]
        hi = [(r["prob_ci"] or r["acc_ci"])[1] for r in tested]
        if tested:
            fig = go.Figure(go.Scatter(
                y=[_label(n) for n in names], x=delta, mode="markers", marker={"size": 10, "color": "#2563eb"},
                error_x={"type": "data", "symmetric": False, "array": [h - d for h, d in zip(hi, delta, strict=True)],
                         "arrayminus": [d - low for low, d in zip(lo, delta, strict=True)]}))
            fig.add_vline(x=0, line_color="#374151")
            fig.add_vline(x=-v.margin, line_dash="dash", line_color="#dc2626",
                          annotation_text=f"-margin {fmt(v.margin)}", annotation_position="top")
            fig.update_yaxes(autorange="reversed")  # the table's order, top to bottom
            parts.append(figure(fig.update_layout(
                title=f"tuned − base ({v.gate_score} where the task has choices), with 95% CI", xaxis_title="delta"),
                height=120 + 40 * len(names)))
    if v.uninformative:
        parts.append('<p class="note">Uninformative (base model at chance, left out of the gate): '
                     + esc("; ".join(f"{t}: {v.tasks[t].note}" for t in v.uninformative)) + "</p>")
    target = v.target
    if target is not None:
        d = target.model_dump()
        parts.append("<h3>Target task (held-out curated data)</h3>" + _kv_table(
            d, [k for k in ("n", "metric", "base_nll", "tuned_nll", "gain", "ci_low", "ci_high",
                            "base_perplexity", "tuned_perplexity", "note") if d.get(k) is not None]))
    rig = v.rigidity
    if rig is not None:
        rows_r = [[k, _num(rig.base.get(k)), _num(rig.tuned.get(k)), _num(rig.delta.get(k))] for k in rig.base
                  if _num(rig.base.get(k)) is not None]
        parts.append("<h3>Rigidity of open-ended answers</h3>" + _table(["metric", "base", "tuned", "delta"], rows_r))
        for ex in rig.examples[:4]:
            parts.append(f'<div class="example"><div class="detail">{esc(_cut(ex.get("prompt"), 300))}</div>'
                         f'<div class="cols"><div><span class="role">base</span><pre>{esc(_cut(ex.get("base"), 400))}'
                         f'</pre></div><div><span class="role">tuned</span><pre>{esc(_cut(ex.get("tuned"), 400))}'
                         "</pre></div></div></div>")
    if v.contamination is not None:
        c = v.contamination
        state = "decontaminated" if c.decontaminated else "NOT decontaminated"
        parts.append(f'<p class="note">Training data {esc(state)}'
                     + (f" (checked: {esc(', '.join(c.benchmarks_checked))})" if c.benchmarks_checked else "")
                     + (f"; not checked: {esc(', '.join(c.eval_tasks_not_checked))}"
                        if c.eval_tasks_not_checked else "") + " — see Contamination.</p>")
    if v.skipped:
        parts.append(f'<p class="warn">Skipped tasks: {esc(", ".join(v.skipped))}</p>')
    if v.base_cache is not None and (v.base_cache.hits or v.base_cache.misses):
        parts.append(f'<p class="note">Base-model results: {v.base_cache.hits} from the cache, '
                     f"{v.base_cache.misses} computed.</p>")
    parts.append(f'<p class="note">{esc(v.verdict_rule)}</p>')
    return "".join(parts)


def _ci_cell(t: Any) -> str:
    t = _dict(t)
    if _num(t.get("delta")) is None:
        return "-"
    return f"{fmt(_num(t.get('delta')))} [{fmt(_num(t.get('ci_low')))}, {fmt(_num(t.get('ci_high')))}]"


def _p_cell(t: Any) -> str:
    t = _dict(t)
    p = t.get("p_holm") if t.get("p_holm") is not None else t.get("p_value")
    return "-" if _num(p) is None else f"{p:.3g}"


def _experiment_tables(exp: dict[str, Any], first: str) -> str:
    """An experiment's per-arm table (vs the base) and its arm-vs-reference table (flows/experiments.py)."""
    arms = [a for a in _list(exp.get("arms")) if isinstance(a, dict)]
    tasks = [k for k in arms[0] if f"{k}_ci" in arms[0] and k != "target_gain"]
    rows = []
    for a in arms:
        lo, hi = (list(a.get("target_gain_ci") or []) + [None, None])[:2]
        cells = [a.get("arm", a.get("ratio")), a.get("rows_trained"), a.get("train_loss"),
                 f"{fmt(_num(a.get('heldout_nll_base')))} → {fmt(_num(a.get('heldout_nll_tuned')))}",
                 f"{fmt(_num(a.get('target_gain')))} [{fmt(_num(lo))}, {fmt(_num(hi))}]", _ci_cell(a.get("suite"))]
        for t in tasks:
            lo, hi = (list(a.get(f"{t}_ci") or []) + [None, None])[:2]
            cells.append(f"{fmt(_num(a.get(t)))} [{fmt(_num(lo))}, {fmt(_num(hi))}]")
        cells.append(a.get("verdict"))
        rows.append(cells)
    parts = []
    if exp.get("command"):
        wall = _num(exp.get("wall_s"))
        parts.append(f'<p class="note">Command: <code>{esc(exp["command"])}</code>'
                     + (f"; wall time {wall / 60:.1f} min" if wall else "") + ".</p>")
    parts.append(_table([first, "rows trained", "train loss", "held-out NLL base → tuned", "target gain [95% CI]",
                         "suite Δ [95% CI]", *[f"Δ {t} [95% CI]" for t in tasks], "verdict"], rows))
    vs = [a for a in arms if isinstance(a.get("vs"), dict)]
    if vs:
        ref = _dict(vs[0]["vs"]).get("reference")
        parts.append(f"<p>Each arm vs {esc(ref)} on the same items and held-out rows (the gate's statistic, "
                     "tuned vs tuned; NLL given up = arm − reference, nats per assistant token):</p>")
        parts.append(_table(["arm", "general: pooled Δ [95% CI]", "p (Holm)", "target NLL given up [95% CI]", "p"],
                            [[a.get("arm"), _ci_cell(a["vs"].get("general")), _p_cell(a["vs"].get("general")),
                              _ci_cell(a["vs"].get("target_nll")), _p_cell(a["vs"].get("target_nll"))] for a in vs]))
    recs = [(a.get("arm"), a.get("recommendation")) for a in arms if a.get("recommendation")]
    if recs:
        parts.append("<ul>" + "".join(f"<li>{esc(n)}: {esc(r)}</li>" for n, r in recs) + "</ul>")
    return "".join(parts)


def _replay(run: dict[str, Any], figure: _Figures) -> str:
    """The replay experiment or search (flows/experiments.py): per arm vs the base, each arm vs the first."""
    import plotly.graph_objects as go

    exp = _dict(run.get("replay"))
    arms = [a for a in _list(exp.get("arms")) if isinstance(a, dict)]
    if not arms:
        return _not_run("Replay experiment (only experiment runs have one)")
    parts = [_experiment_tables(exp, "replay ratio")]
    search = _dict(exp.get("search"))
    if search:
        parts.append(f"<p><b>Search</b> over {esc(', '.join(f'{r:g}' for r in _list(search.get('schedule'))))}: "
                     f"{esc(search.get('outcome'))}</p>")
    fig = go.Figure()
    ratios = [a.get("ratio") for a in arms]
    suites = [_dict(a.get("suite")) for a in arms]
    if all(_num(s.get("delta")) is not None for s in suites):
        fig.add_trace(go.Scatter(
            x=ratios, y=[s["delta"] for s in suites], mode="lines+markers", name="suite Δ vs base",
            error_y={"type": "data", "symmetric": False, "array": [s["ci_high"] - s["delta"] for s in suites],
                     "arrayminus": [s["delta"] - s["ci_low"] for s in suites]}))
    fig.add_trace(go.Scatter(x=ratios, y=[_num(a.get("target_gain")) for a in arms], mode="lines+markers",
                             name="target gain", line={"dash": "dash", "width": 3}))
    fig.add_hline(y=0, line_color="#374151")
    parts.append(figure(fig.update_layout(title="tuned − base per replay ratio", xaxis_title="replay ratio",
                                          yaxis_title="delta"), height=360))
    return "".join(parts)


def _curation(run: dict[str, Any]) -> str:
    """Curated vs raw (flows/experiments.py): the same SFT on the raw sources and on the curated data."""
    exp = _dict(run.get("curation"))
    if not _list(exp.get("arms")):
        return _not_run("Curated vs raw (only curation experiment runs have one)")
    parts = []
    ex = _dict(exp.get("excluded"))
    if ex:
        parts.append(f"<p>Raw arm: the ingested sources minus the held-out rows and copies of them "
                     f"({ex.get('exact', 0)} exact, {ex.get('near', 0)} near copies removed).</p>")
    parts.append(_experiment_tables(exp, "arm"))
    if exp.get("reading"):
        parts.append(f"<p>{esc(exp['reading'])}</p>")
    return "".join(parts)


def _arms(run: dict[str, Any], figure: _Figures) -> str:
    """An arms experiment (flows/experiments.py): held-out gain and task deltas per arm, with CIs."""
    import plotly.graph_objects as go

    arms = [a for a in _list(_dict(run.get("arms")).get("arms")) if isinstance(a, dict)]
    if not arms:
        return _not_run("Experiment arms (only arms experiments have them)")
    tasks = [k for k in arms[0] if f"{k}_ci" in arms[0] and k != "target_gain"]

    def ci(a: dict, key: str, ci_key: str) -> str:
        lo, hi = (list(a.get(ci_key) or []) + [None, None])[:2]
        return f"{fmt(_num(a.get(key)))} [{fmt(_num(lo))}, {fmt(_num(hi))}]"

    rows = [[a.get("arm"), a.get("rows"), a.get("train_loss"),
             f"{fmt(_num(a.get('heldout_nll_base')))} → {fmt(_num(a.get('heldout_nll_tuned')))}",
             ci(a, "target_gain", "target_gain_ci"), *[ci(a, t, f"{t}_ci") for t in tasks], a.get("verdict")]
            for a in arms]
    parts = [_table(["arm", "rows trained", "train loss", "held-out NLL base → tuned", "held-out gain [95% CI]",
                     *[f"Δ {t} [95% CI]" for t in tasks], "verdict"], rows)]
    names = [str(a.get("arm")) for a in arms]
    fig = go.Figure()
    for key, label in [("target_gain", "held-out gain (NLL/token)"), *[(t, _label(t)) for t in tasks]]:
        ci_key = "target_gain_ci" if key == "target_gain" else f"{key}_ci"
        y = [_num(a.get(key)) for a in arms]
        lo = [_num((list(a.get(ci_key) or []) + [None])[0]) for a in arms]
        hi = [_num((list(a.get(ci_key) or []) + [None, None])[1]) for a in arms]
        err = {"type": "data", "array": [h - v if None not in (h, v) else 0 for h, v in zip(hi, y, strict=True)],
               "arrayminus": [v - lo_ if None not in (lo_, v) else 0 for lo_, v in zip(lo, y, strict=True)]}
        fig.add_trace(go.Bar(name=label, x=names, y=y, error_y=err))
    fig.add_hline(y=0, line_color="#374151")
    parts.append(figure(fig.update_layout(title="per arm: held-out gain and task deltas (95% CI)", barmode="group",
                                          yaxis_title="delta"), height=360))
    return "".join(parts)


def _trend(history: list[dict[str, Any]], figure: _Figures) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not history:
        return _not_run("Trend (no history)")
    metrics = [("rows_in", "rows in"), ("rows_out", "rows out"), ("duplicate_rate", "duplicate rate"),
               ("mean_quality", "mean quality"), ("task_type_entropy", "task-type entropy (bits)"),
               ("final_loss", "final train loss")]
    metrics = [(k, t) for k, t in metrics if any(_num(h.get(k)) is not None for h in history)]
    parts = [f"<p>{len(history)} run(s) of this recipe.</p>"]
    if metrics:
        # one point per run, in order; the run folder names the point (the time is in the table)
        x = [f"{i + 1}: {_label(h.get('run'))}" for i, h in enumerate(history)]
        fig = make_subplots(rows=math.ceil(len(metrics) / 3), cols=3, subplot_titles=[t for _, t in metrics],
                            vertical_spacing=0.2)
        for i, (k, _t) in enumerate(metrics):
            fig.add_trace(go.Scatter(x=x, y=[_num(h.get(k)) for h in history], mode="lines+markers",
                                     text=[_label(h.get("time")) for h in history], showlegend=False),
                          i // 3 + 1, i % 3 + 1)
        fig.update_xaxes(type="category")
        parts.append(figure(fig, height=250 * math.ceil(len(metrics) / 3) + 40))
    rows = [[str(h.get("time") or "").replace("T", " ")[:16], h.get("run"), h.get("rows_in"), h.get("rows_out"), _pct(_num(h.get("duplicate_rate"))),
             _num(h.get("mean_quality")), _num(h.get("task_type_entropy")), _num(h.get("final_loss")),
             h.get("verdict") or ""] for h in reversed(history)]
    parts.append(_table(["time", "run", "in", "out", "dup rate", "mean quality", "entropy", "final loss", "verdict"],
                        rows))
    return "".join(parts)


def _stage_details(run: dict[str, Any]) -> str:
    parts = []
    for s in run["stages"]:
        body = json.dumps(s.to_json(), ensure_ascii=False, indent=1, sort_keys=True, default=str)
        parts.append(f"<details><summary>{esc(s.stage)}/stats.json</summary><pre>{esc(_cut(body, 60000))}"
                     "</pre></details>")
    return "".join(parts) or _not_run("Curation")


# ------------------------------------------------------------------------------------------------
# the page

_CSS = """
:root{--fg:#111827;--muted:#6b7280;--line:#e5e7eb;--bg:#f9fafb;--blue:#2563eb}
*{box-sizing:border-box}body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);
background:var(--bg)}header{background:#111827;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header .sub{color:#9ca3af;font-size:12px}nav{position:sticky;top:0;z-index:10;background:#fff;border-bottom:1px solid
var(--line);padding:6px 24px;display:flex;flex-wrap:wrap;gap:4px 14px}nav a{color:var(--blue);text-decoration:none;
font-size:13px}main{max-width:1200px;margin:0 auto;padding:12px 24px 60px}section{background:#fff;border:1px solid
var(--line);border-radius:8px;padding:14px 18px;margin:16px 0}h2{margin:0 0 10px;font-size:17px}h3{font-size:14px;
margin:14px 0 6px}table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border-bottom:1px solid var(--line);
padding:4px 10px;text-align:left;vertical-align:top}th{background:#f3f4f6}td.num,th.num{text-align:right;
font-variant-numeric:tabular-nums}table.kv td:first-child{color:var(--muted)}pre{white-space:pre-wrap;
word-break:break-word;margin:2px 0;font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;max-height:260px;overflow:auto}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:10px}.card{border:1px solid var(--line);border-radius:8px;
padding:8px 14px;min-width:130px}.card .k{color:var(--muted);font-size:12px}.card .v{font-size:20px;font-weight:600}
.badge{display:inline-block;padding:1px 10px;border-radius:12px;font-size:13px;font-weight:700;color:#fff;
background:#6b7280}.v-pass{background:#16a34a}.v-regressed{background:#dc2626}.v-inconclusive{background:#d97706}
.not-run{color:var(--muted);font-style:italic}.warn{background:#fffbeb;border-left:3px solid #d97706;padding:6px 10px}
.ok{color:#166534}.note{color:var(--muted);font-size:12px}details{margin:6px 0}summary{cursor:pointer}
.count{background:#eef2ff;color:#3730a3;border-radius:10px;padding:0 8px;font-size:12px;margin-left:6px}
.example{border:1px solid var(--line);border-radius:6px;padding:6px 10px;margin:6px 0 6px 16px;background:#fcfcfd}
.example .meta{color:var(--muted);font-size:12px}.example .detail{font-size:12px;color:#92400e;margin:2px 0}
.role{display:inline-block;font-size:11px;color:#fff;background:#6b7280;border-radius:4px;padding:0 5px}
.kept{color:#166534;font-weight:600}.dropped{color:#b91c1c}.cols{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.fig{width:100%}
"""


def render_report(run: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """The report page as one HTML string (plotly.js inline, no external resources)."""
    from plotly.offline import get_plotlyjs

    figure = _Figures()
    figures = key_figures(run)
    renderers = {
        "overview": lambda: _overview(run, figures),
        "funnel": lambda: _funnel(run, figure),
        "drops": lambda: _drops(run),
        "scores": lambda: _scores(run, figure),
        "ifd": lambda: _ifd(run, figure),
        "dedup": lambda: _dedup(run, figure),
        "contamination": lambda: _contamination(run),
        "distributions": lambda: _distributions(run, figure),
        "diversity": lambda: _diversity(run, figure),
        "mix": lambda: _mix(run, figure),
        "training": lambda: _training(run, figure),
        "eval": lambda: _eval(run, figure),
        "replay": lambda: _replay(run, figure),
        "curation": lambda: _curation(run),
        "arms": lambda: _arms(run, figure),
        "trend": lambda: _trend(history, figure),
        "stage-details": lambda: _stage_details(run),
    }
    bodies = {}
    for sid, render in renderers.items():
        try:
            bodies[sid] = render()
        except Exception as e:  # noqa: BLE001 - one odd figure must not cost the whole report
            log.warning("report section %s of %s failed: %s: %s", sid, run["run_dir"], type(e).__name__, e)
            bodies[sid] = f'<p class="warn">{SECTION_FAILED}: {esc(type(e).__name__)}: {esc(e)}</p>'

    # the experiment sections belong to experiment runs only, the IFD section to runs that scored IFD
    shown = [(sid, title) for sid, title in SECTIONS
             if (sid not in ("replay", "arms", "curation") or run.get(sid)) and (sid != "ifd" or _has_ifd(run))]
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title in shown)
    sections = "".join(_section(sid, title, bodies[sid]) for sid, title in shown)
    title = f"sftflow report: {run['name']}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        # no request may leave the page: inline scripts/styles only, data: images for plotly's exports
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline' "
        "'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{_CSS}</style><script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>"
        f"<header><h1>{esc(title)}</h1><div class=\"sub\">{esc(run['run_dir'])}</div></header><nav>{nav}</nav>"
        f"<main>{sections}</main></body></html>\n"
    )


def build_report(run_dir: str | os.PathLike, *, history: bool = True) -> Path:
    """Write ``run_dir/report.html`` (atomically) from whatever the run produced; returns its path.

    With ``history`` the run's key figures are appended to its recipe's history file first, and
    the report shows the trend across the runs recorded there.
    """
    rd = Path(run_dir)
    if not rd.is_dir():
        raise ReportError(f"{rd}: no such run folder")
    run = load_run(rd)
    trend: list[dict[str, Any]] = []
    if history and run["stages"]:
        trend = read_history(record_history(run))
    elif history:
        trend = read_history(history_path(rd, run["name"]))
    page = render_report(run, trend)
    out = RunDir(rd).report
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
