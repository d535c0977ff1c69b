"""What a stage is built from: the command line's options (RunOptions) and the parts made from a
validated experiment (Parts: data, model, loss, evaluator, device), with the checks that need
them built (monitor, device, what running under torchrun requires)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from transfer_cli.config.schema import Experiment
from transfer_cli.core.errors import ConfigError, UsageError
from transfer_cli.core.forked import Forked, ForkFailed, can_fork
from transfer_cli.core.registry import did_you_mean
from transfer_cli.data import DATASETS, DataBundle
from transfer_cli.data.checks import check_batches, check_bundle, check_split
from transfer_cli.data.fewshot import select_per_class
from transfer_cli.dist import distributed
from transfer_cli.eval.breakdown import Breakdown
from transfer_cli.eval.evaluation import Evaluator
from transfer_cli.eval.metrics import (MetricContext, build_metrics, higher_is_better, metric_inputs, metric_names,
                                  resolve_threshold)
from transfer_cli.models import MODELS, TransferModel
from transfer_cli.train.losses import LOSSES
from transfer_cli.track.tracking import check_trackers
from transfer_cli.train.seeding import seed_everything

SMOKE_EVAL_BATCHES = 2
#: data sets generated from their parameters alone (no files, no global random state), in numpy:
#: built in a forked process while this one imports what training needs
GENERATED_DATA = ("motifs", "motifs2d")


@dataclass
class RunOptions:
    """What the command line says about where and how to run (not what to train)."""

    config_path: Optional[Path] = None
    run_dir: Optional[str] = None
    overwrite: bool = False
    resume: bool = False
    smoke: bool = False
    from_run: Optional[Path] = None
    predictions: Optional[Path] = None
    #: engine callbacks the caller adds to the training (a sweep's report to its Optuna trial)
    callbacks: tuple = ()

    @property
    def mode(self) -> str:
        return "resume" if self.resume else "overwrite" if self.overwrite else "new"


@dataclass
class Parts:
    data: DataBundle
    model: TransferModel
    loss: nn.Module
    evaluator: Evaluator
    monitor: str
    monitor_higher_is_better: bool
    device: torch.device
    context: MetricContext
    info: dict[str, Any] = field(default_factory=dict)


# ---- building --------------------------------------------------------------------------------
def build_parts(exp: Experiment, opts: RunOptions, evaluating: bool = False) -> Parts:
    """Data, model, loss and evaluator from a validated experiment (`evaluating`: no training, so
    the data needs no train/val split and the monitor is not checked)."""
    check_trackers(exp.log)
    device = resolve_device(exp.train.device)
    distributed.init(device)
    seed_everything(exp.seed)
    data = build_data(exp, meanwhile=None if evaluating else import_compiler_stack)
    model = build_model(exp, data, device)
    check_batches(data, exp.data.batch_size, model)
    if distributed.world().is_distributed:
        check_distributed(exp, data, model, evaluating, opts)
        # the same initial weights on every rank (seeded above), but each rank its own dropout masks
        torch.manual_seed(exp.seed + 1_000_003 * distributed.world().rank)
    loss = LOSSES.build(exp.loss.name, exp.loss.params, task=data.task, num_outputs=data.num_outputs,
                        class_counts=data.class_counts()).to(device)
    context = MetricContext(data.task, data.num_outputs, resolve_threshold(data.task, exp.eval.threshold))
    names = metric_names(data.task, data.num_outputs, exp.eval.metrics)
    exp.eval.metrics = names
    if data.task in ("binary", "multilabel"):
        exp.eval.threshold = context.threshold
    metrics = build_metrics(names, context)
    monitor = exp.train.monitor or ("val/accuracy" if "accuracy" in names else "val/loss")
    if not evaluating:
        check_monitor(monitor, names, data)
    higher = (higher_is_better(monitor.split("/", 1)[1], context)
              if exp.train.monitor_mode == "auto" else exp.train.monitor_mode == "max")
    evaluator = Evaluator(model, loss, metrics, metric_inputs(data.task), device,
                          exp.data.eval_batch_size or 2 * exp.data.batch_size, exp.train.precision,
                          batch_limit=SMOKE_EVAL_BATCHES if opts.smoke else None,
                          breakdown=Breakdown.for_task(context, data.class_names))
    return Parts(data, model, loss, evaluator, monitor, higher, device, context)


def build_model(exp: Experiment, data: DataBundle, device: torch.device) -> TransferModel:
    """The configured architecture, shaped by the data (input shape, number of outputs)."""
    return MODELS.build(exp.model.name, exp.model.params, input_shape=data.input_shape,
                        num_outputs=data.num_outputs).to(device)


def build_data(exp: Experiment, meanwhile: Optional[Callable[[], Any]] = None) -> DataBundle:
    """The data set, checked (`meanwhile`: run while it is built, see generate_data)."""
    take_model_preprocessing(exp)
    data = generate_data(exp, meanwhile)
    exp.data.params.update(data.fitted)  # recorded in the run's config: evaluating it maps labels the same way
    check_bundle(data, exp.data.name)
    check_split(data, exp.eval.split)
    if exp.data.per_class and "train" in data.splits:
        if data.task not in ("multiclass", "binary"):
            raise ConfigError([f"data.per_class: k examples per class needs single-label classes, but the data is "
                               f"{data.task}; remove data.per_class (or subsample the data itself)"])
        train = data.split("train")
        index = select_per_class(train.y, exp.data.per_class, exp.seed, data.class_names)
        data.splits["train"] = train.subset(index)
        data.info["per_class"] = exp.data.per_class
    return data


def generate_data(exp: Experiment, meanwhile: Optional[Callable[[], Any]] = None) -> DataBundle:
    """DATASETS.build, and `meanwhile()`. A data set in GENERATED_DATA is built in a forked
    process while this one runs `meanwhile` (on Linux, in one process of its own, with a second
    CPU); the bundle that comes back is the one built here would be, bit for bit."""

    def build() -> DataBundle:
        return DATASETS.build(exp.data.name, exp.data.params, seed=exp.seed)

    if meanwhile is None:
        return build()
    if exp.data.name in GENERATED_DATA and not distributed.world().is_distributed and can_fork():
        with Forked(build) as child:
            meanwhile()
            try:
                return child.result()
            except ForkFailed:  # killed or out of memory there: build it here
                pass
        return build()
    data = build()
    meanwhile()
    return data


def import_compiler_stack() -> None:
    """Import torch._dynamo, which torch imports when the first optimizer is made, in any script
    (torch.optim.Optimizer's methods are wrapped by torch._disable_dynamo): a second or more that
    costs the same while the data set is generated in another process."""
    importlib.import_module("torch._dynamo")


def take_model_preprocessing(exp: Experiment) -> None:
    """Data params the model brings (a Hugging Face vision model's own preprocessing), for every
    key the config leaves unset; written into the run's config.yaml with the rest, so evaluate
    (and predict) prepare inputs the same way."""
    if exp.model is None or exp.model.name not in MODELS:
        return
    hook = getattr(MODELS.get(exp.model.name).params, "data_defaults", None)
    taken = []
    for key, value in (hook(exp.model.params, exp.data.name) if hook else {}).items():
        if exp.data.params.get(key) is None:
            exp.data.params[key] = value
            taken.append(key)
    if taken:  # checked here: the config's own data params were checked when it was read, these were not
        check_taken_params(exp, taken)


def check_taken_params(exp: Experiment, taken: list[str]) -> None:
    from pydantic import ValidationError

    try:
        DATASETS.get(exp.data.name).params.model_validate(exp.data.params)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        raise ConfigError([f"model.params.preprocessing: {key}: {error['msg']} (given {error['input']!r}; the model's "
                           f"own preprocessing sets data.params {', '.join(taken)})"]) from None


def check_monitor(monitor: str, names: list[str], data: DataBundle) -> None:
    split, metric = monitor.split("/", 1)
    available = ["train/loss"] + ([f"val/{n}" for n in ["loss"] + names] if "val" in data.splits else [])
    if monitor not in available:
        raise ConfigError([f"train.monitor: '{monitor}' is not logged{did_you_mean(monitor, available)}; "
                           f"available: {', '.join(available)} (val/<metric> needs the metric in eval.metrics "
                           f"and a val split)"])


def resolve_device(name: str) -> torch.device:
    """The configured device; under torchrun `auto`/`cuda` mean the GPU of this process's LOCAL_RANK."""
    world = distributed.world()
    if name in ("auto", "cuda") and world.is_distributed and torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    if name.startswith("cuda:") and world.is_distributed:
        raise ConfigError([f"train.device: '{name}' names one GPU, but torchrun started {world.size} processes; "
                           f"use auto or cuda (each process takes the GPU of its LOCAL_RANK)"])
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"train.device: '{name}' requested but CUDA is not available here; use auto or cpu"])
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(["train.device: 'mps' requested but MPS is not available here; use auto or cpu"])
    return torch.device(name)


