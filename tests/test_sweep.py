"""`transfer sweep` from the command line on the built-in task, with tiny trials: the grid with the
median pruner, the table, best.yaml re-run to the same value, resume after a real kill, and the
sweep file's errors (exit 2, one line naming the file, the line and the key)."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import yaml

from conftest import read_json, run_cli, write_yaml
from reliability_tools import start_cli, wait_until

pytest.importorskip("optuna")

SWEEP_DIR = Path("runs/tiny/sweep")


def _pretrained(tiny: Path) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--quiet")
    assert result.exit_code == 0, result.output


def _sweep_file(tiny: Path, name: str = "sweep", **settings: object) -> Path:
    """A 3 x 2 grid over the learning rate and the strategy, 3 epochs per trial."""
    write_yaml(tiny / "configs/tiny/sweep_base.yaml", {"extends": "finetune.yaml", "train": {"epochs": 3}})
    sweep = {"base": "sweep_base.yaml", "method": "grid", "objective": "val/accuracy",
             "space": {"optim.lr": {"values": [0.0001, 0.003, 0.03]},
                       "transfer.strategy": {"values": ["full", "linear_probe"]}},
             "pruning": {"median": True, "warmup_evals": 1, "startup_trials": 2}, **settings}
    return write_yaml(tiny / f"configs/tiny/{name}.yaml", sweep)


def _table(sweep_dir: Path) -> list:
    return [(t["trial"], t["state"], t["value"], t["params"]) for t in read_json(sweep_dir / "sweep.json")["trials"]]


def test_grid_sweep_with_pruning_writes_the_table_and_a_best_config_that_reruns(tiny: Path) -> None:
    _pretrained(tiny)
    result = run_cli("sweep", _sweep_file(tiny))
    assert result.exit_code == 0, result.output
    out = tiny / SWEEP_DIR
    with open(out / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    assert sorted((float(r["optim.lr"]), r["transfer.strategy"]) for r in rows) == sorted(
        (lr, s) for lr in (0.0001, 0.003, 0.03) for s in ("full", "linear_probe"))
    states = [r["state"] for r in rows]
    assert "pruned" in states and states.count("complete") >= 2 and "failed" not in states
    complete = [float(r["value"]) for r in rows if r["state"] == "complete"]
    assert complete == sorted(complete, reverse=True)  # sorted by the objective, best first
    assert states == sorted(states, key=("complete", "pruned").index)

    # each trial is an ordinary run directory; a pruned one stopped early, cleanly, and says so
    pruned = next(r for r in rows if r["state"] == "pruned")
    info = read_json(Path(pruned["run_dir"]) / "run.json")
    assert info["status"] == "completed" and info["sweep_trial"]["state"] == "pruned"
    evals = [json.loads(line) for line in (Path(pruned["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert len(evals) == int(pruned["pruned_at_evaluation"]) < 3
    assert "pruned by the sweep's median pruner" in read_json(Path(pruned["run_dir"]) / "report.json")["stop_reason"]
    evaluated = run_cli("evaluate", pruned["run_dir"], "--quiet")
    assert evaluated.exit_code == 0, evaluated.output

    summary = read_json(out / "sweep.json")
    assert summary["direction"] == "maximize" and summary["best"]["value"] == max(complete)
    table = (out / "sweep.md").read_text()
    assert table.count("\n| 0") == 6 and f"| {summary['best']['trial']:03d} | complete |" in table
    assert (out / "study.db").is_file() and (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # the three linear probes share one backbone and data: one set of features (train, val) for all
    assert len(list((out / "features").glob("*.safetensors"))) == 2
    probes = [r for r in rows if r["transfer.strategy"] == "linear_probe"]
    for r in probes:
        config = yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text())
        assert config["transfer"]["feature_cache_dir"] == str((out / "features").absolute())
    assert "sorted by val/accuracy" in result.stdout

    # best.yaml is plain YAML the finetune command runs, to the same objective value
    rerun = run_cli("finetune", out / "best.yaml", "--run-dir", "runs/best", "--json", "--quiet")
    assert rerun.exit_code == 0, rerun.output
    assert rerun.json()["metrics"]["val"]["accuracy"] == summary["best"]["value"]

    # the sweep dir is not reused silently
    again = run_cli("sweep", _sweep_file(tiny))
    assert again.exit_code == 2 and "already exists; use --resume to continue it" in again.stderr


def test_a_killed_sweep_resumes_where_it_stopped(tiny: Path) -> None:
    _pretrained(tiny)
    # long enough trials (60 steps, an evaluation every 10) to be stopped in the middle of one
    sweep = _sweep_file(tiny, pruning={"median": False},
                        space={"optim.lr": {"values": [0.001, 0.003, 0.01]}})
    write_yaml(tiny / "configs/tiny/sweep_base.yaml", {"extends": "finetune.yaml",
                                                       "train": {"max_steps": 60, "eval_every_steps": 10}})
    process = start_cli(["sweep", str(sweep), "--quiet"], tiny, quiet=True)
    second = tiny / SWEEP_DIR / "trials" / "001"
    wait_until(lambda: (second / "metrics.jsonl").is_file() and (second / "metrics.jsonl").read_text().count("\n") >= 1
               or process.poll() is not None)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert read_json(second / "run.json")["status"] == "interrupted"
    first_run = (tiny / SWEEP_DIR / "trials/000/run.json").read_text()
    assert not (tiny / SWEEP_DIR / "trials/002").exists()

    result = run_cli("sweep", sweep, "--resume")
    assert result.exit_code == 0, result.output
    summary = read_json(tiny / SWEEP_DIR / "sweep.json")
    assert [t["state"] for t in summary["trials"]] == ["complete"] * 3  # the budget: 3 trials, not 4
    assert (tiny / SWEEP_DIR / "trials/000/run.json").read_text() == first_run  # the finished one kept
    resumed = read_json(second / "run.json")
    assert resumed["status"] == "completed" and resumed["resumed"][0]["step"] > 0  # continued, not restarted

    # and it ends as the same sweep never stopped would: the same values, trial for trial
    reference = run_cli("sweep", sweep, "--run-dir", "runs/reference", "--quiet")
    assert reference.exit_code == 0, reference.output
    assert _table(tiny / SWEEP_DIR) == _table(tiny / "runs/reference")


@pytest.mark.parametrize("change, expected", [
    ({"space": {"optim.lrr": {"values": [0.01]}}},
     "configs/tiny/bad.yaml:5 (space.optim.lrr = 0.01): optim.lrr: unknown key (did you mean 'lr'?)"),
    ({"method": "gird"}, "configs/tiny/bad.yaml:3: method: Input should be 'grid', 'random' or 'tpe' "
                         "(did you mean 'grid'?)"),
    ({"space": {"transfer.strategy": {"values": ["linaer_probe"]}}},
     "transfer.strategy: Input should be 'full', 'linear_probe', 'lp_ft', 'gradual' or 'lora' "
     "(did you mean 'linear_probe'?)"),
    ({"objective": "val/acuracy"}, "configs/tiny/bad.yaml:2: objective: unknown metric 'acuracy' "
                                   "(did you mean 'accuracy'?)"),
    ({"method": "random", "space": {"optim.lr": {"low": 0.1, "high": 0.01, "logg": True}}},
     "space.optim.lr.logg: unknown key (did you mean 'log'?); allowed here: high, int, log, low, values"),
    ({"method": "tpe", "space": {"optim.lr": {"low": 0.0001, "high": 0.1, "log": True}}},
     "method tpe needs a budget: budget: {trials: N} and/or {minutes: M}"),
])
def test_sweep_file_errors_exit_2_with_one_clear_line(tiny: Path, change: dict, expected: str) -> None:
    sweep = {"base": "pretrain.yaml", "objective": "val/accuracy", "method": "grid",
             "space": {"optim.lr": {"values": [0.01]}}, "stage": "pretrain"}
    path = write_yaml(tiny / "configs/tiny/bad.yaml", {**sweep, **change})
    result = run_cli("sweep", path.relative_to(tiny))
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and "Traceback" not in result.output
    assert not (tiny / "runs").exists()  # nothing written, no pretrained run needed to say so
    checked = run_cli("validate", path.relative_to(tiny))  # transfer validate makes the same checks
    assert checked.exit_code == 2 and expected in checked.stderr


def test_validate_checks_a_sweep_file_without_running_it(tiny: Path) -> None:
    path = write_yaml(tiny / "configs/tiny/lr.yaml", {
        "base": "pretrain.yaml", "stage": "pretrain", "objective": "val/loss", "method": "grid",
        "space": {"optim.lr": {"values": [0.01, 0.1]}, "model.params.kernel_size": {"values": [3, 5]}}})
    result = run_cli("validate", path, "--json")
    assert result.exit_code == 0, result.output
    assert result.json() == {"sweep": "lr", "valid": True, "base": str(path.parent / "pretrain.yaml"),
                             "stage": "pretrain", "direction": "minimize", "trials": 4}
    assert not (tiny / "runs").exists()


@pytest.mark.slow  # two worker processes start (about 25 s on the shared 2 cores)
def test_parallel_workers_pull_trials_from_the_shared_study(tiny: Path) -> None:
    _pretrained(tiny)
    sweep = _sweep_file(tiny, pruning={"median": False}, space={"optim.lr": {"values": [0.001, 0.01]}})
    result = run_cli("sweep", sweep, "--parallel", "2", "--quiet")
    assert result.exit_code == 0, result.output
    summary = read_json(tiny / SWEEP_DIR / "sweep.json")
    assert summary["counts"]["complete"] == 2
    runs = {t["run_dir"] for t in summary["trials"]}
    assert len(runs) == 2 and all(read_json(Path(r) / "run.json")["status"] == "completed" for r in runs)
    assert (tiny / SWEEP_DIR / "best.yaml").is_file()


def test_random_sweep_over_ranges_stays_in_bounds_and_resumes_to_its_budget(tiny: Path) -> None:
    sweep = write_yaml(tiny / "configs/tiny/ranges.yaml", {
        "base": "pretrain.yaml", "stage": "pretrain", "method": "random", "seed": 3, "objective": "val/loss",
        "space": {"optim.lr": {"low": 1e-4, "high": 1e-1, "log": True},
                  "model.params.kernel_size": {"low": 3, "high": 7, "int": True}},
        "budget": {"trials": 2}})
    result = run_cli("sweep", sweep, "--smoke", "--quiet")
    assert result.exit_code == 0, result.output
    summary = read_json(tiny / "runs/tiny/ranges/sweep.json")
    assert summary["direction"] == "minimize" and len(summary["trials"]) == 2
    for trial in summary["trials"]:
        assert 1e-4 <= trial["params"]["optim.lr"] <= 1e-1
        kernel = trial["params"]["model.params.kernel_size"]
        assert isinstance(kernel, int) and 3 <= kernel <= 7
        config = (Path(trial["run_dir"]) / "config.yaml").read_text()
        assert f"kernel_size: {kernel}" in config  # the value reached the trial's resolved config
    values = [t["value"] for t in summary["trials"]]
    assert values == sorted(values)  # minimize: lowest first
    # a finished sweep resumed: nothing more to run, the same table
    again = run_cli("sweep", sweep, "--smoke", "--quiet", "--resume")
    assert again.exit_code == 0, again.output
    assert len(read_json(tiny / "runs/tiny/ranges/sweep.json")["trials"]) == 2


def test_a_directory_that_is_not_a_sweep_is_never_replaced_or_resumed(tiny: Path) -> None:
    path = write_yaml(tiny / "configs/tiny/lr.yaml", {
        "base": "pretrain.yaml", "stage": "pretrain", "objective": "val/loss", "method": "grid",
        "space": {"optim.lr": {"values": [0.01]}}})
    keep = write_yaml(tiny / "runs/mine/notes.txt", "my notes")
    for flag, message in (("--overwrite", "refusing to overwrite runs/mine: it is not a sweep directory"),
                          ("--resume", "cannot resume runs/mine: it is not a sweep directory (no study.db)")):
        result = run_cli("sweep", path, "--run-dir", "runs/mine", flag)
        assert result.exit_code == 2 and message in result.stderr, result.output
    assert keep.read_text() == "my notes" and sorted(p.name for p in keep.parent.iterdir()) == ["notes.txt"]


def test_an_objective_the_trials_do_not_report_stops_the_sweep_after_one_trial(tiny: Path) -> None:
    path = write_yaml(tiny / "configs/tiny/r2.yaml", {
        "base": "pretrain.yaml", "stage": "pretrain", "objective": "val/r2", "method": "grid",
        "space": {"optim.lr": {"values": [0.01, 0.1]}}})
    result = run_cli("sweep", path, "--smoke", "--quiet")
    assert result.exit_code == 2, result.output
    assert "objective: val/r2 is not in the trials' evaluations (" in result.stderr, result.stderr
    assert "available: train/loss, val/loss, val/accuracy" in result.stderr
    summary = read_json(tiny / "runs/tiny/r2/sweep.json")
    assert [t["state"] for t in summary["trials"]] == ["failed"]  # one trial, not both


def test_parallel_workers_of_a_random_sweep_draw_different_values(tiny: Path) -> None:
    # the workers load the study at the same moment: with one seed they would draw the same trials
    from transfer_cli.sweep.schema import read_sweep
    from transfer_cli.sweep.space import distributions
    from transfer_cli.sweep.study import open_study

    path = write_yaml(tiny / "configs/tiny/rnd.yaml", {
        "base": "pretrain.yaml", "stage": "pretrain", "method": "random", "objective": "val/loss",
        "space": {"optim.lr": {"low": 1e-4, "high": 1e-1, "log": True}}, "budget": {"trials": 4}})
    sweep = read_sweep(path)
    out = tiny / "runs/rnd"
    out.mkdir(parents=True)
    open_study(sweep, out, "minimize", create=True)
    workers = [open_study(sweep, out, "minimize", create=False, worker=i) for i in range(2)]
    drawn = [study.ask(distributions(sweep)).params["optim.lr"] for study in workers]
    assert drawn[0] != drawn[1]


def test_an_objective_not_computed_stops_the_sweep_before_its_first_trial_trains(tiny: Path) -> None:
    _pretrained(tiny)
    path = _sweep_file(tiny, name="mae", objective="val/mae", pruning={"median": False},
                       space={"optim.lr": {"values": [0.01, 0.1]}})
    result = run_cli("sweep", path, "--quiet")
    assert result.exit_code == 2 and "objective: val/mae is not in the trials' evaluations" in result.stderr
    [trial] = read_json(tiny / "runs/tiny/mae/sweep.json")["trials"]
    metrics = Path(trial["run_dir"]) / "metrics.jsonl"  # refused as the trials' monitor: no epoch trained
    assert not metrics.is_file() or all(json.loads(r).get("event") != "eval" for r in metrics.read_text().splitlines())


def test_an_objective_missing_from_the_base_eval_metrics_is_refused_before_any_trial(tiny: Path) -> None:
    write_yaml(tiny / "configs/tiny/listed.yaml", {"extends": "pretrain.yaml", "eval": {"metrics": ["accuracy"]}})
    path = write_yaml(tiny / "configs/tiny/f1.yaml", {
        "base": "listed.yaml", "stage": "pretrain", "objective": "val/macro_f1", "method": "grid",
        "space": {"optim.lr": {"values": [0.01]}}})
    result = run_cli("validate", path)
    assert result.exit_code == 2
    assert ("f1.yaml:3: objective: val/macro_f1 is not computed: the base config's eval.metrics are accuracy"
            in result.stderr), result.stderr
    assert not (tiny / "runs").exists()


def test_a_trial_keeps_the_weights_best_by_the_objective_and_best_yaml_monitors_it_too(tiny: Path) -> None:
    # the default monitor is val/accuracy: a sweep of val/loss would rank trials by the loss of the
    # weights best by accuracy
    _pretrained(tiny)
    path = _sweep_file(tiny, name="loss", objective="val/loss", pruning={"median": False},
                       space={"optim.lr": {"values": [0.03]}})
    result = run_cli("sweep", path, "--quiet")
    assert result.exit_code == 0, result.output
    [trial] = read_json(tiny / "runs/tiny/loss/sweep.json")["trials"]
    config = yaml.safe_load((Path(trial["run_dir"]) / "config.yaml").read_text())
    assert config["train"]["monitor"] == "val/loss"
    evals = [r["val/loss"] for r in map(json.loads, (Path(trial["run_dir"]) / "metrics.jsonl").read_text().splitlines())
             if r.get("event") == "eval"]
    assert trial["value"] == pytest.approx(min(evals), rel=1e-4)
    best = yaml.safe_load((tiny / "runs/tiny/loss/best.yaml").read_text())
    assert best["train"]["monitor"] == "val/loss"


def test_with_the_base_own_monitor_an_objective_not_computed_stops_at_the_first_evaluation(tiny: Path) -> None:
    _pretrained(tiny)
    write_yaml(tiny / "configs/tiny/monitored.yaml", {"extends": "finetune.yaml", "train": {
        "epochs": 3, "monitor": "val/accuracy"}})
    path = _sweep_file(tiny, name="mae2", base="monitored.yaml", objective="val/mae", pruning={"median": False},
                       space={"optim.lr": {"values": [0.01, 0.1]}})
    result = run_cli("sweep", path, "--quiet")
    assert result.exit_code == 2 and "objective: val/mae is not in the trials' reports" in result.stderr
    [trial] = read_json(tiny / "runs/tiny/mae2/sweep.json")["trials"]
    evals = [r for r in map(json.loads, (Path(trial["run_dir"]) / "metrics.jsonl").read_text().splitlines())
             if r.get("event") == "eval"]
    assert len(evals) == 1  # of the base's 3 epochs


def test_a_trial_whose_weights_do_not_load_fails_alone_and_the_sweep_goes_on(tiny: Path) -> None:
    _pretrained(tiny)
    (tiny / "runs/bad.safetensors").write_text("not weights")
    write_yaml(tiny / "configs/tiny/from_file.yaml", {"extends": "finetune.yaml", "model": {
        "name": "cnn1d", "params": {"channels": [8, 8], "kernel_size": 5}}})
    path = _sweep_file(tiny, name="init", base="from_file.yaml", pruning={"median": False},
                       space={"transfer.init_from": {"values": ["runs/pretrain", "runs/bad.safetensors"]}})
    result = run_cli("sweep", path, "--smoke", "--quiet")
    assert result.exit_code == 0, result.output
    states = {t["params"]["transfer.init_from"]: (t["state"], t["error"] or "")
              for t in read_json(tiny / "runs/tiny/init/sweep.json")["trials"]}
    assert states["runs/pretrain"][0] == "complete"
    assert states["runs/bad.safetensors"][0] == "failed" and "not a valid safetensors file" in states[
        "runs/bad.safetensors"][1]


def test_parallel_workers_stopped_by_a_problem_of_the_sweep_exit_2_and_say_so(tiny: Path) -> None:
    path = write_yaml(tiny / "configs/tiny/r2p.yaml", {
        "base": "pretrain.yaml", "stage": "pretrain", "objective": "val/r2", "method": "grid",
        "space": {"optim.lr": {"values": [0.01, 0.1]}}})
    result = run_cli("sweep", path, "--smoke", "--parallel", "2")
    assert result.exit_code == 2, result.output
    assert "objective: val/r2 is not in the trials' evaluations" in result.stderr
    assert "--resume continues" not in result.stderr


def test_resume_and_overwrite_together_are_refused_and_the_sweep_kept(tiny: Path) -> None:
    path = write_yaml(tiny / "configs/tiny/both.yaml", {
        "base": "pretrain.yaml", "stage": "pretrain", "objective": "val/loss", "method": "grid",
        "space": {"optim.lr": {"values": [0.01]}}})
    first = run_cli("sweep", path, "--smoke", "--quiet")
    assert first.exit_code == 0, first.output
    before = read_json(tiny / "runs/tiny/both/sweep.json")["trials"]
    result = run_cli("sweep", path, "--smoke", "--resume", "--overwrite")
    assert result.exit_code == 2 and "give one of them" in result.stderr, result.output
    assert read_json(tiny / "runs/tiny/both/sweep.json")["trials"] == before


def test_overwriting_a_sweep_that_is_running_is_refused_without_touching_it(tiny: Path) -> None:
    import fcntl
    import os

    path = write_yaml(tiny / "configs/tiny/busy.yaml", {
        "base": "pretrain.yaml", "stage": "pretrain", "objective": "val/loss", "method": "grid",
        "space": {"optim.lr": {"values": [0.01]}}})
    assert run_cli("sweep", path, "--smoke", "--quiet").exit_code == 0
    sweep_dir = tiny / "runs/tiny/busy"
    fd = os.open(sweep_dir / ".lock", os.O_RDONLY)  # as the running sweep holds it (another open file)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        parent_before = sweep_dir.parent.stat().st_mtime_ns
        result = run_cli("sweep", path, "--smoke", "--overwrite")
        assert result.exit_code == 2 and "is in use by another transfer command" in result.stderr, result.output
        # never renamed, not even for a moment (a rename changes the parent folder)
        assert sweep_dir.parent.stat().st_mtime_ns == parent_before and (sweep_dir / "sweep.json").is_file()
    finally:
        os.close(fd)
    again = run_cli("sweep", path, "--smoke", "--overwrite", "--quiet")  # free now: replaced
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in sweep_dir.parent.iterdir()) == ["busy"]
