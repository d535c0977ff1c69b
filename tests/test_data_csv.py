"""The `csv` source from the CLI: numeric features, string labels mapped to classes, the mapping
and the standardization recorded in the run and reused by evaluate, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import read_json, run_cli, write_yaml
from test_data_tensors import _fails

from scripts.make_example_data import SPECIES, make_table

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp: Path, params: dict, **extra: object) -> Path:
    return write_yaml(tmp / "cfg.yaml", {
        "run_dir": "runs/t", "data": {"name": "csv", "params": {"label": "species", **params}, "batch_size": 16},
        "model": {"name": "mlp", "params": {"hidden": [16]}}, "train": {"epochs": 1, "device": "cpu"}, **extra})


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_example_config_maps_labels_and_records_the_mapping(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_table(tmp_path / "data" / "examples" / "table.csv", n=90)
    result = run_cli("pretrain", ROOT / "configs" / "examples" / "csv.yaml", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "examples" / "csv"
    params = yaml.safe_load((run / "config.yaml").read_text())["data"]["params"]
    assert params["classes"] == list(SPECIES)
    assert params["features"] == ["length", "width", "density", "weight"]
    assert len(params["mean"]) == len(params["std"]) == 4
    report = read_json(run / "report.json")
    assert report["data"]["class_names"] == list(SPECIES)
    assert report["data"]["ignored_columns"] == ["sample_id"]
    assert report["data"]["sizes"] == {"train": 54, "val": 18, "test": 18}


def test_evaluate_config_reuses_the_runs_class_order_and_statistics(tmp_path: Path, monkeypatch) -> None:
    """A test file holding only some classes would otherwise get another label order."""
    monkeypatch.chdir(tmp_path)
    table = make_table(tmp_path / "table.csv", n=90)
    _config(tmp_path, {"path": "table.csv", "val_fraction": 0.2, "test_fraction": 0.2}, train={"epochs": 3})
    assert run_cli("pretrain", "cfg.yaml").exit_code == 0
    lines = table.read_text().splitlines()
    only_cobalt = [lines[0]] + [line for line in lines[1:] if line.endswith(",cobalt")]
    _csv(tmp_path / "cobalt.csv", "\n".join(only_cobalt) + "\n")
    write_yaml(tmp_path / "eval.yaml", {"run_dir": "runs/eval", "data": {"name": "csv", "params": {
        "test": "cobalt.csv", "label": "species"}}, "eval": {"checkpoint": "runs/t"}})
    result = run_cli("evaluate", "eval.yaml", "--json")
    assert result.exit_code == 0, result.output
    report = result.json()
    assert report["data"]["class_names"] == list(SPECIES) and report["data"]["sizes"] == {"test": 30}
    trained = yaml.safe_load((tmp_path / "runs" / "t" / "config.yaml").read_text())["data"]["params"]
    evaluated = yaml.safe_load((tmp_path / "runs" / "eval" / "config.yaml").read_text())["data"]["params"]
    assert {k: evaluated[k] for k in ("classes", "features", "mean", "std")} == \
        {k: trained[k] for k in ("classes", "features", "mean", "std")}


def test_numeric_labels_with_fractions_are_regression(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    rows = "\n".join(f"{i},{i % 7},{i * 0.5 + 0.25}" for i in range(40))
    _csv(tmp_path / "r.csv", f"a,b,target\n{rows}\n")
    _config(tmp_path, {"path": "r.csv", "label": "target"}, loss={"name": "mse"})
    result = run_cli("pretrain", "cfg.yaml", "--json")
    assert result.exit_code == 0, result.output
    assert result.json()["data"]["task"] == "regression"
    assert set(result.json()["metrics"]["test"]) == {"loss", "mae", "rmse", "r2"}


GOOD = "f1,f2,species\n" + "".join(f"{i},{i % 3},{'ab'[i % 2]}\n" for i in range(30))


@pytest.mark.parametrize("files, params, expected", [
    ({}, {"path": "t.csv"}, "data.params.path: file not found: {tmp}/t.csv"),
    ({"t.csv": GOOD}, {"path": "t.csv", "label": "specie"},
     "data.params.path ({tmp}/t.csv): no column 'specie' (did you mean 'species'?); it has: f1, f2, species "
     "(set data.params.label)"),
    ({"t.csv": GOOD}, {"path": "t.csv", "features": ["f1", "f3"]}, "no column 'f3'"),
    ({"t.csv": GOOD.replace("3,0,b", "3,,b")}, {"path": "t.csv"}, "line 5, column 'f2' is empty"),
    ({"t.csv": GOOD.replace("3,0,b", "3,x,b")}, {"path": "t.csv", "features": ["f1", "f2"]},
     "line 5, column 'f2' has 'x', not a number"),
    ({"t.csv": GOOD.replace("3,0,b", "3,0")}, {"path": "t.csv"}, "line 5 has 2 fields, the header has 3"),
    ({"t.csv": GOOD, "v.csv": "f1,f2,species\n1,2,c\n"}, {"train": "t.csv", "val": "v.csv", "test": "t.csv"},
     "data.params.val ({tmp}/v.csv): column 'species': label 'c' (sample 0) is not one of the classes (a, b)"),
    ({"t.csv": GOOD}, {"path": "t.csv", "classes": ["a"]}, "label 'b' (sample 1) is not one of the classes (a)"),
    ({"t.csv": "species\n" + "a\n" * 5}, {"path": "t.csv", "val_fraction": 0.2, "test_fraction": 0.2},
     "no numeric column besides the label 'species'"),
    ({"t.csv": GOOD}, {"path": "t.csv", "features": ["f1", "species"]}, "the label column 'species' cannot also be"),
])
def test_bad_tables_get_one_clear_message(tmp_path: Path, monkeypatch, files: dict, params: dict, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        _csv(tmp_path / name, text)
    _config(tmp_path, params)
    assert expected.format(tmp=tmp_path) in _fails("pretrain", "cfg.yaml")
    assert not (tmp_path / "runs").exists()


def test_split_layout_mistakes_are_config_errors_with_the_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text("data:\n  name: csv\n  params: {path: t.csv, val: v.csv, label: y}\n"
                                       "model: {name: mlp}\n")
    err = _fails("pretrain", "cfg.yaml")
    assert "cfg.yaml:3: data.params: `val`/`test` sources go with `train`, not with `path`" in err
