"""report.md: the report for people. Headline table, where the numbers come from, transfer gain,
learning curves, and per split the per-class table, confusion matrix and reliability diagram."""

from __future__ import annotations

from typing import Any

from transfer_cli.core.console import format_value
from transfer_cli.core.tables import Table
from transfer_cli.report.gains import BUDGET_NAMES, gain_line, seeds_gain_line
from transfer_cli.report.headline import headline_table, weights_phrase

MAX_CLASSES_AS_TEXT = 12  # beyond this a confusion matrix is only readable as a picture


def render_markdown(report: dict[str, Any]) -> str:
    title = report.get("name") or report["stage"]
    lines = [f"# {title}: {report['stage']}", ""]
    if report.get("smoke"):
        lines += ["> Smoke run: a few steps on a few batches. These numbers say nothing about quality.", ""]
    if report.get("per_seed"):
        return "\n".join(lines + _seeds_section(report)).rstrip() + "\n"
    lines += [headline_table(report).markdown(), ""]
    lines += _provenance(report) + [""]
    lines += _transfer_gain(report)
    lines += _diagnostics(report)
    plots = report.get("plots") or {}
    if "learning_curves" in plots:
        lines += ["## Learning curves", "", f"![learning curves]({plots['learning_curves']})", ""]
    for split in _splits_in_order(report):
        lines += _split_section(split, report.get("splits", {}).get(split) or {}, plots)
    return "\n".join(lines).rstrip() + "\n"


def _splits_in_order(report: dict[str, Any]) -> list[str]:
    """The evaluated split (the answer) first, then the others."""
    splits = list(report.get("splits") or {})
    first = report.get("eval_split")
    return ([first] if first in splits else []) + [s for s in splits if s != first]


def _provenance(report: dict[str, Any]) -> list[str]:
    checkpoint, lineage = report.get("checkpoint") or {}, report.get("lineage") or {}
    sha = f"sha256 {str(lineage.get('sha256') or '')[:12]}"
    if checkpoint:
        lines = [f"- Weights: {weights_phrase(report)} (`{checkpoint.get('path')}`)"]
    else:
        source = f", from the run `{lineage['source_run']}`" if lineage.get("source_run") else ""
        lines = [f"- Weights: `{lineage.get('weights')}` ({sha}{source})"]
    data = report.get("data") or {}
    if data:
        sizes = ", ".join(f"{k} {v}" for k, v in data.get("sizes", {}).items())
        shots = f", {data['per_class']} per class" if data.get("per_class") else ""
        lines.append(f"- Data: {data.get('name')} ({data.get('task')}, {data.get('num_outputs')} outputs; "
                     f"{sizes}{shots})" + (f": {data['source']}" if data.get("source") else ""))
    if lineage.get("init") == "random":
        lines.append(f"- Started from: random initialisation (seed {lineage.get('seed')})")
    elif checkpoint and lineage.get("weights"):
        lines.append(f"- Started from: `{lineage['weights']}` ({sha})")
    if report.get("stop_reason"):
        lines.append(f"- Stopped: {report['stop_reason']}")
    timings = report.get("timings") or {}
    if timings:
        lines.append("- Timings: " + ", ".join(f"{k.replace('_', ' ')} {format_value(v)}" for k, v in timings.items()))
    if report.get("predictions"):
        lines.append(f"- Predictions: `{report['predictions']}`")
    return lines


def _transfer_gain(report: dict[str, Any]) -> list[str]:
    gain, baseline = report.get("transfer_gain"), report.get("baseline")
    if not gain or not baseline:
        return []
    split = report.get("eval_split")
    ours, theirs = report["metrics"].get(split, {}), baseline["metrics"].get(split, {})
    rows = [[name, format_value(ours.get(name)), format_value(theirs.get(name)), _signed(value)]
            for name, value in gain.items()]
    table = Table("", ["metric", "finetuned", "scratch", "gain"], rows)
    lines = [f"## Transfer gain on {split}", ""]
    gains = report.get("gains") or {}
    for kind, g in gains.items():
        budget = g.get("budget") or {}
        steps = f"{budget['steps']} steps, lr {format_value(budget['lr'])}" if budget.get("steps") else ""
        early = ", until converged" if budget.get("until_converged") else ""
        lines += [f"- **{BUDGET_NAMES[kind]}** (`{g['baseline_run']}`{': ' + steps + early if steps else ''}): "
                  f"{gain_line(report, kind).split(': ', 1)[1]}"]
    if gains:
        lines += ["", "Intervals: bootstrap 95% over the test samples; p: McNemar's exact test (classification) or "
                  "a paired t-test on the errors (regression).", ""]
        if len(gains) > 1:
            lines += ["The table is the equal-budget baseline's.", ""]
    else:
        verdict = ("**Negative transfer**: the model trained from scratch is better on "
                   f"{report['headline']['metric']}." if report.get("negative_transfer") else
                   f"Pretraining helped on {report['headline']['metric']}.")
        lines += [f"Scratch baseline: `{baseline['run_dir']}`. {verdict}", ""]
    return lines + [table.markdown(), ""]


