"""Facts about the environment a run records in run.json."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
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
