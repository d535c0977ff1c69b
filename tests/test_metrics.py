"""Every metric against a hand computation on a small fixed example.

The expected numbers are worked out in the comments from the literal probabilities below, not
from torchmetrics: a wrong averaging default, a shared compute-group state or an off-by-one
bin would all show up here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics import classification as tmc

from transfer_cli.core.errors import ConfigError
from transfer_cli.eval.breakdown import Breakdown
from transfer_cli.eval.metrics import METRICS, MetricContext, build_metrics, default_metrics, higher_is_better

# ---- multiclass: 4 classes, 9 samples ----------------------------------------------------------
MC_PROBS = torch.tensor([
    [0.70, 0.20, 0.05, 0.05],  # s0 true 0, pred 0 right
    [0.10, 0.62, 0.18, 0.10],  # s1 true 1, pred 1 right
    [0.30, 0.35, 0.25, 0.10],  # s2 true 2, pred 1 wrong (top-2 {1, 0}: wrong; top-3: right)
    [0.05, 0.15, 0.50, 0.30],  # s3 true 3, pred 2 wrong (top-2 {2, 3}: right)
    [0.40, 0.45, 0.10, 0.05],  # s4 true 0, pred 1 wrong (top-2 {1, 0}: right)
    [0.15, 0.10, 0.65, 0.10],  # s5 true 2, pred 2 right
    [0.18, 0.20, 0.20, 0.42],  # s6 true 3, pred 3 right
    [0.55, 0.15, 0.20, 0.10],  # s7 true 1, pred 0 wrong (top-2 {0, 2}: wrong; top-3: right)
    [0.12, 0.08, 0.72, 0.08],  # s8 true 2, pred 2 right
])
MC_TARGET = torch.tensor([0, 1, 2, 3, 0, 2, 3, 1, 2])
# confusion (rows true, columns predicted):
#   true 0: s0->0, s4->1        [1, 1, 0, 0]
#   true 1: s1->1, s7->0        [1, 1, 0, 0]
#   true 2: s2->1, s5->2, s8->2 [0, 1, 2, 0]
#   true 3: s3->2, s6->3        [0, 0, 1, 1]
MC_COUNTS = [[1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 2, 0], [0, 0, 1, 1]]
# per class: precision = tp / column sum, recall = tp / row sum, F1 = 2tp / (2tp + fp + fn)
MC_PRECISION = [1 / 2, 1 / 3, 2 / 3, 1 / 1]
MC_RECALL = [1 / 2, 1 / 2, 2 / 3, 1 / 2]
MC_F1 = [2 / 4, 2 / 5, 4 / 6, 2 / 3]
MC_EXPECTED = {
    "accuracy": 5 / 9,  # s0, s1, s5, s6, s8 right: micro, not the torchmetrics default (macro)
    "balanced_accuracy": sum(MC_RECALL) / 4,  # 0.5417
    "macro_recall": sum(MC_RECALL) / 4,
    "macro_precision": sum(MC_PRECISION) / 4,  # 0.625
    "macro_f1": sum(MC_F1) / 4,  # 0.5583
    "top2_accuracy": 7 / 9,  # all but s2 and s7
    "top3_accuracy": 9 / 9,
    "nll": -(math.log(0.70) + math.log(0.62) + math.log(0.25) + math.log(0.30) + math.log(0.40)
             + math.log(0.65) + math.log(0.42) + math.log(0.15) + math.log(0.72)) / 9,
    # 15 bins of width 1/15; per bin count x |accuracy - mean confidence|:
    #   bin 5 {s2 .35 wrong}: .35 | bin 6 {s6 .42 right, s4 .45 wrong}: 2 x |.5 - .435| = .13
    #   bin 7 {s3 .50 wrong}: .50 | bin 8 {s7 .55 wrong}: .55
    #   bin 9 {s1 .62, s5 .65, right}: 2 x |1 - .635| = .73 | bin 10 {s0 .70, s8 .72, right}: 2 x .29 = .58
    "ece": (0.35 + 0.13 + 0.50 + 0.55 + 0.73 + 0.58) / 9,
}


def pairwise_auc(scores: list[float], positive: list[bool]) -> float:
    """AUROC by its definition: the share of (positive, negative) pairs ranked right, ties half."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def compute(names: list[str], context: MetricContext, preds: torch.Tensor, target: torch.Tensor,
            chunks: int = 1) -> dict[str, float]:
    collection = build_metrics(names, context)
    for p, t in zip(preds.chunk(chunks), target.chunk(chunks)):
        collection.update(p, t)
    return {k: float(v) for k, v in collection.compute().items()}


