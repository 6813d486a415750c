"""Fold trained weights into a plain model folder (safetensors) that ``training.models.load_model`` reads.

- lora / ia3 (a peft ``adapter/`` folder): peft ``merge_and_unload``.
- bitfit (``adapter/`` with ``sftflow_delta.json``): the biases are written into the model; Llama-style
  configs get ``attention_bias``/``mlp_bias`` switched on so the stock architecture carries them.
- full (a ``model/`` folder): copied as it is.
- adapter (bottleneck): cannot be merged (the adapters add a nonlinearity); use
  ``training.artifacts.load_trained`` instead.

Every merge is checked: the written folder is loaded back and must give the same logits as base +
delta on a probe input, so an architecture that cannot hold the change fails loudly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from curation.errors import SftflowError
from curation.io import atomic_dir
from curation.rundir import TrainDir
from training.artifacts import NotATrainingOutput, attach_trained, saved_tokenizer, weights_kind
from training.models import load_model


class MergeError(SftflowError, ValueError):
    pass


def _weights(path: Path) -> Path:
    """The weights folder: ``path`` itself, or the ``adapter/`` / ``model/`` of a training output."""
    if (path / "train_config.json").exists():
        for sub in (TrainDir(path).adapter, TrainDir(path).model):
            if sub.is_dir():
                return sub
    return path


@torch.no_grad()
def _logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, use_cache=False).logits.float()


def merge(
    base: str, adapter_dir: str | Path, out_dir: str | Path, *, trust_remote_code: bool = False
) -> Path:
    """Write base + trained delta as one model folder at ``out_dir`` (published atomically); returns it.

    ``adapter_dir`` is a weights folder (``adapter/``, ``model/``) or the training output holding one.
    """
    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    if not adapter_dir.is_dir():
        raise MergeError(f"{adapter_dir}: no such folder")
    adapter_dir = _weights(adapter_dir)
    try:
        kind = weights_kind(adapter_dir)
    except NotATrainingOutput as e:
        raise MergeError(str(e)) from None
    if kind == "adapter":
        raise MergeError(
            "bottleneck adapters add a nonlinearity and cannot be folded into the base weights; "
            "load them with training.artifacts.load_trained(out_dir) instead"
        )
    with atomic_dir(out) as tmp:
        if kind == "full":
            shutil.copytree(adapter_dir, tmp, dirs_exist_ok=True)
        else:
            model, _ = load_model(base, trust_remote_code=trust_remote_code)
            model = attach_trained(model, adapter_dir, "lora" if kind == "peft" else kind)
            probe = torch.arange(16).remainder(model.config.vocab_size).unsqueeze(0)
            expected = _logits(model, probe)
            if kind == "peft":
                model = model.merge_and_unload()
            else:  # bitfit: let the stock architecture carry the biases
                for flag in ("attention_bias", "mlp_bias"):
                    if hasattr(model.config, flag):
                        setattr(model.config, flag, True)
            model.save_pretrained(tmp, safe_serialization=True)
            saved_tokenizer(adapter_dir, base, trust_remote_code).save_pretrained(tmp)
            reloaded, _ = load_model(str(tmp), trust_remote_code=trust_remote_code)
            got = _logits(reloaded, probe)
            if not torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
                raise MergeError(
                    f"merged model does not reproduce base + {kind} (max diff "
                    f"{(got - expected).abs().max():.3g}): this architecture cannot hold the change; "
                    "use training.artifacts.load_trained instead"
                )
    return out
