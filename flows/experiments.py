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
        row: dict[str, Any] = {
            "ratio": a["ratio"],
            "general_rows": a["mix"].rows_added,
            "train_loss": f"{tr.get('first_loss', float('nan')):.3f} → {tr.get('final_loss', float('nan')):.3f}",
            "target_gain": v.target.gain if v.target else None,
            "verdict": v.verdict,
        }
        for name, t in v.tasks.items():
            test = t.test
            row[name] = test.delta if test else None
            row[f"{name}_ci"] = [test.ci_low, test.ci_high] if test else [None, None]
        row["distinct2_delta"] = v.rigidity.delta.get("distinct_2") if v.rigidity else None
        rows.append(row)
    return rows


def comparison_markdown(arms: list[dict[str, Any]], command: str) -> str:
    tasks = list(arms[0]["verdict"].tasks)
    head = ["replay ratio", "general rows", "train loss", "target-task gain"] + [f"Δ {t} [95% CI]" for t in tasks]
    head += ["verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        v = a["verdict"]
        cells = [f"{a['ratio']:g}", str(a["mix"].rows_added),
                 f"{a['train'].get('first_loss', 0):.3f} → {a['train'].get('final_loss', 0):.3f}",
                 _num(v.target.gain if v.target else None)]
        for t in tasks:
            r = v.tasks[t].test
            cells.append(f"{_num(r.delta)} [{_num(r.ci_low)}, {_num(r.ci_high)}]" if r else "-")
        cells.append(str(v.verdict))
        lines.append("| " + " | ".join(cells) + " |")
    rig_lines = []
    for a in arms:
        rig = a["verdict"].rigidity
        tuned = rig.tuned if rig else {}
        base = rig.base if rig else {}
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
    tasks = [t for t in arms[0]["verdict"].tasks if all(a["verdict"].tasks[t].test for a in arms)]
    for t in tasks:
        d = [a["verdict"].tasks[t].test.delta for a in arms]
        lo = [a["verdict"].tasks[t].test.ci_low for a in arms]
        hi = [a["verdict"].tasks[t].test.ci_high for a in arms]
        ax.errorbar(ratios, d, yerr=[[x - y for x, y in zip(d, lo, strict=True)], [y - x for x, y in zip(d, hi, strict=True)]],
                    marker="o", capsize=3, label=t, alpha=0.8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("replay ratio (share of general data)")
    ax.set_ylabel("delta of the gate's score (tuned - base)")
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
    """One JSON row per arm: rows trained, train loss, held-out NLL and gain (CI), the suite's and each
    task's delta (CIs), verdict."""
    rows = []
    for a in arms:
        v, tr = a["verdict"], a["train"]
        t = v.target
        row: dict[str, Any] = {
            "arm": a["arm"],
            "rows": a["rows"],
            "train_loss": f"{tr.get('first_loss', float('nan')):.3f} → {tr.get('final_loss', float('nan')):.3f}",
            "heldout_n": t.n if t else None,
            "heldout_nll_base": t.base_nll if t else None,
            "heldout_nll_tuned": t.tuned_nll if t else None,
            "target_gain": t.gain if t else None,
            "target_gain_ci": [t.ci_low, t.ci_high] if t else [None, None],
            "verdict": v.verdict,
        }
        tests = {"suite": v.suite.test if v.suite else None} | {k: r.test for k, r in v.tasks.items()}
        for name, test in tests.items():
            row[name] = test.delta if test else None
            row[f"{name}_ci"] = [test.ci_low, test.ci_high] if test else [None, None]
            row[f"{name}_n"] = test.n if test else None
        rows.append(row)
    return rows


def arms_markdown(arms: list[dict[str, Any]], command: str, wall_s: float | None = None) -> str:
    """The arms table: per arm the held-out NLL and gain, the general suite's and each task's delta, with CIs."""
    first = arms[0]["verdict"]
    tasks = list(first.tasks)
    head = ["arm", "rows trained", "train loss", "held-out NLL base → tuned", "held-out gain [95% CI]",
            "Δ general suite [95% CI]"]
    head += [f"Δ {t} [95% CI]" for t in tasks] + ["verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ci(test: Any) -> str:
        return f"{_num(test.delta)} [{_num(test.ci_low)}, {_num(test.ci_high)}]" if test else "-"

    for a in arms:
        v = a["verdict"]
        t = v.target
        cells = [a["arm"], str(a["rows"]),
                 f"{a['train'].get('first_loss', 0):.3f} → {a['train'].get('final_loss', 0):.3f}",
                 f"{_val(t.base_nll)} → {_val(t.tuned_nll)}" if t else "-",
                 f"{_num(t.gain)} [{_num(t.ci_low)}, {_num(t.ci_high)}]" if t else "-",
                 ci(v.suite.test if v.suite else None)]
        cells += [ci(v.tasks[name].test if name in v.tasks else None) for name in tasks]
        cells.append(str(v.verdict))
        lines.append("| " + " | ".join(cells) + " |")
    ns = ", ".join(f"{name} {r.test.n} ({r.test.score})" for name, r in first.tasks.items() if r.test)
    when = f"date: {dt.date.today().isoformat()}" + (f"; wall time {wall_s / 60:.1f} min" if wall_s else "")
    suite = first.suite
    notes = [f"Command: `{command}`; {when}.", "",
             f"Held-out: the same {first.target.n if first.target else '-'} curated rows for every arm (NLL per "
             "assistant token; gain = base − tuned, 95% paired bootstrap CI over rows). General: items per task "
             + (ns or "-") + "; Δ = tuned − base on the score the gate reads, with the gate's 95% interval"
             + (f"; the suite row is the equal-weight mean over {', '.join(suite.tasks)} ({suite.test.interval})"
                if suite else "")
             + ". Every arm: same base, pool, steps and seed; only the selection differs."]
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

