"""Held-out inputs (issue 16): YAML that is valid but holds no mapping of keys (empty, only
comments, `null`, a bare scalar, a list) wherever YAML is read, and the range printed by label
errors. Each gets one clear line naming the file or key, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_yaml

# (file text, what the message says about it)
EMPTY = [
    ("", "the file is empty"),
    ("# data: {name: motifs}\n\n# nothing else\n", "the file holds only comments"),
    ("null\n", "the file holds only `null`"),
    ("~  # nothing\n", "the file holds only `~`"),
    ("---\n...\n", "the file holds only `---` (a null document)"),
]
NOT_MAPPING = [
    ("42\n", "got a number, 42"),
    ("motifs\n", "got a string, 'motifs'"),
    ("true\n", "got a boolean, True"),
    ("- data\n- model\n", "got a list of 2 items"),
    ("[]\n", "got an empty list"),
]
VARIANTS = [pytest.param(text, said, "empty config", id=f"empty-{i}") for i, (text, said) in enumerate(EMPTY)] + [
    pytest.param(text, said, "invalid config", id=f"scalar-{i}") for i, (text, said) in enumerate(NOT_MAPPING)]


def _one_line_error(*args: str) -> str:
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _pretrained(tiny: Path) -> Path:
    assert run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1").exit_code == 0
    return tiny / "runs" / "pretrain"


# ---- a config file ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, said, header", VARIANTS)
@pytest.mark.parametrize("command", ["validate", "pretrain"])
def test_config_without_keys(tiny: Path, command: str, text: str, said: str, header: str) -> None:
    write_yaml(tiny / "configs" / "tiny" / "bad.yaml", text)
    line = _one_line_error(command, "configs/tiny/bad.yaml")
    assert line.startswith(f"error: {header}: configs/tiny/bad.yaml: "), line
    assert said in line and "a mapping of keys" in line and "data: {name: motifs}" in line, line
    assert not (tiny / "runs").exists()


def test_empty_mapping_says_what_is_missing(tiny: Path) -> None:
    write_yaml(tiny / "configs" / "tiny" / "bad.yaml", "{}\n")
    line = _one_line_error("validate", "configs/tiny/bad.yaml")
    assert "configs/tiny/bad.yaml: data: required key is missing (e.g. `data: {name: motifs}`)" in line


def test_config_without_data_section_is_a_config_error(tiny: Path) -> None:
    write_yaml(tiny / "configs" / "tiny" / "bad.yaml", "seed: 1\nmodel: {name: cnn1d}\n")
    line = _one_line_error("validate", "configs/tiny/bad.yaml")
    assert "data: required key is missing" in line


def test_section_with_only_comments_under_it(tiny: Path) -> None:
    write_yaml(tiny / "configs" / "tiny" / "bad.yaml", "extends: pretrain.yaml\ntrain:\n  # epochs: 3\n")
    line = _one_line_error("validate", "configs/tiny/bad.yaml")
    assert "configs/tiny/bad.yaml:2: train: expected a mapping of keys, got nothing" in line
    assert "leave the section out for its defaults" in line


def test_data_section_null(tiny: Path) -> None:
    write_yaml(tiny / "configs" / "tiny" / "bad.yaml", "extends: base.yaml\ndata:\n")
    line = _one_line_error("validate", "configs/tiny/bad.yaml")
    assert "configs/tiny/bad.yaml:2: data: expected a mapping of keys, got nothing" in line


# ---- an extends target -----------------------------------------------------------------------
@pytest.mark.parametrize("text, said, header", VARIANTS)
def test_extends_target_without_keys(tiny: Path, text: str, said: str, header: str) -> None:
    write_yaml(tiny / "configs" / "tiny" / "base.yaml", text)
    line = _one_line_error("validate", "configs/tiny/pretrain.yaml")
    named = "configs/tiny/base.yaml (extended by configs/tiny/pretrain.yaml:1): "
    assert line.startswith(f"error: {header}: {named}"), line
    assert said in line and "remove it from the extends of configs/tiny/pretrain.yaml" in line, line


def test_empty_extends_target_deep_in_the_chain(tiny: Path) -> None:
    write_yaml(tiny / "configs" / "tiny" / "base.yaml", "extends: [common.yaml]\nseed: 0\n")
    write_yaml(tiny / "configs" / "tiny" / "common.yaml", "# to be written\n")
    line = _one_line_error("pretrain", "configs/tiny/pretrain.yaml")
    assert "configs/tiny/common.yaml (extended by configs/tiny/base.yaml:1): the file holds only comments" in line


# ---- a run's config.yaml ---------------------------------------------------------------------
@pytest.mark.parametrize("text, said, header", VARIANTS)
def test_evaluate_run_whose_config_has_no_keys(tiny: Path, text: str, said: str, header: str) -> None:
    run = _pretrained(tiny)
    (run / "config.yaml").write_text(text)
    line = _one_line_error("evaluate", "runs/pretrain")
    assert line.startswith(f"error: {header}: runs/pretrain/config.yaml (the config of run runs/pretrain): "), line
    assert said in line and "run that stage again" in line, line


@pytest.mark.parametrize("text, said, header", VARIANTS)
def test_init_from_run_whose_config_has_no_keys(tiny: Path, text: str, said: str, header: str) -> None:
    run = _pretrained(tiny)
    (run / "config.yaml").write_text(text)
    line = _one_line_error("finetune", "configs/tiny/finetune.yaml")
    assert f"{run / 'config.yaml'} (the config of run {run}): " in line and said in line, line
    assert header in line
    assert not (tiny / "runs" / "finetune").exists()


def test_evaluate_checkpoint_run_whose_config_is_empty(tiny: Path) -> None:
    run = _pretrained(tiny)
    (run / "config.yaml").write_text("")
    line = _one_line_error("evaluate", "configs/tiny/evaluate.yaml", "--checkpoint", "runs/pretrain")
    assert "runs/pretrain/config.yaml (the config of run " in line and "the file is empty" in line, line


def test_resume_a_run_whose_config_is_empty(tiny: Path) -> None:
    (_pretrained(tiny) / "config.yaml").write_text("# gone\n")
    line = _one_line_error("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1", "--resume")
    assert "cannot resume runs/pretrain: its config.yaml holds no config" in line, line


def test_resume_a_run_whose_config_is_not_yaml(tiny: Path) -> None:
    (_pretrained(tiny) / "config.yaml").write_text("data: [unclosed\n")
    line = _one_line_error("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1", "--resume")
    assert "cannot resume runs/pretrain: its config.yaml is unreadable (line 2: expected ',' or ']'" in line, line


# ---- --set values ----------------------------------------------------------------------------
@pytest.mark.parametrize("expr, said", [
    ("train=", "--set train=: no value after '='"),
    ("optim.lr=", "--set optim.lr=: no value after '='"),
    ("optim.lr=  ", "no value after '='"),
    ("train=# epochs: 3", "--set train=# epochs: 3: the value '# epochs: 3' is only a comment"),
])
def test_set_without_a_value(tiny: Path, expr: str, said: str) -> None:
    line = _one_line_error("validate", "configs/tiny/pretrain.yaml", "--set", expr)
    assert line.startswith("error: bad --set: ") and said in line and "=null to clear the key" in line, line


@pytest.mark.parametrize("expr, said", [
    ("train=null", "--set train=null: train: expected a mapping of keys, got nothing"),
    ("data=null", "--set data=null: data: expected a mapping of keys, got nothing"),
    ("train=5", "--set train=5: train: Input should be a valid dictionary"),
    ("optim.lr=null", "--set optim.lr=null: optim.lr: Input should be a valid number; got None"),
])
def test_set_null_or_scalar_on_a_section(tiny: Path, expr: str, said: str) -> None:
    line = _one_line_error("validate", "configs/tiny/pretrain.yaml", "--set", expr)
    assert said in line, line


def test_set_model_null_on_pretrain_says_model_is_required(tiny: Path) -> None:
    line = _one_line_error("pretrain", "configs/tiny/pretrain.yaml", "--set", "model=null")
    assert "--set model=null: model: required" in line


def test_set_null_still_clears_an_optional_key(tiny: Path) -> None:
    result = run_cli("validate", "configs/tiny/pretrain.yaml", "--set", "train.clip_grad_norm=null",
                     "--set", "name=null")
    assert result.exit_code == 0, result.output


# ---- label ranges ----------------------------------------------------------------------------
X = np.zeros((40, 3), np.float32)


def _tensors(tmp: Path, y: np.ndarray, **params: object) -> Path:
    np.savez(tmp / "d.npz", x=X[: len(y)], y=y)
    return write_yaml(tmp / "cfg.yaml", {
        "run_dir": "runs/t", "data": {"name": "tensors", "params": {"path": "d.npz", **params}, "batch_size": 16},
        "model": {"name": "mlp", "params": {"hidden": [16]}}, "train": {"epochs": 1, "device": "cpu"}})


@pytest.mark.parametrize("y, params, expected", [
    # every label negative: the range used to be printed as 0..-3
    (np.full(40, -3), {}, "label -3 (sample 0) is out of range: labels are class indices counted from 0 "
                          "(0..K-1 for K classes), so never negative; shift the labels to start at 0"),
    (np.arange(40) % 5 - 1, {}, "label -1 (sample 0) is out of range: labels are class indices counted from 0"),
    (np.arange(40) % 2 - 1, {"classes": ["a", "b"]},
     "label -1 (sample 0) is out of range: labels are class indices 0..1 (the 2 classes in data.params.classes)"),
    (np.arange(40) % 4, {"classes": ["a", "b", "c"]},
     "label 3 (sample 3) is out of range: labels are class indices 0..2 (the 3 classes in data.params.classes)"),
    (np.arange(40) % 2, {"classes": ["a"]},
     "data.params.classes: a classification task needs at least 2 classes; got 1 ('a')"),
    (np.zeros(40, np.int64), {}, "a classification task needs at least 2 classes; every label is 0"),
    (np.arange(40) % 3 - 1, {"task": "binary"}, "binary labels must be 0 or 1; sample 0 has -1"),
])
def test_label_range_messages(tmp_path: Path, monkeypatch, y: np.ndarray, params: dict, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    _tensors(tmp_path, y, **params)
    line = _one_line_error("pretrain", "cfg.yaml")
    assert expected in line, line
    assert "..-" not in line and "0..0" not in line, line
    assert not (tmp_path / "runs").exists()


def test_per_class_shortfall_names_each_class(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _tensors(tmp_path, np.array([0] * 30 + [1] * 2 + [2] * 8))
    line = _one_line_error("pretrain", str(path), "--set", "data.per_class=5")
    assert "data.per_class: 5 examples per class requested, but class 1 has 2" in line, line
    assert "lower data.per_class" in line, line