@pytest.mark.parametrize("chunks", [1, 3], ids=["one-batch", "three-batches"])
def test_multiclass_metrics_match_hand_computation(chunks: int) -> None:
    names = list(MC_EXPECTED) + ["auroc"]
    got = compute(names, MetricContext("multiclass", 4), MC_PROBS, MC_TARGET, chunks)
    for name, expected in MC_EXPECTED.items():
        assert got[name] == pytest.approx(expected, abs=1e-6), name
    # one-vs-rest per class, then the plain mean over classes (macro); the example's scores are
    # more than 1/199 apart, so 200 bins reproduce the exact curve
    per_class = [pairwise_auc(MC_PROBS[:, k].tolist(), (MC_TARGET == k).tolist()) for k in range(4)]
    # class 1: positives {.62 .15} vs 7 negatives {.20 .35 .15 .45 .10 .20 .08}: .62 beats all 7,
    # .15 beats .10 and .08 and ties .15 -> 9.5 of 14 pairs
    assert per_class[1] == pytest.approx(9.5 / 14)
    assert got["auroc"] == pytest.approx(sum(per_class) / 4, abs=1e-6)


def test_multiclass_metrics_agree_with_torchmetrics_references() -> None:
    # our ECE keeps bounded bins instead of every confidence; same number as torchmetrics' ECE here
    got = compute(["ece", "auroc"], MetricContext("multiclass", 4), MC_PROBS, MC_TARGET)
    reference = tmc.MulticlassCalibrationError(4, n_bins=15, norm="l1")(MC_PROBS, MC_TARGET)
    assert got["ece"] == pytest.approx(float(reference), abs=1e-6)
    exact = tmc.MulticlassAUROC(4, average="macro", thresholds=None)(MC_PROBS, MC_TARGET)
    assert got["auroc"] == pytest.approx(float(exact), abs=1e-6)


def test_metrics_in_one_collection_keep_their_own_state() -> None:
    # accuracy (micro) and balanced accuracy (macro recall) share a torchmetrics base class;
    # with compute groups on they could be merged. They differ on this example.
    got = compute(["accuracy", "balanced_accuracy", "macro_recall", "top2_accuracy"],
                  MetricContext("multiclass", 4), MC_PROBS, MC_TARGET)
    assert got["accuracy"] == pytest.approx(5 / 9)
    assert got["balanced_accuracy"] == pytest.approx(0.5416667, abs=1e-6)
    assert got["top2_accuracy"] == pytest.approx(7 / 9)


def test_multiclass_breakdown_matches_hand_computation() -> None:
    breakdown = Breakdown(MetricContext("multiclass", 4), ["a", "b", "c", "d"])
    for p, t in zip(MC_PROBS.chunk(2), MC_TARGET.chunk(2)):
        breakdown.update(p, t)
    out = breakdown.compute()
    assert out["class_names"] == ["a", "b", "c", "d"]
    assert out["confusion_matrix"]["counts"] == MC_COUNTS
    normalized = [[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 1 / 3, 2 / 3, 0], [0, 0, .5, .5]]
    for row, expected in zip(out["confusion_matrix"]["normalized"], normalized):
        assert row == pytest.approx(expected)
    table = out["per_class"]
    assert [r["class"] for r in table] == ["a", "b", "c", "d"]
    assert [r["precision"] for r in table] == pytest.approx(MC_PRECISION)
    assert [r["recall"] for r in table] == pytest.approx(MC_RECALL)
    assert [r["f1"] for r in table] == pytest.approx(MC_F1)
    assert [r["support"] for r in table] == [2, 2, 3, 2]
    assert [r["predicted"] for r in table] == [2, 3, 3, 1]
    calibration = out["calibration"]
    assert calibration["ece"] == pytest.approx(MC_EXPECTED["ece"], abs=1e-6)
    filled = {i: b for i, b in enumerate(calibration["bins"]) if b["count"]}
    assert sorted(filled) == [5, 6, 7, 8, 9, 10]
    assert filled[6]["count"] == 2
    assert filled[6]["confidence"] == pytest.approx(0.435) and filled[6]["outcome"] == pytest.approx(0.5)
    assert filled[10]["confidence"] == pytest.approx(0.71) and filled[10]["outcome"] == 1.0
    assert calibration["bins"][0]["confidence"] is None and calibration["bins"][14]["upper"] == 1.0


