"""report.json (for scripts, a stable schema) and report.md (for people)."""

from __future__ import annotations

import json
from typing import Any

from transfer_cli.console import format_value
from transfer_cli.rundir import RunDir

SCHEMA_VERSION = 1


def write_report(run: RunDir, report: dict[str, Any]) -> None:
    run.write_text("report.json", json.dumps(report, indent=2, default=str) + "\n")
    run.write_text("report.md", render_markdown(report))


def render_markdown(report: dict[str, Any]) -> str:
    title = report.get("name") or report["stage"]
    lines = [f"# {title}: {report['stage']}", ""]
    if report.get("smoke"):
        lines += ["> Smoke run: a few steps on a few batches. These numbers say nothing about quality.", ""]
    metrics = report.get("metrics", {})
    columns = sorted({m for values in metrics.values() for m in values}, key=lambda m: (m != "loss", m))
    if metrics:
        lines += ["| split | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for split, values in metrics.items():
            lines.append(f"| {split} | " + " | ".join(format_value(values.get(c, "")) for c in columns) + " |")
        lines.append("")
    checkpoint = report.get("checkpoint")
    if checkpoint:
        lines.append(f"Weights: {checkpoint.get('kind', '')} checkpoint at step {checkpoint.get('step')}"
                     + (f" ({checkpoint['monitor']} = {format_value(checkpoint['value'])})"
                        if checkpoint.get("value") is not None else ""))
    data = report.get("data", {})
    if data:
        sizes = ", ".join(f"{k} {v}" for k, v in data.get("sizes", {}).items())
        lines.append(f"Data: {data.get('name')} ({data.get('task')}, {data.get('num_outputs')} outputs; {sizes})")
    lineage = report.get("lineage", {})
    if lineage.get("weights"):
        lines.append(f"Started from: {lineage['weights']} (sha256 {lineage.get('sha256', '')[:12]})")
    timings = report.get("timings", {})
    if timings:
        lines.append("Timings: " + ", ".join(f"{k} {format_value(v)}" for k, v in timings.items()))
    return "\n".join(lines) + "\n"
