"""The life of a stage's run directory, shared by every recipe: where it goes, the check before
any work, its creation (config.yaml, run.json), its completion, a stop recorded in run.json, and
the answer when a resumed run had already completed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Optional

from transfer_cli.config.schema import Experiment
from transfer_cli.core.console import Console
from transfer_cli.core.errors import Interrupted, TransferError
from transfer_cli.dist import distributed
from transfer_cli.recipes.parts import Parts, RunOptions
from transfer_cli.report.content import data_info, model_info
from transfer_cli.report.headline import headline_table
from transfer_cli.report.write import write_report
from transfer_cli.runs.provenance import command_line, device_name, git_commit, now, versions
from transfer_cli.runs.rundir import RunDir
from transfer_cli.train.engine import TrainState


def run_path(exp: Experiment, opts: RunOptions, stage: str) -> Path:
    """--run-dir, else the config's run_dir, else runs/<config folder>/<config name>."""
    if opts.run_dir:
        return Path(opts.run_dir)
    if opts.from_run is not None:
        return opts.from_run / f"eval-{exp.eval.split}"
    if exp.run_dir:
        return Path(exp.run_dir)
    if opts.config_path is not None:
        parent = opts.config_path.parent.name
        return Path("runs") / parent / opts.config_path.stem if parent else Path("runs") / opts.config_path.stem
    return Path("runs") / stage


def check_run_dir(path: Path, mode: str, needed_bytes: int = 0, resumable: bool = True) -> RunDir:
    """RunDir.check, by rank 0 under torchrun (the other ranks stop with its error)."""
    distributed.on_main(lambda: RunDir.check(path, mode, needed_bytes, resumable=resumable) and None)  # type: ignore[arg-type]
    return RunDir(path)


def start_run(run: RunDir, stage: str, exp: Experiment, parts: Optional[Parts], opts: RunOptions, lineage: dict,
              resumed_at: Optional[int] = None, trains: Optional[Collection[str]] = None) -> dict:
    """Create the run dir with config.yaml and run.json (status running)."""
    previous = run.read_run() if resumed_at is not None else {}
    info = {
        "stage": stage, "status": "running", "command": " ".join(command_line()), "cwd": str(Path.cwd()),
        "started_at": previous.get("started_at", now()), "ended_at": None, "versions": versions(),
        "seed": exp.seed, "git_commit": git_commit(), "smoke": opts.smoke, "lineage": lineage,
        "processes": distributed.world().size,
        "distributed": exp.train.distributed if distributed.world().is_distributed else None,
    }
    if parts is not None:
        info.update(device=device_name(parts.device), data=data_info(exp, parts.data),
                    model=model_info(exp, parts.model, trains))
    if resumed_at is not None:
        info["resumed"] = previous.get("resumed", []) + [{"at": now(), "step": resumed_at}]
        info["resumed_at"] = resumed_at
    files = {"config.yaml": run.config_text(exp.model_dump(mode="json")), "run.json": run.run_text(info)}
    run.create(opts.mode, files, checkpoints=stage not in ("evaluate", "rank"))
    return info


def finish_run(run: RunDir, report: dict, console: Optional[Console] = None) -> None:
    write_report(run, report, console)
    run.update_run(status="completed", ended_at=now())


def record_stop(run: RunDir, state: Optional[TrainState], exc: BaseException) -> None:
    """run.json after a stop: interrupted or failed. Best effort: when the disk is full this
    write fails too, and the original error is the one to report."""
    fields: dict[str, Any] = {"status": "interrupted"}
    if not isinstance(exc, (Interrupted, KeyboardInterrupt)):
        error = str(exc) if isinstance(exc, TransferError) else f"{type(exc).__name__}: {exc}"
        fields = {"status": "failed", "error": error}
    try:
        if state is not None:
            fields["step"] = state.step
        run.update_run(ended_at=now(), **fields)
    except OSError:
        pass


def report_of_completed(run: RunDir, console: Console) -> dict:
    import json

    console.info(f"{run.path} is already completed; nothing to resume")
    report = distributed.on_main(lambda: json.loads((run.path / "report.json").read_text()))
    console.show(headline_table(report))
    return report


def show_diagnostics(report: dict, console: Console) -> None:
    """The report's diagnostic warnings on the console (not for a smoke run: after a few steps
    every model looks collapsed and unconverged)."""
    if report.get("smoke"):
        return
    for note in (report.get("diagnostics") or {}).get("warnings", []):
        console.warn(note)
