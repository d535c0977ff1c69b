"""The ranking of `transfer rank` for people: the console table and report.md, sorted by LogME,
with the other scores, the feature dimension, the extraction time and (with --validate) the
fine-tuned metric and the rank correlations."""

from __future__ import annotations

from typing import Any, Optional

from transfer_cli.core.console import format_value
from transfer_cli.core.tables import Table

SCORES = ("logme", "hscore", "nce", "leep")
SCORE_LABELS = {"logme": "LogME", "hscore": "H-score (shrunk)", "nce": "NCE", "leep": "LEEP"}


def ranking_table(report: dict[str, Any]) -> Table:
    validation = report.get("validation")
    header = ["#", "candidate"] + [SCORE_LABELS[s] for s in SCORES] + ["features", "extraction s"]
    if validation:
        header.append(f"finetuned {validation['split']} {validation['metric']}")
    rows = []
    for place, cand in enumerate(report["candidates"], 1):
        row = [str(place), cand["label"]] + [_score(cand["scores"].get(s)) for s in SCORES]
        row += [str(cand["feature_dim"]), f"{cand['extraction_seconds']:.2f}" + (" (cached)" if
                                                                                 cand.get("features_from_cache") else "")]
        if validation:
            row.append(format_value((cand.get("finetuned") or {}).get("value")))
        rows.append(row)
    data = report["data"]
    title = (f"candidates ranked by LogME on {data['name']} train ({data['sizes'].get('train')} samples"
             + (f", {data['per_class']} per class" if data.get("per_class") else "") + f", seed {report['seed']})")
    return Table(title, header, rows, notes=_notes(report))


def _score(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _notes(report: dict[str, Any]) -> list[str]:
    notes = []
    reasons = sorted({f"{SCORE_LABELS[s]} {why}" for c in report["candidates"] for s, why in c["not_applicable"].items()})
    for reason in reasons:
        labels = [c["label"] for c in report["candidates"]
                  if any(f"{SCORE_LABELS[s]} {w}" == reason for s, w in c["not_applicable"].items())]
        notes.append(f"{reason}: {', '.join(labels)}")
    timings = report["timings"]
    line = f"rank took {timings['rank_seconds']:.1f} s"
    if timings.get("finetune_seconds") is not None:
        line += (f"; fine-tuning every candidate took {timings['finetune_seconds']:.1f} s "
                 f"({timings['finetune_over_rank']}x the time of rank)")
    notes.append(line)
    validation = report.get("validation")
    if validation:
        for name, c in validation["correlations"].items():
            notes.append(f"{SCORE_LABELS[name]} vs finetuned {validation['metric']} over {c['candidates']} "
                         f"candidates: Kendall tau {_corr(c['kendall_tau'])}, Spearman rho {_corr(c['spearman_rho'])}")
    return notes


def _corr(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def ranking_markdown(report: dict[str, Any]) -> str:
    table = ranking_table(report)
    lines = [f"# transfer rank: {report.get('name') or report['target_config']}", "",
             f"Target config `{report['target_config']}`, task {report['task']}.", "", f"**{table.title}**", "",
             table.markdown(), ""]
    lines.append("Candidates (weights and sha256):")
    lines.append("")
    for cand in report["candidates"]:
        lineage = cand["lineage"]
        lines.append(f"- `{cand['label']}` ({cand['kind']}): `{lineage.get('weights')}` sha256 "
                     f"`{lineage.get('sha256')}`")
    if report.get("validation"):
        v = report["validation"]
        lines += ["", f"Validation: each candidate fine-tuned for {_budget(v['budget'])} with the target config; "
                      f"runs under `finetune/`."]
    return "\n".join(lines) + "\n"


def _budget(budget: dict) -> str:
    return f"{budget['max_steps']} steps" if budget.get("max_steps") else f"{budget['epochs']} epochs"
