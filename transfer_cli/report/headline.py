"""The vocabulary every report shares, a leaf that imports no other report module: the version of
report.json's schema (described in README, "report.json"; adding a key keeps SCHEMA_VERSION,
renaming or removing one bumps it), the metric labels and their display order, and the headline
table: the one the console prints at the end of every stage, the one at the top of report.md,
and (one column per run) the one `transfer compare` prints.
"""

from __future__ import annotations

from typing import Any

from transfer_cli.core.console import format_value
from transfer_cli.core.tables import Table

SCHEMA_VERSION = 1
METRIC_LABELS = {"accuracy": "accuracy (micro)"}
# the order of rows when runs with different metric sets are shown together (transfer compare)
DISPLAY_ORDER = ("loss", "accuracy", "subset_accuracy", "balanced_accuracy", "precision", "recall", "f1", "macro_f1",
                 "macro_precision", "macro_recall", "top2_accuracy", "top3_accuracy", "top5_accuracy", "nll", "ece",
                 "auroc", "mae", "rmse", "r2")
AVERAGING_NOTE = "accuracy is micro-averaged (share of correct decisions); macro_* weigh every class equally"


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


def metric_order(report: dict[str, Any]) -> list[str]:
    """loss first, then the configured metrics in their configured order."""
    seen = ["loss"] + list(report.get("metric_names") or [])
    for values in report.get("metrics", {}).values():
        seen += [name for name in values if name not in seen]
    return list(dict.fromkeys(seen))


def weights_phrase(report: dict[str, Any]) -> str:
    checkpoint = report.get("checkpoint")
    if checkpoint:
        value = checkpoint.get("value")
        measured = f", {checkpoint['monitor']} {format_value(value)}" if value is not None else ""
        return f"{checkpoint.get('kind', '')} weights, step {checkpoint.get('step')}{measured}"
    lineage = report.get("lineage") or {}
    return f"weights {lineage.get('weights', '?')}"


def headline_table(report: dict[str, Any]) -> Table:
    """Rows: loss and every metric; columns: the reported splits (val first, then eval_split)."""
    metrics = report.get("metrics", {})
    splits = list(metrics)
    sizes = {s: (report.get("splits", {}).get(s) or {}).get("size") for s in splits}
    monitored = (report.get("monitor") or "").partition("/")[2] if report.get("stage") != "evaluate" else ""
    header = ["metric"] + [f"{s} (n={sizes[s]})" if sizes[s] is not None else s for s in splits]
    rows = []
    for name in metric_order(report):
        label = metric_label(name) + (" *" if name == monitored else "")
        rows.append([label] + [format_value(metrics[s][name]) if name in metrics[s] else "-" for s in splits])
    notes = []
    if monitored:
        notes.append(f"* monitored for the best checkpoint: {report['monitor']} ({report.get('monitor_mode', '')})")
    if report.get("task") in ("multiclass", "multilabel"):
        notes.append(AVERAGING_NOTE)
    if report.get("smoke"):
        notes.append("smoke run: a few steps on a few batches; these numbers say nothing about quality")
    title = f"{report.get('name') or report['stage']}: {report['stage']} ({weights_phrase(report)})"
    return Table(title, header, rows, notes)