def _diagnostics(report: dict[str, Any]) -> list[str]:
    """Warnings about the model (and its baselines) that its figures alone do not show."""
    found = [(report["stage"], report.get("diagnostics") or {})]
    found += [(f"baseline ({BUDGET_NAMES.get(kind, kind)})", b.get("diagnostics") or {})
              for kind, b in (report.get("baselines") or {}).items()]
    notes = [note for _, d in found for note in d.get("warnings", [])]
    rows = []
    for who, d in found:
        c, g, conv = d.get("collapse"), d.get("loss_gap"), d.get("convergence")
        if not (c or g or conv):
            continue
        top = f"'{c['class']}' {c['prediction_share']:.0%} (labels {c['label_share']:.0%})" if c else "-"
        gap = f"{format_value(g['train_loss'])} / {format_value(g['val_loss'])}" if g else "-"
        improving = {True: "yes", False: "no", None: "cannot tell"}[conv["still_improving"]] if conv else "-"
        rows.append([who, top, gap, improving])
    if not rows:
        return []
    table = Table("", ["model", "most-predicted class", "train / val loss", "still improving"], rows)
    return ["## Diagnostics", "", *(f"- **Warning**: {n}" for n in notes), *([""] if notes else []),
            table.markdown(), ""]


def _seeds_section(report: dict[str, Any]) -> list[str]:
    """A multi-seed run: mean ± std per metric, the gain, and one row per seed run."""
    split = report.get("eval_split")
    mean, std = report["metrics"].get(split, {}), report["metrics_std"].get(split, {})
    rows = [[name, f"{format_value(value)} ± {format_value(std.get(name))}"] for name, value in mean.items()]
    lines = [f"Mean ± sample standard deviation over seeds {report['seeds']} on {split}.", "",
             Table("", ["metric", split], rows).markdown(), ""]
    if report.get("transfer_gain"):
        gain_std = report["transfer_gain_std"]
        rows = [[name, f"{value:+.4g} ± {gain_std[name]:.4g}"] for name, value in report["transfer_gain"].items()]
        negative = report.get("negative_transfer_seeds") or []
        lines += [f"## Transfer gain on {split} (finetuned − scratch)", "",
                  f"Negative transfer in seeds: {negative}." if negative else "No seed showed negative transfer.", "",
                  *(f"- {seeds_gain_line(g, kind)}" for kind, g in (report.get("gains") or {}).items()), "",
                  Table("", ["metric", "gain"], rows).markdown(), ""]
    headline = (report.get("headline") or {}).get("metric", "accuracy")
    rows = [[str(entry["seed"]), f"`{entry['run_dir']}`", format_value(entry["metrics"][split].get(headline)),
             _signed((entry.get("transfer_gain") or {}).get(headline, "-"))] for entry in report["per_seed"]]
    lines += ["## Seeds", "", Table("", ["seed", "run", headline, "gain"], rows).markdown(), ""]
    return lines


def _signed(value: Any) -> str:
    return f"{value:+.4g}" if isinstance(value, (int, float)) else str(value)


def _split_section(split: str, details: dict[str, Any], plots: dict[str, str]) -> list[str]:
    if not details.get("per_class"):
        return []
    lines = [f"## {split} split" + (f" ({details['size']} samples)" if details.get("size") else ""), ""]
    if details.get("threshold") is not None:
        lines += [f"Decision threshold: positive when the probability is above {details['threshold']}.", ""]
    rows = [[r["class"], format_value(r["precision"]), format_value(r["recall"]), format_value(r["f1"]),
             str(r["support"]), str(r["predicted"])] for r in details["per_class"]]
    lines += ["### Per class", "", Table("", ["class", "precision", "recall", "F1", "support", "predicted"],
                                          rows).markdown(), ""]
    lines += _confusion(split, details.get("confusion_matrix") or {}, plots)
    calibration = details.get("calibration")
    if calibration:
        lines += ["### Calibration", "", f"Expected calibration error: {format_value(calibration['ece'])} "
                  f"({len(calibration['bins'])} equal-width bins).", ""]
        if f"reliability_{split}" in plots:
            lines += [f"![reliability diagram, {split}]({plots[f'reliability_{split}']})", ""]
    return lines


def _confusion(split: str, confusion: dict[str, Any], plots: dict[str, str]) -> list[str]:
    lines = ["### Confusion matrix", ""]
    if f"confusion_{split}" in plots:
        lines += [f"![confusion matrix, {split}]({plots[f'confusion_{split}']})", ""]
    labels, counts = confusion.get("labels") or [], confusion.get("counts") or []
    if confusion.get("layout") == "true_by_predicted" and len(labels) <= MAX_CLASSES_AS_TEXT:
        rows = [[f"**{label}**"] + [str(c) for c in row] for label, row in zip(labels, counts)]
        lines += ["Counts, rows = true class, columns = predicted class:", "",
                  Table("", ["true \\ predicted"] + labels, rows).markdown(), ""]
    elif confusion.get("layout") == "per_label":
        rows = [[label, str(c[1][1]), str(c[0][1]), str(c[1][0]), str(c[0][0])] for label, c in zip(labels, counts)]
        lines += [Table("", ["label", "true pos.", "false pos.", "false neg.", "true neg."], rows).markdown(), ""]
    return lines
