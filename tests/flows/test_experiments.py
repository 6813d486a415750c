"""The replay experiment's comparison table and its report section (the arms' numbers are made up here;
the experiment itself runs real SFT + eval: `sftflow experiment --recipe configs/experiments/replay.yaml`)."""

from __future__ import annotations

import pytest

from curation.io import write_json
from curation.stats import StageStats
from evals.verdict import RigidityResult, TargetResult
from flows.experiments import comparison_markdown, comparison_rows
from flows.report import build_report
from tests.evals.factories import make_verdict


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
