"""The end-to-end chain from the CLI: pretrain -> finetune -> evaluate, read from the run dirs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from conftest import read_json, read_jsonl, run_cli
from safetensors.torch import load_file


def test_pretrain_finetune_evaluate_chain(tiny: Path) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml")
    assert result.exit_code == 0, result.output
    pre = tiny / "runs" / "pretrain"
    for name in ("config.yaml", "run.json", "metrics.jsonl", "report.json", "report.md"):
        assert (pre / name).is_file(), name
    run = read_json(pre / "run.json")
    assert run["stage"] == "pretrain" and run["status"] == "completed" and run["seed"] == 0
    assert run["versions"]["torch"] and run["command"] and run["started_at"] and run["ended_at"]
    evals = read_jsonl(pre / "metrics.jsonl")
    assert [e["epoch"] for e in evals] == [1, 2]
    assert all("val/accuracy" in e and "train/loss" in e for e in evals)
    best = pre / "checkpoints" / "best"
    assert (best / "model.safetensors").is_file() and (best / "COMPLETE").is_file()
    assert (pre / "checkpoints" / "last" / "state.pt").is_file()
    report = read_json(pre / "report.json")
    assert report["stage"] == "pretrain"
    assert set(report["metrics"]) == {"val", "test"}
    assert 0.0 <= report["metrics"]["test"]["accuracy"] <= 1.0
    resolved = yaml.safe_load((pre / "config.yaml").read_text())
    assert resolved["model"]["params"]["channels"] == [8, 8]
    assert resolved["model"]["params"]["pool"] == "max"  # defaults are filled in

    result = run_cli("finetune", "configs/tiny/finetune.yaml")
    assert result.exit_code == 0, result.output
    fin = tiny / "runs" / "finetune"
    run = read_json(fin / "run.json")
    weights = best.resolve() / "model.safetensors"
    assert run["lineage"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert run["lineage"]["load_report"]["head_replaced"] is True
    assert run["data"]["sizes"]["train"] == 25  # 5 per class x 5 classes
    finetuned = yaml.safe_load((fin / "config.yaml").read_text())
    assert finetuned["model"] == resolved["model"]  # architecture taken from the run it starts from
    backbone = load_file(str(fin / "checkpoints" / "best" / "model.safetensors"))
    assert backbone["head.weight"].shape[0] == 5
    fin_report = read_json(fin / "report.json")

    result = run_cli("evaluate", "configs/tiny/evaluate.yaml")
    assert result.exit_code == 0, result.output
    ev = read_json(tiny / "runs" / "evaluate" / "report.json")
    assert ev["stage"] == "evaluate"
    assert ev["metrics"]["test"]["accuracy"] == fin_report["metrics"]["test"]["accuracy"]
    assert ev["lineage"]["sha256"] == read_json(tiny / "runs" / "evaluate" / "run.json")["lineage"]["sha256"]

    result = run_cli("evaluate", "runs/finetune", "--json")
    assert result.exit_code == 0, result.output
    assert result.json()["metrics"]["test"] == fin_report["metrics"]["test"]
    assert (fin / "eval-test" / "report.json").is_file()


def test_finetune_init_from_flag_and_last_alias(tiny: Path) -> None:
    assert run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1").exit_code == 0
    result = run_cli("finetune", "configs/tiny/finetune.yaml", "--set", "transfer.init_from=null",
                     "--init-from", "runs/pretrain@last", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    lineage = read_json(tiny / "runs" / "finetune" / "run.json")["lineage"]
    assert lineage["init_from"].endswith("runs/pretrain@last")
    assert "checkpoints/step-" in lineage["weights"]


def test_json_flag_prints_only_json_on_stdout(tiny: Path) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--json", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.stderr
    report = result.json()
    assert report["metrics"]["test"]["accuracy"] >= 0
    assert "pretrain" in result.stderr  # the human log went to stderr


def test_quiet_prints_nothing(tiny: Path) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--quiet", "--set", "train.epochs=1")
    assert result.exit_code == 0
    assert result.stdout == ""


def test_smoke_runs_a_few_steps(tiny: Path) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--smoke")
    assert result.exit_code == 0, result.output
    report = read_json(tiny / "runs" / "pretrain" / "report.json")
    assert report["smoke"] is True and report["timings"]["steps"] == 3
    assert "Smoke run" in (tiny / "runs" / "pretrain" / "report.md").read_text()


def test_max_steps_overrides_epochs(tiny: Path) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.max_steps=5",
                     "--set", "train.eval_every_steps=2")
    assert result.exit_code == 0, result.output
    steps = [e["step"] for e in read_jsonl(tiny / "runs" / "pretrain" / "metrics.jsonl")]
    assert steps == [2, 4, 5]
