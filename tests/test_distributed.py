"""The same command in two processes: `transfer pretrain CONFIG --nproc 2` runs DDP (gloo on CPU),
rank 0 alone writes the run, the report equals a one-process evaluation of the saved
checkpoint, and a DDP run resumed from a mid-run checkpoint ends bit for bit as the unbroken one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_json, run_cli
from reliability_tools import ENV, assert_same_run, copy_run, rewind

from transfer_cli.data.bundle import batch_indices
from transfer_cli.dist import distributed
from transfer_cli.runs import checkpoints as ckpt
from transfer_cli.weights.files import read_weights

CONFIG = "configs/tiny/pretrain.yaml"


def _transfer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transfer_cli", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=240)


def test_ddp_two_processes_write_one_run_whose_report_equals_a_single_process_evaluation(tiny: Path) -> None:
    done = _transfer("pretrain", CONFIG, "--nproc", "2", "--run-dir", "runs/ddp", cwd=tiny)
    assert done.returncode == 0, done.stderr
    run = tiny / "runs" / "ddp"
    # rank 0 alone speaks and writes: one start line, one table, one run
    assert done.stdout.count("pretrain: data multiclass") == 1 and "rank 1" not in done.stdout + done.stderr
    info = read_json(run / "run.json")
    assert info["status"] == "completed" and info["processes"] == 2 and info["distributed"] == "ddp"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "last", "step-00000007",
                                                                      "step-00000014"]
    state = ckpt.load_state(run / "checkpoints" / "step-00000007")
    assert len(state["ranks"]) == 2  # each rank's RNG state and running loss, for an exact resume
    assert state["train_state"]["step"] == 7  # 200 samples, batch 32: as many steps as in one process
    assert not any(key.startswith("module.") for key in read_weights(run / "checkpoints" / "best" / ckpt.WEIGHTS))

    # the report's metrics are those of evaluating the best checkpoint in one process
    report = read_json(run / "report.json")
    for split in ("val", "test"):
        result = run_cli("evaluate", "runs/ddp", "--split", split, "--run-dir", f"runs/eval-{split}", "--json")
        assert result.exit_code == 0, result.output
        single = result.json()["metrics"][split]
        assert set(single) == set(report["metrics"][split])
        for name, value in single.items():
            assert report["metrics"][split][name] == pytest.approx(value, rel=1e-5, abs=1e-7), (split, name)
        assert report["splits"][split]["size"] == 100
        assert report["splits"][split]["confusion_matrix"]["counts"] == \
            result.json()["splits"][split]["confusion_matrix"]["counts"]

    # resumed under DDP from the checkpoint of step 7: the same run, bit for bit
    resumed = copy_run(run, tiny / "runs" / "resumed")
    rewind(resumed, 7)
    done = _transfer("pretrain", CONFIG, "--nproc", "2", "--run-dir", "runs/resumed", "--resume", cwd=tiny)
    assert done.returncode == 0, done.stderr
    assert "from step 7 " in done.stdout
    assert_same_run(run, resumed)

    # resumed in one process: it continues, and says that it is no longer the same run bit for bit
    alone = copy_run(run, tiny / "runs" / "alone")
    rewind(alone, 7)
    result = run_cli("pretrain", CONFIG, "--run-dir", "runs/alone", "--resume")
    assert result.exit_code == 0, result.output
    assert "the checkpoint was written by 2 process(es), this run has 1" in result.stderr
    assert read_json(alone / "run.json")["status"] == "completed"


@pytest.mark.slow
def test_fsdp_shards_the_model_and_reports_like_a_single_process_evaluation(tiny: Path) -> None:
    # 101 validation samples in batches of 50: one rank evaluates 2 batches, the other 1, yet
    # FSDP needs both in every forward; the run must neither hang nor count a sample twice
    uneven = ("--set", "data.params.n_val=101", "--set", "data.eval_batch_size=50")
    done = _transfer("pretrain", CONFIG, "--nproc", "2", "--set", "train.distributed=fsdp", *uneven,
                     "--run-dir", "runs/fsdp", cwd=tiny)
    assert done.returncode == 0, done.stderr
    run = tiny / "runs" / "fsdp"
    report = read_json(run / "report.json")
    assert report["splits"]["val"]["size"] == 101
    result = run_cli("evaluate", "runs/fsdp", "--split", "val", "--run-dir", "runs/eval", "--json")
    assert result.exit_code == 0, result.output
    for name, value in result.json()["metrics"]["val"].items():
        assert report["metrics"]["val"][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    resumed = copy_run(run, tiny / "runs" / "resumed")
    rewind(resumed, 7)
    done = _transfer("pretrain", CONFIG, "--nproc", "2", "--set", "train.distributed=fsdp", *uneven,
                     "--run-dir", "runs/resumed", "--resume", cwd=tiny)
    assert done.returncode == 0, done.stderr
    assert_same_run(run, resumed)


@pytest.mark.slow
def test_ddp_finetune_over_seeds_with_baseline(tiny: Path) -> None:
    assert run_cli("pretrain", CONFIG).exit_code == 0
    done = _transfer("finetune", "configs/tiny/finetune.yaml", "--nproc", "2", "--init-from", "runs/pretrain",
                     "--seeds", "0,1", "--baseline", "scratch", "--set", "train.epochs=1", "--run-dir", "runs/seeds",
                     cwd=tiny)
    assert done.returncode == 0, done.stderr
    assert "rank 1" not in done.stderr
    report = read_json(tiny / "runs" / "seeds" / "report.json")
    assert [r["seed"] for r in report["per_seed"]] == [0, 1] and set(report["transfer_gain"]) == set(report["metrics"]["test"])
    for seed in (0, 1):
        for run in (f"runs/seeds/seed-{seed}", f"runs/seeds/seed-{seed}/baseline"):
            assert read_json(tiny / run / "run.json")["status"] == "completed", run


@pytest.mark.slow
def test_ddp_config_errors_exit_2_before_training(tiny: Path) -> None:
    done = _transfer("pretrain", CONFIG, "--nproc", "2", "--set", "data.batch_size=33", cwd=tiny)
    assert done.returncode == 2
    assert "data.batch_size: 33 samples per batch cannot be split evenly over 2 processes" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tiny / "runs" / "pretrain").exists()


def test_nproc_refused_under_torchrun(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = run_cli("pretrain", CONFIG, "--nproc", "2")
    assert result.exit_code == 2
    assert "under torchrun they exist already" in result.stderr


@pytest.mark.parametrize("n,batch,size", [(200, 32, 2), (203, 32, 2), (10, 4, 4), (7, 6, 3)])
def test_training_shards_split_each_batch_of_the_padded_epoch(n: int, batch: int, size: int) -> None:
    whole = [index.tolist() for index in batch_indices(n, batch, shuffle=True, seed=3, epoch=2)]
    shards = [[index.tolist() for index in batch_indices(n, batch, shuffle=True, seed=3, epoch=2, shard=(r, size))]
              for r in range(size)]
    assert all(len(shard) == len(whole) for shard in shards)  # same batch count: steps mean the same
    for b, batch_samples in enumerate(whole):
        joined = [i for shard in shards for i in shard[b]]
        assert len({len(shard[b]) for shard in shards}) == 1  # equal shares: DDP's mean is the batch mean
        padding = joined[len(batch_samples):]
        assert joined[:len(batch_samples)] == batch_samples  # the batch of one process, in order
        assert set(padding) <= set(whole[0])  # padded with the epoch's first samples
    assert len(padding) == (-n) % size
    # resuming at batch 1 gives each rank the rest of its own sequence
    later = [index.tolist() for index in batch_indices(n, batch, shuffle=True, seed=3, epoch=2, start=1, shard=(1, size))]
    assert later == shards[1][1:]


def test_evaluation_shards_cover_the_split_once_without_padding() -> None:
    covered = [i for rank in range(3) for index in batch_indices(10, 2, shuffle=False, shard=(rank, 3))
               for i in range(10)[index]]
    assert covered == list(range(10))


def test_batch_norm_would_get_one_sample_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from transfer_cli.recipes import parts
    from transfer_cli.config.schema import Experiment
    from transfer_cli.data.bundle import DataBundle, TensorSplit
    from transfer_cli.core.errors import ConfigError

    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=0, size=4))
    exp = Experiment.model_validate({"data": {"name": "motifs", "batch_size": 8}, "model": {"name": "cnn1d"}})
    data = DataBundle({"train": TensorSplit(torch.zeros(12, 1, 8), torch.zeros(12, dtype=torch.long))},
                      "multiclass", 2)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(1))
    with pytest.raises(ConfigError, match="the last batch gives each of the 4 processes one sample"):
        parts.check_distributed(exp, data, model, evaluating=False, opts=parts.RunOptions())
    exp.data.batch_size = 6
    with pytest.raises(ConfigError, match="6 samples per batch cannot be split evenly over 4 processes"):
        parts.check_distributed(exp, data, model, evaluating=False, opts=parts.RunOptions())


def test_nproc_exits_with_the_code_of_the_rank_that_failed_first(tmp_path: Path) -> None:
    # rank 1 fails on its own (as on a bad sample only its shard holds) while rank 0 waits for it;
    # the launcher then stops rank 0 with SIGTERM: the exit code must be rank 1's 2, not rank 0's 143
    fake = tmp_path / "transfer_cli"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("import os, sys, time\n"
                                      "if os.environ['RANK'] == '1':\n    sys.exit(2)\n"
                                      "time.sleep(60)\n")
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
              "from transfer_cli.dist.launch import launch\nprint(launch(2, []))\n")
    # the workers import the stand-in package (first on their PYTHONPATH); the parent the real launcher
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**ENV, "PYTHONPATH": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "2", done.stdout + done.stderr


@pytest.mark.slow
def test_ddp_resume_needs_no_shared_file_system(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # two "machines": rank 0 works in `tiny`, which holds the run; rank 1 in a copy of the configs
    # alone. Each rank deciding for itself whether there is a run to resume sent them into
    # different collectives: the resume hung.
    other = tmp_path_factory.mktemp("other-machine")
    subprocess.run(["cp", "-r", str(tiny / "configs"), str(other)], check=True)
    wrapper = other / "per_rank.py"
    wrapper.write_text(f"import os, runpy, sys\nos.chdir({str(tiny)!r} if os.environ['RANK'] == '0' else {str(other)!r})\n"
                       "sys.argv = ['transfer_cli'] + sys.argv[1:]\nrunpy.run_module('transfer_cli', run_name='__main__')\n")

    def torchrun(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(wrapper), "pretrain", CONFIG, *args], cwd=tiny, env=ENV, capture_output=True,
                              text=True, timeout=240)

    done = torchrun("--run-dir", "runs/ddp")
    assert done.returncode == 0, done.stderr
    resumed = copy_run(tiny / "runs" / "ddp", tiny / "runs" / "resumed")
    rewind(resumed, 7)
    done = torchrun("--run-dir", "runs/resumed", "--resume")
    assert done.returncode == 0, done.stderr
    assert_same_run(tiny / "runs" / "ddp", resumed)
    assert sorted(p.name for p in other.iterdir()) == ["configs", "per_rank.py"]  # rank 1 wrote nothing


def test_a_signal_while_the_ranks_exchange_after_creating_the_run_is_recorded(tiny: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # under torchrun rank 0 creates the run and then waits in a broadcast; Ctrl-C there must not
    # leave a run that says "running"
    real_on_main = distributed.on_main

    def interrupted_after(action):
        result = real_on_main(action)
        if isinstance(result, dict) and result.get("status") == "running":
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(distributed, "on_main", interrupted_after)
    result = run_cli("pretrain", CONFIG)
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert read_json(tiny / "runs" / "pretrain" / "run.json")["status"] == "interrupted"
