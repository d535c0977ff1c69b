"""The experiment config: one pydantic model per section, unknown keys forbidden everywhere.

Component sections (`data`, `model`, `optim`, `schedule`, `loss`) hold a registered `name`
and free-form `params`; the params are checked against the builder's own params model in
`config.validate`, so they get the same precision as the keys here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def absolute_ref(value: Optional[str]) -> Optional[str]:
    """A run dir or weights path made absolute against the working directory; '@last' kept."""
    if value is None:
        return None
    path, at, alias = value.rpartition("@")
    if not at or alias not in ("last", "best") or not path:
        path, at, alias = value, "", ""
    return str(Path(path).expanduser().absolute()) + (f"@{alias}" if at else "")


Ref = Annotated[Optional[str], AfterValidator(absolute_ref)]


class Component(Section):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class DataConfig(Component):
    batch_size: int = Field(128, ge=1)
    eval_batch_size: Optional[int] = Field(None, ge=1, description="default: 2 x batch_size")
    per_class: Optional[int] = Field(None, ge=1, description="k-shot: k training examples per class")


class ModelConfig(Component):
    pass


class OptimConfig(Component):
    name: str = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class ScheduleConfig(Component):
    name: str = "constant"
    warmup_steps: int = Field(0, ge=0)


class LossConfig(Component):
    name: str = "cross_entropy"


class EarlyStopping(Section):
    patience: Optional[int] = Field(None, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)
    min_steps: int = Field(0, ge=0, description="never stop before this optimizer step")


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    max_steps: Optional[int] = Field(None, ge=1, description="optimizer steps; overrides epochs when set")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = Field(False, description="torch.compile the training forward; eager with a warning where it fails")
    channels_last: bool = Field(False, description="image models: weights and batches in NHWC memory layout")
    activation_checkpointing: bool = Field(False, description="recompute activations in the backward instead of "
                                           "keeping them: less memory, about one more forward per step, same losses")
    frozen_dtype: Literal["fp32", "bf16"] = Field("fp32", description="bf16: parameters that never train (linear "
                                                  "probe, LoRA base, transfer.freeze) kept and run in bfloat16")
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="under torchrun: DDP replicates the model on "
                                                "every rank, FSDP shards it")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: Optional[float] = Field(None, gt=0)
    monitor: Optional[str] = Field(None, pattern=r"^(train|val)/[A-Za-z0-9_]+$",
                                   description="default: val/accuracy (classification), val/loss (regression)")
    monitor_mode: Literal["auto", "max", "min"] = "auto"
    eval_every_steps: Optional[int] = Field(None, ge=1, description="default: once per epoch")
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    keep_last: int = Field(1, ge=1, description="step checkpoints kept besides best")
    precise_bn: Union[Literal["auto"], Annotated[int, Field(ge=0)], None] = Field(
        "auto", description="before each evaluation, recompute the BatchNorm statistics over this many training "
                            "batches (0/null: off; auto: 50 for a model with BatchNorm in a run of at most 500 steps)")

    @field_validator("precise_bn", mode="before")
    @classmethod
    def _batches_or_auto(cls, value: Any) -> Any:
        fine = value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                                                    and value >= 0)
        if not fine:
            raise ValueError("expected a number of training batches (e.g. 50), 0 or null (off), or auto")
        return value


class EvalConfig(Section):
    metrics: Optional[list[str]] = Field(None, description="default: chosen by the task")
    split: Literal["train", "val", "test"] = "test"
    threshold: Optional[float] = Field(None, gt=0, lt=1, description="binary/multilabel: positive when the "
                                       "probability is above it (default 0.5)")
    checkpoint: Ref = Field(None, description="evaluate: run dir (best weights; @last for last) or weights file")


class KeyMap(Section):
    """How the keys of a weights file are mapped onto the model's parameter names."""

    strip_prefix: list[str] = Field(default_factory=list, description="removed from the start of a key (first match)")
    add_prefix: str = Field("", description="added to every key after stripping")
    rename: dict[str, str] = Field(default_factory=dict, description="regex -> replacement, applied in order")
    include: list[str] = Field(default_factory=list, description="glob patterns over mapped keys; empty = all")
    exclude: list[str] = Field(default_factory=list, description="glob patterns over mapped keys to leave out")

    @field_validator("rename")
    @classmethod
    def _compiles(cls, rename: dict[str, str]) -> dict[str, str]:
        for pattern, replacement in rename.items():
            try:
                re.compile(pattern).sub(replacement, "")  # also checks the replacement's group references
            except re.error as exc:
                raise ValueError(f"'{pattern}': '{replacement}' is not a valid regex rename ({exc}); "
                                 f"patterns are Python regular expressions, e.g. '^encoder\\.': 'backbone.'") from None
        return rename


