"""The CLI as a real process: lazy imports, plain output in pipes, python -m, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transfer_cli", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=240)


def test_help_and_version_do_not_import_torch() -> None:
    code = ("import sys; from typer.testing import CliRunner; from transfer_cli.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "r = CliRunner().invoke(app, ['--version']); assert r.output.startswith('transfer '), r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_piped_run_prints_plain_lines(tiny: Path) -> None:
    result = _run(["pretrain", "configs/tiny/pretrain.yaml"], cwd=tiny)
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("pretrain epoch")]
    assert len(epoch_lines) == 2
    assert "val/accuracy" in epoch_lines[0]


def test_usage_error_exit_code_and_no_traceback(tiny: Path) -> None:
    result = _run(["pretrain", "configs/tiny/missing.yaml"], cwd=tiny)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: config file not found")


def test_unknown_command_is_usage_error() -> None:
    result = _run(["pretrian"])
    assert result.returncode == 2
