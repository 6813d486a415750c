"""The SFT configuration: one pydantic model, composed by the recipe YAML and overridable with ``--set``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["lora", "ia3", "bitfit", "adapter", "full"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class TrainConfig(BaseModel):
    """Everything the SFT loop needs besides the data and the output folder.

    Batch sizes are per optimizer micro-step: with ``packing`` a batch is ``batch_size`` rows of
    ``seq_len`` tokens, several examples per row; without packing it is ``batch_size`` examples padded
    to the longest one in the batch. One optimizer step sees ``batch_size * grad_accum`` of those.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="alias, local folder or hub id (see training.models)")
    method: Method = "lora"
    precision: Precision = Field(
        "auto", description="auto: bf16 on GPUs with bf16, else fp16 + loss scaling; fp32 on CPU"
    )

    # --- optimisation -------------------------------------------------------------------------------
    max_steps: int = Field(
        100, ge=1, description="optimizer steps (the data is repeated as many epochs as needed)"
    )
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="the schedule decays to lr * min_lr_ratio")
    max_grad_norm: float | None = Field(1.0, description="clip the gradient norm to this; None: no clipping")
    grad_checkpointing: bool = False
    attn_implementation: str | None = Field(
        None,
        description="e.g. 'flash_attention_2' (packed rows then run as varlen attention), 'sdpa', 'eager'; "
        "None: the model's default",
    )
    loss_scale_init: float = Field(2.0**16, gt=0, description="fp16 only: the starting dynamic loss scale")

    # --- data ---------------------------------------------------------------------------------------
    seq_len: int = Field(1024, ge=8, description="longest example (tokens), and the row length when packing")
    packing: bool = True
    too_long: Literal["truncate", "drop"] = Field(
        "drop", description="examples longer than seq_len: drop them (reported) or cut the tail off"
    )
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="share of examples held out for the eval loss")
    eval_every: int = Field(0, ge=0, description="eval loss every N steps (0: only at the end, if held out)")
    eval_max_batches: int = Field(50, ge=1)

    # --- methods ------------------------------------------------------------------------------------
    lora_r: int = Field(16, ge=1)
    lora_alpha: float = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear", "default"] = Field(
        "default",
        description="modules to adapt: 'default' = all linear layers for lora (peft 'all-linear'), the "
        "peft per-architecture defaults for ia3; or a list of module names",
    )
    adapter_size: int = Field(64, ge=1, description="bottleneck width of method=adapter")
    adapter_modules: list[str] = Field(
        default_factory=lambda: ["o_proj", "down_proj"],
        description="method=adapter: the output layers of attention and FFN; an adapter follows each",
    )

    # --- bookkeeping --------------------------------------------------------------------------------
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: only the final weights)")
    keep_checkpoints: int = Field(2, ge=1, description="keep the newest N checkpoints")
    log_every: int = Field(1, ge=1)
    seed: int = 0
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) > max_steps ({self.max_steps})")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError("max_grad_norm must be > 0 (or null for no clipping)")
        return self
