"""The round-trip check of an exported model: its outputs on a batch of the run's own data
against the PyTorch model's, as the largest absolute difference."""

from __future__ import annotations

from typing import Any

import numpy as np

from transfer_cli.core.errors import RunFailed

TOLERANCE = 1e-4


def max_abs_diff(ours: Any, theirs: Any) -> float:
    a = np.asarray(ours.detach().cpu() if hasattr(ours, "detach") else ours, dtype=np.float64)
    b = np.asarray(theirs.detach().cpu() if hasattr(theirs, "detach") else theirs, dtype=np.float64)
    if a.shape != b.shape:
        raise RunFailed(f"the exported model gives outputs of shape {b.shape}, the PyTorch model {a.shape}")
    return float(np.abs(a - b).max()) if a.size else 0.0


def round_trip(what: str, diff: float, samples: int, tolerance: float = TOLERANCE) -> dict:
    """The facts of a check; a difference above the tolerance fails the export (nothing is written)."""
    if not diff <= tolerance:  # also NaN
        raise RunFailed(f"{what}: the exported model differs from the PyTorch model by {diff:.3g} (max abs, on "
                        f"{samples} samples), more than {tolerance:g}; nothing was written")
    return {"runtime": what, "samples": samples, "max_abs_diff": diff, "tolerance": tolerance, "passed": True}