def test_calibration_puts_confidence_one_in_the_last_bin() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = Breakdown(MetricContext("multiclass", 2), None)
    out.update(probs, torch.tensor([0, 0]))
    calibration = out.compute()["calibration"]
    assert calibration["bins"][14]["count"] == 2
    assert calibration["ece"] == pytest.approx(0.5)  # confidence 1, accuracy 1/2


def test_macro_average_skips_a_class_that_is_neither_present_nor_predicted() -> None:
    # torchmetrics gives such a class weight 0 in macro averages; the per-class table still lists it
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    target = torch.tensor([0, 1, 1])
    got = compute(["macro_recall"], MetricContext("multiclass", 3), probs, target)
    assert got["macro_recall"] == pytest.approx((1 + 0.5) / 2)
    breakdown = Breakdown(MetricContext("multiclass", 3), None)
    breakdown.update(probs, target)
    assert breakdown.compute()["per_class"][2] == {"class": "2", "precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                   "support": 0, "predicted": 0}


# ---- binary: 8 samples, probabilities of the positive class ----------------------------------------
BIN_PROBS = torch.tensor([0.90, 0.82, 0.35, 0.58, 0.22, 0.45, 0.10, 0.70])
BIN_TARGET = torch.tensor([1, 1, 1, 0, 0, 1, 0, 0])


@pytest.mark.parametrize("threshold, expected", [
    # positive when p > 0.5: [1 1 0 1 0 0 0 1] -> tp 2 (s0 s1), fn 2 (s2 s5), fp 2 (s3 s7), tn 2
    (0.5, {"accuracy": 4 / 8, "precision": 2 / 4, "recall": 2 / 4, "f1": 4 / 8}),
    # positive when p > 0.3: [1 1 1 1 0 1 0 1] -> tp 4, fn 0, fp 2, tn 2
    (0.3, {"accuracy": 6 / 8, "precision": 4 / 6, "recall": 4 / 4, "f1": 8 / 10}),
])
def test_binary_metrics_match_hand_computation(threshold: float, expected: dict) -> None:
    names = default_metrics("binary", 1)
    got = compute(names, MetricContext("binary", 1, threshold), BIN_PROBS, BIN_TARGET, chunks=2)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name
    # positives {.90 .82 .35 .45} vs negatives {.58 .22 .10 .70}: .90 and .82 beat all 4,
    # .35 and .45 beat 2 -> 12 of 16 pairs; does not depend on the threshold
    assert got["auroc"] == pytest.approx(12 / 16, abs=1e-6)
    # one sample per bin: ECE = mean |y - p| = (.10 + .18 + .65 + .58 + .22 + .55 + .10 + .70) / 8
    assert got["ece"] == pytest.approx(3.08 / 8, abs=1e-6)
    reference = tmc.BinaryCalibrationError(n_bins=15)(BIN_PROBS, BIN_TARGET)
    assert got["ece"] == pytest.approx(float(reference), abs=1e-6)


def test_binary_breakdown_uses_the_threshold() -> None:
    breakdown = Breakdown(MetricContext("binary", 1, 0.3), ["healthy", "sick"])
    breakdown.update(BIN_PROBS, BIN_TARGET)
    out = breakdown.compute()
    assert out["threshold"] == 0.3
    assert out["confusion_matrix"]["counts"] == [[2, 2], [0, 4]]  # rows: true negative, true positive
    assert [r["class"] for r in out["per_class"]] == ["healthy", "sick"]
    assert out["per_class"][1]["precision"] == pytest.approx(4 / 6)
    assert out["calibration"]["mode"] == "positive"


# ---- multilabel: 3 labels, 4 samples ---------------------------------------------------------------
ML_PROBS = torch.tensor([[0.9, 0.2, 0.6], [0.3, 0.8, 0.4], [0.7, 0.6, 0.45], [0.2, 0.1, 0.9]])
ML_TARGET = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 0, 1]])
# decisions at 0.5: [[1 0 1] [0 1 0] [1 1 0] [0 0 1]]
#   label 0: tp 2 fp 0 fn 0 (4 of 4 right); label 1: tp 1 fp 1 fn 0 (3 of 4); label 2: tp 2 fp 0 fn 1 (3 of 4)
ML_EXPECTED = {
    "accuracy": 10 / 12,  # micro over all 12 label decisions
    "subset_accuracy": 2 / 4,  # s0 and s3 have every label right
    "macro_precision": (1 + 1 / 2 + 1) / 3,
    "macro_recall": (1 + 1 + 2 / 3) / 3,
    "macro_f1": (1 + 2 / 3 + 4 / 5) / 3,
    # label 0 and 1 separate perfectly; label 2: positives {.6 .4 .9} vs negative {.45} -> 2 of 3
    "auroc": (1 + 1 + 2 / 3) / 3,
}


