"""Evaluation metrics (torchmetrics), with the averaging stated in every name.

`accuracy` is micro-averaged (the share of correct predictions); `macro_*` average the
per-class figures with equal weight; `balanced_accuracy` is macro-averaged recall.
Metrics are only updated during evaluation, never in the training step.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torchmetrics
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr

from transfer_cli.errors import ConfigError
from transfer_cli.registry import Params, Registry

METRICS: Registry = Registry("metric")

DEFAULT_METRICS = {
    "multiclass": ["accuracy", "balanced_accuracy", "macro_f1"],
    "binary": ["accuracy", "f1", "auroc"],
    "multilabel": ["accuracy", "macro_f1"],
    "regression": ["mae", "rmse", "r2"],
}


class NLL(torchmetrics.Metric):
    """Mean negative log-likelihood of the true class, from probabilities."""

    higher_is_better = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        picked = probs.gather(1, target.long().unsqueeze(1)).squeeze(1)
        self.total += -torch.log(picked.clamp_min(1e-12)).double().sum()
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


def _only(task: str, allowed: tuple[str, ...], name: str) -> None:
    if task not in allowed:
        raise ConfigError([f"eval.metrics: '{name}' is for {' or '.join(allowed)} tasks, but the data is {task}; "
                           f"defaults for {task}: {', '.join(DEFAULT_METRICS[task])}"])


def _register(name: str, tasks: tuple[str, ...], make: Callable[[str, int], torchmetrics.Metric], doc: str) -> None:
    def builder(params: Params, *, task: str, num_classes: int) -> torchmetrics.Metric:
        _only(task, tasks, name)
        return make(task, num_classes)

    builder.__doc__ = doc
    METRICS.register(name)(builder)


def _by_task(multiclass: Callable, binary: Optional[Callable] = None, multilabel: Optional[Callable] = None):
    table = {"multiclass": multiclass, "binary": binary, "multilabel": multilabel}
    return lambda task, k: table[task](k)


CLS = ("multiclass", "binary", "multilabel")
_register("accuracy", CLS, _by_task(lambda k: tmc.MulticlassAccuracy(k, average="micro"),
                                     lambda k: tmc.BinaryAccuracy(),
                                     lambda k: tmc.MultilabelAccuracy(k, average="micro")),
          "Share of correct predictions (micro-averaged).")
_register("balanced_accuracy", ("multiclass",), lambda t, k: tmc.MulticlassRecall(k, average="macro"),
          "Mean per-class recall (macro).")
_register("macro_f1", ("multiclass", "multilabel"),
          _by_task(lambda k: tmc.MulticlassF1Score(k, average="macro"),
                   multilabel=lambda k: tmc.MultilabelF1Score(k, average="macro")),
          "F1 per class, averaged with equal weight (macro).")
_register("macro_precision", ("multiclass",), lambda t, k: tmc.MulticlassPrecision(k, average="macro"),
          "Precision per class, macro-averaged.")
_register("macro_recall", ("multiclass",), lambda t, k: tmc.MulticlassRecall(k, average="macro"),
          "Recall per class, macro-averaged.")
_register("f1", ("binary",), lambda t, k: tmc.BinaryF1Score(), "F1 of the positive class.")
_register("auroc", CLS, _by_task(lambda k: tmc.MulticlassAUROC(k, average="macro", thresholds=200),
                                  lambda k: tmc.BinaryAUROC(thresholds=200),
                                  lambda k: tmc.MultilabelAUROC(k, average="macro", thresholds=200)),
          "Area under the ROC curve (one-vs-rest, macro; binned, bounded memory).")
_register("top5_accuracy", ("multiclass",), lambda t, k: tmc.MulticlassAccuracy(k, top_k=min(5, k), average="micro"),
          "Share of samples whose true class is among the 5 most probable.")
_register("nll", ("multiclass",), lambda t, k: NLL(), "Mean negative log-likelihood of the true class.")
_register("ece", ("multiclass",), lambda t, k: tmc.MulticlassCalibrationError(k, n_bins=15, norm="l1"),
          "Expected calibration error (15 bins).")
_register("mae", ("regression",), lambda t, k: tmr.MeanAbsoluteError(), "Mean absolute error.")
_register("rmse", ("regression",), lambda t, k: tmr.MeanSquaredError(squared=False), "Root mean squared error.")
_register("r2", ("regression",), lambda t, k: tmr.R2Score(), "Coefficient of determination.")


def metric_names(task: str, requested: Optional[list[str]]) -> list[str]:
    return list(requested) if requested else list(DEFAULT_METRICS[task])


def build_metrics(names: list[str], task: str, num_classes: int) -> torchmetrics.MetricCollection:
    """A collection of the named metrics; compute groups off (they silently share state)."""
    problems = []
    metrics = {}
    for name in names:
        try:
            metrics[name] = METRICS.build(name, task=task, num_classes=num_classes)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return torchmetrics.MetricCollection(metrics, compute_groups=False)


def higher_is_better(name: str, task: str, num_classes: int) -> bool:
    if name == "loss":
        return False
    return bool(METRICS.build(name, task=task, num_classes=num_classes).higher_is_better)


def to_predictions(task: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Model outputs -> what the metrics take: class probabilities, or values for regression."""
    if task == "multiclass":
        return lambda out: torch.softmax(out.float(), dim=-1)
    if task == "binary":
        return lambda out: torch.sigmoid(out.float().reshape(-1))
    if task == "multilabel":
        return lambda out: torch.sigmoid(out.float())
    return lambda out: out.float().squeeze(-1) if out.shape[-1] == 1 else out.float()
