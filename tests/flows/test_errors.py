"""Every command, given bad input, prints one line naming what is wrong and exits 2 — never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SFTFLOW = str(Path(sys.executable).parent / "sftflow")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    good = d / "rows.jsonl"
    good.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"answer number {i}"}) + "\n"
                            for i in range(8)))
    recipe = d / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "bad", "sources": [str(good)], "stages": [{"dedup": {"threshold": "high"}}]}))
    no_experiment = d / "plain.yaml"
    no_experiment.write_text(yaml.safe_dump({"name": "plain", "sources": [str(good)]}))
    (d / "not_a_run").mkdir()
    (d / "half_run" / "curate" / "00_ingest").mkdir(parents=True)  # curation started, never finished
    return {"d": d, "good": good, "recipe": recipe, "plain": no_experiment}


def _cases(f: dict[str, Path]) -> list[tuple[list[str], str]]:
    d, good, missing = f["d"], str(f["good"]), str(f["d"] / "missing.jsonl")
    out = str(d / "out")
    return [
        (["ingest", missing, "--out", out], "missing.jsonl: no such file or directory"),
        (["ingest", good, "--out", out, "--field-map", "nope=q"], "unknown canonical field"),
        (["dedup", missing, "--out", out], "missing.jsonl: no such file or directory"),
        (["dedup", good, "--out", out, "--set", "threshold=high"], "dedup.threshold"),
        (["quality", missing, "--out", out], "missing.jsonl: no such file or directory"),
        (["quality", "train", "--pos", missing, "--neg", missing, "--out", out], "missing.jsonl: no such file"),
        (["score", missing, "--out", out], "missing.jsonl: no such file or directory"),
        (["select", good, "--out", out, "--budget", "-3"], "select.budget"),
        (["decontam", missing, "--out", out], "missing.jsonl: no such file or directory"),
        (["mix", "--task", good, "--general", missing, "--out", out], "mix: general data: "),
        (["mix", "--task", missing, "--general", good, "--out", out], "missing.jsonl: no such file or directory"),
        (["curate", "--recipe", str(f["recipe"]), "--local", "--out", out], "stages[0].dedup.threshold"),
        (["curate", "--recipe", str(d / "nope.yaml"), "--local"], "nope.yaml: recipe file not found"),
        (["train", "--model", "tiny-random-llama", "--data", missing, "--out", out],
         "missing.jsonl: no such file or directory"),
        (["train", "--model", "tiny-random-llama", "--data", good, "--out", out, "--method", "magic"], "train.method"),
        (["train", "--model", str(d / "no-model"), "--data", good, "--out", str(d / "t2"), "--max-steps", "1"],
         "no-model"),
        (["merge", "--base", "tiny-random-llama", "--adapter", str(d / "no-adapter"), "--out", out],
         "no-adapter: no such folder"),
        (["eval", "--base", "tiny-random-llama", "--adapter", str(d / "no-adapter"), "--out", out],
         "no-adapter: no such folder"),
        (["eval", "--base", "tiny-random-llama", "--suite", "no_such_task", "--out", out], "no_such_task"),
        (["eval", "--base", "tiny-random-llama", "--target-data", missing, "--out", out, "--suite", "general_probe"],
         "missing.jsonl: no such file or directory"),
        (["run", "--recipe", str(f["recipe"]), "--local", "--out", out], "stages[0].dedup.threshold"),
        (["demo", "--set", "train.method=magic", "--local"], "train.method"),
        (["experiment", "--recipe", str(f["plain"])], "no `experiment:` section"),
        (["experiment", "--recipe", str(f["plain"]), "--search", "lr"], "the only search is `replay`"),
        (["experiment", "--recipe", str(f["plain"]), "--search", "replay"], "no general-data pool"),
        (["report", str(d / "no-run")], "no-run: no such run folder"),
        (["export", str(d / "not_a_run")], "not_a_run: not an sftflow run folder"),
        (["export", str(d / "half_run")], "half_run: its curation did not finish"),
        (["export", str(d / "not_a_run"), "--push-to-hub", "no-owner"], "push_to_hub: Value error, expected owner/name"),
        (["export", str(d / "not_a_run"), "--format", "csv"], "format"),
        (["serve", "--recipe", str(d / "nope.yaml")], "nope.yaml: recipe file not found"),
        (["curate-sharded", "--recipe", str(f["recipe"])], "stages[0].dedup.threshold"),
    ]


def test_every_command_with_bad_input_prints_one_line_and_exits_2(files):
    failures = []
    for args, expected in _cases(files):
        res = subprocess.run([SFTFLOW, *args], capture_output=True, text=True, cwd=REPO, timeout=300)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        ok = (res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
              and "Traceback" not in res.stderr + res.stdout)
        if not ok:
            failures.append(f"sftflow {' '.join(args)} → exit {res.returncode}\n{res.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)


def test_train_reads_any_ingestible_file(files, tmp_path):
    """`sftflow train --data rows.jsonl` ingests first (its ledger beside the weights), then trains."""
    out = tmp_path / "train"
    res = subprocess.run([SFTFLOW, "train", "--model", "tiny-random-llama", "--data", str(files["good"]), "--out",
                          str(out), "--max-steps", "1", "--set", "batch_size=2", "--set", "seq_len=256",
                          "--precision", "fp32"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "adapter" / "adapter_config.json").exists()
    assert json.loads((out / "data" / "summary.json").read_text())["rows_out"] == 8
    assert json.loads((out / "summary.json").read_text())["examples"] == 8
