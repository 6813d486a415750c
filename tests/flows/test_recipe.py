"""Recipes: validation with errors that name the file and key, --set overrides, path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from curation.registry import STAGES
from flows.recipe import ConfigError, load_recipe, parse_overrides

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _register(monkeypatch):
    monkeypatch.setitem(STAGES, "min_length", "tests.curation.test_pipeline:MinLength")


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "configs" / "r.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(data))
    return p


def test_paths_resolve_against_the_recipe_folder(tmp_path):
    p = _write(tmp_path, {"sources": ["../data/x.jsonl", "hf://org/ds?split=train"], "stages": [{"min_length": None}]})
    r = load_recipe(p)
    assert r.source_paths() == [str((tmp_path / "data" / "x.jsonl").resolve()), "hf://org/ds?split=train"]
    assert r.stage_list()[0][1].min_chars == 10


def test_set_overrides_reach_stages_and_sections(tmp_path):
    p = _write(tmp_path, {"sources": ["a.jsonl"], "stages": [{"min_length": {"min_chars": 3}}]})
    r = load_recipe(p, ["stages.min_length.min_chars=42", "name=nightly", "heldout.fraction=0.1"])
    assert r.stage_list()[0][1].min_chars == 42
    assert r.name == "nightly"
    assert r.heldout.fraction == 0.1


@pytest.mark.parametrize(
    ("data", "overrides", "message"),
    [
        ({"stages": [{"min_length": {"min_chars": "lots"}}]}, [], r"r\.yaml: stages\[0\]\.min_length\.min_chars: Input should be a valid integer"),
        ({"stages": [{"nope": {}}]}, [], r"r\.yaml: stages: .*unknown stage 'nope'"),
        ({"stagez": []}, [], r"r\.yaml: stagez: Extra inputs are not permitted"),
        ({"heldout": {"fraction": 3}}, [], r"r\.yaml: heldout\.fraction: Input should be less than 1"),
        ({"stages": []}, ["stages.min_length.min_chars=3"], r"the recipe has no stage 'min_length'"),
        ({}, ["oops"], r"--set 'oops': expected key=value"),
    ],
)
def test_bad_recipes_name_the_file_and_key(tmp_path, data, overrides, message):
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=message):
        load_recipe(p, overrides)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_recipe(bad)
    # YAML tags that would build Python objects are refused (safe_load)
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(evil)


def test_override_values_are_typed():
    assert parse_overrides(["a=1", "b=0.5", "c=true", "d=text", "e=[1, 2]"]) == {
        "a": 1, "b": 0.5, "c": True, "d": "text", "e": [1, 2]}


def test_shipped_recipes_validate():
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        load_recipe(path)  # raises with the file and key on any problem


def test_extends_merges_over_a_recipe_in_the_same_folder(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(
        {"name": "base", "train": {"model": "tiny-random-llama", "lr": 0.003, "max_steps": 40},
         "gate": {"on_regressed": "fail", "on_inconclusive": "warn"}}))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump(
        {"extends": "base.yaml", "name": "child", "gate": {"on_regressed": "warn"},
         "experiment": {"ratios": [0.0, 0.1]}}))
    r = load_recipe(tmp_path / "child.yaml", ["train.max_steps=5"])
    assert r.name == "child" and r.train == {"model": "tiny-random-llama", "lr": 0.003, "max_steps": 5}
    assert (r.gate.on_regressed, r.gate.on_inconclusive) == ("warn", "warn") and r.experiment.ratios == [0.0, 0.1]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("extends: ../base.yaml\n")
    with pytest.raises(ConfigError, match="same folder"):
        load_recipe(tmp_path / "sub" / "c.yaml")


def test_the_replay_recipe_is_the_forget_recipe_as_written():
    forget = load_recipe(Path(__file__).parents[2] / "configs/experiments/forget.yaml")
    replay = load_recipe(Path(__file__).parents[2] / "configs/experiments/replay.yaml")
    assert replay.train == forget.train and replay.stages == forget.stages and replay.eval == forget.eval
    assert replay.experiment.ratios == [0.0, 0.1, 0.3]
