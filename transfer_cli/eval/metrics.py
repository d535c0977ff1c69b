"""Evaluation metrics (torchmetrics), with the averaging stated in every name.

`accuracy` is micro-averaged (the share of correct decisions); `macro_*` average the per-class
figures with equal weight; `balanced_accuracy` is macro-averaged recall. Every torchmetrics
object is built with its `average` spelled out, because the library's defaults differ between
classes (`MulticlassAccuracy` defaults to macro, for one). Metrics are only updated during
evaluation, never in the training step.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

# first: from here on `import torchmetrics.<part>` loads that part only (see lean_torchmetrics)
from transfer_cli.eval.lean_torchmetrics import torchmetrics  # noqa: F401
from torchmetrics.collections import MetricCollection  # noqa: E402
from torchmetrics.metric import Metric  # noqa: E402

from transfer_cli.core.errors import ConfigError
from transfer_cli.core.registry import Params, Registry

METRICS: Registry = Registry("metric")
TASKS = ("multiclass", "binary", "multilabel", "regression")
CALIBRATION_BINS = 15
AUROC_THRESHOLDS = 200
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class MetricContext:
    """What a metric needs to know about the data: task, class (or label) count, threshold."""

    task: str
    num_classes: int
    threshold: float = DEFAULT_THRESHOLD


class _Family:
    """A family of torchmetrics' metrics, imported when a metric of it is first built: a
    classification run does not load the regression metrics, nor a regression run the
    classification ones."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(self.module), name)


tmc = _Family("torchmetrics.classification")
tmr = _Family("torchmetrics.regression")

Maker = Callable[[MetricContext], Metric]


class NLL(Metric):
    """Mean negative log-likelihood of the true class, from class probabilities."""

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


