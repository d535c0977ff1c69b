"""Reliability against the operating system: kill -9 and SIGINT/SIGTERM on the CLI running as a
real process (properties 7 and 10 of the Reliability section). The reference runs are made
in-process; the interrupted ones in subprocesses; they must agree bit for bit."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import read_json, run_cli
from reliability_tools import ENV, ROOT, assert_same_run, read_until, start_cli, wait_until

from transfer_cli.runs import checkpoints as ckpt
from transfer_cli.runs.rundir import RunDir

CONFIG = "configs/tiny/pretrain.yaml"
# ~300 steps with dropout and a checkpoint every 10 steps: long enough to be hit mid-way,
# short enough to rerun a few times
KILLABLE = ("--set", "model.params.dropout=0.2", "--set", "train.max_steps=300",
            "--set", "train.eval_every_steps=10", "--set", "train.keep_last=2")


def _reference(tiny: Path, sets: tuple) -> Path:
    result = run_cli("pretrain", CONFIG, *sets, "--run-dir", "runs/reference")
    assert result.exit_code == 0, result.output
    return tiny / "runs" / "reference"


def test_07_survives_kill_9_at_random_moments(tiny: Path) -> None:
    reference = _reference(tiny, KILLABLE)
    run = tiny / "runs" / "killed"
    seed = random.randrange(10**6)
    print(f"kill moments drawn with random.Random({seed})")  # shown when the test fails
    rng = random.Random(seed)
    command = ["pretrain", CONFIG, *KILLABLE, "--run-dir", "runs/killed", "--quiet"]
    landed = 0
    for _ in range(3):
        logged = len(RunDir(run).read_metrics())
        resume = ["--resume"] if (run / "run.json").is_file() else []
        process = start_cli(command + resume, tiny, quiet=True)
        # after at least one new evaluation (so every attempt makes progress), at a random moment:
        # during training, an evaluation or a checkpoint write
        wait_until(lambda: len(RunDir(run).read_metrics()) > logged or process.poll() is not None)
        time.sleep(rng.uniform(0, 0.05))
        process.kill()
        process.wait()
        landed += read_json(run / "run.json")["status"] == "running"
    assert landed >= 2, f"the kills came too late to test anything (random seed {seed})"
    final = run_cli(*command, "--resume")  # in-process: the same bits as in a subprocess
    assert final.exit_code == 0, final.output
    assert_same_run(reference, run)
    assert read_json(run / "run.json")["status"] == "completed"
    assert len(read_json(run / "run.json")["resumed"]) == 3


SIGNALLED = ("--set", "model.params.dropout=0.2", "--set", "train.max_steps=400",
             "--set", "train.eval_every_steps=100")


def _interrupted_at(run: Path) -> int:
    """Check the run says interrupted and its last checkpoint is complete, intact and current."""
    info = read_json(run / "run.json")
    assert info["status"] == "interrupted"
    last = ckpt.alias_target(run / "checkpoints", "last")
    assert last is not None and last.name == f"step-{info['step']:08d}"
    ckpt.verify(last)
    assert ckpt.load_state(last)["train_state"]["step"] == info["step"]
    return info["step"]


def test_10_sigint_sigterm_checkpoint_then_exit_130_143(tiny: Path) -> None:
    reference = _reference(tiny, SIGNALLED)
    run = tiny / "runs" / "signalled"
    command = ["pretrain", CONFIG, *SIGNALLED, "--run-dir", "runs/signalled"]
    is_evaluation = lambda line: line.startswith("pretrain epoch")  # noqa: E731

    process = start_cli(command, tiny)
    read_until(process, is_evaluation)  # step 100: training is under way
    time.sleep(0.02)  # a few steps later, so the checkpoint falls between two evaluations
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    first_stop = _interrupted_at(run)
    assert 100 <= first_stop < 400
    assert f"error: SIGINT received: stopped at step {first_stop} after writing a resumable checkpoint" in stderr

    # resumed, stopped by SIGTERM, and more signals while it finishes the step, saves and exits
    process = start_cli(command + ["--resume"], tiny)
    read_until(process, is_evaluation)
    time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.005)  # let it take note of the first (signals pending together are handled by number)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
        process.send_signal(sig)
        time.sleep(0.001)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    second_stop = _interrupted_at(run)
    assert first_stop < second_stop < 400
    assert read_json(run / "run.json")["resumed"][0]["step"] == first_stop

    # mid-interval checkpoints included, the run ends as if it had never been stopped
    result = run_cli(*command, "--resume")
    assert result.exit_code == 0, result.output
    assert_same_run(reference, run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [100, 200, 300, 400]


@pytest.mark.slow
def test_07_chaos_script_reports_identical(tmp_path: Path) -> None:
    """scripts/chaos.sh, the re-checkable form of property 7, on the built-in task (minutes)."""
    result = subprocess.run(["bash", str(ROOT / "scripts" / "chaos.sh"), "3", str(tmp_path)],
                            env={**ENV, "CHAOS_SEED": "7"}, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "VERDICT: IDENTICAL" in result.stdout and "kill -9 #1," in result.stdout


def test_a_run_being_written_is_not_resumed_or_overwritten_by_another_command(tiny: Path) -> None:
    from conftest import tree_digest

    run = tiny / "runs" / "busy"
    writer = start_cli(["pretrain", CONFIG, *KILLABLE, "--run-dir", "runs/busy"], tiny, quiet=True)
    try:
        wait_until(lambda: (run / "run.json").is_file())  # the lock is taken before the dir appears
        writer.send_signal(signal.SIGSTOP)  # hold it still while the other commands try
        before = tree_digest(run)
        for flag in ("--resume", "--overwrite"):
            other = run_cli("pretrain", CONFIG, *KILLABLE, "--run-dir", "runs/busy", flag)
            assert other.exit_code == 2, other.output
            assert "error: run dir runs/busy is in use by another transfer command" in other.stderr
        assert tree_digest(run) == before
    finally:
        # delivered with SIGCONT, it stops the writer (SIGTERM: a process started in the background by
        # a non-interactive shell, as in CI, inherits SIGINT ignored until the training loop traps it)
        writer.send_signal(signal.SIGTERM)
        writer.send_signal(signal.SIGCONT)
    assert writer.wait(timeout=300) == 143, writer.stderr.read() if writer.stderr else ""
    # the lock ends with the command: now the run can be replaced
    again = run_cli("pretrain", CONFIG, "--set", "train.max_steps=2", "--run-dir", "runs/busy", "--overwrite")
    assert again.exit_code == 0, again.output
    assert read_json(run / "run.json")["status"] == "completed"
