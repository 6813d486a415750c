"""Experiments run by sftflow's own flows: the same SFT in several arms, each evaluated against the base,
and the arms compared with each other on the same items.

``replay`` (``experiment: {kind: replay, ratios: [...]}``)
    Does mixing general data back in reduce forgetting? Curation and the held-out split run once; each arm
    mixes the training split with general rows at its ratio, trains with the same settings and seed, and is
    evaluated against the base (cached base results: only the tuned side is computed per arm). Every arm
    is also compared with the first (reference) arm on the same items with the gate's statistic
    (:func:`evals.stats.compare_arms`: did replay *reduce* the loss?) and on the same held-out rows (the
    target-task NLL given up). Output: ``replay.{md,json,png}``, the report's replay section,
    ``RUN/ratio_<r>/``.
``--search replay`` (:func:`search_flow`)
    Close the loop: from the recipe's ratio, raise the replay ratio step by step (``experiment.search``)
    and stop at the smallest ratio whose arm PASSes; each arm that does not pass gets a recommendation
    naming the ratio to try next from the measured trend (:func:`next_ratio`). Same outputs as replay.
``curation`` (``experiment: {kind: curation}``)
    Does curation beat the raw data? One arm trains on the raw sources (ingested only, junk and
    duplicates included, the held-out rows and near copies of them removed by content), the other on the
    curated training split; same model, method, steps and seed; both evaluated on the same held-out
    curated rows and the same suite, and compared with each other. Output: ``curation.{md,json,png}``,
    the report's curation section, ``RUN/arm_raw/``, ``RUN/arm_curated/``.

``arms`` (``experiment: {kind: arms, arms: {name: [stages]}}``)
    Arms as data: each named arm runs its own stages on the training split (e.g. a ``select`` that picks
    the same budget by IFD, by complexity or at random), then trains and is evaluated like every arm.
    Output: ``arms.{md,json}``, the report's arms section, ``RUN/arm_<name>/{curate/NN_<stage>,train,eval}``.

A finished arm is reused when its training data and settings are unchanged (``arm.json``), so a search
run in a replay experiment's folder only trains the ratios that are new.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import datetime as dt  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from curation.errors import SftflowError  # noqa: E402
from curation.io import atomic_path, count_rows, folder_lock, read_json, write_json  # noqa: E402
from curation.rundir import EvalDir, RunDir  # noqa: E402
from curation.runner import run_stage  # noqa: E402
from curation.stage import build_stage, files_digest  # noqa: E402
from evals.stats import ArmComparison, compare_arms, paired_test  # noqa: E402
from evals.verdict import PASS, PairedTest, Verdict  # noqa: E402
from flows import runner  # noqa: E402
from flows.artifacts import artifact_key  # noqa: E402
from flows.recipe import Recipe, load_recipe  # noqa: E402

_TASK = {"cache_policy": NO_CACHE, "persist_result": False}
#: the search's default schedule of replay ratios (``experiment.search`` overrides it)
SEARCH_RATIOS = (0.0, 0.05, 0.1, 0.2, 0.3)


class ExperimentError(SftflowError):
    """An experiment cannot run as asked (no general pool, arms scored on different items, ...)."""


# ------------------------------------------------------------------------------------------------
# one arm: train + eval, reused when nothing changed


def _arm_key(recipe: Recipe, data: Path, heldout: Path) -> str:
    payload = {
        "train": recipe.train_config().model_dump(mode="json"),
        "eval": recipe.eval_config().model_dump(mode="json"),
        "data": files_digest(str(data)),
        "heldout": files_digest(str(heldout)),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def train_and_eval(recipe: Recipe, arm: RunDir, data: Path, heldout: Path, curation: list[Path]) -> dict[str, Any]:
    """Train ``arm`` on ``data`` and evaluate it on ``heldout`` (the run's wiring: ``runner.step_*``).

    Reuses the arm's verdict when ``arm.json`` says the same data and settings produced it; otherwise any
    older training or eval in the arm's folder is removed first.
    """
    key = _arm_key(recipe, data, heldout)
    started = time.perf_counter()
    done = read_json(arm.arm_key) if arm.arm_key.exists() else {}
    if done.get("key") == key and arm.eval.verdict.exists() and arm.train.summary.exists():
        verdict = Verdict.load(arm.eval.verdict)
        return {"train": read_json(arm.train.summary), "verdict": verdict, "reused": True,
                "seconds": done.get("seconds")}
    arm.arm_key.unlink(missing_ok=True)
    for folder in (arm.train.root, arm.eval.root):
        shutil.rmtree(folder, ignore_errors=True)
    tr = runner.step_train(recipe, data, arm)
    verdict = runner.step_eval(recipe, arm, heldout, curation=curation)
    seconds = round(time.perf_counter() - started, 1)
    write_json(arm.arm_key, {"key": key, "seconds": seconds})
    return {"train": tr, "verdict": verdict, "reused": False, "seconds": seconds}


@task(name="replay-arm", **_TASK)
def replay_arm(recipe: Recipe, rd: RunDir, ratio: float, general: list[str]) -> dict[str, Any]:
    """Mix at ``ratio``, train, evaluate: one arm of a replay experiment, in ``RUN/ratio_<r>/``."""
    exp = recipe.experiment
    seed, by = (exp.seed, exp.by) if exp is not None else (0, "rows")
    arm = rd.arm(ratio)
    mix_cfg: dict[str, Any] = {"general": general, "ratio": ratio, "seed": seed, "by": by}
    if (decontam := recipe.decontam_settings()) is not None:
        mix_cfg["decontam"] = decontam  # the replayed general rows are checked like the task rows
    mix_stats = run_stage(build_stage("mix", mix_cfg), rd.split_train, arm.mix, resume=True)
    # the arm's training data: the run's curation, then this arm's mix
    out = train_and_eval(recipe, arm, arm.mix / "output.parquet", rd.split_heldout,
                         [*rd.curate.stages(), arm.mix])
    return {"label": f"ratio {ratio:g}", "ratio": ratio, "mix": mix_stats, "dir": str(arm), **out}


# ------------------------------------------------------------------------------------------------
# arm vs arm


def gate_scores(eval_dir: EvalDir, verdict: Verdict) -> dict[str, tuple[list[str], np.ndarray]]:
    """The tuned model's per-item scores the gate read (``prob`` or the 0/1 metric, as the task's decisive
    score), for every task the gate counted: ``{task: (item ids, scores)}``."""
    import pyarrow.parquet as pq

    rows = pq.read_table(eval_dir.items, columns=["task", "item", "tuned_score", "tuned_prob"]).to_pylist()
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for name in verdict.gated_tasks:
        col = "tuned_prob" if verdict.tasks[name].decisive == "prob" else "tuned_score"
        mine = [r for r in rows if r["task"] == name]
        out[name] = ([r["item"] for r in mine], np.array([r[col] for r in mine], dtype=np.float64))
    return out


def compare_pair(ref: dict[str, Any], arm: dict[str, Any], *, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """``arm`` vs the reference arm on the same items and the same held-out rows.

    General: the gate's statistic on the tuned scores of both (:func:`evals.stats.compare_arms`; delta > 0:
    ``arm`` scores higher). Target: held-out NLL per assistant token, ``arm`` − reference, paired over rows
    (delta > 0: ``arm`` fits the target task worse, i.e. gain given up). Raises :class:`ExperimentError`
    when the two arms were not scored on the same items or rows.
    """
    a, b = ref["scores"], arm["scores"]
    if set(a) != set(b):
        raise ExperimentError(f"{ref['label']} and {arm['label']}: the gate counted different tasks "
                              f"({sorted(a)} vs {sorted(b)}); compare arms with the same eval settings")
    for t in a:
        if a[t][0] != b[t][0]:
            raise ExperimentError(f"{ref['label']} and {arm['label']}: task {t} was scored on different items "
                                  "(same eval seed and limits are needed)")
    cmp: ArmComparison = compare_arms({t: a[t][1] for t in a}, {t: b[t][1] for t in b},
                                      names=(ref["label"], arm["label"]), alpha=alpha, seed=seed,
                                      score=ref["verdict"].gate_score)
    target = None
    rt, at = ref["verdict"].target, arm["verdict"].target
    if rt and at and rt.tuned_nll_rows and at.tuned_nll_rows:
        if rt.ids != at.ids:
            raise ExperimentError(f"{ref['label']} and {arm['label']}: evaluated on different held-out rows")
        target = paired_test(np.array(rt.tuned_nll_rows), np.array(at.tuned_nll_rows), score="nll_per_assistant_token",
                             alpha=alpha, seed=seed, bounded=False)
    return {"a": ref["label"], "b": arm["label"], "general": cmp.pooled, "tasks": cmp.tasks, "target": target,
            "better": cmp.better(alpha)}


def _test_json(t: PairedTest | None) -> dict[str, Any] | None:
    return None if t is None else t.model_dump(mode="json")


# ------------------------------------------------------------------------------------------------
# the search's next ratio


def next_ratio(points: list[tuple[float, float]], margin: float, schedule: list[float]) -> tuple[float | None, str]:
    """The replay ratio to try next, from the measured trend of the suite's lower bound.

    ``points``: (ratio, lower bound of the pooled general change) of the arms so far; PASS needs the lower
    bound above ``-margin``. A least-squares line through the points is solved for the ratio where the
    lower bound reaches ``-margin``; the answer is the smallest ratio of ``schedule`` at or above it (and
    above every ratio tried). Returns (ratio or None, one sentence saying why).
    """
    tried = sorted({r for r, _ in points})
    above = [r for r in sorted(schedule) if r > tried[-1]] if tried else sorted(schedule)
    step = above[0] if above else None
    if len(tried) < 2:
        when = f"try {step:g} next (the next step of the schedule)" if step is not None else "extend the schedule"
        return step, f"One replay ratio measured, no trend yet: {when}."
    x = np.array([r for r, _ in points], dtype=np.float64)
    y = np.array([lb for _, lb in points], dtype=np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    last = max(points)[1]
    if slope <= 0:
        when = f"the schedule's next step is {step:g}" if step is not None else "the schedule is exhausted"
        return step, (f"The data cannot tell which ratio would pass: the suite's lower bound did not rise with "
                      f"more replay (slope {slope:+.3f} per unit ratio over {len(tried)} ratios); {when}, but "
                      "a lower learning rate or fewer steps may be the better fix.")
    target = (-margin - intercept) / slope
    fit = f"lower bound {last:+.4f} at {tried[-1]:g}, rising {slope:+.3f} per unit ratio over {len(tried)} ratios"
    if target >= 1:
        return None, (f"The trend ({fit}) reaches -{margin:g} only at a ratio of {target:.2f} ≥ 1: replay alone "
                      "will not fix it; lower the learning rate or the number of steps.")
    if target <= tried[-1]:
        when = f"try {step:g} next" if step is not None else "extend the schedule"
        return step, (f"The data cannot tell: the trend ({fit}) reaches -{margin:g} at about {max(target, 0):.2f}, "
                      f"yet ratios up to {tried[-1]:g} did not pass; {when}.")
    cands = [r for r in sorted(schedule) if r >= target and r > tried[-1]]
    if cands:
        return cands[0], (f"Try replay ratio {cands[0]:g}: the trend ({fit}) reaches -{margin:g} at about "
                          f"{max(target, 0):.2f}.")
    nxt = round(min(max(target, tried[-1] + 0.05), 0.95), 2)
    return nxt, (f"Try replay ratio {nxt:g} (beyond the schedule): the trend ({fit}) reaches -{margin:g} at "
                 f"about {target:.2f}.")


# ------------------------------------------------------------------------------------------------
# tables


def _num(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:+.{digits}f}" if isinstance(v, float) else str(v)


def _val(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _ci(t: PairedTest | None) -> str:
    return "-" if t is None else f"{_num(t.delta)} [{_num(t.ci_low)}, {_num(t.ci_high)}]"


def _p(t: PairedTest | None) -> str:
    if t is None:
        return "-"
    p = t.p_holm if t.p_holm is not None else t.p_value
    return f"{p:.3g}"


def _loss(tr: dict[str, Any]) -> str:
    return f"{tr.get('first_loss', float('nan')):.3f} → {tr.get('final_loss', float('nan')):.3f}"


def arm_rows(arms: list[dict[str, Any]], comparisons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One JSON row per arm: its training, its verdict against the base, and its comparison with the
    reference arm (None for the reference itself)."""
    by_b = {c["b"]: c for c in comparisons}
    rows = []
    for a in arms:
        v, tr = a["verdict"], a["train"]
        suite = v.suite.test if v.suite else None
        row: dict[str, Any] = {
            "arm": a["label"],
            "ratio": a.get("ratio"),
            "rows_trained": a.get("rows"),
            "general_rows": a["mix"].rows_added if a.get("mix") is not None else None,
            "train_loss": _loss(tr),
            "heldout_n": v.target.n if v.target else None,
            "heldout_nll_base": v.target.base_nll if v.target else None,
            "heldout_nll_tuned": v.target.tuned_nll if v.target else None,
            "target_gain": v.target.gain if v.target else None,
            "target_gain_ci": [v.target.ci_low, v.target.ci_high] if v.target else [None, None],
            "suite": _test_json(suite),
            "verdict": v.verdict,
            "recommendation": v.recommendation,
            "seconds": a.get("seconds"),
            "reused": a.get("reused", False),
            "dir": a.get("dir"),
        }
        for name, t in v.tasks.items():
            test = t.test
            row[name] = test.delta if test else None
            row[f"{name}_ci"] = [test.ci_low, test.ci_high] if test else [None, None]
            row[f"{name}_n"] = test.n if test else None
        row["distinct2_delta"] = v.rigidity.delta.get("distinct_2") if v.rigidity else None
        c = by_b.get(a["label"])
        row["vs"] = None if c is None else {
            "reference": c["a"], "general": _test_json(c["general"]), "target_nll": _test_json(c["target"]),
            "tasks": {t: _test_json(x) for t, x in c["tasks"].items()}, "better": c["better"]}
        rows.append(row)
    return rows


