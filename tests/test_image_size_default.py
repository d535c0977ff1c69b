"""`image_folder` without `size`: images of one size run at that size (never upsampled to a fixed
default), the size is recorded in the run and reused by evaluate; mixed sizes ask for `size`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import read_json, run_cli, write_yaml
from test_data_tensors import _fails

from scripts.make_example_data import make_shapes


def _config(tmp: Path, **params: object) -> Path:
    return write_yaml(tmp / "cfg.yaml", {
        "run_dir": "runs/t", "data": {"name": "image_folder", "params": {"path": "shapes", "workers": 0, **params},
                                      "batch_size": 8},
        "model": {"name": "resnet", "params": {"widths": [4]}}, "train": {"epochs": 1, "device": "cpu"}})


def test_a_folder_of_28x28_images_runs_at_28x28_and_evaluate_reuses_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_shapes(tmp_path / "shapes", per_class=6, size=28, seed=0)
    _config(tmp_path)
    result = run_cli("pretrain", "cfg.yaml")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "t"
    assert read_json(run / "run.json")["data"]["input_shape"] == [3, 28, 28]
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["params"]["size"] == [28, 28]
    result = run_cli("evaluate", run, "--json")
    assert result.exit_code == 0, result.output
    assert result.json()["metrics"]["test"] == read_json(run / "report.json")["metrics"]["test"]


def test_mixed_sizes_ask_for_size_in_one_line_and_a_given_size_wins(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_shapes(tmp_path / "shapes", per_class=6, size=28, seed=0)
    make_shapes(tmp_path / "other", per_class=1, size=20, seed=1)
    odd = next((tmp_path / "other" / "circle").iterdir())
    odd.rename(tmp_path / "shapes" / "circle" / f"odd{odd.suffix}")
    _config(tmp_path)
    err = _fails("pretrain", "cfg.yaml")
    assert f"data.params.size: required, because the images under {tmp_path / 'shapes'} have 2 different sizes" in err
    assert "28x28" in err and "20x20" in err and "odd.png" in err and "set data.params.size, e.g. [28, 28]" in err
    assert not (tmp_path / "runs" / "t").exists()
    _config(tmp_path, size=16)
    result = run_cli("pretrain", "cfg.yaml", "--json")
    assert result.exit_code == 0, result.output
    assert read_json(tmp_path / "runs" / "t" / "run.json")["data"]["input_shape"] == [3, 16, 16]


@pytest.mark.parametrize("size", [[0, 4], [4, 4, 4]])
def test_a_bad_size_is_still_refused(tmp_path: Path, monkeypatch, size) -> None:
    monkeypatch.chdir(tmp_path)
    make_shapes(tmp_path / "shapes", per_class=2, size=8, seed=0)
    _config(tmp_path, size=size)
    assert "data.params.size" in _fails("pretrain", "cfg.yaml")
