"""One command at a time per run directory.

Every run directory holds an empty `.lock` file. The command that writes the run holds an
exclusive `flock` on it until the command ends (`release_all`; the kernel releases it on any
exit of the process, kill -9 included), so a second `--resume` or an `--overwrite` of a run that is still training is
refused instead of two processes writing the same checkpoints. Taking the lock changes no
byte on disk, so a refused command leaves the run dir as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from transfer_cli.core.errors import RunDirError

LOCK_NAME = ".lock"
# open lock files of this process, by lock path: kept open (and so locked) until the command
# ends; `_replaced` keeps those of run dirs this command overwrote, locked until then too
_held: dict[Path, int] = {}
_replaced: list[int] = []


def hold(run_path: Path, create: bool = False) -> None:
    """Take the run dir's lock for the rest of this process, or refuse if another process has
    it. A run dir without a lock file (written by an older version) is locked only with `create`."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: runs are not protected against each other
        return
    path = run_path / LOCK_NAME
    key = path.absolute()
    if key in _held or not (create or path.is_file()):
        return
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirError(f"run dir {run_path} is in use by another transfer command (it holds "
                          f"{path}); wait for that command to end or stop it, then retry") from None
    _held[key] = fd


def moved_away(run_path: Path) -> None:
    """The held run dir at `run_path` was renamed (to be deleted): its lock stays held until the
    command ends, and a new run dir made at `run_path` takes a lock of its own."""
    fd = _held.pop((run_path / LOCK_NAME).absolute(), None)
    if fd is not None:
        _replaced.append(fd)


def release_all() -> None:
    """The command has ended: let other commands use its run dirs."""
    for fd in [*_held.values(), *_replaced]:
        os.close(fd)  # closing the only descriptor of the open file releases its flock
    _held.clear()
    _replaced.clear()


def create_in(staging: Path, final_path: Path) -> None:
    """The lock file of a run dir being made in `staging`, locked before the directory is renamed
    to `final_path` (the open file follows the rename), so no other command can take it first."""
    hold(staging, create=True)
    fd = _held.pop((staging / LOCK_NAME).absolute(), None)
    if fd is None:  # no flock here
        return
    final = (final_path / LOCK_NAME).absolute()
    if final in _held:  # the lock of the run dir being overwritten
        _replaced.append(_held.pop(final))
    _held[final] = fd
