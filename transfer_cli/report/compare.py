"""`transfer compare RUN RUN ...`: the headline metrics of several runs side by side, each run's
difference to the first one (only where both were measured on the same data), and the
transfer gain of runs that have one. Reads only report.json files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from transfer_cli.core.console import format_value
from transfer_cli.core.errors import UsageError
from transfer_cli.core.tables import Table
from transfer_cli.report.headline import DISPLAY_ORDER, SCHEMA_VERSION, metric_label, metric_order
from transfer_cli.runs.rundir import RunDir


@dataclass
class RunReport:
    path: Path
    label: str
    report: dict[str, Any]


def load_reports(paths: list[Path]) -> list[RunReport]:
    """Every run's report.json; all unusable runs are named in one error."""
    problems, reports = [], []
    for path in paths:
        report = _read_report(path, problems)
        if report is not None:
            reports.append(report)
    if problems:
        raise UsageError("cannot compare:\n" + "\n".join(f"  - {p}" for p in problems))
    return [RunReport(path, label, report) for path, label, report in
            zip(paths, short_labels(paths), reports)]


def _read_report(path: Path, problems: list[str]) -> Optional[dict[str, Any]]:
    file = path / "report.json"
    if not path.is_dir():
        problems.append(f"{path}: no such run directory")
    elif not file.is_file():
        status = RunDir(path).read_run().get("status")
        why = f"its status is {status}; only completed runs have a report" if status else "it is not a run directory"
        problems.append(f"{path}: no report.json ({why})")
    else:
        try:
            report = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as exc:
            problems.append(f"{file}: not valid JSON ({exc})")
            return None
        version = report.get("schema_version") if isinstance(report, dict) else None
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            problems.append(f"{file}: report schema version {version!r} is not one this transfer reads "
                            f"(up to {SCHEMA_VERSION}); upgrade transfer")
            return None
        metrics = report.get("metrics")
        if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
            problems.append(f"{file}: 'metrics' is not a mapping of split -> metrics; the report is damaged")
            return None
        return report
    return None


def short_labels(paths: list[Path]) -> list[str]:
    """The shortest trailing part of each path that tells the runs apart (runs/a/finetune and
    runs/b/finetune -> a/finetune, b/finetune)."""
    parts = [Path(p).absolute().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def data_identity(report: dict[str, Any], split: str) -> tuple:
    """What must match for two runs' numbers on `split` to be comparable."""
    data = report.get("data") or {}
    return (data.get("name"), data.get("source"), tuple(data.get("class_names") or ()),
            (data.get("sizes") or {}).get(split))


def compare_runs(runs: list[RunReport], split: Optional[str] = None) -> dict[str, Any]:
    """A JSON-ready comparison on `split` (default: the first run's eval split)."""
    split = split or runs[0].report.get("eval_split") or "test"
    if not any(split in run.report.get("metrics", {}) for run in runs):
        raise UsageError(f"--split {split}: none of the runs reports it")
    reference = runs[0].report
    reference_metrics = reference.get("metrics", {}).get(split) or {}
    names: list[str] = []
    entries = []
    for i, run in enumerate(runs):
        metrics = run.report.get("metrics", {}).get(split) or {}
        names += [n for n in metric_order(run.report) if n in metrics and n not in names]
        same_data = data_identity(run.report, split) == data_identity(reference, split)
        delta = ({n: metrics[n] - reference_metrics[n] for n in metrics if n in reference_metrics}
                 if i and same_data else {})
        entries.append({
            "run": str(run.path), "label": run.label, "stage": run.report.get("stage"), "name": run.report.get("name"),
            "data": _data_summary(run.report, split), "same_data_as_reference": same_data,
            "checkpoint": run.report.get("checkpoint"), "lineage": run.report.get("lineage"), "metrics": metrics, "delta": delta,
            "transfer_gain": run.report.get("transfer_gain"), "seeds": run.report.get("seeds"),
        })
    names.sort(key=lambda n: DISPLAY_ORDER.index(n) if n in DISPLAY_ORDER else len(DISPLAY_ORDER))
    return {"split": split, "reference": runs[0].label, "metric_names": names, "runs": entries}


def _data_summary(report: dict[str, Any], split: str) -> str:
    data = report.get("data") or {}
    classes = len(data.get("class_names") or []) or data.get("num_outputs")
    size = (data.get("sizes") or {}).get(split)
    return f"{data.get('name')}, {classes} outputs" + (f", n={size}" if size is not None else "")


def comparison_table(comparison: dict[str, Any]) -> Table:
    """Rows: what each run is, then every metric (value and difference to the first run)."""
    runs = comparison["runs"]
    rows = [["stage"] + [r["stage"] or "" for r in runs],
            ["data"] + [r["data"] + ("" if r["same_data_as_reference"] else " (other data)") for r in runs],
            ["weights"] + [_weights(r) for r in runs]]
    for name in comparison["metric_names"]:
        rows.append([metric_label(name)] + [_cell(r, name) for r in runs])
    rows += _gain_rows(runs)
    notes = [f"(±x): difference to {comparison['reference']}, shown only for runs on the same data"] if len(runs) > 1 else []
    notes += [f"{r['label']}: {r['run']}" for r in runs if r["label"] != r["run"]]
    return Table(f"{comparison['split']} split", ["metric", *[r["label"] for r in runs]], rows, notes)


def _cell(run: dict[str, Any], name: str) -> str:
    if name not in run["metrics"]:
        return "-"
    value = format_value(run["metrics"][name])
    delta = run["delta"].get(name)
    if delta is None:
        return value
    # summation order alone moves a mean in the 7th digit; that is no difference
    negligible = abs(delta) <= 1e-6 * max(1.0, abs(run["metrics"][name]))
    return f"{value} ({'±0' if negligible else f'{delta:+.3g}'})"


def _weights(run: dict[str, Any]) -> str:
    if run.get("seeds"):
        return f"mean of {len(run['seeds'])} seeds"
    checkpoint = run.get("checkpoint") or {}
    if checkpoint:
        return f"{checkpoint.get('kind')} @ step {checkpoint.get('step')}"
    lineage = run.get("lineage") or {}
    return f"from {Path(lineage['source_run']).name}" if lineage.get("source_run") else Path(lineage.get("weights", "?")).name


def _gain_rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    """One row per metric that some run reports a transfer gain for (filled by the baseline)."""
    gained = [name for r in runs for name in (r.get("transfer_gain") or {})]
    rows = []
    for name in dict.fromkeys(gained):
        cells = []
        for run in runs:
            value = (run.get("transfer_gain") or {}).get(name)
            cells.append(f"{value:+.4g}" if isinstance(value, (int, float)) else "-")
        rows.append([f"transfer gain, {metric_label(name)}"] + cells)
    return rows
