"""Experiments: the arm-vs-arm comparison, the search's next ratio, the tables and report sections, and the
replay / search / curated-vs-raw flows end to end on the tiny model (the real runs:
`sftflow experiment --recipe configs/experiments/replay.yaml`, `... curation.yaml`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from curation.io import write_json
from curation.stats import StageStats
from evals.verdict import RigidityResult, TargetResult
from flows.experiments import (
    ExperimentError,
    arm_rows,
    arms_markdown,
    arms_rows,
    compare_pair,
    comparison_markdown,
    curation_flow,
    next_ratio,
    replay_flow,
)
from flows.recipe import load_recipe
from flows.report import build_report
from tests.evals.factories import make_verdict

REPO = Path(__file__).resolve().parents[2]


def _arm(ratio: float, arc_delta: float, gain: float) -> dict:
    verdict = make_verdict({"arc_easy": arc_delta})
    verdict.target = TargetResult(n=10, gain=gain)
    verdict.rigidity = RigidityResult(base={"distinct_2": 0.8}, tuned={"distinct_2": 0.7}, delta={"distinct_2": -0.1})
    return {
        "label": f"ratio {ratio:g}",
        "ratio": ratio,
        "mix": StageStats(stage="mix", rows_added=int(ratio * 100)),
        "train": {"first_loss": 2.0, "final_loss": 1.5},
        "verdict": verdict,
    }


def test_comparison_table_has_one_row_per_ratio_with_cis():
    arms = [_arm(0.0, -0.05, 0.4), _arm(0.3, -0.005, 0.35)]
    md = comparison_markdown(arms, "sftflow experiment --recipe r.yaml")
    lines = [line for line in md.splitlines() if "PASS" in line or "REGRESSED" in line]
    assert [line.split("|")[1].strip() for line in lines] == ["ratio 0", "ratio 0.3"]
    assert "0.8000 → 0.7000" in md  # rigidity: base → tuned
    assert "-0.0500 [-0.0700, -0.0300]" in md and "REGRESSED" in md and "PASS" in md
    assert "sftflow experiment --recipe r.yaml" in md
    rows = arm_rows(arms, [])
    assert [r["ratio"] for r in rows] == [0.0, 0.3]
    assert rows[0]["arc_easy_ci"] == pytest.approx([-0.07, -0.03])
    assert rows[1]["distinct2_delta"] == -0.1 and rows[1]["vs"] is None


def _scored(label: str, scores: dict[str, list[float]], nll: list[float], ids: list[str] | None = None) -> dict:
    v = make_verdict({t: 0.0 for t in scores})
    v.target = TargetResult(n=len(nll), ids=ids or [f"r{i}" for i in range(len(nll))], tuned_nll_rows=nll)
    return {"label": label, "verdict": v,
            "scores": {t: ([f"{t}-{i}" for i in range(len(s))], np.array(s)) for t, s in scores.items()}}


def test_arm_vs_arm_known_answers():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 400)
    nll = list(rng.uniform(1.0, 2.0, 40))
    # the same scores: no difference, p = 1
    same = compare_pair(_scored("a", {"arc_easy": list(base)}, nll), _scored("b", {"arc_easy": list(base)}, nll))
    assert same["general"].delta == 0 and same["general"].p_value == 1 and same["better"] is None
    assert same["target"].delta == 0 and same["target"].p_value == 1
    # b higher by 0.05 on every item: delta 0.05, significant, b is better; b's NLL 0.1 lower: delta -0.1
    up = compare_pair(_scored("a", {"arc_easy": list(base)}, nll),
                      _scored("b", {"arc_easy": list(base + 0.05)}, [x - 0.1 for x in nll]))
    assert up["general"].delta == pytest.approx(0.05) and up["general"].p_holm < 0.001 and up["better"] == "b"
    assert up["general"].ci_low <= 0.05 <= up["general"].ci_high
    assert up["target"].delta == pytest.approx(-0.1) and up["target"].p_value < 0.001
    # noise around the same mean: not significant
    noisy = compare_pair(_scored("a", {"arc_easy": list(base)}, nll),
                         _scored("b", {"arc_easy": list(base + rng.normal(0, 0.05, 400))}, nll))
    assert noisy["better"] is None and noisy["general"].ci_low < 0 < noisy["general"].ci_high


def test_arm_vs_arm_refuses_different_items():
    a = _scored("a", {"arc_easy": [0.5, 0.6]}, [1.0, 2.0])
    b = _scored("b", {"arc_easy": [0.5, 0.6]}, [1.0, 2.0])
    b["scores"]["arc_easy"] = (["x", "y"], b["scores"]["arc_easy"][1])
    with pytest.raises(ExperimentError, match="different items"):
        compare_pair(a, b)
    with pytest.raises(ExperimentError, match="different tasks"):
        compare_pair(a, _scored("c", {"piqa": [0.5, 0.6]}, [1.0, 2.0]))
    with pytest.raises(ExperimentError, match="held-out rows"):
        compare_pair(a, _scored("d", {"arc_easy": [0.5, 0.6]}, [1.0, 2.0], ids=["p", "q"]))


def test_next_ratio_interpolates_the_lower_bound():
    sched = [0.0, 0.05, 0.1, 0.2, 0.3]
    # lower bound -0.05 at 0, -0.03 at 0.1: +0.2 per unit ratio, reaches -0.01 at 0.2
    r, why = next_ratio([(0.0, -0.05), (0.1, -0.03)], 0.01, sched)
    assert r == 0.2 and "0.20" in why
    # one point: no trend, the next step
    r, why = next_ratio([(0.0, -0.05)], 0.01, sched)
    assert r == 0.05 and "no trend" in why
    # not rising: the data cannot tell
    r, why = next_ratio([(0.0, -0.03), (0.05, -0.04)], 0.01, sched)
    assert r == 0.1 and "cannot tell" in why
    # beyond the schedule, below 1
    r, why = next_ratio([(0.0, -0.5), (0.3, -0.2)], 0.01, sched)
    assert r == pytest.approx(0.49) and "beyond the schedule" in why
    # the line crosses below ratios that did not pass: not linear, cannot tell
    r, why = next_ratio([(0.0, -0.05), (0.1, 0.0), (0.2, -0.02)], 0.01, sched)
    assert r == 0.3 and "cannot tell" in why
    # would need a ratio of 1 or more
    r, why = next_ratio([(0.0, -0.5), (0.3, -0.49)], 0.01, sched)
    assert r is None and "will not fix it" in why


def test_report_shows_the_replay_section(tmp_path):
    arms = [_arm(0.0, -0.05, 0.4), _arm(0.1, -0.02, 0.38)]
    write_json(tmp_path / "replay.json", {"arms": arm_rows(arms, []), "command": "sftflow experiment --recipe x"})
    html = build_report(tmp_path, history=False).read_text()
    section = html.split('id="replay"', 1)[1].split("</section>", 1)[0]
    assert "Δ arc_easy [95% CI]" in section and "Δ target_gain" not in section
    assert "-0.05 [-0.07, -0.03]" in section and "sftflow experiment --recipe x" in section
    assert 'id="curation"' not in html


# ------------------------------------------------------------------------------------------------
# end to end on the tiny model


@pytest.fixture
def sources(tmp_path):
    src = tmp_path / "rows.jsonl"
    rows = [{"instruction": f"question number {i} about topic {i % 7}", "output": f"answer {i} " * 5} for i in range(40)]
    rows += [rows[3], rows[5]]  # exact copies: curation drops them, the raw arm keeps them
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps({"instruction": f"general {i}", "output": f"general answer {i}"}) + "\n"
                           for i in range(40)))
    return {"sources": [str(src)], "stages": [{"dedup": {}}], "heldout": {"fraction": 0.2, "max_rows": 6},
            "train": {"model": "tiny-random-llama", "max_steps": 2, "batch_size": 2, "seq_len": 128,
                      "too_long": "truncate"},
            "eval": {"suite": "general_probe", "limit": 8, "screen": 0, "uninformative": "gate", "rigidity": False,
                     "bootstrap": 200}}, gen


def test_replay_experiment_and_search_end_to_end(tmp_path, sources):
    base, gen = sources
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**base, "name": "rep", "experiment": {
        "kind": "replay", "ratios": [0.0, 0.3], "search": [0.0, 0.1, 0.3], "general": [str(gen)]}}))
    run = tmp_path / "run"
    res = replay_flow(str(path), str(run))
    assert [a["ratio"] for a in res["arms"]] == [0.0, 0.3]
    for name in ("replay.md", "replay.json", "replay.png", "report.html"):
        assert (run / name).exists(), name
    # the arms were scored on the same items: the comparison exists, with the items asserted equal
    items = [pq.read_table(run / f"ratio_{r:g}" / "eval" / "items.parquet").column("item").to_pylist()
             for r in (0.0, 0.3)]
    assert items[0] == items[1] and len(items[0]) == 8
    (c,) = res["comparisons"]
    assert c["a"] == "ratio 0" and c["b"] == "ratio 0.3" and c["general"].n == 8 and c["target"].n == 6
    data = json.loads((run / "replay.json").read_text())
    assert data["arms"][1]["vs"]["reference"] == "ratio 0" and data["arms"][1]["general_rows"] > 0
    assert "NLL given up" in (run / "replay.md").read_text()
    html = (run / "report.html").read_text()
    assert "Each arm vs ratio 0" in html.split('id="replay"', 1)[1]
    # the search in the same folder reuses the finished arms (0 and 0.3) and trains only 0.1
    res = replay_flow(load_recipe(path), str(run), search=True)
    assert [a["ratio"] for a in res["arms"]] == [0.0, 0.1, 0.3][: len(res["arms"])]
    assert res["arms"][0]["reused"] and not res["arms"][1]["reused"]
    assert res["search"]["schedule"] == [0.0, 0.1, 0.3] and res["search"]["outcome"]
    # an arm that did not pass names the next ratio from the trend in its verdict
    v0 = json.loads((run / "ratio_0" / "eval" / "verdict.json").read_text())
    if v0["verdict"] != "PASS":
        assert "0.1" in v0["recommendation"]


def test_curated_vs_raw_end_to_end(tmp_path, sources):
    base, _ = sources
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**base, "name": "cur", "experiment": {"kind": "curation"}}))
    run = tmp_path / "run"
    res = curation_flow(str(path), str(run))
    raw, cur = res["arms"]
    assert raw["label"] == "raw" and cur["label"] == "curated"
    # raw = 42 ingested rows minus the 6 held-out rows (and their copies); curated = 40 deduped minus 6
    held = pq.read_table(run / "split" / "heldout.parquet").column("id").to_pylist()
    assert len(held) == 6 and cur["rows"] == 34
    excluded = raw["excluded"]["exact"] + raw["excluded"]["near"]
    assert excluded >= 6 and raw["rows"] == 42 - excluded
    raw_ids = set(pq.read_table(run / "arm_raw" / "curate" / "01_exclude" / "output.parquet").column("id").to_pylist())
    assert not raw_ids & set(held)
    assert raw["verdict"].target.ids == cur["verdict"].target.ids  # the same held-out rows for both
    for name in ("curation.md", "curation.json", "curation.png", "report.html"):
        assert (run / name).exists(), name
    md = (run / "curation.md").read_text()
    assert "| curated | raw |" in md and "Reading:" in md
    assert "Curated vs raw" in (run / "report.html").read_text()


# --------------------------------------------------------------------------------------------------
# arms as data (kind: arms)


def _sel_arm(name: str, rows: int, gain: float, arc_delta: float) -> dict:
    return {
        "arm": name,
        "rows": rows,
        "train": {"first_loss": 2.0, "final_loss": 1.4},
        "verdict": make_verdict({"arc_easy": arc_delta}).model_copy(update={
            "verdict": "INCONCLUSIVE",
            "target": TargetResult(n=64, base_nll=2.0, tuned_nll=2.0 - gain, gain=gain, ci_low=gain - 0.1,
                                   ci_high=gain + 0.1)}),
    }


def test_arms_table_has_one_row_per_arm_with_heldout_nll_and_cis(tmp_path):
    arms = [_sel_arm("ifd", 200, 0.3, -0.025), _sel_arm("random", 200, 0.2, 0.0)]
    md = arms_markdown(arms, "sftflow experiment --recipe ifd.yaml", wall_s=600)
    # held-out gain, then the suite (a one-task suite: its mean is the task's delta, interval ±0.008)
    assert ("| ifd | 200 | 2.000 → 1.400 | 2.0000 → 1.7000 | +0.3000 [+0.2000, +0.4000] | "
            "-0.0250 [-0.0330, -0.0170] | -0.0250 [-0.0450, -0.0050] | INCONCLUSIVE |") in md
    assert "wall time 10.0 min" in md
    assert "the same 64 curated rows" in md and "arc_easy 200 (prob)" in md
    rows = arms_rows(arms)
    assert [r["arm"] for r in rows] == ["ifd", "random"]
    assert rows[0]["target_gain_ci"] == pytest.approx([0.2, 0.4]) and rows[0]["arc_easy_n"] == 200
    assert rows[0]["suite_ci"] == pytest.approx([-0.033, -0.017])
    write_json(tmp_path / "arms.json", {"arms": rows})
    html = build_report(tmp_path, history=False).read_text()
    section = html.split('id="arms"', 1)[1].split("</section>", 1)[0]
    assert "held-out gain [95% CI]" in section and "0.3 [0.2, 0.4]" in section and "fig-" in section


def _arms_recipe(tmp_path, **experiment) -> Path:
    import yaml

    p = tmp_path / "arms.yaml"
    p.write_text(yaml.safe_dump({"name": "arms", "experiment": {"kind": "arms", **experiment}}))
    return p


def test_arms_recipes_are_validated_with_one_line_errors(tmp_path):
    from curation.errors import ConfigError
    from flows.recipe import load_recipe

    with pytest.raises(ConfigError, match="kind arms needs at least two arms"):
        load_recipe(_arms_recipe(tmp_path, arms={"only": [{"select": {"budget": 5}}]}))
    with pytest.raises(ConfigError, match=r"experiment.arms.b\[0\].select.budget"):
        load_recipe(_arms_recipe(tmp_path, arms={"a": [{"select": {}}], "b": [{"select": {"budget": 0}}]}))
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        load_recipe(_arms_recipe(tmp_path, arms={"a": [{"select": {}}], "b": [{"nope": {}}]}))
    with pytest.raises(ConfigError, match="it names a folder"):
        load_recipe(_arms_recipe(tmp_path, arms={"a/b": [{"select": {}}], "b": [{"select": {}}]}))
    r = load_recipe(_arms_recipe(tmp_path, arms={"a": [{"select": {"budget": 3}}], "b": []}))
    assert r.arm_stage_list("a")[0][1].budget == 3 and r.arm_stage_list("b") == []
    assert load_recipe(REPO / "configs" / "experiments" / "ifd.yaml").experiment.kind == "arms"


@pytest.mark.prefect
@pytest.mark.slow
def test_ifd_selection_experiment_end_to_end_on_the_tiny_model(tmp_path, shared_data, prefect_harness, monkeypatch):
    """The shipped recipe, sized down to the tiny model: one curation + IFD, three selected arms, each
    trained and evaluated on the same held-out rows."""
    import flows  # noqa: F401  (registers the ifd scorer)
    from flows.experiments import arms_flow
    from flows.recipe import load_recipe

    monkeypatch.setenv("SFTFLOW_CACHE", str(tmp_path / "cache"))
    sets = [
        f"sources=[{REPO / 'data' / 'demo' / 'instructions_en.jsonl'}]",
        "stages.score.ifd.model=tiny-random-llama", "stages.score.ifd.max_length=256",
        "heldout.max_rows=8",
        "experiment.arms.ifd=[{select: {budget: 30, rank_by: ifd, embeddings: hashing}}]",
        "experiment.arms.complexity=[{select: {budget: 30, rank_by: complexity, misaligned_ifd: null, "
        "embeddings: hashing}}]",
        "experiment.arms.random=[{select: {budget: 30, method: random, misaligned_ifd: null, embeddings: hashing}}]",
        "train.model=tiny-random-llama", "train.max_steps=2", "train.batch_size=2", "train.seq_len=1024",
        "eval.suite=arc_easy", "eval.limit=8", "eval.bootstrap=200", "eval.rigidity=false",
        f"eval.data_dir={shared_data}",  # the recipe names ../shared/data beside the checkout
    ]
    recipe = load_recipe(REPO / "configs" / "experiments" / "ifd.yaml", sets)
    out = arms_flow(recipe, str(tmp_path / "run"), command="test")
    run = tmp_path / "run"
    assert [a["arm"] for a in out["arms"]] == ["ifd", "complexity", "random"]
    for a in out["arms"]:
        assert a["rows"] == 30 and a["train"]["steps"] == 2
        assert a["verdict"].target.n == 8 and "arc_easy" in a["verdict"].tasks
        assert (run / f"arm_{a['arm']}" / "curate" / "01_select" / "output.parquet").exists()
    ifd_sel = out["arms"][0]["stages"][0]
    assert ifd_sel.extra["rank_by"] == "ifd" and ifd_sel.extra["ifd"]["after"]["rows"] == 30
    assert out["arms"][2]["stages"][0].extra["method"] == "random"
    # the same held-out rows for every arm, none of them in any arm's training rows
    import pyarrow.parquet as pq

    held = set(pq.read_table(run / "split" / "heldout.parquet").column("id").to_pylist())
    for a in out["arms"]:
        trained = set(pq.read_table(run / f"arm_{a['arm']}" / "curate" / "01_select" / "output.parquet").column("id").to_pylist())
        assert not held & trained
    md = (run / "arms.md").read_text()
    assert md.count("\n| ") == 4 and "held-out gain [95% CI]" in md
    assert 'id="arms"' in (run / "report.html").read_text()