def check_distributed(exp: Experiment, data: DataBundle, model: nn.Module, evaluating: bool,
                      opts: RunOptions) -> None:
    """What must hold for a run split over torchrun's processes."""
    size = distributed.world().size
    problems = []
    batch = exp.data.batch_size
    if not evaluating and batch % size:
        problems.append(f"data.batch_size: {batch} samples per batch cannot be split evenly over {size} processes; "
                        f"use a multiple of {size}, e.g. {batch + size - batch % size}")
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not evaluating and not problems and has_batchnorm and "train" in data.splits:
        n = len(data.split("train"))
        last = (n + (-n) % size) % batch or batch  # the epoch is padded to a multiple of the processes
        if last == size:
            problems.append(f"data.batch_size: with {n} training samples the last batch gives each of the {size} "
                            f"processes one sample, which BatchNorm cannot train on; change data.batch_size")
    if exp.transfer.cache_features is True:
        problems.append("transfer.cache_features: true is not available under torchrun; use auto or false")
    if exp.train.distributed == "fsdp" and exp.transfer.strategy == "lora":
        problems.append("transfer.strategy: lora is not available with train.distributed: fsdp; use ddp")
    if exp.train.distributed == "fsdp" and exp.train.frozen_dtype != "fp32":
        problems.append("train.frozen_dtype: bf16 is not available with train.distributed: fsdp (a shard holds one "
                        "dtype); use ddp, or frozen_dtype: fp32")
    if problems:
        raise ConfigError(problems)
    if opts.predictions is not None:
        raise UsageError("--predictions is not available under torchrun; evaluate in one process")
