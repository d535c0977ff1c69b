"""The export folder: refused when it holds something (unless --overwrite), written into a hidden
sibling and renamed into place, so a failed export leaves nothing half-written and an existing
folder intact until the new one is complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from transfer_cli.core.errors import UsageError
from transfer_cli.runs.rundir import fsync_dir


def check_target(path: Path, overwrite: bool) -> Path:
    """Refuse an unusable --out before any work is done."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out: {path} exists and is not a folder; give a folder name")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UsageError(f"--out: {path} already exists and is not empty; use --overwrite to replace it, "
                         f"or --out to write elsewhere")
    parent = path.absolute().parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise UsageError(f"--out: cannot write into {probe}")
    return path.absolute()


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """Yield an empty hidden folder next to `path`; when the block succeeds it replaces `path`
    (an old folder is renamed aside first and deleted once the new one is in place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.new-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        aside = None
        if path.exists():
            aside = path.parent / f".{path.name}.old-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(path, aside)
        try:
            os.rename(staging, path)
        except OSError:
            if aside is not None:
                os.rename(aside, path)
            raise
        fsync_dir(path.parent)
        if aside is not None:
            shutil.rmtree(aside)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
