"""Supervised fine-tuning: one readable recipe (setup, step, loop, summary), no Trainer.

Reading order (torchtune's recipe shape): :func:`setup` builds everything — precision, model,
method, data, optimizer, schedule, the newest checkpoint on resume — into one :class:`Run`;
:func:`train_step` is one optimizer step (``grad_accum`` micro-batches, loss normalised by the number
of trained tokens in the whole step, so accumulation and packing do not change the loss; unscale +
clip, step, schedule); :func:`train` is the loop (step, log, eval, checkpoint, progress), then the
final weights and :func:`summarize`.

Loss: next-token cross-entropy on assistant tokens only (see :mod:`training.data`). For plain
Llama-style heads the output layer runs on the trained positions only (prompt and padding positions
never reach the vocabulary projection), in recomputed chunks when the logits would be large.

Precision: ``fp32``; ``bf16`` = autocast to bf16; ``fp16`` = autocast to fp16 with dynamic loss
scaling (``torch.amp.GradScaler``). Trainable weights are always fp32 (master weights); for the
parameter-efficient methods the frozen base is held in the compute dtype to halve its memory.
``auto`` picks bf16 on GPUs that have it, fp16 + scaling on older GPUs, fp32 on CPU.

Outputs in ``out_dir``: the weights (``adapter/`` or ``model/``, published atomically), the config,
``summary.json`` (last), the log, dropped examples and checkpoints — their formats, and how merge
and eval read them, are :mod:`training.artifacts`'. ``resume=True`` continues from the newest
checkpoint; a finished run is returned as it is, so a retried task does not train twice.

Multi-GPU: ``torchrun --nproc_per_node N -m training.sft --config c.json --data d.parquet --out o``
(or ``accelerate launch -m training.sft ...``): the loop wraps the model in DistributedDataParallel,
gives each rank its share of every batch (``batch_size`` is per rank), normalises the loss by the
trained tokens of all ranks, and writes from rank 0 only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from curation.errors import MissingFileError, SftflowError
from curation.io import atomic_path, folder_lock, read_json, write_json
from curation.rundir import TrainDir
from training import artifacts
from training.config import TrainConfig
from training.data import IGNORE, BatchPlan, TokenizedExamples, collate, load_examples, split_eval
from training.methods import apply_method
from training.models import CHATML_TEMPLATE, load_model

logger = logging.getLogger(__name__)

# Architectures whose logits are exactly ``lm_head(final hidden state)`` (no soft-capping or scaling):
# for them the output layer is applied to the trained positions only, which skips most of its cost.
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "olmo2", "gemma"}

# Dense peak FLOP/s per GPU and dtype, for MFU (vendor datasheets, without sparsity).
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
    "T4": {"fp16": 65e12, "fp32": 8.1e12},
}
FLOP_FORMULA = "6 * total_params * tokens (forward 2N + backward 4N per token; attention FLOPs ignored)"

NON_RESUME_FIELDS = {
    "max_steps",
    "save_every",
    "keep_checkpoints",
    "log_every",
    "eval_every",
    "eval_max_batches",
}


# --------------------------------------------------------------------------------------------------
# setup helpers


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 / fp16 / fp32 for this device; the explicit ones unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


COMPUTE_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun/accelerate."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def _chat_template_source(name: str, trust_remote_code: bool) -> str:
    from transformers import AutoTokenizer

    from training.models import resolve_model

    try:
        raw = AutoTokenizer.from_pretrained(resolve_model(name), trust_remote_code=trust_remote_code)
        own = getattr(raw, "chat_template", None)
    except Exception:  # the caller already loaded it once; this only labels where the template came from
        own = None
    if own and own != CHATML_TEMPLATE:
        return "model"
    return "chatml" if own else "chatml-fallback (the tokenizer has no chat template)"


def _lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:  # ``step`` = optimizer steps taken so far
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        if config.schedule == "constant":
            return 1.0
        span = max(1, config.max_steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1 - progress
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * shape

    return factor


def _head_and_decoder(model: torch.nn.Module) -> tuple[Any, Any] | None:
    """(decoder, output layer) when the loss may skip untrained positions, else None."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(inner.config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    if getattr(inner.config, "final_logit_softcapping", None) or getattr(inner.config, "logit_scale", None):
        return None
    return inner.get_decoder(), inner.get_output_embeddings()


# Above this many logits (trained positions x vocabulary) the output layer + loss run in chunks whose
# logits are recomputed in the backward pass instead of kept: e.g. 16k positions x 152k vocab in fp32
# would otherwise hold ~10 GB.
CHUNKED_LOSS_ABOVE = 2**27
LOSS_CHUNK_ELEMENTS = 2**25


