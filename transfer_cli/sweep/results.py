"""What a sweep leaves besides its trials: trials.csv and sweep.json (every trial), sweep.md (one
table sorted by the objective), best.yaml (the base config with the best values, runnable as it
is) and sweep.png (the objective against each swept key)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Optional

import yaml

from transfer_cli.config.loader import load_raw
from transfer_cli.core.console import format_value
from transfer_cli.core.tables import Table
from transfer_cli.runs.rundir import write_atomic
from transfer_cli.sweep.schema import Sweep
from transfer_cli.sweep.space import keypath, objective_monitor

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
ORDER = ("complete", "pruned", "failed", "running", "waiting")


def trial_rows(study: Any, sweep: Sweep) -> list[dict]:
    """One row per trial: complete first, best first; then pruned (by their final value), failed."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = STATES[t.state.name]
        value = t.user_attrs.get("value", t.value)
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({"trial": t.number, "state": state, "value": value,
                     "params": {key: t.params.get(key) for key in sweep.config.space}, "seconds": seconds,
                     "evaluations": len(t.intermediate_values), "pruned_at_evaluation":
                     t.user_attrs.get("pruned_at_evaluation"), "run_dir": t.user_attrs.get("run_dir"),
                     "error": t.user_attrs.get("error")})
    sign = -1 if study.direction.name == "MAXIMIZE" else 1
    rows.sort(key=lambda r: (ORDER.index(r["state"]), r["value"] is None,
                             sign * r["value"] if r["value"] is not None else 0, r["trial"]))
    return rows


def best_row(rows: list[dict]) -> Optional[dict]:
    return next((r for r in rows if r["state"] == "complete"), None)


def trials_table(rows: list[dict], sweep: Sweep) -> Table:
    keys = list(sweep.config.space)
    header = ["trial", "state", sweep.config.objective, *keys, "evals", "seconds"]
    body = [[f"{r['trial']:03d}", r["state"] + (f" @{r['pruned_at_evaluation']}" if r["pruned_at_evaluation"] else ""),
             format_value(r["value"]) if r["value"] is not None else "-",
             *[_cell(r["params"][k]) for k in keys], str(r["evaluations"]),
             f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"] for r in rows]
    notes = ["pruned @N: stopped by the median pruner after evaluation N (its value: its best weights on val)"] \
        if any(r["state"] == "pruned" for r in rows) else []
    return Table(f"sweep {sweep.name}: {len(rows)} trial{'s' * (len(rows) != 1)}, sorted by {sweep.config.objective}", header, body, notes)


def _cell(value: Any) -> str:
    return format_value(value) if isinstance(value, float) else json.dumps(value) if value is None else str(value)


def best_config(sweep: Sweep, params: dict[str, Any]) -> dict:
    """The base config (what it extends merged in) with the best trial's values; its own run_dir
    left out, so that `transfer finetune best.yaml` writes a new run next to it."""
    data = load_raw(sweep.base).data
    data.pop("run_dir", None)
    data.setdefault("train", {}).update(objective_monitor(sweep))  # as the trials monitored
    for key, value in params.items():
        node = data
        *parents, last = keypath(key)
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return data


def write_results(sweep_dir: Path, sweep: Sweep, study: Any) -> dict:
    """Every output file from the study as it is now; the summary (also sweep.json)."""
    rows = trial_rows(study, sweep)
    best = best_row(rows)
    summary = {"name": sweep.name, "sweep_file": str(sweep.path), "base": str(sweep.base),
               "method": sweep.config.method, "objective": sweep.config.objective,
               "direction": study.direction.name.lower(), "best": best, "trials": rows,
               "counts": {state: sum(r["state"] == state for r in rows) for state in ORDER}}
    write_atomic(sweep_dir / "sweep.json", json.dumps(summary, indent=2, default=str) + "\n")
    write_atomic(sweep_dir / "trials.csv", _csv(rows, list(sweep.config.space)))
    table = trials_table(rows, sweep)
    best_line = (f"Best: trial {best['trial']:03d}, {sweep.config.objective} {format_value(best['value'])} "
                 f"({', '.join(f'{k}={_cell(v)}' for k, v in best['params'].items())}); its config: best.yaml"
                 if best else "No trial completed.")
    write_atomic(sweep_dir / "sweep.md", f"# Sweep {sweep.name}\n\n{best_line}\n\n{table.markdown()}\n")
    if best:
        header = (f"# The best trial ({best['trial']:03d}) of sweep {sweep.name}: {sweep.config.objective} = "
                  f"{best['value']}\n# {sweep.base} with the trial's values; paths are as in the base config "
                  f"(run it from the same folder):\n#   transfer {sweep.config.stage} {sweep_dir / 'best.yaml'}\n")
        write_atomic(sweep_dir / "best.yaml",
                     header + yaml.safe_dump(best_config(sweep, best["params"]), sort_keys=False))
    if any(r["value"] is not None for r in rows):
        from transfer_cli.report.plots import sweep_figure

        sweep_figure(rows, sweep.config.space, sweep.config.objective, sweep_dir / "sweep.png")
    return summary


def _csv(rows: list[dict], keys: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", "state", "value", *keys, "evaluations", "pruned_at_evaluation", "seconds",
                     "run_dir", "error"])
    for r in rows:
        writer.writerow([r["trial"], r["state"], r["value"], *[r["params"][k] for k in keys], r["evaluations"],
                         r["pruned_at_evaluation"], r["seconds"], r["run_dir"], r["error"]])
    return out.getvalue()