def test_multilabel_metrics_match_hand_computation() -> None:
    got = compute(default_metrics("multilabel", 3), MetricContext("multilabel", 3), ML_PROBS, ML_TARGET, chunks=2)
    for name, expected in ML_EXPECTED.items():
        assert got[name] == pytest.approx(expected, abs=1e-6), name


def test_multilabel_threshold_changes_decisions() -> None:
    # at 0.25: label 0 [1 1 1 0] (3 right), label 1 [0 1 1 0] (3 right), label 2 [1 1 1 1] (3 right)
    got = compute(["accuracy"], MetricContext("multilabel", 3, 0.25), ML_PROBS, ML_TARGET)
    assert got["accuracy"] == pytest.approx(9 / 12)
    breakdown = Breakdown(MetricContext("multilabel", 3, 0.25), ["x", "y", "z"])
    breakdown.update(ML_PROBS, ML_TARGET)
    out = breakdown.compute()
    assert out["confusion_matrix"]["layout"] == "per_label"
    assert out["confusion_matrix"]["counts"][2] == [[0, 1], [0, 3]]  # [[tn fp] [fn tp]] of label z
    assert [r["support"] for r in out["per_class"]] == [2, 1, 3]
    assert "calibration" not in out


# ---- regression ---------------------------------------------------------------------------------------
def test_regression_metrics_match_hand_computation() -> None:
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    preds = torch.tensor([1.5, 1.5, 3.0, 5.0])  # errors .5 -.5 0 1
    got = compute(default_metrics("regression", 1), MetricContext("regression", 1), preds, target, chunks=2)
    assert got["mae"] == pytest.approx(2.0 / 4)
    assert got["rmse"] == pytest.approx(math.sqrt(1.5 / 4))
    # R2 = 1 - SS_res / SS_tot = 1 - 1.5 / (2.25 + .25 + .25 + 2.25)
    assert got["r2"] == pytest.approx(1 - 1.5 / 5)


# ---- choosing metrics ----------------------------------------------------------------------------------
def test_defaults_include_top_k_only_below_the_class_count() -> None:
    assert "top5_accuracy" in default_metrics("multiclass", 10)
    assert "top2_accuracy" in default_metrics("multiclass", 5)
    assert not any(n.startswith("top") for n in default_metrics("multiclass", 2))
    for task, k in (("multiclass", 10), ("multiclass", 3), ("binary", 1), ("multilabel", 4), ("regression", 1)):
        build_metrics(default_metrics(task, k), MetricContext(task, k))  # every default builds


def test_top_k_not_below_the_class_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'top5_accuracy' needs more than 5 classes, the data has 5"):
        build_metrics(["top5_accuracy"], MetricContext("multiclass", 5))


def test_metric_for_another_task_is_a_config_error_listing_all() -> None:
    with pytest.raises(ConfigError) as exc:
        build_metrics(["mae", "f1"], MetricContext("multiclass", 4))
    assert len(exc.value.problems) == 2
    assert "'mae' is for regression tasks, but the data is multiclass" in exc.value.problems[0]


@pytest.mark.parametrize("name, higher", [("accuracy", True), ("nll", False), ("ece", False), ("auroc", True),
                                          ("macro_f1", True), ("loss", False)])
def test_direction_of_each_metric(name: str, higher: bool) -> None:
    assert higher_is_better(name, MetricContext("multiclass", 4)) is higher


def test_every_registered_metric_is_covered_here() -> None:
    covered = set(MC_EXPECTED) | set(ML_EXPECTED) | {"auroc", "precision", "recall", "f1", "top5_accuracy",
                                                     "mae", "rmse", "r2"}
    assert set(METRICS.names()) <= covered
