"""Writing a run's report into its run directory: report.json (for scripts: a stable, documented
schema), report.md (for people) and the pictures in plots/ it links."""

from __future__ import annotations

import json
from typing import Any, Optional

from transfer_cli.core.console import Console
from transfer_cli.report.markdown import render_markdown
from transfer_cli.runs.rundir import RunDir


def write_report(run: RunDir, report: dict[str, Any], console: Optional[Console] = None) -> None:
    """Draw the pictures (a failure there is a warning, not a failed run), then write
    report.json and report.md, which link the pictures that exist."""
    if not run.writable:  # under torchrun, ranks other than 0
        return
    report["plots"] = draw_plots(run, report, console)
    run.write_text("report.json", json.dumps(report, indent=2, default=str) + "\n")
    run.write_text("report.md", render_markdown(report))


def draw_plots(run: RunDir, report: dict[str, Any], console: Optional[Console]) -> dict[str, str]:
    try:
        from transfer_cli.report.plots import draw_all

        return draw_all(run.path, report)
    except Exception as exc:  # noqa: BLE001  pictures are a convenience; the numbers are written anyway
        if console is not None:
            console.warn(f"could not draw the plots in {run.path / 'plots'}: {type(exc).__name__}: {exc}")
        return {}
