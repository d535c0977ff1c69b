"""The pictures: phase boundaries from metrics.jsonl, drawing from a run dir's files, and a
plotting failure that costs a warning, never the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import read_json, run_cli

from transfer_cli.report import plots
from transfer_cli.report.plots import draw_all, phase_spans, read_evaluations


def _records(phases: list) -> list[dict]:
    return [{"event": "eval", "step": 10 * (i + 1), "train/loss": 2.0 / (i + 1), "val/loss": 2.1 / (i + 1),
             "val/accuracy": 0.1 * (i + 1), **({"phase": p} if p else {})} for i, p in enumerate(phases)]


def test_phase_spans_run_from_one_boundary_to_the_next() -> None:
    spans = phase_spans(_records(["linear_probe", "linear_probe", "full", "full", "full"]))
    assert spans == [("linear_probe", 0, 20), ("full", 20, 50)]
    assert phase_spans(_records([None, None])) == []
    gradual = phase_spans(_records(["head", "block3", "block3", "block2"]))
    assert [(s, e) for _, s, e in gradual] == [(0, 10), (10, 30), (30, 40)]


def test_torn_last_line_and_other_events_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(r) for r in _records([None, None])] + [json.dumps({"event": "note", "text": "x"}), '{"step": 3']
    path.write_text("\n".join(lines))
    assert [r["step"] for r in read_evaluations(path)] == [10, 20]


def test_learning_curves_with_phases_are_drawn_from_the_run_files(tmp_path: Path) -> None:
    from matplotlib.image import imread

    records = _records(["linear_probe", "linear_probe", "full", "full", "full", "full"])
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    report = {"stage": "finetune", "name": "lp-ft", "monitor": "val/accuracy", "metric_names": ["accuracy"],
              "checkpoint": {"kind": "best", "step": 60, "monitor": "val/accuracy", "value": 0.6}, "splits": {}}
    drawn = draw_all(tmp_path, report)
    assert drawn == {"learning_curves": "plots/learning_curves.png"}
    height, width, _ = imread(tmp_path / drawn["learning_curves"]).shape
    assert width > 1000 and height > 400  # two panels side by side


def test_curve_metric_is_the_monitored_one_or_the_first_configured() -> None:
    assert plots.curve_metric({"monitor": "val/macro_f1", "metric_names": ["accuracy"]}) == "macro_f1"
    assert plots.curve_metric({"monitor": "val/loss", "metric_names": ["mae", "rmse"]}) == "mae"
    assert plots.curve_metric({"monitor": "train/loss", "metric_names": []}) is None


def test_a_plotting_failure_is_a_warning_and_the_report_is_still_written(tiny: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(run_path: Path, report: dict) -> dict:
        raise RuntimeError("no fonts today")

    monkeypatch.setattr(plots, "draw_all", broken)
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    assert "warning: could not draw the plots" in result.stderr and "no fonts today" in result.stderr
    run = tiny / "runs" / "pretrain"
    assert read_json(run / "report.json")["plots"] == {}
    assert "![" not in (run / "report.md").read_text()
    assert read_json(run / "run.json")["status"] == "completed"


def _full_report() -> dict:
    counts = [[5, 1, 0], [2, 6, 1], [0, 1, 7]]
    confusion = {"layout": "true_by_predicted", "labels": ["a", "b", "c"], "counts": counts,
                 "normalized": [[v / sum(row) for v in row] for row in counts]}
    bins = [{"lower": i / 5, "upper": (i + 1) / 5, "count": i, "confidence": (i + 0.5) / 5 if i else None,
             "outcome": i / 5 if i else None} for i in range(5)]
    calibration = {"mode": "top_label", "ece": 0.1, "bins": bins}
    split = {"confusion_matrix": confusion, "calibration": calibration}
    return {"stage": "pretrain", "name": "p", "monitor": "val/accuracy", "metric_names": ["accuracy"],
            "checkpoint": {"kind": "best", "step": 20}, "splits": {"val": split, "test": split}}


def test_pictures_drawn_by_two_processes_equal_those_drawn_by_one(tmp_path: Path) -> None:
    runs = {}
    for name, forked in (("one", False), ("two", True)):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in _records([None, None])) + "\n")
        if forked:
            assert plots.can_fork(), "this test needs Linux and two CPUs"
            drawn = draw_all(run, _full_report())
        else:
            jobs = plots.picture_jobs(read_evaluations(run / "metrics.jsonl"), _full_report())
            (run / "plots").mkdir()
            plots._draw(jobs, run / "plots")
            drawn = {n: f"plots/{f}" for n, f, _ in jobs}
        runs[name] = {n: (run / p).read_bytes() for n, p in drawn.items()}
    assert list(runs["two"]) == ["learning_curves", "confusion_val", "reliability_val", "confusion_test",
                                 "reliability_test"]
    assert runs["one"] == runs["two"]
    assert not [p for p in (tmp_path / "two" / "plots").iterdir() if p.name.startswith(".")]


def test_a_failure_in_the_forked_drawing_process_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise ValueError("no confusion today")

    monkeypatch.setattr(plots, "confusion_figure", broken)  # the forked process draws the confusion matrices
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in _records([None, None])) + "\n")
    with pytest.raises(ValueError, match="no confusion today"):
        draw_all(tmp_path, _full_report())
