"""Reliability and security at the edges: untrusted checkpoints and configs, bad data and paths,
run dirs that must not be clobbered, full or unwritable disks (properties 1-5, 14, 15 of the
Reliability section). Every refusal is one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import pytest
import torch
from conftest import run_cli, tree_digest, write_yaml
from reliability_tools import ENV, RESUMABLE, copy_run, flip_byte, rewind

from transfer_cli.core.registry import Params
from transfer_cli.data import DATASETS, DataBundle, TensorSplit
from transfer_cli.runs import checkpoints as ckpt
from transfer_cli.runs.provenance import sha256_of
from transfer_cli.runs.rundir import RunDir

CNN = "model={name: cnn1d, params: {channels: [8, 8], kernel_size: 5}}"


def _refused(result, *fragments: str) -> str:
    """Exit 2, exactly one line on stderr containing every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _pretrained(tiny: Path) -> Path:
    assert run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1").exit_code == 0
    return tiny / "runs" / "pretrain"


class _RunsCode:
    """Unpickling this object runs `touch marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _seal(checkpoint: Path) -> None:
    """Rewrite the completion marker for the files as they are now (what an attacker would do)."""
    digests = {name: sha256_of(checkpoint / name) for name in (ckpt.WEIGHTS, ckpt.STATE, ckpt.META)}
    (checkpoint / ckpt.COMPLETE).write_text(json.dumps({"sha256": digests}))


def test_01_malicious_checkpoint_never_executes(tiny: Path) -> None:
    marker = tiny / "pwned"
    torch.save({"head.weight": _RunsCode(marker)}, tiny / "evil.pt")
    torch.save({"head.weight": _RunsCode(marker)}, tiny / "evil.pth", _use_new_zipfile_serialization=False)
    for command in (("finetune", "configs/tiny/finetune.yaml", "--set", CNN, "--init-from", "evil.pt"),
                    ("evaluate", "configs/tiny/evaluate.yaml", "--set", CNN, "--checkpoint", "evil.pth"),
                    ("validate", "configs/tiny/finetune.yaml", "--set", CNN, "--init-from", "evil.pt")):
        _refused(run_cli(*command), "refused to load", "unpickling them could run code")
    # a training state planted in a run's newest checkpoint, with a marker that vouches for it
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", *RESUMABLE)
    assert result.exit_code == 0, result.output
    run = tiny / "runs" / "pretrain"
    rewind(run, 9)
    torch.save({"engine": _RunsCode(marker)}, run / "checkpoints" / "step-00000009" / ckpt.STATE)
    _seal(run / "checkpoints" / "step-00000009")
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", *RESUMABLE, "--resume")
    assert result.exit_code == 0, result.output
    assert "step-00000009 is unusable (cannot read training state" in result.stderr
    assert "from step 6" in result.stdout
    assert not marker.exists()
    for command in ("finetune", "evaluate"):  # and no switch to turn unpickling on
        assert "unsafe" not in run_cli(command, "--help").output.lower()


def _malformed_files(tiny: Path, weights: Path) -> dict[str, Path]:
    real = weights.read_bytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [1_000_000, 1_000_000],
                               "data_offsets": [0, 4_000_000_000_000]}}).encode()
    files = {
        "truncated.safetensors": real[: len(real) // 2],
        "header-too-large.safetensors": struct.pack("<Q", 2**40) + real[8:],
        "header-lies.safetensors": struct.pack("<Q", len(header)) + header + bytes(64),
        "picture.safetensors": b"\x89PNG\r\n\x1a\n" + os.urandom(256),
        "noise.pt": os.urandom(4096),
        "empty.bin": b"",
        "weights.h5": b"HDF",
    }
    state = {k: torch.zeros(3) for k in ("a", "b")}
    torch.save(state, tiny / "whole.pt")
    files["truncated.pt"] = (tiny / "whole.pt").read_bytes()[:300]
    for name, data in files.items():
        (tiny / name).write_bytes(data)
    return {name: tiny / name for name in files}


# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child of a big
# pytest process would report its parent's peak
CHILD = """
import json, re, sys
from pathlib import Path
from typer.testing import CliRunner
from transfer_cli.cli import app
results = {name: CliRunner().invoke(app, args) for name, args in json.loads(sys.argv[1]).items()}
peak_kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"results": {k: [r.exit_code, r.stderr] for k, r in results.items()},
                  "maxrss_mib": peak_kib / 1024}))
