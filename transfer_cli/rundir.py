"""The run directory: the only place a run writes to.

    <run>/config.yaml  run.json  metrics.jsonl  checkpoints/{step-*,last,best}  report.json  report.md

An existing directory is never silently reused: `resume` continues it, `overwrite` replaces
it (only if it is a run directory), anything else is refused without touching it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml

from transfer_cli.errors import RunDirError

Mode = Literal["new", "overwrite", "resume"]
MIN_FREE_BYTES = 50 * 2**20


def write_atomic(path: Path, text: str) -> None:
    """Write a small text file so that readers see the old or the new content, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoints = path / "checkpoints"
        self.metrics_file = path / "metrics.jsonl"
        self.run_file = path / "run.json"

    @classmethod
    def check(cls, path: Path, mode: Mode, needed_bytes: int = 0) -> "RunDir":
        """Refuse an unusable target before any work is done; changes nothing on disk."""
        run = cls(path)
        exists = path.exists()
        if exists and not path.is_dir():
            raise RunDirError(f"run dir {path} exists and is not a directory")
        has_content = exists and any(path.iterdir())
        if mode == "new" and has_content:
            raise RunDirError(f"run dir {path} already exists; use --resume to continue it, --overwrite to "
                              f"replace it, or --run-dir to write elsewhere")
        if mode == "overwrite" and has_content and not run.run_file.is_file():
            raise RunDirError(f"refusing to overwrite {path}: it is not a run directory (no run.json)")
        if mode == "resume" and not run.run_file.is_file():
            raise RunDirError(f"cannot resume {path}: it is not a run directory (no run.json); drop --resume")
        _check_writable(path, needed_bytes)
        return run

    def create(self, mode: Mode, checkpoints: bool = True) -> None:
        """Make the directory (replacing an old run when overwriting). Call only once all inputs
        are known to be good, so that a failed command leaves the old run as it was."""
        if mode == "overwrite" and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        if checkpoints:
            self.checkpoints.mkdir(exist_ok=True)

    # ---- files -------------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        write_atomic(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict:
        return yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8"))

    def read_run(self) -> dict[str, Any]:
        try:
            return json.loads(self.run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def write_run(self, info: dict[str, Any]) -> None:
        write_atomic(self.run_file, json.dumps(info, indent=2, default=str) + "\n")

    def update_run(self, **fields: Any) -> dict[str, Any]:
        info = self.read_run()
        info.update(fields)
        self.write_run(info)
        return info

    def log(self, record: dict[str, Any]) -> None:
        with open(self.metrics_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def metrics_size(self) -> int:
        return self.metrics_file.stat().st_size if self.metrics_file.exists() else 0

    def truncate_metrics(self, size: int) -> None:
        """Drop records written after a checkpoint, so a resumed run's log matches an unbroken one."""
        if self.metrics_file.exists():
            with open(self.metrics_file, "r+b") as handle:
                handle.truncate(size)

    def write_text(self, name: str, text: str) -> None:
        write_atomic(self.path / name, text)


def _check_writable(path: Path, needed_bytes: int) -> None:
    """Refuse an unwritable or full disk up front, before training time is spent."""
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write the run dir {path}: {probe_dir} is not writable")
    free = shutil.disk_usage(probe_dir).free
    needed = max(needed_bytes, MIN_FREE_BYTES)
    if free < needed:
        raise RunDirError(f"not enough free disk space for {path}: {free / 2**20:.0f} MiB free, "
                          f"at least {needed / 2**20:.0f} MiB needed")
