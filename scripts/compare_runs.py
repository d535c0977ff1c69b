"""Compare two run directories bit for bit: metrics.jsonl (every field except the wall-clock
ones, see transfer_cli.runs.rundir.WALL_CLOCK_FIELDS), the weights of the `last` and `best`
checkpoints (which step and the file's bytes) and the metrics in report.json.

    python scripts/compare_runs.py RUN_A RUN_B     # exit 0 when identical, 1 otherwise
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from transfer_cli.runs.rundir import WALL_CLOCK_FIELDS, RunDir


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def _report_metrics(run: Path) -> object:
    path = run / "report.json"
    return json.loads(path.read_text())["metrics"] if path.is_file() else "missing"


def compare(a: Path, b: Path) -> list[tuple[str, bool, str]]:
    """(what, identical, detail) for each thing compared."""
    checks = []
    metrics_a, metrics_b = RunDir(a).read_metrics(wall_clock=False), RunDir(b).read_metrics(wall_clock=False)
    first = next((i for i, (x, y) in enumerate(zip(metrics_a, metrics_b)) if x != y), None)
    detail = f"{len(metrics_a)} records" if metrics_a == metrics_b else (
        f"{len(metrics_a)} vs {len(metrics_b)} records" + (f", first difference in record {first}"
                                                           if first is not None else ""))
    checks.append((f"metrics.jsonl (all fields but {', '.join(WALL_CLOCK_FIELDS)})", metrics_a == metrics_b, detail))
    for alias in ("last", "best"):
        link_a, link_b = a / "checkpoints" / alias, b / "checkpoints" / alias
        steps = [os.readlink(p) if p.is_symlink() else "missing" for p in (link_a, link_b)]
        digests = [_digest(p / "model.safetensors") for p in (link_a, link_b)]
        same = steps[0] == steps[1] and digests[0] == digests[1] != "missing"
        checks.append((f"{alias} weights", same, f"{steps[0]} sha256 {digests[0][:16]}" if same else
                       f"{steps[0]} sha256 {digests[0][:16]} vs {steps[1]} sha256 {digests[1][:16]}"))
    reports = [_report_metrics(run) for run in (a, b)]
    checks.append(("report.json metrics", reports[0] == reports[1] != "missing", ""))
    return checks


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    checks = compare(Path(argv[0]), Path(argv[1]))
    for what, same, detail in checks:
        print(f"  {'identical' if same else 'DIFFERENT'}  {what}" + (f": {detail}" if detail else ""))
    return 0 if all(same for _, same, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