"""


def test_02_malformed_weights_rejected_in_one_line_with_bounded_memory(tiny: Path) -> None:
    run = _pretrained(tiny)
    files = _malformed_files(tiny, run / "checkpoints" / "best" / ckpt.WEIGHTS)
    corrupt = copy_run(run, tiny / "runs" / "corrupt")
    flip_byte(corrupt / "checkpoints" / "best" / ckpt.WEIGHTS)
    refs = {name: str(path) for name, path in files.items()} | {"corrupt run": "runs/corrupt"}
    commands = {name: ["finetune", "configs/tiny/finetune.yaml", "--set", CNN, "--init-from", ref]
                for name, ref in refs.items()}
    # in a fresh process, so that its peak memory is this command's alone
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(commands)], cwd=tiny, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    expected = {"truncated.safetensors": "not a valid safetensors file",
                "header-too-large.safetensors": "header too large",
                "header-lies.safetensors": "not a valid safetensors file",
                "picture.safetensors": "not a valid safetensors file",
                "noise.pt": "refused to load", "empty.bin": "refused to load", "truncated.pt": "refused to load",
                "weights.h5": "unsupported weights format '.h5'", "corrupt run": "is corrupt"}
    for name, (code, stderr) in report["results"].items():
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1, (name, stderr)
        assert lines[0].startswith("error: ") and expected[name] in lines[0], (name, lines[0])
        assert "Traceback" not in stderr
    # the header of header-lies.safetensors asks for 4 TB: nothing of the sort was allocated
    assert report["maxrss_mib"] < 1024, report["maxrss_mib"]
    assert not (tiny / "runs" / "finetune").exists()


def test_03_yaml_is_data_only(tiny: Path) -> None:
    marker = tiny / "pwned"
    attack = f"!!python/object/apply:os.system ['touch {marker}']"
    write_yaml(tiny / "configs" / "tiny" / "evil.yaml", f"extends: base.yaml\ndata: {attack}\n")
    write_yaml(tiny / "configs" / "tiny" / "evil-base.yaml", "seed: !!python/name:os.system\n")
    write_yaml(tiny / "configs" / "tiny" / "child.yaml", "extends: evil-base.yaml\ndata: {name: motifs}\n")
    run = _pretrained(tiny)
    (run / "config.yaml").write_text(f"data: {attack}\n")
    cases = [
        (("pretrain", "configs/tiny/evil.yaml"), "evil.yaml:2"),
        (("pretrain", "configs/tiny/child.yaml"), "evil-base.yaml:1"),
        (("pretrain", "configs/tiny/pretrain.yaml", "--set", f"seed={attack}"), "--set seed="),
        (("evaluate", "runs/pretrain"), "runs/pretrain/config.yaml"),
    ]
    for command, where in cases:
        result = run_cli(*command)
        assert result.exit_code == 2, result.output
        assert where in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert "python/" in result.stderr
    assert not marker.exists()


def test_04_all_config_errors_reported_at_once(tiny: Path) -> None:
    write_yaml(tiny / "configs" / "tiny" / "bad.yaml", """extends: base.yaml
