"""The `image_folder` source: PNG/JPEG class folders decoded by DataLoader workers, with the same
seeded order (and augmentation) as in-memory data, statistics recorded for evaluate, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import read_json, read_jsonl, run_cli, write_yaml
from test_data_tensors import _fails

from scripts.make_example_data import SHAPES, make_shapes

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "train.epochs=1", "--set", "model.params.widths=[4]", "--set", "train.device=cpu",
        "--set", "data.params.size=16", "--set", "data.params.resize=18"]


def _config(tmp: Path, params: dict, per_class: int | None = None, **extra: object) -> Path:
    return write_yaml(tmp / "cfg.yaml", {
        "run_dir": "runs/t", "data": {"name": "image_folder", "params": {"size": 12, "workers": 0, **params},
                                      "batch_size": 8, "per_class": per_class},
        "model": {"name": "resnet", "params": {"widths": [4]}}, "train": {"epochs": 1, "device": "cpu"}, **extra})


@pytest.fixture
def shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    make_shapes(tmp_path / "data" / "examples" / "shapes" / "train", per_class=8, size=20, seed=0)
    make_shapes(tmp_path / "data" / "examples" / "shapes" / "test", per_class=3, size=20, seed=1)
    return tmp_path


def test_example_config_trains_with_workers_and_evaluates_from_anywhere(shapes: Path, monkeypatch) -> None:
    result = run_cli("pretrain", ROOT / "configs" / "examples" / "image_folder.yaml", *TINY,
                     "--set", "data.params.workers=2")
    assert result.exit_code == 0, result.output
    run = shapes / "runs" / "examples" / "image_folder"
    info = read_json(run / "run.json")["data"]
    assert info["class_names"] == list(SHAPES) and info["input_shape"] == [3, 16, 16]
    assert info["sizes"] == {"train": 19, "val": 5, "test": 9} and info["workers"] == 2
    params = yaml.safe_load((run / "config.yaml").read_text())["data"]["params"]
    assert params["classes"] == list(SHAPES)
    assert len(params["mean"]) == 3 and all(0 < m < 1 for m in params["mean"]) and all(s > 0 for s in params["std"])
    assert params["train"] == str(shapes / "data" / "examples" / "shapes" / "train")

    monkeypatch.chdir(shapes / "data")
    result = run_cli("evaluate", run, "--json")
    assert result.exit_code == 0, result.output
    assert result.json()["metrics"]["test"] == read_json(run / "report.json")["metrics"]["test"]


def test_given_statistics_are_used_and_per_class_subsets_work(shapes: Path) -> None:
    _config(shapes, {"path": "data/examples/shapes/train", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            per_class=4)
    result = run_cli("pretrain", "cfg.yaml", "--json")
    assert result.exit_code == 0, result.output
    assert result.json()["data"]["sizes"]["train"] == 12
    params = yaml.safe_load((shapes / "runs" / "t" / "config.yaml").read_text())["data"]["params"]
    assert params["mean"] == [0.5, 0.5, 0.5] and params["std"] == [0.25, 0.25, 0.25]


def _split(root: Path, workers: int, **transform: object):
    from transfer_cli.data import DATASETS

    data = DATASETS.build("image_folder", {"path": str(root), "size": 12, "resize": 16, "random_crop": True,
                                           "flip": True, "workers": workers, "val_fraction": 0.0,
                                           "test_fraction": 0.0, "mean": [0.5] * 3, "std": [0.5] * 3, **transform},
                          seed=0)
    return data.split("train")


def test_training_batches_resume_exactly_and_do_not_depend_on_workers(shapes: Path) -> None:
    root = shapes / "data" / "examples" / "shapes" / "train"
    cpu = torch.device("cpu")
    inline, pooled = _split(root, workers=0), _split(root, workers=2)
    full = list(inline.batches(5, cpu, shuffle=True, seed=3, epoch=1))
    resumed = list(pooled.batches(5, cpu, shuffle=True, seed=3, epoch=1, start=2))
    assert len(full) == 5 and len(resumed) == 3
    for (x1, y1), (x2, y2) in zip(full[2:], resumed):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other_epoch = list(inline.batches(5, cpu, shuffle=True, seed=3, epoch=2))
    assert not torch.equal(full[0][0], other_epoch[0][0])
    evaluation = [x for x, _ in inline.batches(5, cpu)]
    assert torch.equal(torch.cat(evaluation), torch.cat([x for x, _ in inline.batches(5, cpu)]))


def test_an_interrupted_image_run_resumes_to_the_same_weights(shapes: Path) -> None:
    base = ["pretrain", "cfg.yaml", "--set", "train.max_steps=6", "--set", "train.eval_every_steps=3"]
    _config(shapes, {"path": "data/examples/shapes/train", "random_crop": True, "flip": True, "resize": 14})
    assert run_cli(*base, "--run-dir", "runs/whole").exit_code == 0
    # the same run stopped after its first checkpoint, then resumed
    assert run_cli(*base, "--run-dir", "runs/parts", "--set", "train.max_steps=3").exit_code == 0
    run_json = shapes / "runs" / "parts" / "run.json"
    info = read_json(run_json)
    info["status"] = "interrupted"
    run_json.write_text(__import__("json").dumps(info))
    config = shapes / "runs" / "parts" / "config.yaml"
    config.write_text(config.read_text().replace("max_steps: 3", "max_steps: 6"))
    result = run_cli(*base, "--run-dir", "runs/parts", "--resume")
    assert result.exit_code == 0, result.output
    whole = read_jsonl(shapes / "runs" / "whole" / "metrics.jsonl")
    parts = read_jsonl(shapes / "runs" / "parts" / "metrics.jsonl")
    assert [r["train/loss"] for r in parts] == [r["train/loss"] for r in whole]


def _garbage(path: Path) -> None:
    path.write_bytes(b"not an image at all")


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("damage, workers, expected", [
    (lambda r: [p.unlink() for p in (r / "circle").iterdir()], 0,
     "class folder 'circle' has no image (.jpeg, .jpg, .png)"),
    (lambda r: _garbage(r / "circle" / "circle-002.png"), 0,
     "cannot read image {root}/circle/circle-002.png: cannot identify image file"),
    (lambda r: _truncated(r / "square" / "square-001.png"), 2, "cannot read {root}/square/square-001.png:"),
])
def test_bad_image_folders_get_one_clear_line(shapes: Path, damage, workers: int, expected) -> None:
    root = shapes / "data" / "examples" / "shapes" / "train"
    damage(root)
    _config(shapes, {"path": str(root), "workers": workers, "normalize": False})
    assert expected.format(root=root) in _fails("pretrain", "cfg.yaml")


def test_missing_folder_and_folder_without_classes(shapes: Path) -> None:
    _config(shapes, {"train": "nope", "test": "data/examples/shapes/test"})
    assert f"data.params.train: folder not found: {shapes / 'nope'}" in _fails("pretrain", "cfg.yaml")
    (shapes / "flat").mkdir()
    (shapes / "data" / "examples" / "shapes" / "train" / "circle" / "circle-000.png").rename(shapes / "flat" / "a.png")
    _config(shapes, {"path": "flat"})
    assert f"data.params.path ({shapes / 'flat'}): no class sub-folders; expected" in _fails("pretrain", "cfg.yaml")


def test_features_are_cached_for_plain_images_but_never_for_augmented_ones(shapes: Path) -> None:
    _config(shapes, {"path": "data/examples/shapes/train", "val_fraction": 0.25})
    assert run_cli("pretrain", "cfg.yaml").exit_code == 0
    probe = ["finetune", "cfg.yaml", "--init-from", "runs/t", "--set", "transfer.strategy=linear_probe"]
    plain = run_cli(*probe, "--run-dir", "runs/plain")
    assert plain.exit_code == 0, plain.output
    assert "features cached" in plain.stdout
    augmented = run_cli(*probe, "--run-dir", "runs/aug", "--set", "data.params.flip=true")
    assert augmented.exit_code == 0, augmented.output
    assert "features cached" not in augmented.stdout
    forced = run_cli(*probe, "--run-dir", "runs/forced", "--set", "data.params.flip=true",
                     "--set", "transfer.cache_features=true")
    assert forced.exit_code == 2
    assert "the training data is augmented" in forced.stderr
