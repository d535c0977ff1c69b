"""Run directory contract: never clobbered, overwrite only run dirs, resume continues exactly."""

from __future__ import annotations

from pathlib import Path

from conftest import read_json, read_jsonl, run_cli, tree_digest


def test_existing_run_dir_is_refused_and_left_byte_identical(tiny: Path) -> None:
    assert run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1").exit_code == 0
    run = tiny / "runs" / "pretrain"
    before = tree_digest(run)
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1")
    assert result.exit_code == 2
    assert "already exists; use --resume to continue it, --overwrite to replace it" in result.stderr
    assert tree_digest(run) == before


def test_overwrite_replaces_a_run(tiny: Path) -> None:
    assert run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1").exit_code == 0
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(tiny / "runs" / "pretrain" / "metrics.jsonl")) == 2


def test_overwrite_refuses_a_directory_that_is_not_a_run(tiny: Path) -> None:
    precious = tiny / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--run-dir", "precious", "--overwrite")
    assert result.exit_code == 2
    assert "not a run directory" in result.stderr
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_failed_overwrite_keeps_the_old_run(tiny: Path) -> None:
    assert run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1").exit_code == 0
    before = tree_digest(tiny / "runs" / "pretrain")
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--overwrite", "--set", "model.params.channels=[]")
    assert result.exit_code == 2
    assert tree_digest(tiny / "runs" / "pretrain") == before


def test_resume_of_a_completed_run_changes_nothing(tiny: Path) -> None:
    assert run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1").exit_code == 0
    before = tree_digest(tiny / "runs" / "pretrain")
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1", "--resume")
    assert result.exit_code == 0, result.output
    assert "already completed" in result.stdout
    assert tree_digest(tiny / "runs" / "pretrain") == before


def test_resume_with_a_different_config_is_refused(tiny: Path) -> None:
    assert run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1").exit_code == 0
    run = tiny / "runs" / "pretrain"
    info = read_json(run / "run.json")
    info["status"] = "interrupted"
    (run / "run.json").write_text(__import__("json").dumps(info))
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1", "--set", "optim.lr=0.1",
                     "--resume")
    assert result.exit_code == 2
    assert "optim.lr (run: 0.003, now: 0.1)" in result.stderr


def test_resume_needs_a_run_dir(tiny: Path) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--resume")
    assert result.exit_code == 2
    assert "cannot resume" in result.stderr and "no run.json" in result.stderr


def test_keep_last_prunes_but_keeps_best(tiny: Path) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=4",
                     "--set", "train.keep_last=1")
    assert result.exit_code == 0, result.output
    checkpoints = tiny / "runs" / "pretrain" / "checkpoints"
    steps = sorted(p.name for p in checkpoints.glob("step-*"))
    best = (checkpoints / "best").readlink().name
    last = (checkpoints / "last").readlink().name
    assert set(steps) == {best, last}
    assert not list(checkpoints.glob(".tmp*"))
