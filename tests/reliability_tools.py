"""Helpers of the reliability tests: compare two runs bit for bit, rewind a run to an earlier
checkpoint as if it had been stopped there, run the CLI as a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from transfer_cli.runs import checkpoints as ckpt
from transfer_cli.runs.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

# A short run that stops mid-epoch at every checkpoint: 7 batches per epoch, 2 per step
# (4 steps per epoch, the last one with a single batch), dropout (so the RNG state matters),
# a checkpoint every 3 steps, all of them kept.
RESUMABLE = ("--set", "model.params.dropout=0.2", "--set", "train.grad_accum=2", "--set", "train.epochs=3",
             "--set", "train.eval_every_steps=3", "--set", "train.keep_last=100")


def weights_of(run: Path, alias: str) -> bytes:
    return (run / "checkpoints" / alias / ckpt.WEIGHTS).read_bytes()


def alias_name(run: Path, alias: str) -> str:
    return os.readlink(run / "checkpoints" / alias)


def assert_same_run(expected: Path, actual: Path) -> None:
    """Same metrics.jsonl (all but wall-clock fields), same last/best checkpoints byte for byte,
    same final report metrics."""
    assert RunDir(actual).read_metrics(wall_clock=False) == RunDir(expected).read_metrics(wall_clock=False)
    for alias in ("last", "best"):
        assert alias_name(actual, alias) == alias_name(expected, alias), alias
        assert weights_of(actual, alias) == weights_of(expected, alias), f"{alias} weights differ"
    report = json.loads((actual / "report.json").read_text())
    assert report["metrics"] == json.loads((expected / "report.json").read_text())["metrics"]


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=True)
    return target


def rewind(run: Path, step: int) -> None:
    """Make `run` look like a run stopped right after its checkpoint at `step`: later
    checkpoints gone, status interrupted (metrics.jsonl keeps its later lines, as after a kill)."""
    for path in (run / "checkpoints").glob("step-*"):
        if int(path.name.split("-")[1]) > step:
            shutil.rmtree(path)
    info = json.loads((run / "run.json").read_text())
    info["status"] = "interrupted"
    (run / "run.json").write_text(json.dumps(info))


def flip_byte(path: Path, offset_from_end: int = 8) -> None:
    """Corrupt one byte of the tensor data (near the end, past the header)."""
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def start_cli(args: list[str], cwd: Path, quiet: bool = False) -> subprocess.Popen:
    """`python -m transfer_cli ARGS` as a real process, stdout piped line by line (or dropped)."""
    stdout = subprocess.DEVNULL if quiet else subprocess.PIPE
    return subprocess.Popen([sys.executable, "-m", "transfer_cli", *args], cwd=cwd, env=ENV, text=True,
                            stdout=stdout, stderr=subprocess.PIPE, bufsize=1)


def run_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m transfer_cli ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "transfer_cli", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=300)


def read_until(process: subprocess.Popen, predicate: Callable[[str], bool]) -> str:
    """Read the process's stdout until a line satisfies `predicate`; returns that line."""
    assert process.stdout is not None
    for line in process.stdout:
        if predicate(line):
            return line
    raise AssertionError(f"the process ended (rc {process.wait()}) before the expected line; "
                         f"stderr: {process.stderr.read() if process.stderr else ''}")


def wait_until(condition: Callable[[], bool], timeout: float = 120.0, poll: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(poll)
