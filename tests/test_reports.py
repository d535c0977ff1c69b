"""Reports from the CLI: report.json schema, report.md, pictures, --predictions, compare, and the
headline table at the end of every stage. One tiny chain is run per module and read by each test."""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SOURCE, TARGET, TINY_BASE, read_json, run_cli, tree_digest, write_yaml

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pretrain -> finetune -> evaluate RUN, in a module-wide project folder."""
    root = tmp_path_factory.mktemp("chain")
    folder = root / "configs"
    write_yaml(folder / "base.yaml", TINY_BASE)
    write_yaml(folder / "pretrain.yaml", {"extends": "base.yaml", "name": "tiny-pre", "run_dir": "runs/pretrain",
                                          "data": SOURCE})
    write_yaml(folder / "finetune.yaml", {"extends": "base.yaml", "name": "tiny-ft", "run_dir": "runs/finetune",
                                          "model": None, "data": {**TARGET, "per_class": 5},
                                          "transfer": {"init_from": "runs/pretrain"}})
    with contextlib.chdir(root):
        for stage in ("pretrain", "finetune"):
            result = run_cli(stage, f"configs/{stage}.yaml")
            assert result.exit_code == 0, result.output
            (root / f"{stage}.out").write_text(result.stdout)
        result = run_cli("evaluate", "runs/finetune", "--predictions", "preds.csv")
        assert result.exit_code == 0, result.output
        (root / "evaluate.out").write_text(result.stdout)
    return root


def test_report_json_holds_every_section_of_the_schema(chain: Path) -> None:
    report = read_json(chain / "runs" / "finetune" / "report.json")
    assert report["schema_version"] == 1 and report["stage"] == "finetune" and report["task"] == "multiclass"
    assert report["eval_split"] == "test" and report["monitor"] == "val/accuracy" and report["monitor_mode"] == "max"
    # 5 target classes: top-2 (k < classes) among the defaults, not top-5
    assert report["metric_names"] == ["accuracy", "balanced_accuracy", "macro_f1", "macro_precision", "macro_recall",
                                      "top2_accuracy", "nll", "ece", "auroc"]
    assert set(report["metrics"]) == {"val", "test"}
    assert list(report["metrics"]["test"]) == ["loss"] + report["metric_names"]
    assert report["transfer_gain"] is None and report["predictions"] is None
    assert report["lineage"]["sha256"] and report["timings"]["train_seconds"] > 0
    test = report["splits"]["test"]
    assert test["size"] == 100 and test["class_names"] == report["data"]["class_names"]
    counts = test["confusion_matrix"]["counts"]
    assert len(counts) == 5 and sum(map(sum, counts)) == 100
    # the breakdown and the torchmetrics scalars describe the same predictions
    assert sum(counts[i][i] for i in range(5)) / 100 == pytest.approx(report["metrics"]["test"]["accuracy"])
    recalls = [row["recall"] for row in test["per_class"]]
    assert sum(recalls) / 5 == pytest.approx(report["metrics"]["test"]["balanced_accuracy"], abs=1e-6)
    assert [row["support"] for row in test["per_class"]] == [sum(r) for r in counts]
    for row in test["confusion_matrix"]["normalized"]:
        assert sum(row) == pytest.approx(1.0)
    assert test["calibration"]["ece"] == pytest.approx(report["metrics"]["test"]["ece"], abs=1e-6)
    assert sum(b["count"] for b in test["calibration"]["bins"]) == 100


@pytest.mark.parametrize("run", ["pretrain", "finetune", "finetune/eval-test"])
def test_every_run_dir_has_report_and_pictures(chain: Path, run: str) -> None:
    path = chain / "runs" / run
    report = read_json(path / "report.json")
    expected = {"confusion_test", "reliability_test"}
    if run != "finetune/eval-test":
        expected |= {"learning_curves", "confusion_val", "reliability_val"}
    assert set(report["plots"]) == expected
    markdown = (path / "report.md").read_text()
    for relative in report["plots"].values():
        assert (path / relative).read_bytes()[:8] == PNG_MAGIC
        assert f"]({relative})" in markdown  # embedded in report.md
    assert "| metric |" in markdown and "### Per class" in markdown
    class_names = report["data"]["class_names"]
    assert f"| {class_names[0]} |" in markdown  # a per-class row names its class


def test_stage_end_table_is_the_headline_table(chain: Path) -> None:
    finetune = (chain / "finetune.out").read_text()
    assert "tiny-ft: finetune (best weights, step" in finetune
    table_lines = finetune[finetune.index("metric "):].splitlines()
    assert table_lines[0].split()[1:] == ["val", "(n=100)", "test", "(n=100)"]
    assert table_lines[2].startswith("accuracy (micro) *")
    assert "* monitored for the best checkpoint: val/accuracy (max)" in finetune
    evaluate = (chain / "evaluate.out").read_text()
    assert "tiny-ft: evaluate" in evaluate and "test (n=100)" in evaluate
    report = read_json(chain / "runs" / "finetune" / "eval-test" / "report.json")
    accuracy = [line for line in evaluate.splitlines() if line.startswith("accuracy (micro)")][0]
    assert accuracy.split()[-1] == f"{report['metrics']['test']['accuracy']:.4g}"


def test_predictions_csv(chain: Path) -> None:
    report = read_json(chain / "runs" / "finetune" / "eval-test" / "report.json")
    names = report["data"]["class_names"]
    with open(chain / "preds.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["index", "true", "predicted", *names]
    assert [int(r["index"]) for r in rows] == list(range(100))
    for row in rows:
        probs = [float(row[n]) for n in names]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row["predicted"] == names[probs.index(max(probs))]
    correct = sum(r["true"] == r["predicted"] for r in rows) / len(rows)
    assert correct == pytest.approx(report["metrics"]["test"]["accuracy"])
    true_counts = [sum(r["true"] == n for r in rows) for n in names]
    assert true_counts == [row["support"] for row in report["splits"]["test"]["per_class"]]
    assert report["predictions"] == str(chain / "preds.csv")


def test_predictions_file_that_exists_is_refused_before_any_work(chain: Path) -> None:
    before = (chain / "preds.csv").read_bytes()
    with contextlib.chdir(chain):
        result = run_cli("evaluate", "runs/finetune", "--run-dir", "runs/other", "--predictions", "preds.csv")
    assert result.exit_code == 2
    assert "--predictions: preds.csv already exists; use --overwrite" in result.stderr
    assert (chain / "preds.csv").read_bytes() == before
    assert not (chain / "runs" / "other").exists()


def test_compare_terminal_json_and_markdown(chain: Path) -> None:
    runs = ["runs/pretrain", "runs/finetune", "runs/finetune/eval-test"]
    with contextlib.chdir(chain):
        before = tree_digest(chain / "runs")
        text = run_cli("compare", *runs)
        data = run_cli("compare", *runs, "--json")
        markdown = run_cli("compare", "runs/finetune", "runs/finetune/eval-test", "--markdown")
        assert tree_digest(chain / "runs") == before  # compare only reads
    assert text.exit_code == 0, text.output
    assert "pretrain" in text.stdout and "eval-test" in text.stdout and "(other data)" in text.stdout
    comparison = data.json()
    assert comparison["split"] == "test" and comparison["reference"] == "pretrain"
    labels = [r["label"] for r in comparison["runs"]]
    assert labels == ["pretrain", "finetune", "eval-test"]
    finetune, evaluated = comparison["runs"][1], comparison["runs"][2]
    assert finetune["same_data_as_reference"] is False and finetune["delta"] == {}
    assert evaluated["metrics"] == finetune["metrics"]  # the same weights on the same data
    assert "top5_accuracy" in comparison["metric_names"] and "top2_accuracy" in comparison["metric_names"]
    assert markdown.exit_code == 0
    lines = markdown.stdout.splitlines()
    assert "| metric | finetune | eval-test |" in lines
    accuracy_row = [line for line in lines if line.startswith("| accuracy (micro) |")][0]
    assert accuracy_row.endswith("(±0) |")  # same data: the difference is shown, and it is zero


def test_compare_names_every_unusable_run(chain: Path, tmp_path: Path) -> None:
    with contextlib.chdir(chain):
        result = run_cli("compare", "runs/finetune", "runs/missing", "configs")
    assert result.exit_code == 2
    assert "runs/missing: no such run directory" in result.stderr
    assert "configs: no report.json (it is not a run directory)" in result.stderr
    assert "Traceback" not in result.stderr


def test_compare_split_that_no_run_reports(chain: Path) -> None:
    with contextlib.chdir(chain):
        result = run_cli("compare", "runs/finetune/eval-test", "--split", "train")
    assert result.exit_code == 2
    assert "--split train: none of the runs reports it" in result.stderr


def test_help_imports_neither_torch_nor_matplotlib() -> None:
    code = ("import sys; from typer.testing import CliRunner; from transfer_cli.cli import app; "
            "r = CliRunner().invoke(app, ['compare', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
