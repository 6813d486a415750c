"""The SFT loop on the tiny random Llama (fp32, CPU): methods, packing, resume, precision, outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from curation.io import write_records
from curation.records import Record
from training.artifacts import load_trained
from training.config import TrainConfig
from training.data import collate, load_examples, pack
from training.merge import MergeError, merge
from training.methods import apply_method
from training.models import ModelNotFoundError, load_model
from training.sft import _head_and_decoder, loss_sum, train

TINY = "tiny-random-llama"

ANSWERS = ["the cat sat", "blue sky", "one two three four", "a dog ran home"]


def chat(i: int, answer: str) -> Record:
    return Record(
        id=f"c{i}",
        messages=[{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": answer}],
    )


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """Four short conversations: with batch_size 4 every step sees the same (repeated) batch."""
    path = tmp_path_factory.mktemp("data") / "records.parquet"
    write_records(path, [chat(i, a) for i, a in enumerate(ANSWERS)])
    return path


@pytest.fixture(scope="module")
def varied_data(tmp_path_factory) -> Path:
    """Sixteen conversations of different lengths, some multi-turn, with a system prompt."""
    recs = []
    for i in range(16):
        msgs = [{"role": "system", "content": "be brief"}] if i % 3 == 0 else []
        msgs += [
            {"role": "user", "content": "q" * (3 + i)},
            {"role": "assistant", "content": "a" * (2 + 2 * i)},
        ]
        if i % 4 == 0:
            msgs += [{"role": "user", "content": "more"}, {"role": "assistant", "content": f"extra {i}"}]
        recs.append(Record(id=f"v{i}", messages=msgs))
    path = tmp_path_factory.mktemp("data") / "varied.parquet"
    write_records(path, recs)
    return path


def config(**kw) -> TrainConfig:
    base = dict(model=TINY, max_steps=4, batch_size=4, seq_len=256, lr=1e-2, lora_dropout=0.0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def log_rows(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["lora", "ia3", "bitfit", "adapter", "full"])
def test_every_method_lowers_loss_on_a_repeated_batch_and_saves_safetensors(method, small_data, tmp_path):
    lr = {"full": 3e-3, "ia3": 0.2}.get(method, 1e-2)  # IA3 has few, slowly moving weights
    summary = train(
        config(method=method, lr=lr, max_steps=6, warmup_steps=0, schedule="constant"), small_data, tmp_path
    )
    assert summary["final_loss"] < summary["first_loss"] - 0.05
    assert 0 < summary["trainable_params"] <= summary["total_params"]
    assert (summary["trainable_params"] == summary["total_params"]) == (method == "full")
    weights = tmp_path / summary["weights"]
    tensors = next(weights.glob("*.safetensors"))
    assert load_file(str(tensors))  # safetensors, non-empty
    assert json.loads((tmp_path / "summary.json").read_text())["method"] == method
    # base + trained output loads back and reproduces the trained model's loss
    model, tok = load_trained(tmp_path)
    examples = load_examples(small_data, tok, seq_len=256)
    batch = collate(examples, [[i] for i in range(len(examples))], tok.pad_token_id)
    with torch.no_grad():
        total, n = loss_sum(model, batch, None)
    assert float(total) / n < summary["first_loss"] - 0.05


def test_bitfit_adds_zero_biases_so_the_start_model_is_the_base():
    model, _ = load_model(TINY)
    x = torch.arange(30).unsqueeze(0)
    with torch.no_grad():
        before = model(x).logits
    model, info = apply_method(model, config(method="bitfit"))
    assert len(info["added_bias_to"]) == 2 * 7  # q k v o gate up down, 2 layers: Llama has no biases
    assert all(n.endswith(".bias") for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)


def test_adapter_starts_as_identity_and_sits_after_attention_and_ffn():
    model, _ = load_model(TINY)
    x = torch.arange(30).unsqueeze(0)
    with torch.no_grad():
        before = model(x).logits
    model, info = apply_method(model, config(method="adapter", adapter_size=8))
    assert sorted(n.rsplit(".", 1)[-1] for n in info["adapters_after"]) == ["down_proj"] * 2 + ["o_proj"] * 2
    with torch.no_grad():
        assert torch.allclose(model(x).logits, before, atol=1e-6)


def grads_of(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fast_head,attn", [(True, "sdpa"), (False, "sdpa"), (True, "eager")])
def test_packed_and_unpacked_batches_give_the_same_loss_and_gradients(fast_head, attn, varied_data):
    model, tok = load_model(TINY)
    model.set_attn_implementation(attn)
    model, _ = apply_method(model, config(method="full"))
    head = _head_and_decoder(model) if fast_head else None
    examples = load_examples(varied_data, tok, seq_len=256)
    n = len(examples)
    assert n == 16

    def loss_and_grads(rows, pad_to=None):
        model.zero_grad()
        total, count = loss_sum(model, collate(examples, rows, tok.pad_token_id, pad_to), head)
        (total / count).backward()
        return float(total.detach() / count), grads_of(model)

    unpacked_loss, unpacked_grads = loss_and_grads([[i] for i in range(n)])
    packed_rows = pack(examples.lengths, 800)  # rows of several examples, padded to a fixed length
    assert len(packed_rows) < n // 3
    packed_loss, packed_grads = loss_and_grads(packed_rows, pad_to=800)
    assert abs(packed_loss - unpacked_loss) < 1e-5
    for name, g in unpacked_grads.items():
        assert torch.allclose(packed_grads[name], g, atol=1e-5, rtol=1e-4), name
    # and cross-contamination would be visible: a shifted context changes the loss
    model.zero_grad()
    batch = collate(examples, packed_rows, tok.pad_token_id, 800)
    batch["position_ids"] = torch.arange(800).expand(
        len(packed_rows), -1
    )  # one long sequence: examples see each other
    with torch.no_grad():
        total, count = loss_sum(model, batch, head)
    assert abs(float(total / count) - unpacked_loss) > 1e-3


def test_training_through_packed_and_unpacked_paths_gives_the_same_first_step(varied_data, tmp_path):
    packed = train(
        config(method="full", packing=True, batch_size=16, max_steps=1), varied_data, tmp_path / "p"
    )
    padded = train(
        config(method="full", packing=False, batch_size=16, max_steps=1), varied_data, tmp_path / "u"
    )
    assert abs(packed["first_loss"] - padded["first_loss"]) < 1e-5
    assert packed["padding_waste_percent"] < padded["padding_waste_percent"]


def test_grad_accumulation_matches_one_big_batch(varied_data, tmp_path):
    one = train(config(packing=False, batch_size=4, grad_accum=1, max_steps=3), varied_data, tmp_path / "a")
    acc = train(config(packing=False, batch_size=2, grad_accum=2, max_steps=3), varied_data, tmp_path / "b")
    for r1, r2 in zip(log_rows(tmp_path / "a"), log_rows(tmp_path / "b"), strict=True):
        assert abs(r1["loss"] - r2["loss"]) < 1e-5
    assert one["steps"] == acc["steps"] == 3


class Crash(Exception):
    pass


def test_resume_after_a_crash_gives_the_identical_loss_curve(varied_data, tmp_path):
    # dropout on, eval on, several epochs: RNG, schedule, data position and optimizer all matter
    cfg = config(
        max_steps=7,
        batch_size=2,
        lora_dropout=0.1,
        warmup_steps=2,
        save_every=2,
        eval_fraction=0.2,
        eval_every=3,
        lr=5e-3,
    )
    train(cfg, varied_data, tmp_path / "straight")

    def crash_at_5(step: int) -> None:
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, varied_data, tmp_path / "crashed", progress=crash_at_5)
    assert (tmp_path / "crashed" / "checkpoints" / "step_4" / "state.pt").exists()
    resumed = train(cfg, varied_data, tmp_path / "crashed", resume=True)
    assert resumed["resumed_from_step"] == 4
    first = json.loads((tmp_path / "straight" / "summary.json").read_text())
    for key in ("first_loss", "final_loss", "first_eval_loss", "eval_loss", "trained_tokens"):
        assert resumed[key] == first[key], key
    straight, again = log_rows(tmp_path / "straight"), log_rows(tmp_path / "crashed")
    assert [r["step"] for r in again] == [r["step"] for r in straight]
    for a, b in zip(straight, again, strict=True):
        assert a.get("loss") == b.get("loss") and a.get("eval_loss") == b.get("eval_loss"), (a, b)
    a_w = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b_w = load_file(str(tmp_path / "crashed" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(a_w[k], b_w[k]) for k in a_w)


def test_checkpoint_state_loads_with_weights_only(small_data, tmp_path):
    train(config(max_steps=2, save_every=1), small_data, tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "step_1" / "state.pt", weights_only=True)
    assert state["step"] == 1 and state["data"]["batch"] == 1 and "optimizer" in state


def test_existing_run_is_not_overwritten_without_resume(small_data, tmp_path):
    train(config(max_steps=1), small_data, tmp_path)
    with pytest.raises(FileExistsError, match="resume=True"):
        train(config(max_steps=1), small_data, tmp_path)


def test_fp16_on_cpu_uses_loss_scaling_and_counts_overflow_skips(small_data, tmp_path):
    # a start scale of 2**40 overflows fp16 activations' gradients: steps are skipped and the scale drops
    summary = train(config(precision="fp16", max_steps=6, loss_scale_init=2.0**40), small_data, tmp_path)
    assert summary["precision"] == "fp16"
    assert summary["skipped_steps"] >= 1
    assert summary["loss_scale"] < 2.0**40
    rows = log_rows(tmp_path)
    assert any(r["skipped"] for r in rows) and all(r["loss_scale"] for r in rows)
    assert all(
        v.dtype == torch.float32
        for v in load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")).values()
    )


def test_bf16_autocast_trains_with_fp32_master_weights(small_data, tmp_path):
    summary = train(config(precision="bf16", max_steps=3, schedule="constant"), small_data, tmp_path)
    assert summary["precision"] == "bf16" and summary["skipped_steps"] == 0 and summary["loss_scale"] is None
    assert summary["final_loss"] < summary["first_loss"]


def test_auto_precision_is_fp32_on_cpu(small_data, tmp_path):
    assert train(config(max_steps=1), small_data, tmp_path)["precision"] == "fp32"


def test_gradient_checkpointing_does_not_change_the_losses(varied_data, tmp_path):
    train(config(max_steps=2), varied_data, tmp_path / "a")
    train(config(max_steps=2, grad_checkpointing=True), varied_data, tmp_path / "b")
    for a, b in zip(log_rows(tmp_path / "a"), log_rows(tmp_path / "b"), strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5


def test_merge_gives_a_plain_model_folder(small_data, tmp_path):
    x = torch.arange(40).unsqueeze(0)
    for method in ("lora", "ia3", "bitfit", "full"):
        out = tmp_path / method
        train(config(method=method, max_steps=3, lr=0.2 if method == "ia3" else 1e-2), small_data, out)
        merged = merge(
            TINY, out / ("model" if method == "full" else "adapter"), tmp_path / f"merged_{method}"
        )
        plain, tok = load_model(str(merged))
        trained, _ = load_trained(out)
        base, _ = load_model(TINY)
        with torch.no_grad():
            assert torch.allclose(plain(x).logits, trained(x).logits, atol=1e-4)
            assert not torch.allclose(plain(x).logits, base(x).logits, atol=1e-3)
        assert tok.chat_template
    out = tmp_path / "adapter"
    train(config(method="adapter", max_steps=1), small_data, out)
    with pytest.raises(MergeError, match="nonlinearity"):
        merge(TINY, out / "adapter", tmp_path / "merged_adapter")


def test_lora_output_has_a_base_view(small_data, tmp_path):
    train(config(max_steps=3), small_data, tmp_path)
    model, _ = load_trained(tmp_path)
    base, _ = load_model(TINY)
    x = torch.arange(40).unsqueeze(0)
    with torch.no_grad():
        tuned = model(x).logits
        with model.disable_adapter():
            assert torch.allclose(model(x).logits, base(x).logits, atol=1e-6)
    assert not torch.allclose(tuned, base(x).logits, atol=1e-3)


def test_bad_inputs_give_clear_errors(small_data, tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such model folder"):
        train(config(model="/nonexistent/model"), small_data, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(config(), tmp_path / "missing.parquet", tmp_path / "b")
    only_bad = tmp_path / "bad.parquet"
    write_records(
        only_bad,
        [
            Record(
                id="e", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]
            )
        ],
    )
    with pytest.raises(ValueError, match="empty_assistant_turn"):
        train(config(), only_bad, tmp_path / "c")


def test_rows_dropped_at_train_time_are_reported(tmp_path):
    recs = [chat(i, a) for i, a in enumerate(ANSWERS)]
    recs += [
        chat(10, "x" * 400),  # too long for seq_len 256
        Record(
            id="empty", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
        ),
        Record(id="noanswer", messages=[{"role": "user", "content": "hi"}]),
        Record(id="tool", messages=[{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]),
    ]
    data = tmp_path / "mixed.parquet"
    write_records(data, recs)
    summary = train(config(max_steps=1), data, tmp_path / "drop")
    assert summary["dropped_by_reason"] == {
        "too_long": 1,
        "empty_assistant_turn": 1,
        "no_assistant_turn": 1,
        "unknown_role": 1,
    }
    assert set(summary["dropped_ids"]) == {"c10", "empty", "noanswer", "tool"}
    dropped = [json.loads(ln) for ln in (tmp_path / "drop" / "dropped.jsonl").read_text().splitlines()]
    assert {d["id"] for d in dropped} == set(summary["dropped_ids"]) and all(d["reason"] for d in dropped)
    truncated = train(config(max_steps=1, too_long="truncate"), data, tmp_path / "trunc")
    assert truncated["truncated_ids"] == ["c10"] and "too_long" not in truncated["dropped_by_reason"]
    assert truncated["examples"] == summary["examples"] + 1


def test_model_without_chat_template_falls_back_to_chatml(small_data, tmp_path):
    model, tok = load_model(TINY)
    tok.chat_template = None
    folder = tmp_path / "no_template"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    summary = train(config(model=str(folder), max_steps=1), small_data, tmp_path / "out")
    assert summary["chat_template"].startswith("chatml-fallback")


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process_with_the_same_global_batch(varied_data, tmp_path):
    import shutil
    import socket
    import subprocess
    import sys

    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not installed")
    cfg = dict(model=TINY, max_steps=3, batch_size=1, seq_len=256, lr=1e-2, lora_dropout=0.0, packing=False)
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "-m",
        "training.sft",
        "--config",
        str(tmp_path / "c.json"),
        "--data",
        str(varied_data),
        "--out",
        str(tmp_path / "ddp"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    train(TrainConfig(**{**cfg, "batch_size": 2}), varied_data, tmp_path / "single")
    for a, b in zip(log_rows(tmp_path / "ddp"), log_rows(tmp_path / "single"), strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2


def test_resume_of_a_finished_run_returns_it_and_changed_settings_are_refused(small_data, tmp_path):
    first = train(config(max_steps=3, save_every=1), small_data, tmp_path)
    log_before = (tmp_path / "train_log.jsonl").read_text()
    assert train(config(max_steps=3, save_every=1), small_data, tmp_path, resume=True) == first
    assert (tmp_path / "train_log.jsonl").read_text() == log_before
    with pytest.raises(ValueError, match="lr"):
        train(config(max_steps=3, save_every=1, lr=0.5), small_data, tmp_path, resume=True)


def test_chunked_output_loss_matches_the_plain_one(varied_data, monkeypatch):
    import training.sft as sft

    model, tok = load_model(TINY)
    model, _ = apply_method(model, config(method="full"))
    examples = load_examples(varied_data, tok, seq_len=256)
    batch = collate(examples, [[i] for i in range(len(examples))], tok.pad_token_id)
    results = []
    for above, chunk in ((2**40, 2**25), (1, 259 * 7)):  # never chunk / chunks of 7 positions
        monkeypatch.setattr(sft, "CHUNKED_LOSS_ABOVE", above)
        monkeypatch.setattr(sft, "LOSS_CHUNK_ELEMENTS", chunk)
        model.zero_grad()
        total, n = loss_sum(model, batch, _head_and_decoder(model))
        (total / n).backward()
        results.append((float(total.detach()), grads_of(model)))
    assert abs(results[0][0] - results[1][0]) < 1e-3
    for name, g in results[0][1].items():
        assert torch.allclose(results[1][1][name], g, atol=1e-5, rtol=1e-4), name


def test_auto_precision_picks_bf16_or_fp16_with_scaling_by_gpu(monkeypatch):
    from training.sft import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. V100, T4
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.parametrize("method", ["lora", "bitfit"])
def test_a_crash_while_saving_never_leaves_weights_that_look_complete(small_data, tmp_path, method):
    """Killed after the final weights are written but before they are published: no adapter/ at all
    (and no summary.json); the resumed run publishes a complete one and cleans up the temp folder."""
    import subprocess
    import sys

    out = tmp_path / "out"
    cfg = config(method=method, max_steps=2).model_dump_json()
    code = ("import sys\nfrom training.config import TrainConfig\nfrom training.sft import train\n"
            "train(TrainConfig.model_validate_json(sys.argv[1]), sys.argv[2], sys.argv[3], resume=True)\n")
    env = {**os.environ, "SFTFLOW_CRASH_AFTER": "train:weights"}
    killed = subprocess.run([sys.executable, "-c", code, cfg, str(small_data), str(out)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert not (out / "adapter").exists() and not (out / "summary.json").exists()
    assert list(out.glob(".adapter.*.tmp"))  # the half-published folder, under a hidden temp name
    summary = train(config(method=method, max_steps=2), small_data, out, resume=True)
    assert summary["weights"] == "adapter" and (out / "adapter" / "tokenizer_config.json").exists()
    assert not list(out.glob(".adapter.*.tmp"))
    model, _ = load_trained(out)  # complete: it loads


def test_a_second_training_into_the_same_folder_is_refused(small_data, tmp_path):
    from curation.io import FolderInUse, folder_lock

    with folder_lock(tmp_path / "out"):  # (re-entrant in this process, so hold it from a thread's view)
        pass
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom curation.io import folder_lock\n"
                               "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n",
                               str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse):
            train(config(max_steps=1), small_data, tmp_path / "out")
    finally:
        holder.kill()
        holder.wait(timeout=30)
