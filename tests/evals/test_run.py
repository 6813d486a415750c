"""End-to-end regression eval on the tiny model (and one slow real-model check of the REGRESSED path)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from curation.io import write_records
from curation.records import Record
from evals.run import EvalConfig, evaluate
from evals.scoring import Scorer, fixed_view
from evals.tasks import DataUnavailableError, load_items
from evals.verdict import Verdict
from training.models import load_model


def _config(**kw) -> EvalConfig:
    base = {
        "suite": "general_probe",
        "bootstrap": 300,
        "rigidity_prompts": 4,
        "max_new_tokens": 8,
        "data_dir": None,
        # the tiny random model is at chance everywhere: count its tasks anyway to exercise the gate
        "uninformative": "gate",
    }
    return EvalConfig(**{**base, **kw})


def test_base_vs_itself_on_few_items_is_not_called_non_inferior(tmp_path):
    calls = []
    verdict = evaluate(_config(), "tiny-random-llama", None, tmp_path, progress=lambda *a: calls.append(a))
    assert verdict.comparison == "identical"
    probe = verdict.tasks["general_probe"]
    assert probe.n == 50 and probe.prob.delta == 0.0 and probe.accuracy.delta == 0.0
    # identical predictions on 50 items cannot rule out a one-point loss: no [0, 0] interval, no PASS
    assert probe.accuracy.ci_low < -0.05 and probe.prob.ci_low < -0.05
    assert probe.status != "non_inferior" and verdict.verdict == "INCONCLUSIVE"
    assert verdict.suite is not None and verdict.suite.status == "undecided"
    on_disk = Verdict.load(tmp_path / "verdict.json")
    assert on_disk == verdict and on_disk.config["margin"] == 0.01
    items = pq.read_table(tmp_path / "items.parquet").to_pylist()
    assert len(items) == 50 and all(r["base_pred"] == r["tuned_pred"] for r in items)
    assert all(0 < r["base_prob"] < 1 and r["base_prob"] == r["tuned_prob"] for r in items)
    assert verdict.rigidity.base["n"] == 4
    assert any(c[0] == "general_probe" for c in calls)


def test_peft_adapter_is_toggled_in_one_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = load_model("tiny-random-llama")
    torch.manual_seed(0)
    lora = LoraConfig(
        r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    get_peft_model(model, lora).save_pretrained(tmp_path / "train" / "adapter")
    evaluate(_config(rigidity=False), "tiny-random-llama", None, tmp_path / "same")
    tuned = evaluate(
        _config(rigidity=False), "tiny-random-llama", str(tmp_path / "train"), tmp_path / "tuned"
    )
    assert tuned.comparison == "merged_adapter"
    base_rows = pq.read_table(tmp_path / "same" / "items.parquet").to_pylist()
    rows = pq.read_table(tmp_path / "tuned" / "items.parquet").to_pylist()
    assert [r["base_logprob"] for r in rows] == pytest.approx(
        [r["base_logprob"] for r in base_rows], abs=1e-4
    )
    assert any(abs(r["tuned_logprob"] - r["base_logprob"]) > 1e-3 for r in rows)
    # the merged copy scores exactly like the adapter applied on the fly
    model, tok = load_model("tiny-random-llama")
    from peft import PeftModel

    peft = PeftModel.from_pretrained(model, str(tmp_path / "train" / "adapter")).eval()
    items = load_items("general_probe")[:5]
    on_the_fly = Scorer(tok).loglikelihood([r for it in items for r in it.requests], {"m": fixed_view(peft)})[
        "m"
    ]
    merged = [r for r in rows if r["item"] in {it.id for it in items}]
    assert [r["tuned_logprob"] for r in merged] == pytest.approx(
        [on_the_fly[i * 4 + int(it.gold)].logprob for i, it in enumerate(items)], abs=1e-4
    )
    assert tuned.verdict in ("PASS", "REGRESSED", "INCONCLUSIVE")


def test_load_trained_hook_and_target_eval(tmp_path):
    records = [
        Record(
            id=f"r{i}",
            messages=[{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w * 3}],
        )
        for i, w in enumerate(["yes", "no", "maybe", "hello"])
    ]
    write_records(tmp_path / "heldout.parquet", records)
    seen = {}

    def load_trained(out_dir, base=None, dtype=torch.float32, device="cpu"):
        seen["args"] = (out_dir, base)
        model, tok = load_model("tiny-random-llama", dtype=dtype, device=device)
        with torch.no_grad():
            model.lm_head.weight.mul_(1.5)
        return model, tok

    v = evaluate(
        _config(rigidity=False, target_data=str(tmp_path / "heldout.parquet")),
        "tiny-random-llama",
        "some/training/out",
        tmp_path / "out",
        load_trained=load_trained,
    )
    assert seen["args"] == ("some/training/out", "tiny-random-llama")
    assert v.comparison == "two_models"
    t = v.target
    assert t.n == 4 and t.base_nll > 0 and t.tuned_nll > 0
    assert t.gain == pytest.approx(t.base_nll - t.tuned_nll)
    assert t.ci_low <= t.gain <= t.ci_high


def test_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown eval task"):  # pydantic wraps the TaskSpecError
        EvalConfig(suite="general_probe,no_such_task")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataUnavailableError, match="data_dir"):
        evaluate(_config(suite="arc_easy", data_dir=str(tmp_path)), "tiny-random-llama", None, tmp_path / "o")
    v = evaluate(
        _config(suite="general_probe,arc_easy", data_dir=str(tmp_path), skip_missing=True, rigidity=False),
        "tiny-random-llama",
        None,
        tmp_path / "o2",
    )
    assert "arc_easy" in v.skipped and "general_probe" in v.tasks


def test_quick_suite_on_shared_data(shared_data, tmp_path):
    v = evaluate(
        _config(suite="quick", data_dir=str(shared_data), limit=6, uninformative="skip"),
        "tiny-random-llama",
        None,
        tmp_path,
    )
    assert set(v.tasks) == {"arc_easy", "piqa", "winogrande", "mmlu_redux", "wikitext2"}
    wiki = v.tasks["wikitext2"]
    assert wiki.gated is False and wiki.status == "not_gated" and wiki.perplexity.kl_to_base == 0.0
    # a task is uninformative exactly when the base model's accuracy interval is not above chance
    gated = [t for t in v.tasks.values() if t.gated]
    assert any(t.status == "uninformative" for t in gated)
    for t in gated:
        low, _ = t.base_accuracy_ci
        assert (t.status == "uninformative") == (low <= t.chance), t
    assert v.verdict == "INCONCLUSIVE"  # 6 items per task decide nothing


def test_every_other_task_runs_end_to_end(shared_data, tmp_path):
    tasks = "gsm8k,lambada,truthfulqa_mc1,truthfulqa_mc2,winogrande,openbookqa,commonsense_qa,arc_challenge"
    v = evaluate(
        _config(suite=tasks, data_dir=str(shared_data), limit=3, rigidity=False),
        "tiny-random-llama",
        None,
        tmp_path,
    )
    assert set(v.tasks) == set(tasks.split(","))
    mc2 = v.tasks["truthfulqa_mc2"]
    assert mc2.accuracy.test == "sign_flip" and 0 < mc2.accuracy.base < 1
    rows = pq.read_table(tmp_path / "items.parquet").to_pylist()
    gsm = [r for r in rows if r["task"] == "gsm8k"]
    assert len(gsm) == 3 and all(r["base_pred"] == r["tuned_pred"] for r in gsm)
    assert v.tasks["gsm8k"].prob is None and v.tasks["lambada"].prob is not None
    assert v.verdict == "INCONCLUSIVE"  # 3 items per task decide nothing


@pytest.mark.slow
def test_damaged_real_model_is_regressed(shared_data, tmp_path):
    """SmolLM2 with Gaussian noise on every weight matrix loses clearly on the probe + ARC-Easy."""
    model, tok = load_model("smollm2-135m-instruct")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.add_(torch.randn_like(p) * p.std())
    model.save_pretrained(tmp_path / "damaged", safe_serialization=True)
    tok.save_pretrained(tmp_path / "damaged")
    config = _config(suite="general_probe,arc_easy", limit=100, data_dir=str(shared_data), rigidity=False)
    v = evaluate(config, "smollm2-135m-instruct", str(tmp_path / "damaged"), tmp_path / "out")
    assert v.comparison == "two_models"
    arc = v.tasks["arc_easy"]
    assert arc.accuracy.delta < -0.1 and arc.prob.delta < -0.1 and arc.prob.p_holm < 0.01, arc
    assert arc.status == "regressed" and v.verdict == "REGRESSED"
    assert "arc_easy" in v.reason and "replay ratio" in v.recommendation


def test_allocate_shares_the_budget_equally_up_to_caps():
    from evals.run import allocate

    assert allocate({"a": 1000, "b": 1000, "c": 1000}, 600) == {"a": 200, "b": 200, "c": 200}
    # a small task takes all it has, the others share the rest
    assert allocate({"a": 50, "b": 1000, "c": 1000}, 600) == {"a": 50, "b": 275, "c": 275}
    assert allocate({"a": 10, "b": 20}, 600) == {"a": 10, "b": 20}
    assert sum(allocate({"a": 1000, "b": 1000, "c": 1000}, 601).values()) == 601
    assert allocate({}, 100) == {}


def test_screening_spends_the_budget_on_informative_tasks(shared_data, tmp_path):
    """The tiny random model: tasks where it is not above chance get only their screening items."""
    v = evaluate(
        _config(
            suite="arc_easy,piqa,winogrande",
            data_dir=str(shared_data),
            uninformative="skip",
            budget=30,
            screen=6,
            rigidity=False,
        ),
        "tiny-random-llama",
        None,
        tmp_path,
    )
    rows = pq.read_table(tmp_path / "items.parquet").to_pylist()
    for name, t in v.tasks.items():
        n_rows = sum(r["task"] == name for r in rows)
        assert t.n == n_rows
        if t.status == "uninformative":
            # screened out (chunks of 6, at most 4), or screened in and then not above chance on all of its share
            assert t.n in (6, 12, 18, 24, 10, 15, 30) and t.accuracy is None
            assert all(r["tuned_score"] is None and not r["in_gate"] for r in rows if r["task"] == name)
        else:
            assert t.n >= 10
    # the budget (30 items) is shared by the tasks screened in: 30, 15 + 15 or 10 + 10 + 10
    shares = [t.n for t in v.tasks.values() if t.n not in (6, 12, 18, 24)]
    assert sum(shares) in (0, 30)
    assert all(t.n in shares for t in v.tasks.values() if t.status != "uninformative")
