#!/usr/bin/env bash
# One prepared GPU check for the SFT loop (run from the repo root on a CUDA box):
#   1. the training tests on the GPU-capable install (CPU tests, fast),
#   2. LoRA on SmolLM2-135M with bf16 autocast and with fp16 + dynamic loss scaling: tokens/s, MFU
#      (6 * N * tokens / s / peak, N = all parameters), peak CUDA memory, loss scale, skipped steps,
#   3. the fp32 throughput bench against TRL's SFTTrainer.
# Usage: bash bench/gpu_check.sh [OUT_DIR]     (PYTHON=... to pick the interpreter; STEPS=30 by default)
set -euo pipefail
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
OUT="${1:-${OUT:-/tmp/sftflow_gpu_check}}"
STEPS="${STEPS:-30}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| bf16:", torch.cuda.is_bf16_supported())
EOF

echo "== 1. training tests"
"$PY" -m pytest tests/training -q -x -p no:cacheprovider 2>&1 | tail -3

echo "== 2. LoRA on SmolLM2-135M, bf16 and fp16 + loss scaling ($STEPS steps)"
STEPS="$STEPS" OUT="$OUT" "$PY" - <<'EOF'
import json, os, sys
from pathlib import Path
sys.path.insert(0, ".")
from bench.sft_bench import dolly_records
from training.config import TrainConfig
from training.sft import train

out = Path(os.environ["OUT"])
data = dolly_records(2000, out / "dolly.parquet")
rows = []
for precision in ("bf16", "fp16", "auto"):
    cfg = TrainConfig(model="smollm2-135m-instruct", method="lora", precision=precision,
                      max_steps=int(os.environ["STEPS"]), batch_size=16, seq_len=1024, packing=True,
                      too_long="truncate", lr=2e-4, warmup_steps=3, eval_fraction=0.05, eval_every=0)
    s = train(cfg, data, out / f"lora_{precision}")
    rows.append(s)
    print(json.dumps({k: s[k] for k in ("precision", "tokens_per_s_after_first_step", "mfu", "peak_memory_bytes",
                                        "first_loss", "final_loss", "eval_loss", "loss_scale", "skipped_steps",
                                        "padding_waste_percent")}))
print("| precision | tokens/s | MFU (6N) | peak GiB | loss first->last | eval loss | loss scale | skipped |")
print("|---|---|---|---|---|---|---|---|")
for s in rows:
    mfu = f"{100 * s['mfu']:.1f}%" if s["mfu"] is not None else "n/a"
    print(f"| {s['precision']} | {s['tokens_per_s_after_first_step']:.0f} | {mfu} | "
          f"{s['peak_memory_bytes'] / 2**30:.2f} | {s['first_loss']:.3f}->{s['final_loss']:.3f} | "
          f"{s['eval_loss']:.3f} | {s['loss_scale']} | {s['skipped_steps']} |")
print("formula:", rows[0]["flop_formula"])
EOF

echo "== 3. fp32 LoRA throughput vs TRL SFTTrainer"
"$PY" bench/sft_bench.py --models smollm2-135m-instruct --steps 8 --batch 8 --seq-len 1024 2>&1 | tail -5
