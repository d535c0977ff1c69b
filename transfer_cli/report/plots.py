"""The pictures of a run, drawn from what the run directory already holds (metrics.jsonl and
the report), after training: learning curves, confusion matrices, reliability diagrams.

matplotlib is imported here only, and only its object-oriented API with the Agg canvas is
used (no pyplot, no global backend switch), so it works headless and never touches the
caller's matplotlib state.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

from transfer_cli.core.forked import Forked, can_fork
from transfer_cli.report.headline import metric_label

PLOTS_DIR = "plots"
DPI = 120
PHASE_COLORS = ("#f2f2f2", "#e3ecf7")


def draw_all(run_path: Path, report: dict[str, Any]) -> dict[str, str]:
    """Draw every picture that applies; returns {name: path relative to the run dir}. With more
    than one CPU, a forked process draws every other picture meanwhile (matplotlib spends its
    time laying out text, one core each); every picture is written before this returns."""
    folder = run_path / PLOTS_DIR
    folder.mkdir(exist_ok=True)
    jobs = picture_jobs(read_evaluations(run_path / "metrics.jsonl"), report)
    if len(jobs) > 1 and can_fork():
        _draw_forked(jobs[1::2], jobs[0::2], folder)
    else:
        _draw(jobs, folder)
    return {name: f"{PLOTS_DIR}/{filename}" for name, filename, _ in jobs}


Job = tuple[str, str, Callable[[], Any]]  # (name, file name, draw the figure)


def picture_jobs(records: list[dict[str, Any]], report: dict[str, Any]) -> list[Job]:
    """The pictures that apply, in the report's order."""
    jobs: list[Job] = []
    if records:
        jobs.append(("learning_curves", "learning_curves.png", lambda: learning_curves(records, report)))
    for split, details in (report.get("splits") or {}).items():
        confusion = (details or {}).get("confusion_matrix")
        if confusion:
            jobs.append((f"confusion_{split}", f"confusion_{split}.png",
                         lambda c=confusion, s=split: confusion_figure(c, s, report)))
        calibration = (details or {}).get("calibration")
        if calibration and any(b["count"] for b in calibration["bins"]):
            jobs.append((f"reliability_{split}", f"reliability_{split}.png",
                         lambda c=calibration, s=split: reliability_figure(c, s, report)))
    return jobs


def _draw(jobs: list[Job], folder: Path) -> None:
    for _, filename, figure in jobs:
        _save(figure(), folder / filename)


def _draw_forked(child_jobs: list[Job], own_jobs: list[Job], folder: Path) -> None:
    """Draw own_jobs here while a forked process draws child_jobs; raise what either raised."""
    child = Forked(lambda: _draw(child_jobs, folder))
    try:
        _draw(own_jobs, folder)
    except BaseException:
        with contextlib.suppress(Exception):  # let it finish its files (no torn .tmp left), then raise ours
            child.result()
        raise
    child.result()


