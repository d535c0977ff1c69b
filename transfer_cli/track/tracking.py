"""The trackers of one run directory, fed from the run's life: opened when the run starts (or
resumes), an engine callback for each evaluation record, closed with the final report.

Every tracker call runs on a worker thread, so a slow store never holds up a training step, and
on rank 0 only. A tracker that fails (an unwritable store, a locked database, a lost server) is
one warning and is off for the rest of the command; the run goes on. The ids of the tracker runs
are kept in <run>/trackers.json, so that --resume, and a report updated later (the transfer gain
after the baseline), continue the same tracker run.
"""

from __future__ import annotations

import importlib.util
import json
import queue
import threading
from pathlib import Path
from typing import Any, Optional

from transfer_cli.config.schema import Experiment, LogConfig
from transfer_cli.core.console import Console
from transfer_cli.core.errors import UsageError
from transfer_cli.runs.rundir import RunDir, write_atomic
from transfer_cli.track.sinks import MlflowSink, TensorBoardSink, absolute_uri, numeric
from transfer_cli.train.engine import BaseCallback, Engine, TrainState

STATE_FILE = "trackers.json"
#: the extra that installs each tracker, and the modules whose presence says it is installed
EXTRAS = {"tensorboard": ("tensorboard", ("tensorboard",)), "mlflow": ("mlflow", ("mlflow",))}
SQL_STORE = ("sqlalchemy", "alembic")  # what MLflow's sqlite store needs besides the client
#: seconds to wait, at the end of a command, for the trackers to write what they were given
CLOSE_TIMEOUT = 300.0

Sink = Any  # TensorBoardSink | MlflowSink


def check_trackers(log: LogConfig) -> None:
    """Stop before any work when a configured tracker is not installed (exit 2)."""
    wanted = (["tensorboard"] if log.tensorboard else []) + (["mlflow"] if log.mlflow else [])
    for name in wanted:
        extra, modules = EXTRAS[name]
        if log.mlflow and name == "mlflow" and log.mlflow.tracking_uri.startswith("sqlite:"):
            modules = modules + SQL_STORE
        if any(importlib.util.find_spec(module) is None for module in modules):
            raise UsageError(f"log.{name}: needs the `{extra}` extra: pip install 'transfer-cli[{extra}]' "
                             f"(or turn it off in the config's log section)")


def read_state(run_path: Path) -> dict[str, Any]:
    try:
        state = json.loads((run_path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


class Tracking(BaseCallback):
    """The trackers of one run; `close()` waits for everything given to them to be written."""

    def __init__(self, run_path: Path, sinks: list[Sink], console: Console,
                 config: Optional[dict[str, Any]] = None) -> None:
        self.run_path, self.sinks, self.console, self.config = run_path, sinks, console, config or {}
        self.failed: set[str] = set()
        self.state = read_state(run_path)
        self.tasks: "queue.Queue[Optional[tuple[Sink, str, tuple]]]" = queue.Queue()
        self.worker: Optional[threading.Thread] = None
        if sinks:
            self.worker = threading.Thread(target=self._work, name="trackers", daemon=True)
            self.worker.start()

    @classmethod
    def open(cls, run: RunDir, exp: Experiment, stage: str, lineage: dict, console: Console,
             resume_at: Optional[int] = None) -> "Tracking":
        """The configured trackers of `run`, started (a resumed run continues its tracker runs)."""
        if not run.writable or not (exp.log.tensorboard or exp.log.mlflow):
            return cls(run.path, [], console)
        config = exp.model_dump(mode="json")
        tracking = cls(run.path, make_sinks(exp, run.path), console, config)
        tags = {"transfer.stage": stage, "transfer.run_dir": str(run.path.absolute()), **lineage_tags(lineage)}
        for sink in tracking.sinks:
            tracking._submit(sink, "start", config, tags, resume_at, tracking.state.get(sink.name))
        return tracking

    # ---- the engine's callback ----------------------------------------------------------------
    def on_eval_end(self, engine: Engine, state: TrainState, record: dict, improved: bool) -> None:
        values = numeric(record)
        for sink in self.sinks:
            self._submit(sink, "metrics", int(record.get("step", state.step)), values)

    # ---- the end of the command ---------------------------------------------------------------
    def close(self, report: Optional[dict] = None, status: str = "FINISHED") -> None:
        """Finish every tracker run (with the report, when the stage produced one) and wait."""
        if self.worker is None:
            return
        for sink in self.sinks:
            self._submit(sink, "finish", report, self.run_path, status, self.config)
        self.tasks.put(None)
        self.worker.join(CLOSE_TIMEOUT)
        if self.worker.is_alive():
            self.console.warn(f"log: the trackers did not finish writing within {CLOSE_TIMEOUT:.0f} s; "
                              f"what they had not written is lost (the run itself is complete)")
        self.worker = None

    def flush(self) -> None:
        """Wait until everything given so far is written (a parent's run id, before its children
        start theirs)."""
        if self.worker is not None:
            self.tasks.join()

    def _submit(self, sink: Sink, method: str, *args: Any) -> None:
        self.tasks.put((sink, method, args))

    def _work(self) -> None:
        while True:
            task = self.tasks.get()
            try:
                if task is None:
                    return
                self._run(*task)
            finally:
                self.tasks.task_done()

    def _run(self, sink: Sink, method: str, args: tuple) -> None:
        if sink.name in self.failed:
            return
        try:
            answer = getattr(sink, method)(*args)
            if method == "start":
                self._remember(sink.name, answer)
        except Exception as exc:  # noqa: BLE001  a tracker must never fail the run
            self.failed.add(sink.name)
            why = " ".join(str(exc).split())[:300] or type(exc).__name__
            self.console.warn(f"log.{sink.name}: {why}; this tracker is off for the rest of the command "
                              f"(the run itself goes on; metrics.jsonl and the report are complete)")

    def _remember(self, name: str, answer: dict) -> None:
        self.state[name] = answer
        write_atomic(self.run_path / STATE_FILE, json.dumps(self.state, indent=2) + "\n")


def lineage_tags(lineage: dict) -> dict[str, str]:
    """`lineage.<key>` of the lineage's plain values (source run, weights file, sha256, init, seed);
    the load report's key lists stay in run.json."""
    return {f"lineage.{key}": str(value) for key, value in lineage.items()
            if isinstance(value, (str, int, float, bool))}


def make_sinks(exp: Experiment, run_path: Path) -> list[Sink]:
    sinks: list[Sink] = []
    if exp.log.tensorboard:
        sinks.append(TensorBoardSink(run_path))
    if exp.log.mlflow:
        uri = absolute_uri(exp.log.mlflow.tracking_uri)
        parent = read_state(run_path.parent).get("mlflow") or {}
        parent_id = parent.get("run_id") if parent.get("tracking_uri") == uri else None
        name = f"{run_path.parent.name}/{run_path.name}" if parent_id else run_path.name
        sinks.append(MlflowSink(uri, exp.log.mlflow.experiment or exp.name or "transfer", name, parent_id))
    return sinks


def stopped_status(exc: BaseException) -> str:
    """The tracker run's status after `exc`: KILLED when stopped by a signal, else FAILED."""
    from transfer_cli.core.errors import Interrupted

    return "KILLED" if isinstance(exc, (KeyboardInterrupt, Interrupted)) else "FAILED"


def track_report(run: RunDir, exp: Experiment, stage: str, report: dict, console: Console) -> None:
    """A report rewritten after its stage ended (with the gains, once the baselines are trained):
    into the same tracker runs."""
    if read_state(run.path):
        Tracking.open(run, exp, stage, report.get("lineage") or {}, console).close(report)
