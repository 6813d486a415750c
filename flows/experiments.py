"""Experiments run by sftflow's own flows. ``replay``: does mixing general data reduce forgetting?

The same narrow SFT (one task family) is run at several replay ratios with the same steps and
seed; each tuned model is evaluated against the base with the regression suite. The output is one
comparison table — target-task gain vs general-capability delta (with CIs and the gate's verdict)
per ratio, plus rigidity — written as ``replay.json``/``replay.md`` and a plot ``replay.png`` in the run
folder. Curation runs once; only the mix step differs between arms.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import datetime as dt  # noqa: E402
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
    # curation runs once (cached on a rerun), then the split: the same wiring as every run
    base = runner.run(r, rd.root, resume=True, upto="split")
    curated, split = base["curate"], base["split"]
    log.info("curated: %s rows in → %s out", curated.rows_in, curated.rows_out)
    arms = []
    with folder_lock(rd.root):
        for ratio in r.experiment.ratios:
            log.info("arm: replay ratio %s", ratio)
            arms.append(replay_arm(r, rd, ratio))
    md = comparison_markdown(arms, command or f"sftflow experiment --recipe {recipe}")
    with atomic_path(rd.replay_md) as tmp:
        tmp.write_text(md + "\n")
    write_json(rd.replay_json, {"arms": comparison_rows(arms), "curate": curated, "split": split})
    plot(arms, rd.replay_png)
    from flows.report import build_report

    report = build_report(rd.root)
    log.info("report: %s", report)
    create_markdown_artifact(key=artifact_key(r, "replay-table"), markdown=md, description="replay experiment")
    create_table_artifact(key=artifact_key(r, "replay-arms"), table=comparison_rows(arms))
    return {"run_dir": str(rd), "arms": arms, "markdown": md}
