"""The `tensors` source from the CLI: npz and .pt files, split by fractions or by files, every
task the labels can describe, and one clear line (exit 2) for each kind of bad array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import read_json, run_cli, write_yaml

from scripts.make_example_data import make_signals

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "train.epochs=1", "--set", "train.device=cpu", "--set", "model.params.channels=[8]"]


def _config(tmp: Path, params: dict, model: dict | None = None, **extra: object) -> Path:
    return write_yaml(tmp / "cfg.yaml", {
        "run_dir": "runs/t", "data": {"name": "tensors", "params": params, "batch_size": 16},
        "model": model or {"name": "mlp", "params": {"hidden": [16]}}, "train": {"epochs": 1, "device": "cpu"},
        **extra})


def _fails(*args: str) -> str:
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("error:") == 1, result.stderr
    return result.stderr


def test_example_config_trains_and_a_run_evaluates_from_anywhere(tmp_path: Path, monkeypatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    make_signals(work / "data" / "examples" / "signals.npz", n=200)
    result = run_cli("pretrain", ROOT / "configs" / "examples" / "tensors.yaml", *FAST)
    assert result.exit_code == 0, result.output
    run = work / "runs" / "examples" / "tensors"
    info = read_json(run / "run.json")["data"]
    assert info["input_shape"] == [1, 64] and info["class_names"] == ["0", "1", "2", "3"]
    assert info["sizes"] == {"train": 160, "val": 20, "test": 20}
    assert info["splits"]["val"] == {"carved_from": str(work / "data/examples/signals.npz"), "fraction": 0.1,
                                     "seed": 0, "stratified": True, "size": 20}
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["params"]["path"] == str(work / "data" / "examples" / "signals.npz")
    assert config["data"]["params"]["classes"] == ["0", "1", "2", "3"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run_cli("evaluate", run, "--json")
    assert result.exit_code == 0, result.output
    assert result.json()["metrics"]["test"] == read_json(run / "report.json")["metrics"]["test"]


def test_stratified_fractions_keep_class_shares_and_depend_on_split_seed_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    y = np.array([0] * 80 + [1] * 20)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32), y=y)
    from transfer_cli.data import DATASETS

    def build(**params: object):
        return DATASETS.build("tensors", {"path": "d.npz", "val_fraction": 0.2, "test_fraction": 0.1, **params}, seed=0)

    data = build()
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 70, "val": 20, "test": 10}
    assert torch.bincount(data.split("val").y).tolist() == [16, 4]
    assert torch.bincount(data.split("test").y).tolist() == [8, 2]
    assert torch.equal(build().split("val").x, data.split("val").x)
    assert not torch.equal(build(split_seed=1).split("val").x, data.split("val").x)


def test_pt_files_per_split_with_images_given_without_channel_axis(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", 40), ("val", 20), ("test", 20)):
        torch.save({"images": torch.randint(0, 256, (n, 12, 12), dtype=torch.uint8, generator=generator),
                    "labels": torch.arange(n) % 3}, tmp_path / f"{split}.pt")
    params = {"train": "train.pt", "val": "val.pt", "test": "test.pt", "x_key": "images", "y_key": "labels",
              "add_channel": True, "classes": ["a", "b", "c"]}
    _config(tmp_path, params, {"name": "resnet", "params": {"widths": [4]}})
    result = run_cli("pretrain", "cfg.yaml")
    assert result.exit_code == 0, result.output
    info = read_json(tmp_path / "runs" / "t" / "run.json")["data"]
    assert info["input_shape"] == [1, 12, 12] and info["class_names"] == ["a", "b", "c"]
    assert info["splits"]["test"] == {"source": str(tmp_path / "test.pt"), "size": 20}


@pytest.mark.parametrize("y, task, loss, metric", [
    (np.random.default_rng(0).integers(0, 2, (60, 4)), "auto", "bce", "macro_f1"),           # multi-hot -> multilabel
    (np.random.default_rng(0).normal(size=60).astype(np.float32), "auto", "mse", "rmse"),   # floats -> regression
    (np.arange(60) % 2, "binary", "bce", "auroc"),
])
def test_tasks_follow_the_labels(tmp_path: Path, monkeypatch, y: np.ndarray, task: str, loss: str, metric: str) -> None:
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(1).normal(size=(60, 5)).astype(np.float32), y=y)
    _config(tmp_path, {"path": "d.npz", "task": task}, loss={"name": loss})
    result = run_cli("pretrain", "cfg.yaml", "--json")
    assert result.exit_code == 0, result.output
    report = result.json()
    assert report["data"]["task"] == (task if task != "auto" else "multilabel" if y.ndim == 2 else "regression")
    assert metric in report["metrics"]["test"]


def test_loss_that_does_not_fit_the_task_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "d.npz", x=np.zeros((30, 2), np.float32), y=np.linspace(0, 1, 30).astype(np.float32))
    _config(tmp_path, {"path": "d.npz"})
    assert "'cross_entropy' needs a multiclass task, but the data is regression" in _fails("pretrain", "cfg.yaml")


def _npz(tmp: Path, name: str = "d.npz", **arrays: np.ndarray) -> None:
    np.savez(tmp / name, **arrays)


X = np.zeros((40, 3), np.float32)
Y = np.arange(40) % 2


@pytest.mark.parametrize("setup, params, expected", [
    (lambda t: None, {"path": "nope.npz"}, "data.params.path: file not found: {tmp}/nope.npz"),
    (lambda t: _npz(t, features=X, y=Y), {"path": "d.npz"}, "no array 'x'; it has: features, y (set data.params.x_key)"),
    (lambda t: _npz(t, x=X, lables=Y), {"path": "d.npz", "y_key": "labels"},
     "no array 'labels' (did you mean 'lables'?)"),
    (lambda t: _npz(t, x=X, y=Y + 1), {"path": "d.npz", "classes": ["a", "b"]},
     "label 2 (sample 1) is out of range: labels are class indices 0..1"),
    (lambda t: _npz(t, x=X, y=Y - 1), {"path": "d.npz"}, "label -1 (sample 0) is out of range"),
    (lambda t: _npz(t, x=X, y=Y + 0.5), {"path": "d.npz", "task": "multiclass"},
     "labels must be integers for a classification task; sample 0 has 0.5"),
    (lambda t: _npz(t, x=X, y=Y[:30]), {"path": "d.npz"}, "'x' has 40 samples but 'y' has 30"),
    (lambda t: (_npz(t, x=X, y=Y), _npz(t, "v.npz", x=np.zeros((10, 4), np.float32), y=Y[:10])),
     {"train": "d.npz", "val": "v.npz"}, "data.params.val ({tmp}/v.npz): samples of shape (4,), but the training "
                                         "samples are (3,)"),
    (lambda t: _npz(t, x=np.array([None] * 40, dtype=object), y=Y), {"path": "d.npz"},
     "cannot read it as .npz of numeric arrays"),
    (lambda t: _npz(t, x=X, y=Y), {"path": "d.npz", "val_fraction": 0.01},
     "val_fraction 0.01 of 40 samples is no sample"),
    (lambda t: _npz(t, x=X, y=Y), {"train": "d.npz", "test_fraction": 0.2},
     "eval.split: the data has no 'val' split"),
])
def test_bad_arrays_get_one_clear_line(tmp_path: Path, monkeypatch, setup, params: dict, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    extra = {"eval": {"split": "val"}} if "eval.split" in expected else {}
    _config(tmp_path, params, **extra)
    assert expected.format(tmp=tmp_path) in _fails("pretrain", "cfg.yaml")
    assert not (tmp_path / "runs").exists()


def test_arrays_that_do_not_fit_the_model_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _npz(tmp_path, x=X, y=Y)
    _config(tmp_path, {"path": "d.npz"}, {"name": "resnet"})
    assert "model 'resnet' expects images (C, H, W) per sample, but the data has samples of shape (3,)" in _fails(
        "pretrain", "cfg.yaml")


def test_a_last_batch_of_one_with_batchnorm_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _npz(tmp_path, x=np.zeros((33, 3), np.float32), y=np.arange(33) % 2)
    _config(tmp_path, {"train": "d.npz", "val_fraction": 0.0}, {"name": "mlp", "params": {"norm": "batch"}},
            train={"monitor": "train/loss", "device": "cpu"}, eval={"split": "train"})
    line = _fails("pretrain", "cfg.yaml")
    assert "the train split has 33 samples, so with batch_size 16 the last batch has 1" in line
