"""flows.runner.run: the one wiring of curate → split → train → eval → gate (steps faked: no model)."""

from __future__ import annotations

import json

import pytest
import yaml

from curation.io import FolderInUse
from flows import runner
from flows.recipe import load_recipe
from tests.evals.factories import make_verdict


class Recorder(runner.Steps):
    """Plain curation and split; training and eval faked, every call recorded."""

    def __init__(self, verdict: str = "PASS"):
        self.calls: list[str] = []
        self.verdict = verdict

    def curate(self, recipe, rd, resume):
        self.calls.append("curate")
        return super().curate(recipe, rd, resume)

    def split(self, recipe, rd):
        self.calls.append("split")
        return super().split(recipe, rd)

    def train(self, recipe, data, rd, resume):
        self.calls.append(f"train:{data == str(rd.split_train)}")
        return {"steps": 1}

    def eval(self, recipe, rd, heldout):
        self.calls.append(f"eval:{heldout == str(rd.split_heldout)}")
        return make_verdict().model_copy(update={"verdict": self.verdict, "recommendation": "add replay data"})

    def after(self, step, recipe, rd, result):
        self.calls.append(f"after:{step}")


@pytest.fixture
def recipe(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"answer {i}"}) + "\n" for i in range(30)))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "wired", "sources": [str(src)], "heldout": {"fraction": 0.3},
                                    "train": {"model": "tiny-random-llama"}, "eval": {"suite": "general_probe"},
                                    "gate": {"on_regressed": "fail"}}))
    return load_recipe(path)


def test_the_steps_run_in_order_and_the_gate_comes_last(recipe, tmp_path):
    steps = Recorder()
    out = runner.run(recipe, tmp_path / "run", steps=steps)
    assert steps.calls == ["curate", "after:curate", "split", "after:split", "train:True", "after:train",
                           "eval:True", "after:eval"]
    assert out["gate"] == "ok" and out["curate"].rows_out == 30
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["verdict"] == "PASS" and info["train"] == {"steps": 1} and info["recipe"]["name"] == "wired"


def test_a_failed_gate_raises_after_everything_was_published(recipe, tmp_path):
    steps = Recorder("REGRESSED")
    with pytest.raises(runner.GateFailed, match="verdict REGRESSED. add replay data"):
        runner.run(recipe, tmp_path / "run", steps=steps)
    assert steps.calls[-1] == "after:eval"


def test_start_and_upto_pick_the_steps(recipe, tmp_path):
    rd = tmp_path / "run"
    steps = Recorder()
    runner.run(recipe, rd, steps=steps, upto="curate")
    assert steps.calls == ["curate", "after:curate"]
    steps = Recorder()
    runner.run(recipe, rd, steps=steps, start="split", upto="train")
    assert steps.calls == ["split", "after:split", "train:True", "after:train"]
    steps = Recorder()
    runner.run(recipe, rd, steps=steps, start="eval")
    assert steps.calls == ["eval:True", "after:eval"]


def test_a_curation_only_recipe_stops_after_curation(recipe, tmp_path):
    recipe = recipe.model_copy(update={"train": None})
    steps = Recorder()
    out = runner.run(recipe, tmp_path / "run", steps=steps)
    assert steps.calls == ["curate", "after:curate"] and "gate" not in out


def test_the_run_folder_is_held_while_the_run_goes(recipe, tmp_path):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom curation.io import folder_lock\n"
                               "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n",
                               str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse):
            runner.run(recipe, tmp_path / "run", steps=Recorder())
    finally:
        holder.kill()
        holder.wait(timeout=30)
