"""The run directory: the only place a run writes to.

    <run>/config.yaml  run.json  metrics.jsonl  checkpoints/{step-*,last,best}  report.json  report.md

An existing directory is never silently reused: `resume` continues it, `overwrite` replaces
it (only if it is a run directory), anything else is refused without touching it.

Under torchrun only rank 0 writes: on the other ranks a RunDir is not `writable` and its
writing methods do nothing (checkpoints and reports check `writable` themselves).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml

from transfer_cli.core.errors import RunDirError
from transfer_cli.runs import runlock

Mode = Literal["new", "overwrite", "resume"]
MIN_FREE_BYTES = 50 * 2**20
# Fields of metrics.jsonl records that hold the time of day: they differ between two runs that
# are otherwise bit-identical, so comparisons of runs leave them out.
WALL_CLOCK_FIELDS = ("time",)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write a small file so that readers see the old or the new content, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8")) as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    def __init__(self, path: Path) -> None:
        from transfer_cli.dist.distributed import world

        self.path = path
        self.writable = world().is_main
        self.checkpoints = path / "checkpoints"
        self.metrics_file = path / "metrics.jsonl"
        self.run_file = path / "run.json"

    @classmethod
    def check(cls, path: Path, mode: Mode, needed_bytes: int = 0, resumable: bool = True) -> "RunDir":
        """Refuse an unusable target before any work is done; changes nothing on disk
        (`resumable`: the command has --resume, so the refusal may suggest it)."""
        run = cls(path)
        exists = path.exists()
        if exists and not path.is_dir():
            raise RunDirError(f"run dir {path} exists and is not a directory")
        has_content = exists and any(path.iterdir())
        if mode == "new" and has_content:
            resume = "--resume to continue it, " if resumable else ""
            raise RunDirError(f"run dir {path} already exists; use {resume}--overwrite to replace it, "
                              f"or --run-dir to write elsewhere")
        if mode == "overwrite" and has_content and not run.run_file.is_file():
            raise RunDirError(f"refusing to overwrite {path}: it is not a run directory (no run.json)")
        if mode == "resume" and not run.run_file.is_file():
            raise RunDirError(f"cannot resume {path}: it is not a run directory (no run.json); drop --resume")
        if has_content and run.writable:  # a run another command is still writing is not touched
            runlock.hold(path)
        _check_writable(path, needed_bytes)
        return run

    def create(self, mode: Mode, files: dict[str, str], checkpoints: bool = True) -> None:
        """Make the run directory with its first files (config.yaml, run.json) in one step.

        Call only once all inputs are known to be good. The files are written into a hidden
        sibling that is then renamed into place, so a crash at any moment leaves no run dir
        (or, when overwriting, the old run) or a started run with its run.json: never a
        half-made directory. Resuming rewrites the files in place.
        """
        if not self.writable:
            return
        if mode == "resume" and self.path.is_dir():
            runlock.hold(self.path, create=True)  # a run dir from before lock files existed
            for name, text in files.items():
                write_atomic(self.path / name, text)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.parent / f".{self.path.name}.new-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir()
            if checkpoints:
                (staging / "checkpoints").mkdir()
            for name, text in files.items():
                write_atomic(staging / name, text)
            runlock.create_in(staging, self.path)
            old = self._replace_with(staging, overwrite=mode == "overwrite")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old)

    def _replace_with(self, staging: Path, overwrite: bool) -> Path | None:
        """Rename `staging` to the run dir (an existing one is renamed aside first when
        overwriting; returns where it went, to be deleted once the new one is in place)."""
        aside = None
        if overwrite and self.path.exists():
            aside = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(self.path, aside)
        try:
            os.rename(staging, self.path)  # onto a missing or an empty directory
        except OSError as exc:
            if aside is not None:
                os.rename(aside, self.path)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise RunDirError(f"run dir {self.path} was created by another command while this one was "
                                  f"starting; left it as it is") from None
            raise
        fsync_dir(self.path.parent)
        return aside

    # ---- files -------------------------------------------------------------------------------
    def read_config(self) -> dict:
        return yaml.safe_load((self.path / "config.yaml").read_text(encoding="utf-8"))

    def read_run(self) -> dict[str, Any]:
        try:
            return json.loads(self.run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def write_run(self, info: dict[str, Any]) -> None:
        if self.writable:
            write_atomic(self.run_file, self.run_text(info))

    def update_run(self, **fields: Any) -> dict[str, Any]:
        info = self.read_run()
        info.update(fields)
        self.write_run(info)
        return info

    def config_text(self, config: dict) -> str:
        return yaml.safe_dump(config, sort_keys=False)

    def run_text(self, info: dict[str, Any]) -> str:
        return json.dumps(info, indent=2, default=str) + "\n"

    def log(self, record: dict[str, Any]) -> None:
        if not self.writable:
            return
        with open(self.metrics_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_metrics(self, wall_clock: bool = True) -> list[dict[str, Any]]:
        """The records of metrics.jsonl; without the wall-clock fields (WALL_CLOCK_FIELDS) when
        `wall_clock` is False: what two runs of the same config and seed must agree on."""
        if not self.metrics_file.exists():
            return []
        records = [json.loads(line) for line in self.metrics_file.read_text(encoding="utf-8").splitlines() if line]
        if not wall_clock:
            records = [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in records]
        return records

    def metrics_size(self) -> int:
        return self.metrics_file.stat().st_size if self.metrics_file.exists() else 0

    def truncate_metrics(self, size: int) -> None:
        """Drop records written after a checkpoint, so a resumed run's log matches an unbroken one."""
        if self.writable and self.metrics_file.exists():
            with open(self.metrics_file, "r+b") as handle:
                handle.truncate(size)

    def write_text(self, name: str, text: str) -> None:
        if self.writable:
            write_atomic(self.path / name, text)

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.writable:
            write_atomic(self.path / name, data)


def _check_writable(path: Path, needed_bytes: int) -> None:
    """Refuse an unwritable or full disk up front, before training time is spent."""
    probe_dir = path
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise RunDirError(f"cannot write the run dir {path}: {probe_dir} is a file, not a directory")
    try:  # actually write: permission bits do not stop root, a read-only file system does
        fd, probe = tempfile.mkstemp(prefix=".transfer-write-test-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunDirError(f"cannot write the run dir {path}: {probe_dir} is not writable "
                          f"({exc.strerror or exc})") from None
    free = shutil.disk_usage(probe_dir).free
    needed = max(needed_bytes, MIN_FREE_BYTES)
    if free < needed:
        raise RunDirError(f"not enough free disk space for {path}: {free / 2**20:.0f} MiB free, "
                          f"at least {needed / 2**20:.0f} MiB needed")