def _per_arm_table(arms: list[dict[str, Any]], first: str) -> list[str]:
    tasks = list(arms[0]["verdict"].tasks)
    head = [first, "rows trained", "train loss", "held-out NLL base → tuned", "target gain [95% CI]",
            "suite Δ [95% CI]"] + [f"Δ {t} [95% CI]" for t in tasks] + ["verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        v = a["verdict"]
        tg = v.target
        cells = [a["label"], str(a.get("rows", "-")), _loss(a["train"]),
                 f"{_val(tg.base_nll)} → {_val(tg.tuned_nll)}" if tg else "-",
                 f"{_num(tg.gain)} [{_num(tg.ci_low)}, {_num(tg.ci_high)}]" if tg else "-",
                 _ci(v.suite.test if v.suite else None)]
        cells += [_ci(v.tasks[t].test) + ("" if v.tasks[t].counted else " (not gated)") for t in tasks]
        cells.append(str(v.verdict))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _vs_table(comparisons: list[dict[str, Any]]) -> list[str]:
    if not comparisons:
        return []
    tasks = list(comparisons[0]["tasks"])
    head = ["arm", "vs", "general: pooled Δ score [95% CI]", "p (Holm)"] + [f"Δ {t}" for t in tasks]
    head += ["target NLL given up [95% CI]", "p"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in comparisons:
        cells = [c["b"], c["a"], _ci(c["general"]), _p(c["general"])]
        cells += [f"{_num(c['tasks'][t].delta)} (p {_p(c['tasks'][t])})" if t in c["tasks"] else "-" for t in tasks]
        cells += [_ci(c["target"]), _p(c["target"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _rigidity_table(arms: list[dict[str, Any]]) -> list[str]:
    lines = []
    for a in arms:
        rig = a["verdict"].rigidity
        if rig and rig.tuned:
            lines.append(f"| {a['label']} | " + " | ".join(
                f"{_val(rig.base.get(k))} → {_val(rig.tuned.get(k))}"
                for k in ("distinct_1", "distinct_2", "self_similarity", "same_opening_share")) + " |")
    if not lines:
        return []
    return ["", "Rigidity (base → tuned):", "",
            "| arm | distinct-1 | distinct-2 | self-similarity | same opening |", "|---|---|---|---|---|", *lines]


def _header(arms: list[dict[str, Any]], command: str, wall_s: float | None) -> list[str]:
    v = arms[0]["verdict"]
    ns = ", ".join(f"{t} {v.tasks[t].test.n}" for t in v.gated_tasks if v.tasks[t].test)
    when = f"date: {dt.date.today().isoformat()}" + (f"; wall time {wall_s / 60:.1f} min" if wall_s else "")
    reused = [a["label"] for a in arms if a.get("reused")]
    return [
        f"Command: `{command}`; {when}" + (f" (reused finished arms: {', '.join(reused)})" if reused else "") + ".",
        "",
        f"Each arm vs the base: the gate's verdict (margin {v.margin:g}, alpha {v.alpha:g}, score {v.gate_score}); "
        f"items per gated task: {ns or '-'}; suite Δ = equal-weight mean over the gated tasks, stratified "
        f"bootstrap 95% CI. Held-out: the same {v.target.n if v.target else '-'} curated rows for every arm "
        "(NLL per assistant token; gain = base − tuned, paired bootstrap 95% CI over rows).",
    ]


def _vs_note(ref: str) -> list[str]:
    return ["", f"Each arm vs {ref} on the same items (tuned vs tuned, the gate's statistic: paired bootstrap / "
            "Tango CI, sign-flip / McNemar p, Holm over the tasks + pooled; Δ > 0: the arm scores higher) and the "
            "same held-out rows (NLL given up = arm − reference NLL per assistant token, paired bootstrap CI, "
            "sign-flip p):", ""]


def replay_markdown(arms: list[dict[str, Any]], comparisons: list[dict[str, Any]], command: str,
                    wall_s: float | None = None, search: dict[str, Any] | None = None) -> str:
    """The replay experiment (or search) as markdown: per-arm table, arm-vs-reference table, rigidity."""
    out = [*_header(arms, command, wall_s), "", *_per_arm_table(arms, "replay ratio")]
    if comparisons:
        out += [*_vs_note(arms[0]["label"]), *_vs_table(comparisons)]
    if search is not None:
        out += ["", f"Search over {', '.join(f'{r:g}' for r in search['schedule'])}: {search['outcome']}"]
    out += _rigidity_table(arms)
    return "\n".join(out)


def comparison_markdown(arms: list[dict[str, Any]], command: str) -> str:
    """The replay table of arms without their comparisons (kept for callers of the older function)."""
    return replay_markdown(arms, [], command)


def comparison_rows(arms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON rows of arms without comparisons."""
    return arm_rows(arms, [])


def curation_reading(c: dict[str, Any]) -> str:
    """One plain-words sentence on curated vs raw from the comparison (curated = ``b``, raw = ``a``)."""
    parts = []
    t = c["target"]
    if t is not None:
        sig = t.p_value < 0.05
        if t.delta < 0 and sig:
            parts.append(f"the curated arm fits the held-out rows better ({-t.delta:.4f} nats/token lower NLL, "
                         f"95% CI [{-t.ci_high:.4f}, {-t.ci_low:.4f}], p {t.p_value:.3g})")
        elif t.delta > 0 and sig:
            parts.append(f"the raw arm fits the held-out rows better ({t.delta:.4f} nats/token lower NLL, "
                         f"p {t.p_value:.3g})")
        else:
            parts.append(f"the held-out NLL of the two arms does not differ significantly (Δ {t.delta:+.4f}, "
                         f"CI [{t.ci_low:+.4f}, {t.ci_high:+.4f}], p {t.p_value:.3g})")
    g = c["general"]
    if g is not None:
        if c["better"]:
            parts.append(f"on the general suite the {c['better']} arm scores significantly higher "
                         f"(pooled Δ {g.delta:+.4f}, p_holm {_p(g)})")
        else:
            parts.append(f"the general suite does not tell them apart (pooled Δ {g.delta:+.4f}, "
                         f"CI [{g.ci_low:+.4f}, {g.ci_high:+.4f}])")
    return ("Reading: " + "; ".join(parts) + ".") if parts else ""


def curation_markdown(arms: list[dict[str, Any]], comparison: dict[str, Any], command: str,
                      wall_s: float | None = None, excluded: dict[str, int] | None = None) -> str:
    out = [*_header(arms, command, wall_s), ""]
    if excluded:
        out += [f"The raw arm is the ingested sources minus the held-out rows and copies of them "
                f"({excluded.get('exact', 0)} exact, {excluded.get('near', 0)} near copies removed).", ""]
    out += [*_per_arm_table(arms, "arm"), *_vs_note(arms[0]["label"]), *_vs_table([comparison]), "",
            curation_reading(comparison), *_rigidity_table(arms)]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# plots


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_replay(arms: list[dict[str, Any]], comparisons: list[dict[str, Any]], path: Path) -> Path | None:
    """Left: suite Δ vs the base per ratio (CI) with the margin; right: pooled Δ vs the reference arm and
    target NLL given up (CIs). None when matplotlib is missing."""
    plt = _plt()
    if plt is None:
        return None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    pts = [(a["ratio"], a["verdict"].suite.test) for a in arms if a["verdict"].suite]
    if pts:
        x = [r for r, _ in pts]
        d = [t.delta for _, t in pts]
        ax.errorbar(x, d, yerr=[[t.delta - t.ci_low for _, t in pts], [t.ci_high - t.delta for _, t in pts]],
                    marker="o", capsize=3, label="suite Δ vs base")
        ax.axhline(-arms[0]["verdict"].margin, color="red", lw=0.8, ls="--", label="-margin")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("replay ratio")
    ax.set_ylabel("tuned − base (gate score)")
    ax.set_title("General capability vs the base")
    ax.legend(fontsize=7)
    by = {c["b"]: c for c in comparisons}
    rows = [(a["ratio"], by[a["label"]]) for a in arms if a["label"] in by]
    for key, label, fmt in (("general", "general: pooled Δ vs reference", "o-"),
                            ("target", "target NLL given up", "s--")):
        pts2 = [(r, c[key]) for r, c in rows if c[key] is not None]
        if pts2:
            bx.errorbar([r for r, _ in pts2], [t.delta for _, t in pts2],
                        yerr=[[t.delta - t.ci_low for _, t in pts2], [t.ci_high - t.delta for _, t in pts2]],
                        fmt=fmt, capsize=3, label=label)
    bx.axhline(0, color="grey", lw=0.8)
    bx.set_xlabel("replay ratio")
    bx.set_title(f"Each arm vs {arms[0]['label']}")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curation(arms: list[dict[str, Any]], path: Path) -> Path | None:
    """Held-out NLL (tuned, with the base) and suite Δ per arm with CIs."""
    plt = _plt()
    if plt is None:
        return None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(8, 3.6))
    labels = [a["label"] for a in arms]
    gains = [a["verdict"].target for a in arms]
    if all(g is not None and g.gain is not None for g in gains):
        ax.bar(labels, [g.gain for g in gains], yerr=[[g.gain - g.ci_low for g in gains],
                                                      [g.ci_high - g.gain for g in gains]], capsize=4)
    ax.set_title("held-out gain (base − tuned NLL/token)")
    suites = [a["verdict"].suite.test if a["verdict"].suite else None for a in arms]
    if all(s is not None for s in suites):
        bx.bar(labels, [s.delta for s in suites], yerr=[[s.delta - s.ci_low for s in suites],
                                                        [s.ci_high - s.delta for s in suites]], capsize=4)
        bx.axhline(-arms[0]["verdict"].margin, color="red", lw=0.8, ls="--")
    bx.axhline(0, color="grey", lw=0.8)
    bx.set_title("general suite Δ vs base")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------
# flows


def _name(recipe: str | Recipe) -> str:
    return recipe.name if isinstance(recipe, Recipe) else str(recipe)


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
    create_table_artifact(key=artifact_key(r, f"{kind}-arms"),
                          table=[{k: v for k, v in row.items() if not isinstance(v, dict)} for row in rows])


def replay_setup(r: Recipe) -> tuple[Recipe, list[str], float]:
    """The recipe without its mix stage (the arms mix), the general pool and the recipe's own ratio.

    The pool is ``experiment.general``, else the recipe's mix stage's; the ratio is the mix stage's (0
    without one).
    """
    mixes = [e["mix"] or {} for e in r.stages if "mix" in e]
    general = list(r.experiment.general) if r.experiment and r.experiment.general else []
    if not general and mixes:
        general = list(mixes[0].get("general") or [])
    if not general:
        raise ExperimentError("no general-data pool to replay: set experiment.general (or a mix stage's general)")
    ratio = float(mixes[0].get("ratio", 0.0)) if mixes else 0.0
    stripped = r.model_copy(update={"stages": [e for e in r.stages if "mix" not in e]})
    return stripped, r.resolve_paths(general), ratio


def _arm_scores(a: dict[str, Any]) -> dict[str, Any]:
    a["scores"] = gate_scores(EvalDir(Path(a["dir"]) / "eval"), a["verdict"])
    a["rows"] = count_rows(Path(a["dir"]) / "mix" / "output.parquet") if a.get("mix") is not None else a.get("rows")
    return a


def _trend_recommendation(arms: list[dict[str, Any]], schedule: list[float], so_far: bool) -> None:
    """Every arm that did not pass gets the trend's next ratio as its recommendation (``verdict.json`` too):
    from the arms up to it (``so_far``: the search, which decides step by step) or from all arms."""
    margin = arms[0]["verdict"].margin
    for i, a in enumerate(arms):
        v = a["verdict"]
        if v.verdict == PASS:
            continue
        seen = arms[: i + 1] if so_far else arms
        pts = [(b["ratio"], b["verdict"].suite.test.ci_low) for b in seen if b["verdict"].suite]
        if not pts:
            continue
        _, text = next_ratio(pts, margin, schedule)
        a["verdict"] = v.model_copy(update={"recommendation": f"{v.verdict}: {text}"})
        a["verdict"].write(EvalDir(Path(a["dir"]) / "eval").verdict)


@flow(name="replay-experiment", log_prints=True)
def replay_flow(recipe: str | Recipe, run_dir: str | None = None, overrides: list[str] | None = None,
                command: str = "", search: bool = False) -> dict[str, Any]:
    """Curate once, then mix → train → eval at each replay ratio, compare each arm with the first; write
    ``replay.{md,json,png}``. ``search=True``: walk ``experiment.search`` from the recipe's ratio and stop
    at the first ratio that PASSes."""
    started = time.perf_counter()
    r0 = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    r, general, start = replay_setup(r0)
    if not search and r.experiment is None:
        raise ExperimentError("the recipe has no `experiment:` section (or use --search replay)")
    if search:
        sched = list(r.experiment.search) if r.experiment and r.experiment.search else list(SEARCH_RATIOS)
        schedule = sorted({x for x in sched if x >= start} | {start})
    else:
        schedule = list(r.experiment.ratios)  # type: ignore[union-attr]
    rd = runner.new_run_dir(r, run_dir)
    log = get_run_logger()
    curated, split = _curate_and_split(r, rd, log)
    arms: list[dict[str, Any]] = []
    outcome = ""
    with folder_lock(rd.root):
        for ratio in schedule:
            log.info("arm: replay ratio %s", ratio)
            arms.append(_arm_scores(replay_arm(r, rd, ratio, general)))
            if search:
                _trend_recommendation(arms, schedule, so_far=True)
                if arms[-1]["verdict"].verdict == PASS:
                    outcome = f"stopped at {ratio:g}, the smallest ratio whose arm PASSes."
                    break
        else:
            if search:
                outcome = f"no ratio up to {schedule[-1]:g} PASSes. {arms[-1]['verdict'].recommendation or ''}"
        if not search:
            _trend_recommendation(arms, schedule, so_far=False)
    comparisons = [compare_pair(arms[0], a, alpha=arms[0]["verdict"].alpha) for a in arms[1:]]
    wall = time.perf_counter() - started
    cmd = command or f"sftflow experiment --recipe {_name(recipe)}" + (" --search replay" if search else "")
    info = {"schedule": schedule, "outcome": outcome, "start": start} if search else None
    md = replay_markdown(arms, comparisons, cmd, wall, info)
    plot_replay(arms, comparisons, rd.replay_png)
    extra = {"curate": curated, "split": split, "command": cmd, "wall_s": round(wall, 1),
             "reference": arms[0]["label"], "search": info}
    _publish(r, rd, "replay", md, arm_rows(arms, comparisons), extra, log)
    return {"run_dir": str(rd), "arms": arms, "comparisons": comparisons, "markdown": md, "search": info}


def search_flow(recipe: str | Recipe, run_dir: str | None = None, command: str = "") -> dict[str, Any]:
    """``sftflow experiment --recipe R --search replay``: see :func:`replay_flow` (``search=True``)."""
    return replay_flow(recipe, run_dir, command=command, search=True)


@task(name="curation-arm", **_TASK)
def curation_arm(recipe: Recipe, rd: RunDir, name: str) -> dict[str, Any]:
    """``raw``: the ingested sources minus copies of the held-out rows; ``curated``: the training split."""
    arm = rd.arm_named(name)
    if name == "curated":
        data, stages, excluded = rd.split_train, [*rd.curate.stages()], None
    else:
        ingest = rd.curate.stages()[0]
        threshold = next((float((e["dedup"] or {}).get("threshold", 0.7)) for e in recipe.stages if "dedup" in e), 0.7)
        out = arm.curate.stage(1, "exclude")
        st = run_stage(build_stage("exclude", {"reference": str(rd.split_heldout), "threshold": threshold}),
                       ingest / "output.parquet", out, resume=True)
        data, stages, excluded = out / "output.parquet", [ingest, out], st.extra
    res = train_and_eval(recipe, arm, Path(data), rd.split_heldout, stages)
    return {"label": name, "rows": count_rows(data), "dir": str(arm), "excluded": excluded, **res}


@flow(name="curation-experiment", log_prints=True)
def curation_flow(recipe: str | Recipe, run_dir: str | None = None, overrides: list[str] | None = None,
                  command: str = "") -> dict[str, Any]:
    """Curate once and split; train on the raw sources and on the curated split; compare; write
    ``curation.{md,json,png}``."""
    started = time.perf_counter()
    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    rd = runner.new_run_dir(r, run_dir)
    log = get_run_logger()
    curated, split = _curate_and_split(r, rd, log)
    with folder_lock(rd.root):
        arms = []
        for name in ("raw", "curated"):
            log.info("arm: %s", name)
            a = curation_arm(r, rd, name)
            a["scores"] = gate_scores(EvalDir(Path(a["dir"]) / "eval"), a["verdict"])
            arms.append(a)
    comparison = compare_pair(arms[0], arms[1], alpha=arms[0]["verdict"].alpha)
    wall = time.perf_counter() - started
    cmd = command or f"sftflow experiment --recipe {_name(recipe)}"
    md = curation_markdown(arms, comparison, cmd, wall, arms[0]["excluded"])
    plot_curation(arms, rd.experiment_png("curation"))
    extra = {"curate": curated, "split": split, "command": cmd, "wall_s": round(wall, 1), "reference": "raw",
             "excluded": arms[0]["excluded"], "reading": curation_reading(comparison)}
    _publish(r, rd, "curation", md, arm_rows(arms, [comparison]), extra, log)
    return {"run_dir": str(rd), "arms": arms, "comparison": comparison, "markdown": md}


# ------------------------------------------------------------------------------------------------
# arms as data


@task(name="experiment-arm", **_TASK)
def stages_arm(recipe: Recipe, rd: RunDir, name: str) -> dict[str, Any]:
    """The arm's stages on the run's training split, then train and evaluate on the run's held-out
    rows, in ``RUN/arm_<name>/``."""
    arm = rd.arm_named(name)
    data, stages, folders = rd.split_train, [], []
    for i, (stage_name, cfg) in enumerate(recipe.arm_stage_list(name), 1):
        out = arm.curate.stage(i, stage_name)
        stages.append(run_stage(build_stage(stage_name, cfg), data, out, resume=True))
        folders.append(out)
        data = out / "output.parquet"
    # the arm's training data: the run's curation, then this arm's stages
    out = train_and_eval(recipe, arm, Path(data), rd.split_heldout, [*rd.curate.stages(), *folders])
    return {"arm": name, "rows": count_rows(data), "stages": stages, **out}


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

