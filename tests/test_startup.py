"""Start-up: a command loads the parts of torchmetrics its metrics use, not the library's whole
catalogue (audio pulls scipy, text pulls transformers), and the metrics are the same as with
the whole library imported (each check in a fresh process, since imports are per process); the
built-in data set generated in a forked process gives the run it gives in this one; the work
handed to a forked process answers with its value or its exception; `python -m transfer_cli`
leaves early with the command's exit status and all of its output."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_json, run_cli

from transfer_cli.core.forked import Forked, ForkFailed, can_fork
from transfer_cli.recipes import parts

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

# the default metrics of a 4-class task and the report's breakdown, on fixed inputs; prints
# {"values": ..., "loaded": [the modules of UNUSED that are imported]}
COMPUTE = """
import json, sys
{prelude}
import torch
from transfer_cli.eval.breakdown import Breakdown
from transfer_cli.eval.metrics import MetricContext, build_metrics, default_metrics
context = MetricContext("multiclass", 4)
metrics = build_metrics(default_metrics("multiclass", 4), context)
breakdown = Breakdown(context, None)
generator = torch.Generator().manual_seed(0)
probs = torch.softmax(torch.randn(64, 4, generator=generator), dim=1)
target = torch.randint(0, 4, (64,), generator=generator)
metrics.update(probs, target)
breakdown.update(probs, target)
values = {{name: value.item() for name, value in metrics.compute().items()}}
values["breakdown"] = breakdown.compute()
unused = {unused}
print(json.dumps({{"values": values, "loaded": [m for m in unused if m in sys.modules]}}))
"""
UNUSED = ["scipy", "transformers", "torchmetrics.functional.audio", "torchmetrics.functional.text",
          "torchmetrics.functional.image", "torchmetrics.audio", "torchmetrics.text", "torchmetrics.image",
          "torchmetrics.detection", "torchmetrics.retrieval", "torchmetrics.regression"]


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_classification_metrics_load_no_unused_metric_family() -> None:
    out = json.loads(_python(COMPUTE.format(prelude="", unused=UNUSED)))
    assert out["loaded"] == []
    assert 0 <= out["values"]["accuracy"] <= 1


def test_metrics_equal_those_with_the_whole_library_imported() -> None:
    lean = json.loads(_python(COMPUTE.format(prelude="", unused=UNUSED)))
    whole = json.loads(_python(COMPUTE.format(prelude="import torchmetrics", unused=["torchmetrics.functional.audio"])))
    assert whole["loaded"] == ["torchmetrics.functional.audio"]  # the whole library was in use there
    assert lean["values"] == whole["values"]


def test_the_rest_of_torchmetrics_loads_when_asked_for() -> None:
    code = ("import sys; import transfer_cli.eval.metrics; import torchmetrics; "
            "assert 'torchmetrics.functional.audio' not in sys.modules; "
            "from torchmetrics import Accuracy, MetricCollection; import torchmetrics.functional as F; "
            "from torchmetrics.collections import MetricCollection as C; "
            "print(torchmetrics.__version__, 'torchmetrics.functional.audio' in sys.modules, "
            "MetricCollection is C, callable(F.accuracy))")
    version, audio, same, functional = _python(code).split()
    assert version[0].isdigit() and (audio, same, functional) == ("True", "True", "True")


def test_regression_metrics_load_only_the_regression_family() -> None:
    code = ("import sys; from transfer_cli.eval.metrics import MetricContext, build_metrics; "
            "m = build_metrics(['mae', 'rmse', 'r2'], MetricContext('regression', 1)); "
            "print(sorted(n for n in ('torchmetrics.regression', 'torchmetrics.classification', 'scipy') "
            "if n in sys.modules))")
    assert _python(code).strip() == "['torchmetrics.regression']"


needs_fork = pytest.mark.skipif(not can_fork(), reason="forked work needs Linux and two CPUs")


@needs_fork
def test_forked_work_answers_with_its_value_or_its_exception() -> None:
    with Forked(lambda: {"pid": os.getpid(), "x": [1, 2]}) as child:
        answer = child.result()
    assert answer["x"] == [1, 2] and answer["pid"] != os.getpid()

    def fails() -> None:
        raise KeyError("no such motif")

    with pytest.raises(KeyError, match="no such motif"), Forked(fails) as child:
        child.result()
    with pytest.raises(ForkFailed), Forked(lambda: os.kill(os.getpid(), signal.SIGKILL)) as child:
        child.result()
    with pytest.raises(ForkFailed, match="could not be read back"), Forked(_raises_unpicklable) as child:
        child.result()  # pickles, but does not unpickle: a ForkFailed (the caller does the work), not a TypeError


class _NeedsTwo(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _raises_unpicklable() -> None:
    raise _NeedsTwo("bad", 2)


def _weights_digest(run: Path) -> str:
    return hashlib.sha256((run / "checkpoints" / "best" / "model.safetensors").read_bytes()).hexdigest()


@needs_fork
def test_data_generated_in_a_forked_process_gives_the_same_run(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built_where = []
    generate = parts.DATASETS.build

    def build(*args: object, **kwargs: object) -> object:
        built_where.append(os.getpid())
        return generate(*args, **kwargs)

    monkeypatch.setattr(parts.DATASETS, "build", build)
    results = {}
    for name, generated in (("forked", parts.GENERATED_DATA), ("here", ())):
        monkeypatch.setattr(parts, "GENERATED_DATA", generated)
        result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--run-dir", f"runs/{name}", "--set",
                         "train.epochs=1")
        assert result.exit_code == 0, result.output
        report = read_json(tiny / "runs" / name / "report.json")
        results[name] = (report["splits"], report["data"], _weights_digest(tiny / "runs" / name))
    assert built_where == [os.getpid()]  # the forked build was not counted here: it ran in the child
    assert results["forked"] == results["here"]


def test_the_command_process_exits_with_its_status_and_all_its_output(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    ok = subprocess.run([sys.executable, "-m", "transfer_cli", "list", "--json"], cwd=tmp_path, env=ENV,
                        capture_output=True, text=True, timeout=240)
    assert ok.returncode == 0, ok.stderr
    assert "accuracy" in json.loads(ok.stdout)["metric"]  # the whole JSON document arrived
    bad = subprocess.run([sys.executable, "-m", "transfer_cli", "validate", str(empty)], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=240)
    assert bad.returncode == 2 and "empty config" in bad.stderr
