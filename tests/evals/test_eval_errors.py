"""Bad input to the eval, as a user meets it through the CLI: one-line errors (exit 2) or reported skips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from curation.io import write_records
from evals.tasks import TASKS_DIR
from training.models import load_model

REPO = Path(__file__).resolve().parents[2]
SFTFLOW = [str(Path(sys.executable).parent / "sftflow")]


def _eval(*args: str) -> subprocess.CompletedProcess:
    cmd = [
        *SFTFLOW,
        "eval",
        "--base",
        "tiny-random-llama",
        "--set",
        "rigidity=false",
        "--set",
        "bootstrap=200",
    ]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO, timeout=600)


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    # progress bars and library warnings may precede it: the error itself is one line
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _empty_task(tmp_path: Path) -> Path:
    spec = yaml.safe_load((TASKS_DIR / "general_probe.yaml").read_text())
    (tmp_path / "empty.jsonl").write_text("")
    spec["task"] = "empty_probe"
    spec["source"] = {"path": "empty.jsonl"}
    path = tmp_path / "empty_probe.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_unknown_suite_and_task_file_without_items(tmp_path):
    res = _eval("--suite", "no_such_suite", "--out", str(tmp_path / "a"))
    _one_line_error(res, "unknown eval task 'no_such_suite'")
    empty = _empty_task(tmp_path)
    res = _eval("--suite", str(empty), "--data-dir", str(tmp_path), "--out", str(tmp_path / "b"))
    _one_line_error(res, "nothing to evaluate", "empty_probe: no items")


def test_adapter_that_does_not_fit_the_base(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = load_model("tiny-random-llama")
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    other = LlamaForCausalLM(cfg)
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(
        tmp_path / "ad"
    )
    res = _eval("--suite", "general_probe", "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "o"))
    _one_line_error(res, f"adapter {tmp_path / 'ad'} does not fit base model tiny-random-llama", "size mismatch")
    res = _eval(
        "--suite", "general_probe", "--adapter", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")
    )
    _one_line_error(res, "nope: no such folder")


def test_empty_task_among_others_and_empty_heldout_are_reported_skips(tmp_path):
    empty = _empty_task(tmp_path)
    shutil_copy = (REPO / "data" / "probe" / "general_probe.jsonl").read_text()
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "general_probe.jsonl").write_text(shutil_copy)
    write_records(tmp_path / "heldout.parquet", [])
    res = _eval(
        "--suite",
        f"{empty},general_probe",
        "--data-dir",
        str(tmp_path),
        "--limit",
        "8",
        "--set",
        f"target_data={tmp_path / 'heldout.parquet'}",
        "--out",
        str(tmp_path / "o"),
    )
    assert res.returncode == 0, res.stderr
    verdict = json.loads((tmp_path / "o" / "verdict.json").read_text())
    assert "empty_probe" in verdict["skipped"] and "general_probe" in verdict["tasks"]
    assert verdict["target"]["n"] == 0 and "skipped" in verdict["target"]["note"]
    assert "Target task:" in res.stdout
