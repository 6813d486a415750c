"""The content-addressed base-results cache: a second eval of the same base computes only the tuned side; a
changed model, task or scorer misses."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest
import torch
import yaml

import evals.run as run_mod
from evals.cache import ResultCache, model_fingerprint, request_key
from evals.run import EvalConfig, evaluate
from evals.tasks import TASKS_DIR, load_task_spec
from training.models import load_model, resolve_model


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SFTFLOW_EVAL_CACHE", str(folder))
    return folder


def _config(**kw) -> EvalConfig:
    return EvalConfig(
        **{"suite": "general_probe", "limit": 12, "bootstrap": 200, "rigidity": False, "data_dir": None,
           "uninformative": "gate", **kw}
    )


def _tuned(tmp_path):
    """A 'tuned' full model: the tiny model with its output layer scaled."""
    model, tok = load_model("tiny-random-llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(1.3)
    model.save_pretrained(tmp_path / "tuned", safe_serialization=True)
    tok.save_pretrained(tmp_path / "tuned")
    return str(tmp_path / "tuned")


def test_second_eval_of_the_same_base_only_runs_the_tuned_side(tmp_path, cache_dir, monkeypatch):
    tuned = _tuned(tmp_path)
    first = evaluate(_config(), "tiny-random-llama", tuned, tmp_path / "a")
    assert first.base_cache.hits == 0 and first.base_cache.misses == 12 * 4  # 4 choices per probe item
    calls = []
    real = run_mod.Scorer.loglikelihood

    def counting(self, requests, views, progress=None):
        calls.append(len(requests))
        return real(self, requests, views, progress)

    monkeypatch.setattr(run_mod.Scorer, "loglikelihood", counting)
    second = evaluate(_config(), "tiny-random-llama", tuned, tmp_path / "b")
    assert second.base_cache.hits == 48 and second.base_cache.misses == 0
    assert calls == [48]  # only the tuned model was run
    a = pq.read_table(tmp_path / "a" / "items.parquet").to_pylist()
    b = pq.read_table(tmp_path / "b" / "items.parquet").to_pylist()
    assert a == b  # cached base results are the computed ones
    # a larger sample of the same task reuses the items it shares (samples nest)
    third = evaluate(_config(limit=20), "tiny-random-llama", tuned, tmp_path / "c")
    assert third.base_cache.hits == 48 and third.base_cache.misses == 32


def test_changed_model_task_or_scorer_misses(tmp_path, cache_dir, monkeypatch):
    evaluate(_config(), "tiny-random-llama", None, tmp_path / "a")
    # a changed model: same architecture, one weight different
    folder = tmp_path / "other"
    shutil.copytree(resolve_model("tiny-random-llama"), folder)
    assert model_fingerprint(folder) == model_fingerprint(resolve_model("tiny-random-llama"))  # content, not path
    model, tok = load_model(str(folder))
    with torch.no_grad():
        model.model.norm.weight.add_(0.01)
    model.save_pretrained(folder, safe_serialization=True)
    assert model_fingerprint(folder) != model_fingerprint(resolve_model("tiny-random-llama"))
    assert evaluate(_config(), str(folder), None, tmp_path / "b").base_cache.hits == 0
    # a changed task: the same items rendered with another prompt template
    spec = yaml.safe_load((TASKS_DIR / "general_probe.yaml").read_text())
    spec["doc_to_text"] = "Q: {{ question }}\nA:"
    spec["source"] = {"repo_path": spec["source"]["repo_path"]}
    path = tmp_path / "probe_v2.yaml"
    path.write_text(yaml.safe_dump(spec))
    load_task_spec.cache_clear()
    assert evaluate(_config(suite=str(path)), "tiny-random-llama", None, tmp_path / "c").base_cache.hits == 0
    # a changed scorer
    monkeypatch.setattr(run_mod, "SCORER_VERSION", "changed")
    assert evaluate(_config(), "tiny-random-llama", None, tmp_path / "d").base_cache.hits == 0
    # unchanged: hits
    monkeypatch.undo()
    monkeypatch.setenv("SFTFLOW_EVAL_CACHE", str(cache_dir))
    assert evaluate(_config(), "tiny-random-llama", None, tmp_path / "e").base_cache.misses == 0


def test_cache_off_and_store_roundtrip(tmp_path, cache_dir):
    v = evaluate(_config(cache=False), "tiny-random-llama", None, tmp_path / "a")
    assert v.base_cache is None and not (cache_dir / "base_results.sqlite").exists()
    store = ResultCache("ns", tmp_path / "x.sqlite")
    store.put_many([(request_key("ll", "a", " b"), [-1.5, True, 1])], task="t")
    assert store.get_many([request_key("ll", "a", " b"), request_key("ll", "a", " c")]) == {
        request_key("ll", "a", " b"): [-1.5, True, 1]
    }
    assert (store.hits, store.misses, len(store)) == (1, 1, 1)
    assert ResultCache("other", tmp_path / "x.sqlite").get_many([request_key("ll", "a", " b")]) == {}