def _head_loss(output_layer, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output_layer(hidden).float(), targets, reduction="sum")


def chunked_head_loss(output_layer, hidden: torch.Tensor, targets: torch.Tensor, vocab: int) -> torch.Tensor:
    """Summed cross-entropy of ``output_layer(hidden)``, without holding all logits at once if they are many."""
    if hidden.shape[0] * vocab <= CHUNKED_LOSS_ABOVE:
        return _head_loss(output_layer, hidden, targets)
    rows = max(1, LOSS_CHUNK_ELEMENTS // vocab)
    total = hidden.new_zeros((), dtype=torch.float32)
    for h, t in zip(hidden.split(rows), targets.split(rows), strict=True):
        if torch.is_grad_enabled():
            total = total + torch.utils.checkpoint.checkpoint(
                _head_loss, output_layer, h, t, use_reentrant=False
            )
        else:
            total = total + _head_loss(output_layer, h, t)
    return total


def loss_sum(model, batch: dict, head: tuple[Any, Any] | None) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the trained tokens of a batch, and their count."""
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"]
    if head is not None:
        decoder, output_layer = head
        hidden = decoder(**inputs).last_hidden_state[:, :-1][keep]
        vocab = getattr(output_layer, "out_features", None) or output_layer.weight.shape[0]
        total = chunked_head_loss(output_layer, hidden, targets[keep], vocab)
    else:
        logits = model(**inputs).logits[:, :-1][keep]
        total = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
    return total, int(keep.sum())


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device),
            "peak_memory_kind": "cuda allocated",
        }
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_bytes": rss_kib * 1024, "peak_memory_kind": "process peak RSS (CPU)"}


def _mfu(device: torch.device, precision: str, total_params: int, tokens_per_s: float) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for gpu, peaks in PEAK_FLOPS.items():
        if gpu in name and precision in peaks:
            return 6 * total_params * tokens_per_s / peaks[precision]
    return None


# --------------------------------------------------------------------------------------------------
# the training log


class _Log:
    """``train_log.jsonl`` (+ TensorBoard when installed); on resume, rows after the checkpoint go."""

    def __init__(self, out: TrainDir, resume_step: int | None, enabled: bool):
        self.path = out.log
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        kept = []
        if resume_step is not None and self.path.exists():
            kept = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln and json.loads(ln)["step"] <= resume_step
            ]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out.tensorboard), purge_step=(resume_step or 0) + 1)
        except ImportError:  # tensorboard is optional
            pass

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        # opened per row: a crash (or an exception from ``progress``) never leaves a handle or a lost row
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, row["step"])

    def rows(self) -> list[dict]:
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln]

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# --------------------------------------------------------------------------------------------------
# the recipe: setup, one step, the loop, the summary


class TrainingError(SftflowError, ValueError):
    """Training cannot start as asked (no usable example, changed settings on resume)."""


class RunExistsError(SftflowError, FileExistsError):
    """The output folder already holds a training run and ``resume`` was not asked for."""


@dataclass
class Run:
    """Everything :func:`setup` builds and the loop updates (one object instead of forty locals)."""

    config: TrainConfig
    data: Path
    out: TrainDir
    rank: int
    world: int
    device: torch.device
    precision: str
    model: Any
    tok: Any
    examples: TokenizedExamples
    train_idx: list[int]
    eval_idx: list[int]
    plan: BatchPlan
    eval_plan: BatchPlan | None
    method_info: dict
    head: tuple[Any, Any] | None
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    autocast: Any
    log: _Log
    pad_id: int
    pad_to: int | None
    setup_s: float
    start_step: int = 0
    trained_tokens: int = 0
    skipped: int = 0
    losses: list[float] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    step_cpu_times: list[float] = field(default_factory=list)  # process CPU s: fairer on a shared CPU
    step_tokens: list[int] = field(default_factory=list)
    tokens_seen: int = 0  # this session's, for throughput and padding waste
    row_tokens: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(config: TrainConfig, data: str | Path, out_dir: str | Path, resume: bool = False) -> Run | dict:
    """Precision, model, method, data, optimizer, schedule and (with ``resume``) the newest checkpoint.

    Returns the finished run's summary instead when ``out_dir`` already holds this exact run completed
    (a retried task does not train twice).
    """
    t_setup = time.perf_counter()
    out = TrainDir(Path(out_dir))
    data = Path(data)
    if not data.exists():
        raise MissingFileError(f"training data {data} does not exist")
    rank, world, local_rank = _distributed()
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(config.precision, device)
    compute_dtype = COMPUTE_DTYPE[precision]

    ckpts = artifacts.checkpoints(out) if resume else []
    if resume and artifacts.finished(out, config):
        return read_json(out.summary)
    if not resume and (out.log.exists() or out.checkpoints.exists()):
        raise RunExistsError(f"{out.root} already holds a training run: pass resume=True (--resume) or use another "
                             "folder")
    if resume and out.config.exists():
        before = read_json(out.config)
        now = config.model_dump(mode="json")
        changed = sorted(k for k in now if k not in NON_RESUME_FIELDS and before.get(k) != now[k])
        if changed and ckpts:
            raise TrainingError(f"resume: {out.root} was trained with different settings for {changed}")
    if rank == 0:
        out.root.mkdir(parents=True, exist_ok=True)
        out.summary.unlink(missing_ok=True)  # present only once this run completes
        write_json(out.config, config.model_dump(mode="json"))

    torch.manual_seed(config.seed)
    # The frozen base of the parameter-efficient methods is held in the compute dtype (memory);
    # full fine-tuning keeps fp32 master weights and autocasts.
    base_dtype = torch.float32 if config.method == "full" else compute_dtype
    model, tok = load_model(config.model, dtype=base_dtype, device=device, trust_remote_code=config.trust_remote_code)
    model.config.use_cache = False
    if config.attn_implementation:
        model.set_attn_implementation(config.attn_implementation)

    examples = load_examples(data, tok, seq_len=config.seq_len, too_long=config.too_long)
    if len(examples) == 0:
        reasons = Counter(d.reason for d in examples.dropped)
        raise TrainingError(f"{data}: no example left to train on (dropped: {dict(reasons) or 'file is empty'})")
    train_idx, eval_idx = split_eval(examples, config.eval_fraction, config.seed)
    plan = BatchPlan(examples, train_idx, batch_size=config.batch_size * world, seq_len=config.seq_len,
                     packing=config.packing, seed=config.seed)
    eval_plan = (
        BatchPlan(examples, eval_idx, batch_size=config.batch_size, seq_len=config.seq_len, packing=config.packing,
                  seed=config.seed, shuffle=False)
        if eval_idx
        else None
    )
    if len(plan.rows) < world:
        raise TrainingError(f"{data}: {len(plan.rows)} training rows cannot feed {world} ranks")

    model, method_info = apply_method(model, config)
    logger.info(
        "%s on %s, %s: %d of %d parameters train (%.3f%%); %d examples (%d held out), %d dropped %s",
        config.method, device, precision, method_info["trainable_params"], method_info["total_params"],
        method_info["trainable_percent"], len(examples), len(eval_idx), len(examples.dropped),
        dict(Counter(d.reason for d in examples.dropped)),
    )
    if config.grad_checkpointing:
        # non-reentrant checkpointing: works with frozen inputs (peft) without extra hooks
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    head = _head_and_decoder(model) if world == 1 else None  # DDP needs its own forward to sync grads
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None
        )

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    scaler = torch.amp.GradScaler(device.type, init_scale=config.loss_scale_init, enabled=precision == "fp16")
    autocast = torch.autocast(device.type, dtype=compute_dtype) if precision != "fp32" else nullcontext()

    start_step = trained_tokens = skipped = 0
    if ckpts:
        restored = artifacts.load_checkpoint(ckpts[-1], model, optimizer, scheduler, scaler, device)
        plan.load_state(restored["data"])
        start_step, trained_tokens, skipped = restored["step"], restored["trained_tokens"], restored["skipped"]
    log = _Log(out, start_step if ckpts else None, enabled=rank == 0)
    if rank == 0 and examples.dropped:
        with atomic_path(out.dropped) as tmp:
            tmp.write_text("".join(json.dumps(d.__dict__) + "\n" for d in examples.dropped))

    run = Run(
        config=config, data=data, out=out, rank=rank, world=world, device=device, precision=precision, model=model,
        tok=tok, examples=examples, train_idx=train_idx, eval_idx=eval_idx, plan=plan, eval_plan=eval_plan,
        method_info=method_info, head=head, params=params, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        autocast=autocast, log=log, pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
        pad_to=config.seq_len if config.packing else None, setup_s=time.perf_counter() - t_setup,
        start_step=start_step, trained_tokens=trained_tokens, skipped=skipped,
    )
    if ckpts and rank == 0:  # the curve so far, so the summary covers the whole run
        for row in log.rows():
            if "loss" in row:
                run.losses.append(row["loss"])
            if "eval_loss" in row:
                run.eval_losses.append((row["step"], row["eval_loss"]))
    return run


def train_step(run: Run) -> dict:
    """One optimizer step: ``grad_accum`` micro-batches, loss normalised by the trained tokens of the whole
    step (across ranks), unscale + clip, step, schedule. Returns the step's log row (without ``step``)."""
    config, world = run.config, run.world
    t0, cpu0 = time.perf_counter(), time.process_time()
    micro = []
    for _ in range(config.grad_accum):
        rows = run.plan.next_rows()
        while len(rows) < world:  # an epoch's short tail cannot feed every rank: skip it
            rows = run.plan.next_rows()
        micro.append(collate(run.examples, rows[run.rank :: world], run.pad_id, run.pad_to))
    step_trained = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro)
    if world > 1:  # normalise by the trained tokens of the whole step, across ranks
        count = torch.tensor(step_trained, device=run.device)
        torch.distributed.all_reduce(count)
        step_trained = int(count)
    step_loss = 0.0
    for i, batch in enumerate(micro):
        batch = _to(batch, run.device)
        sync = nullcontext() if world == 1 or i == len(micro) - 1 else run.model.no_sync()
        with sync:
            with run.autocast:
                total, _ = loss_sum(run.model, batch, run.head)
            # DDP averages gradients over ranks; the loss is already a global mean, so undo that.
            run.scaler.scale(total * world / max(step_trained, 1)).backward()
        step_loss += float(total.detach()) / max(step_trained, 1)
        run.tokens_seen += batch["real_tokens"]
        run.row_tokens += batch["input_ids"].numel()
    run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, config.max_grad_norm or float("inf"))
    scale_before = run.scaler.get_scale()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    skipped = run.scaler.is_enabled() and run.scaler.get_scale() < scale_before  # overflow: step skipped
    run.skipped += int(skipped)
    # after a skipped (overflow) step torch warns that the schedule moved first: expected here
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    run.step_times.append(time.perf_counter() - t0)
    run.step_cpu_times.append(time.process_time() - cpu0)
    run.step_tokens.append(sum(b["real_tokens"] for b in micro))
    if world > 1:
        loss_t = torch.tensor(step_loss, device=run.device)
        torch.distributed.all_reduce(loss_t)
        step_loss = float(loss_t)
    run.losses.append(step_loss)
    run.trained_tokens += step_trained
    return {
        "loss": step_loss,
        "lr": run.scheduler.get_last_lr()[0],
        "grad_norm": float(grad_norm),
        "trained_tokens": step_trained,
        "tokens_per_s": run.step_tokens[-1] * world / run.step_times[-1],
        "loss_scale": run.scaler.get_scale() if run.scaler.is_enabled() else None,
        "skipped": bool(skipped),
        "epoch": run.plan.epoch,
    }