class LoraConfig(Section):
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] = Field(default_factory=lambda: ["*"],
                               description="glob patterns over module names (nn.Linear/Conv1d/Conv2d; never the head)")


class BaselineConfig(Section):
    """A scratch baseline with a budget of its own (besides, by default, one with the finetune's)."""

    epochs: Optional[int] = Field(None, ge=1, description="default: the finetune's (x4 with until_converged)")
    max_steps: Optional[int] = Field(None, ge=1, description="optimizer steps; overrides epochs when set")
    lr: Optional[float] = Field(None, gt=0, description="default: the finetune's optim.lr")
    until_converged: bool = Field(False, description="early-stopped: train until the monitored metric stops "
                                                     "improving (within epochs/max_steps)")
    patience: int = Field(3, ge=1, description="until_converged: evaluations without improvement before stopping")
    equal_budget: bool = Field(True, description="also train a baseline with the finetune's own budget")

    @model_validator(mode="after")
    def _own_budget(self) -> "BaselineConfig":
        if self.epochs is None and self.max_steps is None and self.lr is None and not self.until_converged:
            raise ValueError("a baseline mapping sets a budget of its own (epochs, max_steps, lr or "
                             "until_converged: true); for the finetune's budget write `baseline: scratch`")
        return self


class TransferConfig(Section):
    init_from: Ref = Field(None, description="finetune: run dir (best weights; @last) or weights file")
    head: Literal["auto", "reset", "keep"] = "auto"
    strict: bool = True
    keys: KeyMap = Field(default_factory=KeyMap)
    strategy: Literal["full", "linear_probe", "lp_ft", "gradual", "lora"] = "full"
    freeze: list[str] = Field(default_factory=list, description="glob patterns over parameter names, always frozen")
    bn: Literal["train", "eval", "frozen"] = "train"
    backbone_lr_mult: float = Field(1.0, gt=0)
    layer_decay: Optional[float] = Field(None, gt=0, le=1)
    probe_epochs: int = Field(1, ge=1)
    unfreeze_every: int = Field(1, ge=1)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    cache_features: Union[Literal["auto"], bool] = "auto"
    feature_cache_dir: Ref = Field(None, description="keep cached features on disk here, keyed by the backbone's "
                                   "weights and the data, for later commands (transfer rank, a linear probe)")
    baseline: Union[Literal["none", "scratch"], BaselineConfig] = Field(
        "none", description="scratch: the same model from random initialisation with the same budget; a mapping: "
                            "with a budget of its own (see README: \"Did pretraining help?\")")
    seeds: Optional[list[Annotated[int, Field(ge=0)]]] = Field(None, min_length=1,
                                                               description="repeat the finetune over these seeds")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: Optional[list[int]]) -> Optional[list[int]]:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError("each seed may appear only once")
        return seeds


class MlflowConfig(Section):
    tracking_uri: str = Field(..., min_length=1, description="where runs are stored, e.g. sqlite:///runs/mlflow.db "
                                                             "or file:runs/mlruns (no default: never a server "
                                                             "you did not name)")
    experiment: Optional[str] = Field(None, min_length=1, description="MLflow experiment (default: the config's "
                                                                       "name, else 'transfer')")


class LogConfig(Section):
    """Experiment trackers, written beside metrics.jsonl (rank 0, off the training step)."""

    tensorboard: bool = Field(False, description="TensorBoard event files in <run>/tensorboard")
    mlflow: Optional[MlflowConfig] = Field(None, description="an MLflow run per stage in this tracking store")


class Experiment(Section):
    name: Optional[str] = None
    seed: int = Field(0, ge=0)
    run_dir: Optional[str] = None
    data: DataConfig
    model: Optional[ModelConfig] = None
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig())
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig())
    loss: LossConfig = Field(default_factory=lambda: LossConfig())
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    log: LogConfig = Field(default_factory=LogConfig)
