"""Facts a run records in run.json: the environment it ran in, and the sha256 of the files it
started from (also what a checkpoint's completion marker checks)."""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import torchmetrics

    from transfer_cli import __version__

    return {"transfer": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchmetrics": torchmetrics.__version__}


def git_commit() -> Optional[str]:
    """The commit of the git repository the command runs in, if any."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def command_line() -> list[str]:
    return list(sys.argv)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