def eval_step(run: Run, step: int) -> None:
    """The held-out loss now (when there is a held-out split), logged at ``step``."""
    if run.eval_plan is None:
        return
    value = evaluate(run.model, run.examples, run.eval_plan, run.head, run.pad_id, run.pad_to, run.device,
                     run.autocast, run.config.eval_max_batches)
    run.eval_losses.append((step, value))
    run.log.write({"step": step, "eval_loss": value})


def train(
    config: TrainConfig,
    data: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Fine-tune ``config.model`` on a records parquet; write weights, logs and a summary to ``out_dir``.

    ``resume=True`` continues from the newest checkpoint in ``out_dir`` (from scratch when there is
    none), giving the same loss curve as an uninterrupted run. Without it, ``out_dir`` must not hold a
    previous run. ``progress(step)`` is called after every optimizer step. Returns the summary dict.
    The folder is held (:func:`curation.io.folder_lock`, by rank 0 — the one that writes) while
    training: a second run into it is refused.
    """
    with folder_lock(out_dir) if _distributed()[0] == 0 else nullcontext():
        run = setup(config, data, out_dir, resume)
        if isinstance(run, dict):
            return run  # this exact run already completed
        if run.start_step == 0:
            eval_step(run, 0)  # the base model's held-out loss, the reference for the curve
        run.model.train()
        for step in range(run.start_step + 1, config.max_steps + 1):
            row = train_step(run)
            if step % config.log_every == 0 or step == config.max_steps:
                run.log.write({"step": step, **row})
            if config.eval_every and step % config.eval_every == 0 and step != config.max_steps:
                eval_step(run, step)
            if config.save_every and step % config.save_every == 0 and step != config.max_steps and run.is_main:
                artifacts.save_checkpoint(run.out, step, run.model, run.optimizer, run.scheduler, run.scaler,
                                          run.plan.state(), config.keep_checkpoints,
                                          {"trained_tokens": run.trained_tokens, "skipped": run.skipped})
            if progress is not None:
                progress(step)
        eval_step(run, config.max_steps)
        run.log.close()
        weights = artifacts.save_final(run.out, run.model, run.tok, config, run.method_info) if run.is_main else None
        result = summarize(run, weights)
        if run.is_main:
            write_json(run.out.summary, result)  # last: the run is complete
        return result


def summarize(run: Run, weights: Path | None) -> dict:
    """``summary.json``: what was trained, how fast, the loss curve's ends, what was dropped."""
    config, world, device = run.config, run.world, run.device
    train_time = sum(run.step_times)
    tokens_per_s = run.tokens_seen * world / train_time if train_time else 0.0
    examples, info = run.examples, run.method_info
    return {
        "model": config.model,
        "method": config.method,
        "precision": run.precision,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "world_size": world,
        "weights": str(weights.relative_to(run.out.root)) if weights else None,
        "steps": config.max_steps,
        "resumed_from_step": run.start_step or None,
        "first_loss": run.losses[0] if run.losses else None,
        "final_loss": run.losses[-1] if run.losses else None,
        "first_eval_loss": run.eval_losses[0][1] if run.eval_losses else None,
        "eval_loss": run.eval_losses[-1][1] if run.eval_losses else None,
        "trainable_params": info["trainable_params"],
        "total_params": info["total_params"],
        "trainable_percent": info["trainable_percent"],
        "method_detail": {k: v for k, v in info.items() if k not in ("method",)},
        "tokens_per_s": tokens_per_s,
        # the first step pays one-off costs (allocator warm-up, kernel selection)
        "tokens_per_s_after_first_step": (
            sum(run.step_tokens[1:]) * world / sum(run.step_times[1:]) if len(run.step_times) > 1 else None
        ),
        "tokens_per_cpu_s_after_first_step": (
            sum(run.step_tokens[1:]) / sum(run.step_cpu_times[1:]) if len(run.step_times) > 1 else None
        ),
        "train_tokens": run.tokens_seen * world,
        "trained_tokens": run.trained_tokens,
        "padding_waste_percent": 100 * (1 - run.tokens_seen / run.row_tokens) if run.row_tokens else 0.0,
        "train_time_s": train_time,
        "setup_time_s": run.setup_s,
        "skipped_steps": run.skipped,
        "loss_scale": run.scaler.get_scale() if run.scaler.is_enabled() else None,
        "mfu": _mfu(device, run.precision, info["total_params"], tokens_per_s),
        "flop_formula": FLOP_FORMULA,
        **_peak_memory(device),
        "chat_template": _chat_template_source(config.model, config.trust_remote_code),
        "examples": len(examples),
        "train_examples": len(run.train_idx),
        "eval_examples": len(run.eval_idx),
        "packed_rows": len(run.plan.rows) if config.packing else None,
        "dropped": len(examples.dropped),
        "dropped_by_reason": dict(Counter(d.reason for d in examples.dropped)),
        "dropped_ids": [d.id for d in examples.dropped[:200]],
        "truncated": len(examples.truncated),
        "truncated_ids": examples.truncated[:200],
        "too_long": config.too_long,
        "tensorboard": bool(run.is_main and run.log.tb is not None),
    }


@torch.no_grad()
def evaluate(
    model,
    examples: TokenizedExamples,
    plan: BatchPlan,
    head,
    pad_id: int,
    pad_to: int | None,
    device: torch.device,
    autocast=None,
    max_batches: int = 50,
) -> float:
    """Mean next-token loss over the trained tokens of ``plan`` (one pass, fixed order)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b, rows in enumerate(plan.one_pass()):
        if b >= max_batches:
            break
        with autocast or nullcontext():
            s, n = loss_sum(model, _to(collate(examples, rows, pad_id, pad_to), device), head)
        total, count = total + float(s), count + n
    model.train(was_training)
    return total / max(count, 1)


def main(argv: list[str] | None = None) -> None:
    """``python -m training.sft --config c.json|yaml --data d.parquet --out o [--resume]`` (torchrun-able)."""
    import argparse

    import yaml

    ap = argparse.ArgumentParser(description="sftflow SFT (one process per GPU under torchrun/accelerate)")
    ap.add_argument("--config", required=True, help="TrainConfig as JSON or YAML")
    ap.add_argument("--data", required=True, help="records parquet")
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    raw = yaml.safe_load(Path(args.config).read_text())
    from curation.memory import tune_allocator

    tune_allocator()  # big freed buffers go back to the OS (see curation/memory.py)
    summary = train(TrainConfig.model_validate(raw), args.data, args.out, resume=args.resume)
    if _distributed()[0] == 0:
        print(json.dumps(summary, indent=2))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
