"""What training writes, and how everything else reads it: the one owner of the training folder's formats.

A training folder (:class:`curation.rundir.TrainDir`) holds:

- ``adapter/`` (lora, ia3): peft ``save_pretrained`` (``adapter_model.safetensors``) + tokenizer.
- ``adapter/`` (bitfit, adapter): ``trainable.safetensors`` (the biases / bottleneck weights only)
  + ``sftflow_delta.json`` + tokenizer; :func:`training.merge.merge` folds bitfit into a plain model.
- ``model/`` (full): the whole model, ``save_pretrained`` safetensors + tokenizer.
- ``train_config.json`` (the :class:`TrainConfig`), ``summary.json`` (written last: the run is
  complete), ``train_log.jsonl`` (one row per step, plus eval rows), ``dropped.jsonl`` (examples not
  trained on, with reasons), ``tensorboard/`` (when installed).
- ``checkpoints/step_N/``: ``trainable.safetensors`` + ``state.pt`` (optimizer, schedule, loss
  scaler, RNG, data position and counters; tensors and plain values only, loaded with
  ``weights_only=True``).

The final weights and every checkpoint are published atomically (:func:`curation.io.atomic_dir`):
written to a hidden temp folder and renamed into place, so a crash never leaves a half-written
``adapter/`` that looks complete. ``merge`` and ``eval`` read a training folder only through
:func:`load_trained` / :func:`attach_trained` / :func:`weights_kind`.

torch, transformers and peft are imported inside the functions: reading a summary needs none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curation.errors import SftflowError
from curation.io import atomic_dir, read_json, write_json
from curation.rundir import TrainDir
from curation.stage import crash_point
from training.config import TrainConfig

#: names inside a weights folder
TRAINABLE = "trainable.safetensors"
DELTA = "sftflow_delta.json"
STATE = "state.pt"


class NotATrainingOutput(SftflowError, FileNotFoundError):
    """A folder given as a training output that is not one."""


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    import torch

    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------------------------------------
# writing


def weights_dir(out: TrainDir, method: str) -> Path:
    """Where the final weights of ``method`` go: ``model/`` for full fine-tuning, else ``adapter/``."""
    return out.model if method == "full" else out.adapter


def save_final(out: TrainDir, model, tok, config: TrainConfig, method_info: dict) -> Path:
    """Write the trained weights + tokenizer (see the module docstring), published atomically; returns the folder."""
    from training.methods import PEFT_METHODS, trainable_state

    model = unwrap(model)
    target = weights_dir(out, config.method)
    with atomic_dir(target) as tmp:
        if config.method in PEFT_METHODS or config.method == "full":
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            from safetensors.torch import save_file

            save_file({k: v.cpu() for k, v in trainable_state(model).items()}, str(tmp / TRAINABLE))
            write_json(tmp / DELTA, {"base": config.model, **method_info})
        tok.save_pretrained(tmp)
        crash_point("train", "weights")
    return target


def save_checkpoint(out: TrainDir, step: int, model, optimizer, scheduler, scaler, data_state: dict, keep: int,
                    counters: dict) -> Path:
    """``checkpoints/step_N`` (published atomically), keeping the newest ``keep``."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from training.methods import trainable_state

    final = out.checkpoints / f"step_{step}"
    with atomic_dir(final) as tmp:
        save_file({k: v.cpu() for k, v in trainable_state(unwrap(model)).items()}, str(tmp / TRAINABLE))
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "data": data_state,
            "counters": counters,
        }
        torch.save(state, tmp / STATE)
    for old in checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(out: TrainDir) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in out.checkpoints.glob("step_*") if (p / STATE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def load_checkpoint(ckpt: Path, model, optimizer, scheduler, scaler, device) -> dict:
    """Restore a checkpoint into the training objects; returns ``{"step", "data", **counters}``."""
    import torch
    from safetensors.torch import load_file

    from training.methods import load_trainable_state

    load_trainable_state(unwrap(model), load_file(str(ckpt / TRAINABLE), device=str(device)))
    state = torch.load(ckpt / STATE, weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return {"step": int(state["step"]), "data": state["data"], **state["counters"]}


def finished(out: TrainDir, config: TrainConfig) -> bool:
    """Did a run with exactly this config already complete in ``out``?"""
    if not (out.summary.exists() and out.config.exists()):
        return False
    return read_json(out.config) == config.model_dump(mode="json")


def read_config(out: TrainDir) -> TrainConfig:
    """The config a training folder was trained with."""
    if not out.config.exists():
        raise NotATrainingOutput(f"{out.root} is not a training output (no {out.config.name})")
    return TrainConfig.model_validate(read_json(out.config))


# ------------------------------------------------------------------------------------------------
# reading


def weights_kind(folder: Path) -> str:
    """What a weights folder holds: ``peft`` (lora/ia3), ``bitfit`` / ``adapter`` (an sftflow delta), ``full``."""
    folder = Path(folder)
    if (folder / "adapter_config.json").exists():
        return "peft"
    if (folder / DELTA).exists():
        return read_json(folder / DELTA)["method"]
    if (folder / "config.json").exists():
        return "full"
    raise NotATrainingOutput(f"{folder}: neither a peft adapter, an sftflow delta nor a model folder")


def load_trained(out_dir: str | Path, base: str | None = None, dtype: Any = None, device: Any = "cpu"):
    """(model, tokenizer) = base + what training wrote to ``out_dir``, for any method.

    ``base`` defaults to the model named in ``train_config.json``. For lora/ia3 the result is a peft
    model, so ``with model.disable_adapter():`` gives the base model's view.
    """
    import torch

    from training.models import load_model

    out = TrainDir(Path(out_dir))
    config = read_config(out)
    dtype = dtype if dtype is not None else torch.float32
    base = base or config.model
    if config.method == "full":
        model, tok = load_model(str(out.model), dtype=dtype, device=device, trust_remote_code=config.trust_remote_code)
    else:
        model, _ = load_model(base, dtype=dtype, device=device, trust_remote_code=config.trust_remote_code)
        tok = saved_tokenizer(out.adapter, base, config.trust_remote_code)
        model = attach_trained(model, out.adapter, config.method)
    model.eval()
    return model, tok


def saved_tokenizer(folder: Path, base: str, trust_remote_code: bool = False):
    """The tokenizer saved beside trained weights (chat template included), else the base model's."""
    from training.models import load_tokenizer

    if not (Path(folder) / "tokenizer_config.json").exists():
        return load_tokenizer(base, trust_remote_code)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def attach_trained(model, adapter_dir: Path, method: str):
    """Put the trained delta in ``adapter_dir`` on top of a loaded base model."""
    from training.methods import (
        PEFT_METHODS,
        add_bitfit_biases,
        add_bottleneck_adapters,
        load_trainable_state,
    )

    adapter_dir = Path(adapter_dir)
    if method in PEFT_METHODS:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, adapter_dir)
    from safetensors.torch import load_file

    delta = read_json(adapter_dir / DELTA)
    if method == "bitfit":
        add_bitfit_biases(model)
        for n, p in model.named_parameters():
            p.requires_grad_(n.endswith(".bias"))
    else:
        add_bottleneck_adapters(
            model, sorted({n.rsplit(".", 1)[-1] for n in delta["adapters_after"]}), int(delta["adapter_size"])
        )
        for n, p in model.named_parameters():
            p.requires_grad_(".adapter." in n)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    model.to(device)
    load_trainable_state(model, load_file(str(adapter_dir / TRAINABLE), device=str(device)))
    for p in model.parameters():
        p.data = p.data.to(dtype)
        p.requires_grad_(False)
    return model


__all__ = [
    "NotATrainingOutput", "attach_trained", "checkpoints", "finished", "load_checkpoint", "load_trained",
    "read_config", "save_checkpoint", "save_final", "saved_tokenizer", "unwrap", "weights_dir", "weights_kind",
]
