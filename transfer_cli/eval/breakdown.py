"""The figures behind the headline numbers, for the final report: the confusion matrix
(counts and row-normalized), the per-class precision/recall/F1/support table, and the
calibration bins of the reliability diagram.

Computed once per reported split after training, never during it. Per-class figures are
derived from the confusion counts, so the table and the matrix always agree.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from transfer_cli.eval.metrics import CALIBRATION_BINS, CalibrationBins, MetricContext, tmc


def class_labels(task: str, num_classes: int, names: Optional[Sequence[str]]) -> list[str]:
    """Display names of the classes (binary: negative, positive; multilabel: the labels)."""
    expected = 2 if task == "binary" else num_classes
    if names is not None and len(names) == expected:
        return [str(n) for n in names]
    return ["negative", "positive"] if task == "binary" else [str(i) for i in range(expected)]


def safe_ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, 0 when the denominator is 0 (torchmetrics' zero_division=0)."""
    return numerator / denominator if denominator else 0.0


def per_class_table(tp: Sequence[int], fp: Sequence[int], fn: Sequence[int], names: Sequence[str]) -> list[dict]:
    """One row per class: precision, recall, F1, support (true count) and predicted count."""
    rows = []
    for name, t, p, n in zip(names, tp, fp, fn):
        precision, recall = safe_ratio(t, t + p), safe_ratio(t, t + n)
        rows.append({"class": name, "precision": precision, "recall": recall,
                     "f1": safe_ratio(2 * t, 2 * t + p + n), "support": int(t + n), "predicted": int(t + p)})
    return rows


def counts_to_rates(counts: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """True positives, false positives, false negatives per class from a (true x predicted) matrix."""
    tp = counts.diagonal()
    return tp.tolist(), (counts.sum(0) - tp).tolist(), (counts.sum(1) - tp).tolist()


def row_normalized(counts: torch.Tensor) -> list[list[float]]:
    """Each row (a true class) divided by its total: the share predicted as each class."""
    totals = counts.sum(1, keepdim=True).double()
    return torch.where(totals > 0, counts.double() / totals.clamp_min(1), 0.0).tolist()


class Breakdown:
    """Accumulates what the report shows beyond scalar metrics, for one classification task."""

    def __init__(self, context: MetricContext, class_names: Optional[Sequence[str]]) -> None:
        self.task = context.task
        self.names = class_labels(context.task, context.num_classes, class_names)
        k, threshold = context.num_classes, context.threshold
        if self.task == "multiclass":
            self.confusion = tmc.MulticlassConfusionMatrix(k)
        elif self.task == "binary":
            self.confusion = tmc.BinaryConfusionMatrix(threshold=threshold)
        else:
            self.confusion = tmc.MultilabelConfusionMatrix(k, threshold=threshold)
        mode = {"multiclass": "top_label", "binary": "positive"}.get(self.task)
        self.calibration = CalibrationBins(CALIBRATION_BINS, mode) if mode else None
        self.threshold = threshold if self.task != "multiclass" else None

    @classmethod
    def for_task(cls, context: MetricContext, class_names: Optional[Sequence[str]]) -> Optional["Breakdown"]:
        return cls(context, class_names) if context.task != "regression" else None

    def to(self, device: torch.device) -> "Breakdown":
        self.confusion = self.confusion.to(device)
        if self.calibration is not None:
            self.calibration = self.calibration.to(device)
        return self

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.confusion.update(preds, target.long())
        if self.calibration is not None:
            self.calibration.update(preds, target)

    def reset(self) -> None:
        self.confusion.reset()
        if self.calibration is not None:
            self.calibration.reset()

    def compute(self) -> dict[str, Any]:
        counts = self.confusion.compute().long().cpu()
        if self.task == "multilabel":
            # (labels, 2, 2): [[tn, fp], [fn, tp]] per label
            tp, fp, fn = counts[:, 1, 1].tolist(), counts[:, 0, 1].tolist(), counts[:, 1, 0].tolist()
            confusion = {"layout": "per_label", "labels": self.names, "counts": counts.tolist()}
        else:
            tp, fp, fn = counts_to_rates(counts)
            confusion = {"layout": "true_by_predicted", "labels": self.names, "counts": counts.tolist(),
                         "normalized": row_normalized(counts)}
        result: dict[str, Any] = {"class_names": self.names, "per_class": per_class_table(tp, fp, fn, self.names),
                                  "confusion_matrix": confusion, "threshold": self.threshold}
        if self.calibration is not None:
            with self.calibration.sync_context():  # under torchrun: the bins of every rank, not this one's
                bins = self.calibration.bins()
            result["calibration"] = {"mode": self.calibration.mode, "ece": float(self.calibration.compute()),
                                     "bins": bins}
        return result
