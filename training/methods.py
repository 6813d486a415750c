"""The fine-tuning methods: which weights train, and the modules some of them add.

- ``lora``: low-rank updates on the target linear layers (peft ``LoraConfig``).
- ``ia3``: learned rescaling vectors on keys, values and the FFN (peft ``IA3Config``).
- ``bitfit``: only bias terms train. Architectures without biases (Llama, Mistral, SmolLM...) get a
  zero-initialised bias on every linear layer of the transformer blocks, so the model starts out
  exactly as the base; the output layer is left alone.
- ``adapter``: bottleneck adapters (Houlsby et al.): ``h + up(act(down(h)))`` after the attention
  output projection and after the FFN output projection of every block, ``up`` initialised to zero
  so the model starts out exactly as the base.
- ``full``: every weight trains.

Trainable parameters are always kept in fp32 (the master copy), whatever dtype the frozen base is in.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from curation.errors import ConfigError
from training.config import TrainConfig

PEFT_METHODS = ("lora", "ia3")


class BottleneckAdapter(nn.Module):
    """``x + up(gelu(down(x)))``; ``up`` starts at zero so the adapter starts as the identity."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.down = nn.Linear(dim, size)
        self.up = nn.Linear(size, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(nn.functional.gelu(self.down(x))).to(x.dtype)


class LinearWithAdapter(nn.Module):
    """A frozen linear layer followed by a bottleneck adapter."""

    def __init__(self, base: nn.Linear, size: int):
        super().__init__()
        self.base = base
        self.adapter = BottleneckAdapter(base.out_features, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def _block_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linear layers of the transformer blocks (not the embeddings nor the output layer)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not output]


def _set_child(model: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, child)


def add_bitfit_biases(model: nn.Module) -> list[str]:
    """Give every block linear layer without a bias a zero bias; returns the names of the layers changed."""
    added = []
    for name, lin in _block_linears(model):
        if lin.bias is None:
            lin.bias = nn.Parameter(
                torch.zeros(lin.out_features, dtype=torch.float32, device=lin.weight.device)
            )
            added.append(name)
    return added


def add_bottleneck_adapters(model: nn.Module, modules: list[str], size: int) -> list[str]:
    """Wrap every linear layer whose name ends with one of ``modules``; returns the wrapped names."""
    wrapped = []
    for name, lin in _block_linears(model):
        if name.rsplit(".", 1)[-1] in modules:
            layer = LinearWithAdapter(lin, size).to(lin.weight.device)
            _set_child(model, name, layer)
            wrapped.append(name)
    if not wrapped:
        raise ConfigError(
            f"method=adapter: no linear layer named {modules} in this model (set adapter_modules)"
        )
    return wrapped


def _peft_config(config: TrainConfig, model: nn.Module):
    from peft import IA3Config, LoraConfig, TaskType

    targets: Any = config.target_modules
    if config.method == "lora":
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules="all-linear" if targets == "default" else targets,
        )
    if targets == "default":
        return IA3Config(task_type=TaskType.CAUSAL_LM)  # peft's per-architecture k/v/FFN defaults
    if targets == "all-linear":
        raise ConfigError("method=ia3 needs target_modules = 'default' or a list of module names")
    # IA3 scales the *input* of feed-forward layers; peft needs to know which targets those are
    ff = [t for t in targets if t in ("down_proj", "fc2", "w2", "c_proj", "dense_4h_to_h")]
    return IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=targets, feedforward_modules=ff)


def apply_method(model: nn.Module, config: TrainConfig) -> tuple[nn.Module, dict]:
    """Freeze/extend ``model`` for ``config.method``; returns the model to train and what was changed."""
    info: dict[str, Any] = {"method": config.method}
    if config.method in PEFT_METHODS:
        from peft import get_peft_model

        try:
            model = get_peft_model(model, _peft_config(config, model))
        except ValueError as e:
            raise ConfigError(f"method={config.method}: {e}") from None
    elif config.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif config.method == "bitfit":
        for p in model.parameters():
            p.requires_grad_(False)
        info["added_bias_to"] = add_bitfit_biases(model)
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.requires_grad_(True)
    elif config.method == "adapter":
        for p in model.parameters():
            p.requires_grad_(False)
        info["adapters_after"] = add_bottleneck_adapters(model, config.adapter_modules, config.adapter_size)
        info["adapter_size"] = config.adapter_size
    # fp32 master copy of whatever trains (the frozen base may be bf16/fp16)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    trainable, total = param_counts(model)
    if trainable == 0:
        raise ConfigError(f"method={config.method}: no trainable parameter (check target_modules)")
    info.update(trainable_params=trainable, total_params=total, trainable_percent=100 * trainable / total)
    return model, info


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared (tied) weights are counted once."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors by name (what a checkpoint must hold besides the frozen base)."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the matching parameters; every trainable parameter must be present."""
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        raise ValueError(
            f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unknown[:5]}"
        )
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)