data: {name: motifs, batch_size: 0}
model: {name: cnn1d, params: {chanels: [8]}}
optim: {lr: fast}
schedule: {name: cosin}
trian: {epochs: 3}
""")
    result = run_cli("pretrain", "configs/tiny/bad.yaml")
    assert result.exit_code == 2
    err = result.stderr
    assert err.startswith("error: invalid config configs/tiny/bad.yaml (5 problems):") and "Traceback" not in err
    assert "bad.yaml:2: data.batch_size: Input should be greater than or equal to 1; got 0" in err  # range
    assert "bad.yaml:3: model.params.chanels: unknown key (did you mean 'channels'?)" in err  # nested key
    assert "bad.yaml:4: optim.lr: Input should be a valid number" in err and "got 'fast'" in err  # type
    assert "bad.yaml:5: schedule.name: unknown schedule 'cosin' (did you mean 'cosine'?)" in err  # name
    assert "bad.yaml:6: trian: unknown key (did you mean 'train'?)" in err  # top-level key
    assert not (tiny / "runs").exists()


def test_05_run_dirs_are_never_clobbered(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _pretrained(tiny)
    before = tree_digest(run)
    again = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1")
    _refused(again, "already exists; use --resume to continue it, --overwrite to replace it")
    evaluate = run_cli("evaluate", "configs/tiny/evaluate.yaml", "--checkpoint", "runs/pretrain",
                       "--set", "data.params.task=source", "--run-dir", "runs/pretrain")
    _refused(evaluate, "already exists; use --overwrite to replace it")  # evaluate has no --resume
    other = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=2", "--resume")
    assert other.exit_code == 2 and "the config differs" in other.stderr
    # a full run is not continued as a smoke run (nor the reverse)
    smoke = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--resume", "--smoke")
    assert smoke.exit_code == 2 and "it was started without --smoke; resume it without --smoke" in smoke.stderr
    assert tree_digest(run) == before
    # an interrupted run is not silently resumed either
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    before = tree_digest(run)
    _refused(run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1"), "already exists")
    assert tree_digest(run) == before
    # --overwrite replaces runs only, never another directory
    (tiny / "thesis").mkdir()
    (tiny / "thesis" / "chapter1.tex").write_text("years of work")
    before = tree_digest(tiny / "thesis")
    _refused(run_cli("pretrain", "configs/tiny/pretrain.yaml", "--run-dir", "thesis", "--overwrite"),
             "not a run directory")
    assert tree_digest(tiny / "thesis") == before
    # another command creates the same run dir between our check and our first write: it wins
    real_check = RunDir.check.__func__

    def check_then_lose_the_race(cls, path, mode, needed_bytes=0, **options):
        run = real_check(cls, path, mode, needed_bytes, **options)
        (path / "checkpoints").mkdir(parents=True)
        (path / "run.json").write_text("{}")
        return run

    monkeypatch.setattr(RunDir, "check", classmethod(check_then_lose_the_race))
    _refused(run_cli("pretrain", "configs/tiny/pretrain.yaml", "--run-dir", "runs/raced"),
             "run dir runs/raced was created by another command while this one was starting")
    raced = tiny / "runs" / "raced"
    assert sorted(os.listdir(raced)) == ["checkpoints", "run.json"] and (raced / "run.json").read_text() == "{}"
    assert sorted(p.name for p in (tiny / "runs").iterdir()) == ["pretrain", "raced"]  # no staging left


@pytest.fixture
def broken_data():
    """A registered data set with one defect of choice, as a real data source could have."""

    class BrokenParams(Params):
        defect: Literal["label_out_of_range", "val_shape", "nan_input"]

    def build(params: BrokenParams, *, seed: int) -> DataBundle:
        generator = torch.Generator().manual_seed(0)
        splits = {name: [torch.randn(n, 1, 32, generator=generator), torch.arange(n) % 4]
                  for name, n in (("train", 40), ("val", 20), ("test", 20))}
        if params.defect == "label_out_of_range":
            splits["train"][1][7] = 9
        if params.defect == "val_shape":
            splits["val"][0] = torch.randn(20, 1, 30, generator=generator)
        if params.defect == "nan_input":
            splits["train"][0][5, 0, 3] = float("nan")
        return DataBundle({k: TensorSplit(x, y) for k, (x, y) in splits.items()}, task="multiclass",
                          num_outputs=4, class_names=list("abcd"))

    DATASETS.register("broken", params=BrokenParams)(build)
    yield
    DATASETS._entries.pop("broken")


def test_14_bad_data_and_paths_one_line_exit_2_nothing_written(tiny: Path, broken_data: None) -> None:
    _pretrained(tiny)
    (tiny / "not-a-run").mkdir()
    (tiny / "notes.txt").write_text("hello")
    finetune = ("finetune", "configs/tiny/finetune.yaml")
    broken = ("pretrain", "configs/tiny/pretrain.yaml", "--set")
    cases = [
        (("pretrain", "configs/tiny/nope.yaml"), ["config file not found: configs/tiny/nope.yaml"]),
        ((*finetune, "--set", CNN, "--init-from", "runs/nowhere"), ["--init-from runs/nowhere", "transfer.init_from",
                                                      "no such run directory or weights file"]),
        ((*finetune, "--set", CNN, "--init-from", "not-a-run"),
         ["transfer.init_from:", "not-a-run is a directory but not a run directory (no checkpoints/)"]),
        ((*finetune, "--set", CNN, "--init-from", "notes.txt"), ["notes.txt: unsupported weights format '.txt'"]),
        ((*finetune, "--set", "model.params.channels=[4]"), ["do not fit the model", "mismatched"]),
        (("pretrain", "configs/tiny/pretrain.yaml", "--set", "optim.lrr=0.1"),
         ["--set optim.lrr=0.1: optim.lrr: unknown key (did you mean 'lr'?)"]),
        ((*broken, "data={name: broken, params: {defect: label_out_of_range}}"),
         ["data 'broken', split train: label 9 of sample 7 is out of range; expected 0..3 (4 classes)"]),
        ((*broken, "data={name: broken, params: {defect: val_shape}}"),
         ["data 'broken', split val: samples have shape (1, 30), but train samples have (1, 32)"]),
        ((*broken, "data={name: broken, params: {defect: nan_input}}"),
         ["data 'broken', split train: input of sample 5 has NaN/Inf values"]),
    ]
    for command, fragments in cases:
        _refused(run_cli(*command, "--run-dir", "runs/new"), *fragments)
        assert not (tiny / "runs" / "new").exists(), command
    assert sorted(p.name for p in (tiny / "runs").iterdir()) == ["pretrain"]


def test_15_full_or_unwritable_disk_refused_before_training(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transfer_cli.runs import rundir
    from transfer_cli.train.engine import Engine

    trained = []
    real_fit = Engine.fit
    monkeypatch.setattr(Engine, "fit", lambda self, *a, **k: trained.append(1) or real_fit(self, *a, **k))
    (tiny / "a-file").write_text("not a directory")
    _refused(run_cli("pretrain", "configs/tiny/pretrain.yaml", "--run-dir", "a-file/run"),
             "cannot write the run dir a-file/run: a-file is a file, not a directory")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    with monkeypatch.context() as patch:  # root ignores permission bits; a read-only mount stops it
        patch.setattr(rundir.tempfile, "mkstemp", read_only)
        _refused(run_cli("pretrain", "configs/tiny/pretrain.yaml"),
                 "cannot write the run dir runs/pretrain", "not writable (Read-only file system)")
    assert not (tiny / "runs").exists()

    run = _pretrained(tiny)
    trained.clear()
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    before = tree_digest(run)
    total = 100 * 2**30
    with monkeypatch.context() as patch:
        patch.setattr(rundir.shutil, "disk_usage", lambda path: SimpleNamespace(total=total, free=2**20))
        _refused(run_cli("pretrain", "configs/tiny/pretrain.yaml", "--run-dir", "runs/other"),
                 "not enough free disk space for runs/other: 1 MiB free, at least 50 MiB needed")
        _refused(run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1", "--resume"),
                 "not enough free disk space")
    assert tree_digest(run) == before and not (tiny / "runs" / "other").exists()
    assert trained == []