def read_evaluations(path: Path) -> list[dict[str, Any]]:
    """The evaluation records of metrics.jsonl (a torn last line is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event", "eval") == "eval" and "step" in record:
            records.append(record)
    return records


def phase_spans(records: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """(phase, first step, last step) for each run of records with the same "phase" field, so a
    phase ends where the next one starts; [] when no record names a phase."""
    spans: list[list[Any]] = []
    previous_step = 0
    for record in records:
        phase = record.get("phase")
        if phase is None:
            continue
        if spans and spans[-1][0] == phase:
            spans[-1][2] = record["step"]
        else:
            start = spans[-1][2] if spans else previous_step
            spans.append([phase, start, record["step"]])
        previous_step = record["step"]
    return [(p, s, e) for p, s, e in spans]


def curve_metric(report: dict[str, Any]) -> Optional[str]:
    """The metric of the second panel: the monitored one, or the first configured metric when
    the monitor is a loss."""
    monitored = (report.get("monitor") or "").partition("/")[2]
    if monitored and monitored != "loss":
        return monitored
    names = report.get("metric_names") or []
    return names[0] if names else None


def learning_curves(records: list[dict[str, Any]], report: dict[str, Any]) -> Any:
    metric = curve_metric(report)
    has_metric = metric is not None and any(f"val/{metric}" in r for r in records)
    figure, axes = _figure(ncols=2 if has_metric else 1, size=(11 if has_metric else 6, 4.2))
    loss_ax = axes[0]
    _series(loss_ax, records, "train/loss", "train (mean since the last evaluation)", "o-")
    _series(loss_ax, records, "val/loss", "val", "s-")
    loss_ax.set(title="Loss", xlabel="optimizer step", ylabel="loss")
    if has_metric:
        ax = axes[1]
        _series(ax, records, f"val/{metric}", "val", "s-", color="C1")
        _mark_best(ax, records, report, metric)
        ax.set(title=metric_label(metric) + (", monitored" if report.get("monitor") == f"val/{metric}" else ""),
               xlabel="optimizer step", ylabel=metric_label(metric))
    for ax in axes:
        _shade_phases(ax, phase_spans(records))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    figure.suptitle(f"{report.get('name') or report.get('stage')}: {report.get('stage')}, learning curves")
    return figure


def _series(ax: Any, records: list[dict], key: str, label: str, style: str, color: Optional[str] = None) -> None:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if points:
        steps, values = zip(*points)
        ax.plot(steps, values, style, label=label, markersize=3, linewidth=1.5, color=color)


def _mark_best(ax: Any, records: list[dict], report: dict[str, Any], metric: str) -> None:
    checkpoint = report.get("checkpoint") or {}
    if checkpoint.get("kind") != "best" or report.get("monitor") != f"val/{metric}":
        return
    for record in records:
        if record["step"] == checkpoint.get("step") and f"val/{metric}" in record:
            ax.plot(record["step"], record[f"val/{metric}"], "*", markersize=14, color="C3",
                    label=f"best checkpoint (step {record['step']})")


def _shade_phases(ax: Any, spans: list[tuple[str, int, int]]) -> None:
    """Alternating shades per phase, a dashed line at each boundary, the phase name on top."""
    for i, (phase, start, end) in enumerate(spans):
        ax.axvspan(start, end, color=PHASE_COLORS[i % 2], zorder=0)
        if i:
            ax.axvline(start, color="0.4", linestyle="--", linewidth=1)
        ax.text((start + end) / 2, 1.01, phase, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=8, color="0.25")
    if spans:  # make room for the phase names between the axes and the title
        ax.set_title(ax.get_title(), pad=16)


def confusion_figure(confusion: dict[str, Any], split: str, report: dict[str, Any]) -> Any:
    if confusion.get("layout") == "per_label":
        return _per_label_figure(confusion, split, report)
    labels, counts, shares = confusion["labels"], confusion["counts"], confusion["normalized"]
    k = len(labels)
    side = min(max(4.8, 0.55 * k + 2.5), 16)
    figure, (ax,) = _figure(size=(side + 1.2, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    colorbar = figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("share of the true class")
    ax.set_xticks(range(k), labels=labels, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), labels=labels)
    ax.set(xlabel="predicted class", ylabel="true class")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{counts[i][j]}\n{shares[i][j]:.0%}", ha="center", va="center", fontsize=7 if k > 10 else 8,
                        color="white" if shares[i][j] > 0.5 else "black")
    total = sum(map(sum, counts))
    correct = sum(counts[i][i] for i in range(k))
    threshold = (report.get("splits", {}).get(split) or {}).get("threshold")
    decided = f", positive above {threshold}" if threshold is not None else ""
    ax.set_title(f"Confusion matrix, {split} split{decided}\n{total} samples, {correct / max(total, 1):.1%} correct "
                 f"(colour: row share; text: count, row share)", fontsize=10)
    return figure


def _per_label_figure(confusion: dict[str, Any], split: str, report: dict[str, Any]) -> Any:
    labels = confusion["labels"]
    # per label [[tn, fp], [fn, tp]] -> a row [tp, fn, fp, tn]
    rows = [[c[1][1], c[1][0], c[0][1], c[0][0]] for c in confusion["counts"]]
    shares = [[v / max(sum(r), 1) for v in r] for r in rows]
    figure, (ax,) = _figure(size=(6.5, max(3.0, 0.45 * len(labels) + 1.8)))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label("share of the label's samples")
    ax.set_xticks(range(4), labels=["true pos.", "false neg.", "false pos.", "true neg."])
    ax.set_yticks(range(len(labels)), labels=labels)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                    color="white" if shares[i][j] > 0.5 else "black")
    ax.set(xlabel="decision", ylabel="label")
    threshold = (report.get("splits", {}).get(split) or {}).get("threshold")
    ax.set_title(f"Decisions per label, {split} split (positive above {threshold})\n"
                 f"colour: share of the label's samples; text: count", fontsize=10)
    return figure


def reliability_figure(calibration: dict[str, Any], split: str, report: dict[str, Any]) -> Any:
    bins = [b for b in calibration["bins"] if b["count"]]
    width = calibration["bins"][0]["upper"] - calibration["bins"][0]["lower"]
    centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
    positive = calibration.get("mode") == "positive"
    figure, (ax, hist) = _figure(nrows=2, size=(5.6, 6.2), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="0.5", label="perfectly calibrated")
    ax.bar(centers, [b["outcome"] for b in bins], width=width, edgecolor="C0", color="C0", alpha=0.75,
           label="fraction positive" if positive else "accuracy")
    # the mean confidence of each bin as a red tick, joined to the bar top: the gap is the miscalibration
    ax.vlines(centers, [b["outcome"] for b in bins], [b["confidence"] for b in bins], color="C3", linewidth=2)
    ax.plot(centers, [b["confidence"] for b in bins], "_", color="C3", markersize=16, markeredgewidth=2.5,
            label="mean predicted probability" if positive else "mean confidence")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="fraction positive" if positive else "accuracy")
    ax.set_title(f"Reliability diagram, {split} split (ECE {calibration['ece']:.3f})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, alpha=0.3)
    hist.bar(centers, [b["count"] for b in bins], width=width, color="0.55", edgecolor="white")
    hist.set(xlabel="predicted probability of the positive class" if positive
             else "confidence (largest class probability)", ylabel="samples")
    hist.grid(True, axis="y", alpha=0.3)
    return figure


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6, 4), **grid: Any) -> tuple[Any, list]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sharex = grid.pop("sharex", False)
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(nrows, ncols, squeeze=False, sharex=sharex, gridspec_kw=grid or None)
    return figure, list(axes.flat)


def _save(figure: Any, path: Path) -> str:
    """Write the PNG next to its final name, then rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)
    return f"{PLOTS_DIR}/{path.name}"


def sweep_figure(rows: list[dict[str, Any]], space: dict[str, Any], objective: str, path: Path) -> None:
    """A sweep's objective against each swept key, one panel per key: complete trials as dots,
    pruned ones as crosses (their value is that of their best weights); choices at even spacing,
    log ranges on a log axis."""
    keys = list(space)
    figure, axes = _figure(ncols=len(keys), size=(3.6 * len(keys) + 0.6, 3.4))
    for ax, key in zip(axes, keys):
        choices = getattr(space[key], "values", None)
        for state, marker in (("complete", "o"), ("pruned", "x")):
            shown = [r for r in rows if r["state"] == state and r["value"] is not None]
            xs = [choices.index(r["params"][key]) if choices is not None else r["params"][key] for r in shown]
            ax.plot(xs, [r["value"] for r in shown], marker, linestyle="none", alpha=0.8, label=state)
        if choices is not None:
            ax.set_xticks(range(len(choices)), labels=[str(c) for c in choices])
        elif getattr(space[key], "log", False):
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=metric_label(objective) if ax is axes[0] else None)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{objective} of each trial against each swept key", fontsize=10)
    _save(figure, path)
