"""SFT throughput: sftflow's loop vs TRL's ``SFTTrainer``, same model, data, LoRA and fp32, one run.

Both train LoRA (r=16, alpha=32, dropout 0.05, all linear layers) for a few steps on the same Dolly
conversations (``shared/data/dolly_hhrlhf_sample``), fp32, no gradient checkpointing, ``max_length``
= ``--seq-len`` with truncation, ``--batch`` rows per step. TRL runs its defaults otherwise (no
packing: every batch padded to its longest example); sftflow packs (no padding waste) and applies the
output layer to trained positions only. Throughput = real (non-padding) tokens / time inside the
optimizer steps, the first step left out (warm-up) for both.

    python bench/sft_bench.py                      # tiny model + SmolLM2-135M, CPU, 4 x 256, 3 steps
    python bench/sft_bench.py --models smollm2-135m-instruct --seq-len 512

Memory: fp32 without checkpointing holds ~3 GB of activations per 1k tokens for SmolLM2 on CPU
(batch 8 x 512 needs ~12 GB per trainer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from curation.ingest import IngestConfig, row_to_record  # noqa: E402
from curation.io import read_records, write_records  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.models import load_model  # noqa: E402
from training.sft import train  # noqa: E402

DOLLY = Path(os.environ.get("SFTFLOW_DATA_DIR", REPO.parent / "shared" / "data")) / "dolly_hhrlhf_sample"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}


def dolly_records(n: int, path: Path) -> Path:
    """The first ``n`` Dolly rows as records (the repo's demo instructions when Dolly is not beside it)."""
    found = sorted(DOLLY.glob("*.jsonl"))
    source = found[0] if found else REPO / "data" / "demo" / "instructions_en.jsonl"
    print(f"bench data: {source}", file=sys.stderr)
    recs = []
    with open(source) as fh:
        for line_no, line in enumerate(fh, 1):
            rec, _ = row_to_record(json.loads(line), str(source), line_no, IngestConfig())
            recs.append(rec)
            if len(recs) == n:
                break
    write_records(path, recs)
    return path


def run_sftflow(model: str, data: Path, out: Path, *, steps: int, batch: int, seq_len: int) -> dict:
    config = TrainConfig(
        model=model,
        method="lora",
        precision="fp32",
        max_steps=steps,
        batch_size=batch,
        seq_len=seq_len,
        packing=True,
        too_long="truncate",
        lora_r=LORA["r"],
        lora_alpha=LORA["lora_alpha"],
        lora_dropout=LORA["lora_dropout"],
        target_modules="all-linear",
        lr=2e-4,
        grad_checkpointing=False,
    )
    s = train(config, data, out)
    return {
        "tokens_per_s": s["tokens_per_s_after_first_step"],
        "tokens_per_cpu_s": s["tokens_per_cpu_s_after_first_step"],
        "padding_waste_percent": s["padding_waste_percent"],
        "step_s": s["train_time_s"] / steps,
        "final_loss": s["final_loss"],
    }


def run_trl(model_name: str, data: Path, out: Path, *, steps: int, batch: int, seq_len: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    model, tok = load_model(model_name, dtype=torch.float32)
    dataset = Dataset.from_list([{"messages": r.messages} for r in read_records(data)])

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.cpu_times: list[float] = []
            self._t0 = self._cpu0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t0, self._cpu0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t0)
            self.cpu_times.append(time.process_time() - self._cpu0)

    timer = StepTimer()
    args = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        learning_rate=2e-4,
        max_length=seq_len,
        packing=False,
        bf16=False,  # SFTConfig defaults to bf16=True and gradient checkpointing on: fp32 like ours
        fp16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
        callbacks=[timer],
    )
    trainer.train()
    # TRL counts real tokens per step (attention-mask sum) in its cumulative num_tokens metric
    cumulative = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    per_step = [b - a for a, b in zip([0, *cumulative[:-1]], cumulative, strict=True)]
    seen = sum(per_step[1:])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "tokens_per_s": seen / sum(timer.times[1:]),
        "tokens_per_cpu_s": seen / sum(timer.cpu_times[1:]),
        "padding_waste_percent": None,
        "step_s": sum(timer.times) / steps,
        "final_loss": losses[-1] if losses else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny-random-llama", "smollm2-135m-instruct"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--examples", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = dolly_records(args.examples, tmp / "dolly.parquet")
        for model in args.models:
            seq_len = args.seq_len if model != "tiny-random-llama" else 1024  # byte tokens: longer
            kw = {"steps": args.steps, "batch": args.batch, "seq_len": seq_len}
            ours = run_sftflow(model, data, tmp / f"ours_{model}", **kw)
            peer = run_trl(model, data, tmp / f"trl_{model}", **kw)
            rows.append((model, seq_len, ours, peer))
            print(f"{model}: sftflow {ours}, TRL {peer}", flush=True)  # survives a later crash

    device = "cuda" if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads"
    load = os.getloadavg()[0]
    print(
        f"\nSFT LoRA throughput, fp32, {device}, batch {args.batch}, {args.steps} steps (first excluded), "
        f"load average {load:.1f}"
    )
    print("Wall-clock tok/s is what a user sees; tok per CPU-second is steadier when the machine is shared.")
    print(
        "| model | seq_len | sftflow tok/s | TRL tok/s | speed-up | sftflow tok/CPU-s | TRL tok/CPU-s | "
        "speed-up (CPU time) | sftflow padding waste |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model, seq_len, ours, peer in rows:
        print(
            f"| {model} | {seq_len} | {ours['tokens_per_s']:.0f} | {peer['tokens_per_s']:.0f} | "
            f"{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x | {ours['tokens_per_cpu_s']:.0f} | "
            f"{peer['tokens_per_cpu_s']:.0f} | {ours['tokens_per_cpu_s'] / peer['tokens_per_cpu_s']:.2f}x | "
            f"{ours['padding_waste_percent']:.1f}% |"
        )


if __name__ == "__main__":
    main()
