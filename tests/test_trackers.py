"""Trackers (`log:`): a finetune with TensorBoard and MLflow (sqlite) on writes both, read back
with TensorBoard's own reader and MLflow's client; the baseline and the seeds are child runs;
--resume continues the same tracker run; a tracker that fails is one warning, never a failed run;
a tracker that is not installed stops the command before any work (exit 2)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import read_json, read_jsonl, run_cli

from transfer_cli.track import tracking
from transfer_cli.track.sinks import flatten

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _log(tiny: Path, tensorboard: bool = True) -> list[str]:
    uri = f"sqlite:///{tiny / 'mlflow.db'}"
    return ["--set", f"log.tensorboard={str(tensorboard).lower()}", "--set",
            f'log.mlflow={{tracking_uri: "{uri}", experiment: tiny}}']


def _pretrain(tiny: Path) -> None:
    assert run_cli("pretrain", "configs/tiny/pretrain.yaml").exit_code == 0


def _client(tiny: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tiny / 'mlflow.db'}")


def _runs(client: MlflowClient) -> dict:
    experiment = client.get_experiment_by_name("tiny")
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def _events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_finetune_with_baseline_writes_tensorboard_and_mlflow(tiny: Path) -> None:
    _pretrain(tiny)
    result = run_cli("finetune", "configs/tiny/finetune.yaml", "--baseline", "scratch", *_log(tiny))
    assert result.exit_code == 0, result.output
    assert "log." not in result.output  # no tracker warning
    run = tiny / "runs" / "finetune"
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("event") == "eval"]
    report = read_json(run / "report.json")

    events = _events(run / "tensorboard")  # TensorBoard: every evaluation, the pictures, the config
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("val/accuracy")] == \
        [(r["step"], round(r["val/accuracy"], 6)) for r in records]
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([r["lr"] for r in records])
    assert events.Scalars("final/test/accuracy")[-1].value == pytest.approx(report["metrics"]["test"]["accuracy"])
    assert set(events.Tags()["images"]) == set(report["plots"])
    assert "config/text_summary" in events.Tags()["tensors"]

    client = _client(tiny)
    runs = _runs(client)
    assert set(runs) == {"finetune", "finetune/baseline"}
    parent, child = runs["finetune"], runs["finetune/baseline"]
    assert read_json(run / "trackers.json")["mlflow"]["run_id"] == parent.info.run_id
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.status == child.info.status == "FINISHED"
    params = parent.data.params
    assert params["optim.lr"] == "0.003" and params["data.per_class"] == "5" and params["transfer.strategy"] == "full"
    assert len(params) == len(flatten(__import__("yaml").safe_load((run / "config.yaml").read_text())))
    history = client.get_metric_history(parent.info.run_id, "val/accuracy")
    assert [(m.step, round(m.value, 6)) for m in history] == [(r["step"], round(r["val/accuracy"], 6)) for r in records]
    assert parent.data.metrics["transfer_gain/accuracy"] == pytest.approx(report["transfer_gain"]["accuracy"])
    assert parent.data.tags["lineage.sha256"] == report["lineage"]["sha256"]
    assert parent.data.tags["lineage.init_from"] == str(tiny / "runs" / "pretrain")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "report.json", "config.yaml", "plots"} <= artifacts
    pictures = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert pictures == {Path(p).name for p in report["plots"].values()}


def test_seeds_are_children_of_their_run(tiny: Path) -> None:
    _pretrain(tiny)
    result = run_cli("finetune", "configs/tiny/finetune.yaml", "--seeds", "0,1", "--set", "train.epochs=1",
                     *_log(tiny, tensorboard=False))
    assert result.exit_code == 0, result.output
    runs = _runs(_client(tiny))
    assert set(runs) == {"finetune", "finetune/seed-0", "finetune/seed-1"}
    for seed in ("seed-0", "seed-1"):
        assert runs[f"finetune/{seed}"].data.tags["mlflow.parentRunId"] == runs["finetune"].info.run_id
    report = read_json(tiny / "runs" / "finetune" / "report.json")
    assert runs["finetune"].data.metrics["final/test/accuracy"] == pytest.approx(report["metrics"]["test"]["accuracy"])


def test_resume_continues_the_same_tracker_runs(tiny: Path) -> None:
    from reliability_tools import rewind

    _pretrain(tiny)
    args = ["finetune", "configs/tiny/finetune.yaml", "--set", "train.eval_every_steps=2", "--set", "train.keep_last=9",
            *_log(tiny)]
    assert run_cli(*args).exit_code == 0
    run = tiny / "runs" / "finetune"
    first = read_json(run / "trackers.json")["mlflow"]["run_id"]
    rewind(run, 2)
    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert read_json(run / "trackers.json")["mlflow"]["run_id"] == first
    runs = _runs(_client(tiny))
    assert list(runs) == ["finetune"] and runs["finetune"].info.status == "FINISHED"
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("event") == "eval"]
    # TensorBoard drops what was logged after the checkpoint resumed from: each step once
    steps = [e.step for e in _events(run / "tensorboard").Scalars("val/accuracy")]
    assert steps == [r["step"] for r in records]


def test_a_failing_tracker_is_one_warning_and_the_run_completes(tiny: Path) -> None:
    _pretrain(tiny)
    (tiny / "blocker").write_text("a file where the store's folder would be\n")
    uri = f"sqlite:///{tiny / 'blocker' / 'mlflow.db'}"
    result = run_cli("finetune", "configs/tiny/finetune.yaml", "--set", "log.tensorboard=true",
                     "--set", f'log.mlflow={{tracking_uri: "{uri}"}}')
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: log.mlflow")]
    assert len(warnings) == 1 and "off for the rest of the command" in warnings[0]
    run = tiny / "runs" / "finetune"
    assert read_json(run / "run.json")["status"] == "completed"
    assert (run / "report.json").is_file()
    assert _events(run / "tensorboard").Scalars("val/accuracy")  # the other tracker carried on
    assert "mlflow" not in read_json(run / "trackers.json")


def test_a_tracker_not_installed_stops_before_any_work(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", *_log(tiny))
    assert result.exit_code == 2
    assert "log.mlflow: needs the `mlflow` extra: pip install 'transfer-cli[mlflow]'" in result.output
    assert not (tiny / "runs" / "pretrain").exists()


def test_validate_names_an_unknown_log_key(tiny: Path) -> None:
    result = run_cli("validate", "configs/tiny/pretrain.yaml", "--set", "log.tensorbord=true")
    assert result.exit_code == 2
    assert "log.tensorbord" in result.output and "tensorboard" in result.output
