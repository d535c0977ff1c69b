"""Reliability of a training run on disk: atomic checkpoints, exact resume, corrupt checkpoints,
divergence, retention, determinism (properties 6, 8, 9, 11, 12, 13 of the Reliability section;
7 and 10 need real processes and live in test_reliability_process.py)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_json, run_cli, tree_digest
from reliability_tools import (ENV, RESUMABLE, ROOT, alias_name, assert_same_run, copy_run, flip_byte, rewind,
                               weights_of)

from transfer_cli.runs import checkpoints as ckpt
from transfer_cli.runs.rundir import RunDir

CONFIG = "configs/tiny/pretrain.yaml"


def _reference(tiny: Path, *sets: str, name: str = "ref") -> Path:
    result = run_cli("pretrain", CONFIG, *RESUMABLE, *sets, "--run-dir", f"runs/{name}")
    assert result.exit_code == 0, result.output
    return tiny / "runs" / name


def _resume(name: str, *sets: str):
    return run_cli("pretrain", CONFIG, *RESUMABLE, *sets, "--run-dir", f"runs/{name}", "--resume")


def _disk_full_at(step: int, file: str, seen: dict):
    """A checkpoint writer that runs out of space half-way through `file` of checkpoint `step`,
    and records what was on disk just before (to prove it is left as it was)."""
    real_write = ckpt._write_synced

    def write(path: Path, data: bytes) -> None:
        seen.setdefault("writes", []).append(path)
        if path.parent.name.startswith(f".tmp-step-{step:08d}-") and path.name == file:
            seen["before"] = tree_digest(path.parent.parent)
            path.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    return write


def test_06_atomic_checkpoints_disk_full_mid_write_leaves_previous_intact(tiny: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}
    real_write = ckpt._write_synced
    monkeypatch.setattr(ckpt, "_write_synced", _disk_full_at(6, ckpt.STATE, seen))
    result = run_cli("pretrain", CONFIG, *RESUMABLE)
    assert result.exit_code == 1, result.output
    assert ("error: could not write checkpoint step 6" in result.stderr and "No space left on device" in result.stderr
            and "earlier checkpoints are intact" in result.stderr)
    run = tiny / "runs" / "pretrain"
    checkpoints = run / "checkpoints"
    # the previous checkpoint is exactly as it was, the half-written one and its temp dir are gone
    assert sorted(os.listdir(checkpoints)) == ["best", "last", "step-00000003"]
    assert tree_digest(checkpoints) == {k: v for k, v in seen["before"].items() if not k.startswith(".tmp-")}
    ckpt.verify(checkpoints / "step-00000003")
    assert alias_name(run, "last") == "step-00000003"
    info = read_json(run / "run.json")
    assert info["status"] == "failed" and "No space left on device" in info["error"]
    # every file went to a temp dir in the same directory, the completion marker last
    first = [p for p in seen["writes"] if p.parent.name.startswith(".tmp-step-00000003-")]
    assert [p.name for p in first] == [ckpt.WEIGHTS, ckpt.STATE, ckpt.META, ckpt.COMPLETE]
    assert {p.parent.parent.resolve() for p in first} == {checkpoints}

    monkeypatch.setattr(ckpt, "_write_synced", real_write)  # space again: resume, end as if nothing happened
    result = _resume("pretrain")
    assert result.exit_code == 0, result.output
    assert_same_run(_reference(tiny), run)


def test_06_a_checkpoint_counts_only_with_its_marker_and_aliases_are_repaired(tiny: Path) -> None:
    """The states a kill -9 can leave: step 9 renamed into place but the aliases not yet
    switched (last/best behind), step 12 without its COMPLETE marker, temp files of a write."""
    reference = _reference(tiny)
    run = copy_run(reference, tiny / "runs" / "crashed")
    rewind(run, 9)
    checkpoints = run / "checkpoints"
    for alias, target in (("last", "step-00000006"), ("best", "step-00000003")):
        (checkpoints / alias).unlink()
        (checkpoints / alias).symlink_to(target)
    shutil.copytree(reference / "checkpoints" / "step-00000012", checkpoints / "step-00000012")
    (checkpoints / "step-00000012" / ckpt.COMPLETE).unlink()
    (checkpoints / ".tmp-step-00000012-99999").mkdir()
    (checkpoints / ".tmp-step-00000012-99999" / ckpt.WEIGHTS).write_bytes(b"half a file")
    (checkpoints / ".last.tmp-99999").symlink_to("step-00000009")

    result = _resume("crashed")
    assert result.exit_code == 0, result.output
    assert "from step 9 (step-00000009)" in result.stdout
    assert_same_run(reference, run)
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".")]


def test_08_exact_resume_mid_epoch_from_any_step(tiny: Path) -> None:
    reference = _reference(tiny)
    state = ckpt.load_state(reference / "checkpoints" / "step-00000006")
    assert {"optimizer", "scaler", "loss_sum", "loss_count"} <= set(state["engine"])
    assert {"python", "numpy", "torch"} | ({"cuda"} if torch.cuda.is_available() else set()) <= set(state["rng"])
    assert (state["train_state"]["step"], state["train_state"]["epoch"], state["train_state"]["batch"]) == (6, 1, 4)
    # the learning rate schedule is a pure function of the step: nothing to save for it
    for step in (3, 6, 9):  # epoch 0 batch 6, epoch 1 batch 4, epoch 2 batch 2
        run = copy_run(reference, tiny / "runs" / f"from-{step}")
        rewind(run, step)
        result = _resume(f"from-{step}")
        assert result.exit_code == 0, result.output
        assert f"from step {step} " in result.stdout
        assert_same_run(reference, run)  # same losses at every evaluation, same weights


def test_09_corrupt_latest_checkpoint_falls_back_to_previous_or_fails_loudly(tiny: Path) -> None:
    reference = _reference(tiny)
    run = copy_run(reference, tiny / "runs" / "corrupt")
    rewind(run, 9)
    flip_byte(run / "checkpoints" / "step-00000009" / ckpt.WEIGHTS)  # loads fine; only the checksum knows
    result = _resume("corrupt")
    assert result.exit_code == 0, result.output
    assert "warning: checkpoint step-00000009 is unusable" in result.stderr and "is corrupt" in result.stderr
    assert "from step 6 (step-00000006)" in result.stdout
    assert (run / "checkpoints" / "unusable-step-00000009").is_dir()  # kept for inspection
    assert_same_run(reference, run)

    broken = copy_run(reference, tiny / "runs" / "broken")
    rewind(broken, 6)
    for path in (broken / "checkpoints").glob("step-*"):
        flip_byte(path / ckpt.STATE)
    metrics = (broken / "metrics.jsonl").read_bytes()
    result = _resume("broken")
    assert result.exit_code == 2
    assert "cannot resume" in result.stderr and "no checkpoint in" in result.stderr and "is usable" in result.stderr
    assert (broken / "metrics.jsonl").read_bytes() == metrics  # no silent restart from step 0
    assert read_json(broken / "run.json")["status"] == "interrupted"


def test_11_nan_loss_stops_at_that_step_and_keeps_good_checkpoints(tiny: Path) -> None:
    # SGD whose learning rate is multiplied by 1e30 half-way (after step 10): a real divergence
    diverging = ("--set", "optim={name: sgd, lr: 0.05}", "--set", "train.max_steps=20", "--set", "train.keep_last=5",
                 "--set", "train.eval_every_steps=5", "--set", "schedule={name: step, params: {milestones: [0.5]}}")
    result = run_cli("pretrain", CONFIG, *diverging, "--set", "schedule.params.gamma=1e30")
    assert result.exit_code == 1, result.output
    run = tiny / "runs" / "pretrain"
    info = read_json(run / "run.json")
    assert info["status"] == "failed"
    failed_at = info["step"]
    assert 10 < failed_at < 20
    assert f"error: the loss became NaN/Inf at step {failed_at} " in result.stderr
    assert "earlier checkpoints are intact" in result.stderr and info["error"] in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # the checkpoints and metrics of steps 5 and 10 are those of the same run without the blow-up
    healthy = tiny / "runs" / "healthy"
    assert run_cli("pretrain", CONFIG, *diverging, "--set", "schedule.params.gamma=1.0",
                   "--run-dir", "runs/healthy").exit_code == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "last", "step-00000005",
                                                                      "step-00000010"]
    assert alias_name(run, "last") == "step-00000010"
    for step in ("step-00000005", "step-00000010"):
        ckpt.verify(run / "checkpoints" / step)
        assert weights_of(run, step) == weights_of(healthy, step)
    assert RunDir(run).read_metrics(wall_clock=False) == RunDir(healthy).read_metrics(wall_clock=False)[:2]


def test_12_retention_keeps_best_never_zero_and_prunes_after_complete(tiny: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real_prune = ckpt.prune
    pruned_after = []

    def checked_prune(root: Path, keep_last: int) -> None:
        newest = ckpt.complete_checkpoints(root)[-1]
        assert ckpt.alias_target(root, "last") == newest  # the new checkpoint is complete and current
        ckpt.verify(newest)
        real_prune(root, keep_last)
        assert ckpt.alias_target(root, "best") in ckpt.complete_checkpoints(root)
        pruned_after.append(newest.name)

    monkeypatch.setattr(ckpt, "prune", checked_prune)
    # on this tiny task val/loss is lowest at step 5, so pruning has to step around best (with the
    # BatchNorm statistics recomputed it falls to the end: precise BN off keeps the scenario)
    result = run_cli("pretrain", CONFIG, "--set", "train.max_steps=8", "--set", "train.eval_every_steps=1",
                     "--set", "train.keep_last=2", "--set", "train.monitor=val/loss", "--set", "train.precise_bn=0")
    assert result.exit_code == 0, result.output
    run = tiny / "runs" / "pretrain"
    records = RunDir(run).read_metrics()
    best_step = min(records, key=lambda r: (r["val/loss"], r["step"]))["step"]
    assert best_step <= 6, "the scenario needs a best checkpoint older than the last two"
    assert alias_name(run, "best") == f"step-{best_step:08d}"
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == sorted(
        {f"step-{best_step:08d}", "step-00000007", "step-00000008"})
    assert len(pruned_after) == 8

    # keep_last: 1 and the disk fills while the third checkpoint is written: one complete remains
    seen: dict = {}
    monkeypatch.setattr(ckpt, "_write_synced", _disk_full_at(3, ckpt.WEIGHTS, seen))
    result = run_cli("pretrain", CONFIG, "--set", "train.max_steps=8", "--set", "train.eval_every_steps=1",
                     "--set", "train.keep_last=1", "--run-dir", "runs/full")
    assert result.exit_code == 1
    left = ckpt.complete_checkpoints(tiny / "runs" / "full" / "checkpoints")
    assert left and ckpt.alias_target(tiny / "runs" / "full" / "checkpoints", "last") == left[-1]


def test_13_determinism_same_seed_identical_different_seed_differs(tiny: Path) -> None:
    first = _reference(tiny, name="first")
    second = _reference(tiny, name="second")
    assert_same_run(first, second)
    other = _reference(tiny, "--set", "seed=1", name="other")
    assert RunDir(other).read_metrics(wall_clock=False) != RunDir(first).read_metrics(wall_clock=False)
    assert weights_of(other, "last") != weights_of(first, "last")
    # the comparison scripts/chaos.sh relies on tells the two cases apart
    script = [sys.executable, str(ROOT / "scripts" / "compare_runs.py")]
    same = subprocess.run(script + [str(first), str(second)], env=ENV, capture_output=True, text=True, timeout=60)
    assert same.returncode == 0 and "DIFFERENT" not in same.stdout, same.stdout + same.stderr
    differ = subprocess.run(script + [str(first), str(other)], env=ENV, capture_output=True, text=True, timeout=60)
    assert differ.returncode == 1 and "DIFFERENT  metrics.jsonl" in differ.stdout, differ.stdout + differ.stderr
