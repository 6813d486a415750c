"""The replay experiment's comparison table and its report section (the arms' numbers are made up here;
the experiment itself runs real SFT + eval: `sftflow experiment --recipe configs/experiments/replay.yaml`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from curation.io import write_json
from curation.stats import StageStats
from evals.verdict import RigidityResult, TargetResult
from flows.experiments import arms_markdown, arms_rows, comparison_markdown, comparison_rows
from flows.report import build_report
from tests.evals.factories import make_verdict

REPO = Path(__file__).resolve().parents[2]


def _arm(ratio: float, arc_delta: float, gain: float) -> dict:
    verdict = make_verdict({"arc_easy": arc_delta})
    verdict.target = TargetResult(n=10, gain=gain)
    verdict.rigidity = RigidityResult(base={"distinct_2": 0.8}, tuned={"distinct_2": 0.7}, delta={"distinct_2": -0.1})
    return {
        "ratio": ratio,
        "mix": StageStats(stage="mix", rows_added=int(ratio * 100)),
        "train": {"first_loss": 2.0, "final_loss": 1.5},
        "verdict": verdict,
    }


def test_comparison_table_has_one_row_per_ratio_with_cis():
    arms = [_arm(0.0, -0.05, 0.4), _arm(0.3, -0.005, 0.35)]
    md = comparison_markdown(arms, "sftflow experiment --recipe r.yaml")
    lines = [line for line in md.splitlines() if "PASS" in line or "REGRESSED" in line]
    assert [line.split("|")[1].strip() for line in lines] == ["0", "0.3"]
    assert "| 0 | 0.8000 → 0.7000 |" not in md and "0.8000 → 0.7000" in md  # rigidity: base → tuned
    assert "-0.0500 [-0.0700, -0.0300]" in md and "REGRESSED" in md and "PASS" in md
    assert "sftflow experiment --recipe r.yaml" in md
    rows = comparison_rows(arms)
    assert [r["ratio"] for r in rows] == [0.0, 0.3]
    assert rows[0]["arc_easy_ci"] == pytest.approx([-0.07, -0.03])
    assert rows[1]["distinct2_delta"] == -0.1


def test_report_shows_the_replay_section(tmp_path):
    write_json(tmp_path / "replay.json", {"arms": comparison_rows([_arm(0.0, -0.05, 0.4), _arm(0.1, -0.02, 0.38)])})
    html = build_report(tmp_path, history=False).read_text()
    section = html.split('id="replay"', 1)[1].split("</section>", 1)[0]
    assert "Δ arc_easy [95% CI]" in section
    assert "-0.05 [-0.07, -0.03]" in section


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
