"""Binary, multilabel and regression runs end to end from the CLI (the built-in data is
multiclass, so this module registers three tiny data sets), the decision threshold, and the
monitored metric being any configured metric."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import pytest
import torch
from conftest import read_json, run_cli, write_yaml

from transfer_cli.core.registry import Params
from transfer_cli.data import DATASETS, DataBundle
from transfer_cli.data.bundle import TensorSplit


class BlobParams(Params):
    task: Literal["binary", "multilabel", "regression"] = "binary"


def _blobs(params: BlobParams, *, seed: int) -> DataBundle:
    """Vectors of 6 features; the labels/targets are simple functions of the first features."""
    generator = torch.Generator().manual_seed(7)
    splits = {}
    for name, n in (("train", 96), ("val", 40), ("test", 50)):
        x = torch.randn(n, 6, generator=generator)
        if params.task == "binary":
            y = (x[:, 0] + 0.5 * torch.randn(n, generator=generator) > 0).long()
        elif params.task == "multilabel":
            y = (x[:, :3] > 0).float()
        else:
            y = 2 * x[:, 0] - x[:, 1]
        splits[name] = TensorSplit(x, y)
    outputs = {"binary": 1, "multilabel": 3, "regression": 1}[params.task]
    names = {"binary": ["absent", "present"], "multilabel": ["red", "green", "blue"], "regression": None}[params.task]
    return DataBundle(splits, task=params.task, num_outputs=outputs, class_names=names)


if "blobs" not in DATASETS:
    DATASETS.register("blobs", params=BlobParams)(_blobs)


def _config(tmp: Path, task: str, **extra: object) -> Path:
    loss = {"binary": "bce", "multilabel": "bce", "regression": "mse"}[task]
    config = {"seed": 0, "run_dir": f"runs/{task}", "data": {"name": "blobs", "params": {"task": task},
                                                             "batch_size": 32},
              "model": {"name": "mlp", "params": {"hidden": [16]}}, "loss": {"name": loss},
              "optim": {"lr": 0.01}, "train": {"epochs": 3, "device": "cpu"}, **extra}
    return write_yaml(tmp / f"{task}.yaml", config)


def test_binary_run_reports_threshold_decisions(tiny: Path) -> None:
    config = _config(tiny, "binary", eval={"threshold": 0.3})
    result = run_cli("pretrain", config)
    assert result.exit_code == 0, result.output
    run = tiny / "runs" / "binary"
    report = read_json(run / "report.json")
    assert report["metric_names"] == ["accuracy", "precision", "recall", "f1", "auroc", "ece"]
    test = report["splits"]["test"]
    assert test["threshold"] == 0.3 and test["class_names"] == ["absent", "present"]
    counts = test["confusion_matrix"]["counts"]
    assert (counts[0][0] + counts[1][1]) / 50 == pytest.approx(report["metrics"]["test"]["accuracy"])
    assert test["per_class"][1]["recall"] == pytest.approx(report["metrics"]["test"]["recall"], abs=1e-6)
    assert test["calibration"]["mode"] == "positive"
    assert set(report["plots"]) >= {"learning_curves", "confusion_test", "reliability_test"}
    assert "Decision threshold: positive when the probability is above 0.3." in (run / "report.md").read_text()
    assert read_json(run / "run.json")["status"] == "completed"

    result = run_cli("evaluate", "runs/binary", "--predictions", "binary.csv")
    assert result.exit_code == 0, result.output
    with open(tiny / "binary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["index", "true", "predicted", "absent", "present"]
    # the CSV applies the run's threshold (the resolved config carries it): p > 0.3 is "present"
    assert all((float(r["present"]) > 0.3) == (r["predicted"] == "present") for r in rows)
    positives = sum(r["predicted"] == "present" for r in rows)
    assert positives == sum(row[1] for row in counts)


def test_multilabel_run_reports_per_label(tiny: Path) -> None:
    result = run_cli("pretrain", _config(tiny, "multilabel"))
    assert result.exit_code == 0, result.output
    report = read_json(tiny / "runs" / "multilabel" / "report.json")
    assert report["metric_names"][:2] == ["accuracy", "subset_accuracy"]
    test = report["splits"]["test"]
    assert test["confusion_matrix"]["layout"] == "per_label"
    assert [row["class"] for row in test["per_class"]] == ["red", "green", "blue"]
    correct = sum(c[0][0] + c[1][1] for c in test["confusion_matrix"]["counts"])
    assert correct / (50 * 3) == pytest.approx(report["metrics"]["test"]["accuracy"])
    assert "confusion_test" in report["plots"] and "reliability_test" not in report["plots"]


def test_regression_run_reports_errors_and_monitors_rmse(tiny: Path) -> None:
    result = run_cli("pretrain", _config(tiny, "regression", train={"epochs": 3, "device": "cpu",
                                                                     "monitor": "val/rmse"}))
    assert result.exit_code == 0, result.output
    report = read_json(tiny / "runs" / "regression" / "report.json")
    assert list(report["metrics"]["test"]) == ["loss", "mae", "rmse", "r2"]
    assert report["monitor_mode"] == "min"
    # the loss is the MSE, so RMSE is its square root
    assert report["metrics"]["test"]["rmse"] == pytest.approx(report["metrics"]["test"]["loss"] ** 0.5, rel=1e-4)
    assert report["splits"]["test"] == {"size": 50}
    assert set(report["plots"]) == {"learning_curves"}


@pytest.mark.parametrize("monitor, mode", [("val/nll", "min"), ("val/ece", "min"), ("val/macro_f1", "max")])
def test_any_configured_metric_can_be_monitored(tiny: Path, monitor: str, mode: str) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", f"train.monitor={monitor}",
                     "--set", "train.epochs=3")
    assert result.exit_code == 0, result.output
    run = tiny / "runs" / "pretrain"
    report = read_json(run / "report.json")
    assert report["monitor"] == monitor and report["monitor_mode"] == mode
    evals = [e for e in (run / "metrics.jsonl").read_text().splitlines()]
    values = [float(e.split(f'"{monitor}": ')[1].split(",")[0].rstrip("}")) for e in evals]
    best = min(values) if mode == "min" else max(values)
    assert report["checkpoint"]["value"] == pytest.approx(best)
    assert report["checkpoint"]["monitor"] == monitor


def test_threshold_on_a_multiclass_task_is_a_config_error(tiny: Path) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "eval.threshold=0.4")
    assert result.exit_code == 2
    assert "eval.threshold: only binary and multilabel tasks use a decision threshold" in result.stderr
    assert not (tiny / "runs" / "pretrain").exists()


def test_top_k_not_below_the_class_count_is_refused_before_training(tiny: Path) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "data.params.task=target",
                     "--set", "eval.metrics=[accuracy,top5_accuracy,mae]")
    assert result.exit_code == 2
    assert "'top5_accuracy' needs more than 5 classes, the data has 5" in result.stderr
    assert "'mae' is for regression tasks, but the data is multiclass" in result.stderr
    assert not (tiny / "runs" / "pretrain").exists()


def test_monitoring_a_metric_that_is_not_configured_is_a_config_error(tiny: Path) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "eval.metrics=[accuracy]",
                     "--set", "train.monitor=val/auroc")
    assert result.exit_code == 2
    assert "train.monitor: 'val/auroc' is not logged" in result.stderr
    assert "val/accuracy" in result.stderr


@pytest.mark.parametrize("task, monitor, test_name", [
    ("binary", None, "mcnemar_exact"), ("multilabel", None, "mcnemar_exact"),
    ("regression", "val/mae", "paired_t_absolute_errors"), ("regression", None, "paired_t_squared_errors")])
def test_the_gain_of_every_task_kind_has_its_paired_statistics(tiny: Path, task: str, monitor: str,
                                                                test_name: str) -> None:
    train = {"epochs": 3, "device": "cpu", **({"monitor": monitor} if monitor else {})}
    assert run_cli("pretrain", _config(tiny, task, train=train)).exit_code == 0
    result = run_cli("finetune", _config(tiny, task, train=train), "--init-from", f"runs/{task}",
                     "--run-dir", f"runs/{task}-ft", "--baseline", "scratch")
    assert result.exit_code == 0, result.output
    report = read_json(tiny / "runs" / f"{task}-ft" / "report.json")
    gain = report["gains"]["equal_budget"]
    stats = gain["significance"]
    assert stats["test"] == test_name and stats["samples"] == 50 and 0 <= stats["p_value"] <= 1
    # the bootstrap's whole-sample gain is the reported gain of the metric it is on
    on = {"subset_accuracy": "subset_accuracy", "mse": "loss"}.get(stats["metric"], stats["metric"])
    assert stats["gain"] == pytest.approx(gain["all"][on], abs=1e-5)
    assert stats["interval"][0] <= stats["gain"] <= stats["interval"][1]
    assert "transfer gain on test, equal budget" in result.output + result.stderr