class CalibrationBins(Metric):
    """Confidence histogram with bounded memory: per bin the count, the summed confidence and
    the summed outcome. `compute()` is the expected calibration error (L1).

    mode "top_label" (multiclass): confidence = the largest class probability, outcome = the
    prediction was right. mode "positive" (binary): confidence = P(positive), outcome = the
    sample is positive. Bins split [0, 1] evenly; each is [lower, upper), the last one [lower, 1].
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, n_bins: int = CALIBRATION_BINS, mode: str = "top_label") -> None:
        super().__init__()
        self.n_bins, self.mode = n_bins, mode
        for name in ("count", "confidence", "outcome"):
            self.add_state(name, torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        if self.mode == "top_label":
            confidence, predicted = probs.max(dim=1)
            outcome = predicted.eq(target)
        else:
            confidence, outcome = probs.reshape(-1), target.reshape(-1)
        index = (confidence.double() * self.n_bins).floor().long().clamp(0, self.n_bins - 1)
        self.count.index_add_(0, index, torch.ones_like(confidence, dtype=torch.float64))
        self.confidence.index_add_(0, index, confidence.double())
        self.outcome.index_add_(0, index, outcome.double())

    def compute(self) -> torch.Tensor:
        gap = (self.outcome - self.confidence).abs()  # count * |mean outcome - mean confidence|
        return (gap.sum() / self.count.sum().clamp_min(1)).float()

    def bins(self) -> list[dict]:
        """The reliability table: one row per bin (empty bins have count 0 and no means)."""
        rows = []
        for i in range(self.n_bins):
            count = int(self.count[i].item())
            rows.append({"lower": i / self.n_bins, "upper": (i + 1) / self.n_bins, "count": count,
                         "confidence": self.confidence[i].item() / count if count else None,
                         "outcome": self.outcome[i].item() / count if count else None})
        return rows


# ---- the registry --------------------------------------------------------------------------------
def _register(name: str, doc: str, **by_task: Maker) -> None:
    """Register `name` with one maker per task it applies to."""

    def builder(params: Params, *, context: MetricContext) -> Metric:
        make = by_task.get(context.task)
        if make is None:
            raise ConfigError([f"eval.metrics: '{name}' is for {' or '.join(by_task)} tasks, but the data is "
                               f"{context.task}; defaults for {context.task}: "
                               f"{', '.join(default_metrics(context.task, context.num_classes))}"])
        return make(context)

    builder.__doc__ = f"{doc} [{', '.join(by_task)}]"
    METRICS.register(name)(builder)


def _top_k(k: int) -> Maker:
    def make(c: MetricContext) -> Metric:
        if k >= c.num_classes:
            raise ConfigError([f"eval.metrics: 'top{k}_accuracy' needs more than {k} classes, the data has "
                               f"{c.num_classes} (the true class would always be among the top {k}); "
                               f"drop it or use a smaller k"])
        return tmc.MulticlassAccuracy(c.num_classes, top_k=k, average="micro")

    return make


_register("accuracy", "Share of correct decisions (micro-averaged; multilabel: over all label decisions).",
          multiclass=lambda c: tmc.MulticlassAccuracy(c.num_classes, average="micro"),
          binary=lambda c: tmc.BinaryAccuracy(threshold=c.threshold),
          multilabel=lambda c: tmc.MultilabelAccuracy(c.num_classes, threshold=c.threshold, average="micro"))
_register("balanced_accuracy", "Mean per-class recall (macro).",
          multiclass=lambda c: tmc.MulticlassRecall(c.num_classes, average="macro"))
_register("subset_accuracy", "Share of samples with every label right (exact match).",
          multilabel=lambda c: tmc.MultilabelExactMatch(c.num_classes, threshold=c.threshold))
for _k in (2, 3, 5):
    _register(f"top{_k}_accuracy", f"Share of samples whose true class is among the {_k} most probable.",
              multiclass=_top_k(_k))
_register("macro_f1", "F1 per class, averaged with equal weight (macro).",
          multiclass=lambda c: tmc.MulticlassF1Score(c.num_classes, average="macro"),
          multilabel=lambda c: tmc.MultilabelF1Score(c.num_classes, threshold=c.threshold, average="macro"))
_register("macro_precision", "Precision per class, averaged with equal weight (macro).",
          multiclass=lambda c: tmc.MulticlassPrecision(c.num_classes, average="macro"),
          multilabel=lambda c: tmc.MultilabelPrecision(c.num_classes, threshold=c.threshold, average="macro"))
_register("macro_recall", "Recall per class, averaged with equal weight (macro).",
          multiclass=lambda c: tmc.MulticlassRecall(c.num_classes, average="macro"),
          multilabel=lambda c: tmc.MultilabelRecall(c.num_classes, threshold=c.threshold, average="macro"))
_register("precision", "Precision of the positive class.", binary=lambda c: tmc.BinaryPrecision(threshold=c.threshold))
_register("recall", "Recall of the positive class.", binary=lambda c: tmc.BinaryRecall(threshold=c.threshold))
_register("f1", "F1 of the positive class.", binary=lambda c: tmc.BinaryF1Score(threshold=c.threshold))
_register("auroc", f"Area under the ROC curve (multi: one-vs-rest, macro; binned at {AUROC_THRESHOLDS} thresholds, "
                   f"bounded memory).",
          multiclass=lambda c: tmc.MulticlassAUROC(c.num_classes, average="macro", thresholds=AUROC_THRESHOLDS),
          binary=lambda c: tmc.BinaryAUROC(thresholds=AUROC_THRESHOLDS),
          multilabel=lambda c: tmc.MultilabelAUROC(c.num_classes, average="macro", thresholds=AUROC_THRESHOLDS))
_register("nll", "Mean negative log-likelihood of the true class.", multiclass=lambda c: NLL())
_register("ece", f"Expected calibration error ({CALIBRATION_BINS} equal-width bins, L1).",
          multiclass=lambda c: CalibrationBins(CALIBRATION_BINS, "top_label"),
          binary=lambda c: CalibrationBins(CALIBRATION_BINS, "positive"))
_register("mae", "Mean absolute error.", regression=lambda c: tmr.MeanAbsoluteError())
_register("rmse", "Root mean squared error.", regression=lambda c: tmr.MeanSquaredError(squared=False))
_register("r2", "Coefficient of determination (R²; multi-output: uniform average).",
          regression=lambda c: tmr.R2Score(multioutput="uniform_average"))


def default_metrics(task: str, num_classes: int) -> list[str]:
    """The metrics computed when `eval.metrics` is not set."""
    if task == "multiclass":
        top_k = ["top5_accuracy"] if num_classes > 5 else ["top2_accuracy"] if num_classes > 2 else []
        return ["accuracy", "balanced_accuracy", "macro_f1", "macro_precision", "macro_recall", *top_k,
                "nll", "ece", "auroc"]
    if task == "binary":
        return ["accuracy", "precision", "recall", "f1", "auroc", "ece"]
    if task == "multilabel":
        return ["accuracy", "subset_accuracy", "macro_f1", "macro_precision", "macro_recall", "auroc"]
    return ["mae", "rmse", "r2"]


def metric_names(task: str, num_classes: int, requested: Optional[list[str]]) -> list[str]:
    return list(requested) if requested else default_metrics(task, num_classes)


def resolve_threshold(task: str, threshold: Optional[float]) -> float:
    """eval.threshold applies to binary and multilabel decisions; elsewhere it would do nothing."""
    if threshold is not None and task not in ("binary", "multilabel"):
        raise ConfigError([f"eval.threshold: only binary and multilabel tasks use a decision threshold, but the "
                           f"data is {task}; remove eval.threshold"])
    return DEFAULT_THRESHOLD if threshold is None else threshold


def build_metrics(names: list[str], context: MetricContext) -> MetricCollection:
    """A collection of the named metrics. Compute groups are off: torchmetrics would otherwise
    let metrics it believes equivalent share one state, which has silently given wrong values."""
    problems = []
    metrics = {}
    for name in names:
        try:
            metrics[name] = METRICS.build(name, context=context)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return MetricCollection(metrics, compute_groups=False)


def higher_is_better(name: str, context: MetricContext) -> bool:
    if name == "loss":
        return False
    return bool(METRICS.build(name, context=context).higher_is_better)


def metric_inputs(task: str) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(model outputs, targets) -> what the metrics take: class probabilities (or values for
    regression), and integer targets for classification (BCE trains on float 0/1 targets,
    torchmetrics wants them as integers)."""
    if task == "multiclass":
        return lambda out, y: (torch.softmax(out.float(), dim=-1), y)
    if task == "binary":
        return lambda out, y: (torch.sigmoid(out.float().reshape(-1)), y.reshape(-1).long())
    if task == "multilabel":
        return lambda out, y: (torch.sigmoid(out.float()), y.long())
    return lambda out, y: (out.float().squeeze(-1) if out.shape[-1] == 1 else out.float(), y)
