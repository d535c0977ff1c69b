"""Shared fixtures: tiny real configs (seconds per stage) and a CLI runner that reads results."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from transfer_cli.cli import app

torch.set_num_threads(1)

TINY_BASE = {
    "seed": 0,
    "model": {"name": "cnn1d", "params": {"channels": [8, 8], "kernel_size": 5}},
    "optim": {"name": "adamw", "lr": 0.003},
    "train": {"epochs": 2, "device": "cpu"},
}
SOURCE = {"name": "motifs", "params": {"task": "source", "n_train": 200, "n_val": 100, "n_test": 100,
                                       "length": 96}, "batch_size": 32}
TARGET = {"name": "motifs", "params": {"task": "target", "n_train": 100, "n_val": 100, "n_test": 100,
                                       "length": 96}, "batch_size": 16}


def write_yaml(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with configs/tiny/{base,pretrain,finetune,evaluate}.yaml; cwd is set there."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "configs" / "tiny"
    write_yaml(folder / "base.yaml", TINY_BASE)
    write_yaml(folder / "pretrain.yaml", {"extends": "base.yaml", "run_dir": "runs/pretrain", "data": SOURCE})
    write_yaml(folder / "finetune.yaml", {
        "extends": "base.yaml", "run_dir": "runs/finetune", "model": None,
        "data": {**TARGET, "per_class": 5}, "transfer": {"init_from": "runs/pretrain"},
    })
    write_yaml(folder / "evaluate.yaml", {"run_dir": "runs/evaluate", "data": TARGET,
                                          "eval": {"checkpoint": "runs/finetune", "split": "test"}})
    return tmp_path


class Result:
    def __init__(self, raw: Any) -> None:
        self.exit_code = raw.exit_code
        self.stdout = raw.stdout
        self.stderr = raw.stderr
        self.output = raw.output

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(*args: str) -> Result:
    """Run `transfer ARGS...` in-process (the real Typer app) and capture its output."""
    return Result(CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file and link under root, to prove nothing changed."""
    digest = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            digest[rel] = "link:" + str(path.readlink())
        elif path.is_file():
            digest[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest
