"""Experiments run by sftflow's own flows.

``replay``: does mixing general data reduce forgetting? The same narrow SFT (one task family) is run
at several replay ratios with the same steps and seed; each tuned model is evaluated against the base
with the regression suite. The output is one comparison table — target-task gain vs
general-capability delta (with CIs and the gate's verdict) per ratio, plus rigidity — written as
``replay.json``/``replay.md`` and a plot ``replay.png`` in the run folder. Curation runs once; only
the mix step differs between arms.

``arms``: arms as data. Curation and the held-out split run once; each named arm then runs its own
stages on the training split (``experiment.arms.<name>``: e.g. a ``select`` that picks the same
budget by IFD, by complexity or at random), trains with the same settings and seed, and is evaluated
against the base on the same held-out rows and the same suite. Output: ``arms.json``/``arms.md`` —
per arm the rows trained, train loss, held-out NLL base → tuned with the gain's CI, each task's delta
with its CI, and the verdict — in ``RUN/arm_<name>/{curate/NN_<stage>,train,eval}``.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import datetime as dt  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from curation.io import atomic_path, folder_lock, write_json  # noqa: E402
from curation.rundir import RunDir  # noqa: E402
from curation.runner import run_stage  # noqa: E402
from curation.stage import build_stage  # noqa: E402
from flows import runner  # noqa: E402
from flows.artifacts import artifact_key  # noqa: E402
from flows.recipe import Recipe, load_recipe  # noqa: E402

_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="replay-arm", **_TASK)
def replay_arm(recipe: Recipe, rd: RunDir, ratio: float) -> dict[str, Any]:
    """Mix at ``ratio``, train, evaluate: one arm of the experiment, in ``RUN/ratio_<r>/``.

    The arm trains on the run's split (task rows + replayed general rows) and is evaluated on the
    run's held-out rows, with the same step functions as every run.
    """
    exp = recipe.experiment
    arm = rd.arm(ratio)
    mix_cfg = {"general": recipe.resolve_paths(exp.general), "ratio": ratio, "seed": exp.seed, "by": exp.by}
    if (decontam := recipe.decontam_settings()) is not None:
        mix_cfg["decontam"] = decontam  # the replayed general rows are checked like the task rows
    mix_stats = run_stage(build_stage("mix", mix_cfg), rd.split_train, arm.mix, resume=True)
    tr = runner.step_train(recipe, arm.mix / "output.parquet", arm)
    # the arm's training data: the run's curation, then this arm's mix
    verdict = runner.step_eval(recipe, arm, rd.split_heldout, curation=[*rd.curate.stages(), arm.mix])
    return {"ratio": ratio, "mix": mix_stats, "train": tr, "verdict": verdict}


def comparison_rows(arms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for a in arms:
        v, tr = a["verdict"], a["train"]
        target = v.get("target") or {}
        row: dict[str, Any] = {
            "ratio": a["ratio"],
            "general_rows": a["mix"].rows_added,
            "train_loss": f"{tr.get('first_loss', float('nan')):.3f} → {tr.get('final_loss', float('nan')):.3f}",
            "target_gain": target.get("delta"),
            "verdict": v.get("verdict"),
        }
        for name, t in v.get("tasks", {}).items():
            row[name] = t.get("delta")
            row[f"{name}_ci"] = [t.get("ci_low"), t.get("ci_high")]
        rig = v.get("rigidity") or {}
        row["distinct2_delta"] = (rig.get("delta") or {}).get("distinct_2") if isinstance(rig.get("delta"), dict) else None
        rows.append(row)
    return rows


def comparison_markdown(arms: list[dict[str, Any]], command: str) -> str:
    tasks = list(arms[0]["verdict"].get("tasks", {}))
    head = ["replay ratio", "general rows", "train loss", "target-task gain"] + [f"Δ {t} [95% CI]" for t in tasks]
    head += ["verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        v = a["verdict"]
        target = v.get("target") or {}
        cells = [f"{a['ratio']:g}", str(a["mix"].rows_added),
                 f"{a['train'].get('first_loss', 0):.3f} → {a['train'].get('final_loss', 0):.3f}",
                 _num(target.get("delta"))]
        for t in tasks:
            r = v["tasks"][t]
            cells.append(f"{_num(r.get('delta'))} [{_num(r.get('ci_low'))}, {_num(r.get('ci_high'))}]")
        cells.append(str(v.get("verdict")))
        lines.append("| " + " | ".join(cells) + " |")
    rig_lines = []
    for a in arms:
        rig = a["verdict"].get("rigidity") or {}
        tuned = rig.get("tuned") or {}
        base = rig.get("base") or {}
        if tuned:
            rig_lines.append(
                f"| {a['ratio']:g} | " + " | ".join(
                    f"{_val(base.get(k))} → {_val(tuned.get(k))}" for k in ("distinct_1", "distinct_2",
                                                                        "self_similarity", "same_opening_share"))
                + " |")
    out = [f"Command: `{command}`; date: {dt.date.today().isoformat()}.", "", *lines]
    if rig_lines:
        out += ["", "Rigidity (base → tuned):", "",
                "| ratio | distinct-1 | distinct-2 | self-similarity | same opening |", "|---|---|---|---|---|",
                *rig_lines]
    return "\n".join(out)


def _val(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:+.4f}" if isinstance(v, float) else str(v)


def plot(arms: list[dict[str, Any]], path: Path) -> Path | None:
    """target gain and mean general delta per ratio (plotly → static PNG needs kaleido; we write HTML+SVG-free PNG via matplotlib if present)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ratios = [a["ratio"] for a in arms]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    tasks = list(arms[0]["verdict"].get("tasks", {}))
    for t in tasks:
        d = [a["verdict"]["tasks"][t].get("delta") or 0 for a in arms]
        lo = [a["verdict"]["tasks"][t].get("ci_low") or 0 for a in arms]
        hi = [a["verdict"]["tasks"][t].get("ci_high") or 0 for a in arms]
        ax.errorbar(ratios, d, yerr=[[x - y for x, y in zip(d, lo, strict=True)], [y - x for x, y in zip(d, hi, strict=True)]],
                    marker="o", capsize=3, label=t, alpha=0.8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("replay ratio (share of general data)")
    ax.set_ylabel("accuracy delta (tuned - base)")
    ax.set_title("General capability after narrow SFT vs replay ratio")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@flow(name="replay-experiment", log_prints=True)
def replay_flow(recipe: str | Recipe, run_dir: str | None = None, overrides: list[str] | None = None,
                command: str = "") -> dict[str, Any]:
    """Curate once, then mix → train → eval at each replay ratio; write the comparison table."""
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    if r.experiment is None:
        raise ValueError("the recipe has no `experiment:` section")
    rd = runner.new_run_dir(r, run_dir)
    log = get_run_logger()
    curated, split = _curate_and_split(r, rd, log)
    arms = []
    with folder_lock(rd.root):
        for ratio in r.experiment.ratios:
            log.info("arm: replay ratio %s", ratio)
            arms.append(replay_arm(r, rd, ratio))
    md = comparison_markdown(arms, command or f"sftflow experiment --recipe {recipe}")
    plot(arms, rd.replay_png)
    _publish(r, rd, "replay", md, comparison_rows(arms), {"curate": curated, "split": split}, log)
    return {"run_dir": str(rd), "arms": arms, "markdown": md}


def _curate_and_split(r: Recipe, rd: RunDir, log) -> tuple[Any, dict]:
    """Curation (resumed when already done) and the held-out split, shared by every arm: the same wiring
    as every run."""
    base = runner.run(r, rd.root, resume=True, upto="split")
    curated, split = base["curate"], base["split"]
    log.info("curated: %s rows in → %s out", curated.rows_in, curated.rows_out)
    return curated, split


def _publish(r: Recipe, rd: RunDir, kind: str, md: str, rows: list[dict], extra: dict, log) -> None:
    """``<kind>.md`` + ``<kind>.json`` in the run folder, the report, and the Prefect artifacts."""
    with atomic_path(rd.experiment_md(kind)) as tmp:
        tmp.write_text(md + "\n")
    write_json(rd.experiment_json(kind), {"arms": rows, **extra})
    from flows.report import build_report

    log.info("report: %s", build_report(rd.root))
    create_markdown_artifact(key=artifact_key(r, f"{kind}-table"), markdown=md, description=f"{kind} experiment")
    create_table_artifact(key=artifact_key(r, f"{kind}-arms"), table=rows)


# ------------------------------------------------------------------------------------------------
# arms as data


@task(name="experiment-arm", **_TASK)
def stages_arm(recipe: Recipe, rd: RunDir, name: str) -> dict[str, Any]:
    """The arm's stages on the run's training split, then train and evaluate on the run's held-out
    rows, in ``RUN/arm_<name>/``."""
    from curation.io import count_rows

    arm = rd.arm_named(name)
    data, stages, folders = rd.split_train, [], []
    for i, (stage_name, cfg) in enumerate(recipe.arm_stage_list(name), 1):
        out = arm.curate.stage(i, stage_name)
        stages.append(run_stage(build_stage(stage_name, cfg), data, out, resume=True))
        folders.append(out)
        data = out / "output.parquet"
    tr = runner.step_train(recipe, data, arm)
    # the arm's training data: the run's curation, then this arm's stages
    verdict = runner.step_eval(recipe, arm, rd.split_heldout, curation=[*rd.curate.stages(), *folders])
    return {"arm": name, "rows": count_rows(data), "stages": stages, "train": tr, "verdict": verdict}


def arms_rows(arms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One JSON row per arm: rows trained, train loss, held-out NLL and gain (CI), task deltas (CIs), verdict."""
    rows = []
    for a in arms:
        v, tr = a["verdict"], a["train"]
        target = v.get("target") or {}
        row: dict[str, Any] = {
            "arm": a["arm"],
            "rows": a["rows"],
            "train_loss": f"{tr.get('first_loss', float('nan')):.3f} → {tr.get('final_loss', float('nan')):.3f}",
            "heldout_n": target.get("n"),
            "heldout_nll_base": target.get("base_nll"),
            "heldout_nll_tuned": target.get("tuned_nll"),
            "target_gain": target.get("delta"),
            "target_gain_ci": [target.get("ci_low"), target.get("ci_high")],
            "verdict": v.get("verdict"),
        }
        for task_name, t in v.get("tasks", {}).items():
            row[task_name] = t.get("delta")
            row[f"{task_name}_ci"] = [t.get("ci_low"), t.get("ci_high")]
            row[f"{task_name}_n"] = t.get("n")
        rows.append(row)
    return rows


def arms_markdown(arms: list[dict[str, Any]], command: str, wall_s: float | None = None) -> str:
    tasks = list(arms[0]["verdict"].get("tasks", {}))
    head = ["arm", "rows trained", "train loss", "held-out NLL base → tuned", "held-out gain [95% CI]"]
    head += [f"Δ {t} [95% CI]" for t in tasks] + ["verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        v = a["verdict"]
        target = v.get("target") or {}
        cells = [a["arm"], str(a["rows"]),
                 f"{a['train'].get('first_loss', 0):.3f} → {a['train'].get('final_loss', 0):.3f}",
                 f"{_val(target.get('base_nll'))} → {_val(target.get('tuned_nll'))}",
                 f"{_num(target.get('delta'))} [{_num(target.get('ci_low'))}, {_num(target.get('ci_high'))}]"]
        for t in tasks:
            r = v["tasks"][t]
            cells.append(f"{_num(r.get('delta'))} [{_num(r.get('ci_low'))}, {_num(r.get('ci_high'))}]")
        cells.append(str(v.get("verdict")))
        lines.append("| " + " | ".join(cells) + " |")
    target = arms[0]["verdict"].get("target") or {}
    ns = ", ".join(f"{t} {arms[0]['verdict']['tasks'][t].get('n')}" for t in tasks)
    when = f"date: {dt.date.today().isoformat()}" + (f"; wall time {wall_s / 60:.1f} min" if wall_s else "")
    notes = [f"Command: `{command}`; {when}.", "",
             f"Held-out: the same {target.get('n', '-')} curated rows for every arm (NLL per assistant token; "
             "gain = base − tuned, 95% paired bootstrap CI over rows). Tasks: items per task " + (ns or "-") +
             " (Δ = tuned − base accuracy, 95% paired bootstrap CI). Every arm: same base, steps and seed."]
    return "\n".join([*notes, "", *lines])


@flow(name="arms-experiment", log_prints=True)
def arms_flow(recipe: str | Recipe, run_dir: str | None = None, overrides: list[str] | None = None,
              command: str = "") -> dict[str, Any]:
    """Curate once, split, then each arm's stages → train → eval; write the comparison table."""
    started = time.perf_counter()
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    if r.experiment is None or r.experiment.kind != "arms":
        raise ValueError("the recipe has no `experiment: {kind: arms, ...}` section")
    rd = runner.new_run_dir(r, run_dir)
    log = get_run_logger()
    curated, split = _curate_and_split(r, rd, log)
    arms = []
    with folder_lock(rd.root):
        for name in r.experiment.arms:
            log.info("arm: %s", name)
            arms.append(stages_arm(r, rd, name))
    md = arms_markdown(arms, command or f"sftflow experiment --recipe {recipe}", time.perf_counter() - started)
    _publish(r, rd, "arms", md, arms_rows(arms), {"curate": curated, "split": split}, log)
    return {"run_dir": str(rd), "arms": arms, "markdown": md}

