"""One class per tracker. A sink is used from one thread only (tracking.Tracking's worker):
`start` opens it (continuing the run it returned last time, when given), `metrics` writes one
evaluation record, `finish` writes the final report and closes it. Any exception is the caller's
to contain: a tracker must never fail a run."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional


#: metrics.jsonl fields that are not metrics
NOT_METRICS = ("event", "step", "time", "phase")
#: MLflow's limits per call (log_batch) and per parameter value
MLFLOW_BATCH, MLFLOW_VALUE_CHARS = 100, 500


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b.c': leaf} of nested mappings; lists stay leaves."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def numeric(record: dict[str, Any]) -> dict[str, float]:
    """The metrics of a metrics.jsonl record (numbers only: lr, epoch, train/..., val/...)."""
    return {k: float(v) for k, v in record.items()
            if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def final_metrics(report: dict[str, Any]) -> dict[str, float]:
    """`final/<split>/<metric>` of the report (the weights it evaluated: the best checkpoint's),
    and `transfer_gain/<metric>`; apart from the per-evaluation series (`val/<metric>`)."""
    out: dict[str, float] = {}
    for split, values in (report.get("metrics") or {}).items():
        for name, value in (values or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"final/{split}/{name}"] = float(value)
    for name, value in (report.get("transfer_gain") or {}).items():
        if isinstance(value, (int, float)):
            out[f"transfer_gain/{name}"] = float(value)
    return out


class TensorBoardSink:
    """Event files in <run>/tensorboard: scalars per evaluation (the LR among them), the config as
    text and as hyperparameters with the final metrics, the report's pictures as images."""

    name = "tensorboard"

    def __init__(self, run_path: Path) -> None:
        self.folder = run_path / "tensorboard"
        self.writer: Any = None

    def start(self, config: dict[str, Any], tags: dict[str, str], resume_at: Optional[int],
              previous: Optional[dict]) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        # on resume, events logged after the checkpoint are discarded by TensorBoard's readers
        self.writer = SummaryWriter(str(self.folder), purge_step=None if resume_at is None else resume_at + 1)
        if previous is None:  # a run that is new to this tracker
            import yaml

            self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "\n```", 0)
            self.writer.add_text("lineage", "```\n" + json.dumps(tags, indent=2) + "\n```", 0)
        return {"log_dir": str(self.folder)}

    def metrics(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, report: Optional[dict], run_path: Path, status: str, config: dict[str, Any]) -> None:
        if report is not None:
            from torch.utils.tensorboard.summary import hparams

            step = (report.get("timings") or {}).get("steps") or 0
            finals = final_metrics(report)
            for key, value in finals.items():
                self.writer.add_scalar(key, value, step)
            params = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                      for k, v in flatten(config).items() if v is not None}
            for summary in hparams(params, finals):
                self.writer.file_writer.add_summary(summary)
            for name, picture in (report.get("plots") or {}).items():
                self._image(name, run_path / picture, step)
        self.writer.close()

    def _image(self, name: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        if path.is_file():
            with Image.open(path) as image:
                self.writer.add_image(name, np.asarray(image.convert("RGB")), step, dataformats="HWC")


class MlflowSink:
    """An MLflow run per stage: the flattened config as params, every evaluation record as metrics
    at its step, the lineage as tags, report.md/report.json/config.yaml and the pictures as
    artifacts; a sub-run (baseline, seed) is a child of its folder's run."""

    name = "mlflow"

    def __init__(self, tracking_uri: str, experiment: str, run_name: str,
                 parent_run_id: Optional[str]) -> None:
        self.uri, self.experiment, self.run_name, self.parent = tracking_uri, experiment, run_name, parent_run_id
        self.client: Any = None
        self.run_id: Optional[str] = None

    def start(self, config: dict[str, Any], tags: dict[str, str], resume_at: Optional[int],
              previous: Optional[dict]) -> dict:
        for noisy in ("mlflow", "alembic"):  # their INFO lines would read as ours in a pipe
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        if previous and previous.get("run_id") and previous.get("tracking_uri") == self.uri:
            # --resume, or a report updated later: the same run
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return {"run_id": self.run_id, "tracking_uri": self.uri, "experiment_id": previous.get("experiment_id")}
        experiment_id = self._experiment_id()
        all_tags = {**tags, "mlflow.runName": self.run_name}
        if self.parent:
            all_tags["mlflow.parentRunId"] = self.parent
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=all_tags)
        self.run_id = run.info.run_id
        params = [Param(k, _text(v)) for k, v in flatten(config).items()]
        for at in range(0, len(params), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=params[at:at + MLFLOW_BATCH])
        return {"run_id": self.run_id, "tracking_uri": self.uri, "experiment_id": experiment_id}

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(self.experiment, artifact_location=artifact_root(self.uri))

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(key, value, stamp, step) for key, value in values.items()]
        for at in range(0, len(batch), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[at:at + MLFLOW_BATCH])

    def finish(self, report: Optional[dict], run_path: Path, status: str, config: dict[str, Any]) -> None:
        if report is not None:
            step = (report.get("timings") or {}).get("steps") or 0
            self.metrics(step, final_metrics(report))
            for name in ("report.md", "report.json", "config.yaml", "run.json"):
                if (run_path / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_path / name))
            if (run_path / "plots").is_dir():
                self.client.log_artifacts(self.run_id, str(run_path / "plots"), "plots")
        self.client.set_terminated(self.run_id, status)


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MLFLOW_VALUE_CHARS else text[:MLFLOW_VALUE_CHARS - 3] + "..."


def absolute_uri(uri: str) -> str:
    """A local store's URI with its path made absolute, so that a run resumed or reported from
    another working directory writes to the same store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).absolute())
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return "file:" + str(Path(uri[len("file:"):]).absolute())
    if "://" not in uri and not uri.startswith("file:"):  # a plain folder: MLflow's file store
        return str(Path(uri).absolute())
    return uri


def artifact_root(uri: str) -> Optional[str]:
    """Artifacts of a sqlite store beside its database file (MLflow's default is ./mlruns of
    whichever directory a command runs in); other stores keep their own default."""
    if uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///"):])
        return str(database.parent / f"{database.stem}-artifacts")
    return None
