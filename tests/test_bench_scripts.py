"""The benchmark scripts run (their figures are quoted in the README): each, with the smallest
settings, in a real process, printing its comparison against the plain loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bench_compares_engine_and_plain_loop_with_identical_weights() -> None:
    out = _script("scripts/bench.py", "--cases", "mlp", "--repeats", "1", "--steps", "3", "--no-memory")
    assert "engine/plain  steps/s" in out
    assert "same final weights: yes (bit for bit)" in out


@pytest.mark.slow  # ~40 s: a ViT and a GPT-2 of 4 layers, hidden 192
def test_bench_hugging_face_cases_end_with_the_same_weights() -> None:
    pytest.importorskip("transformers")
    out = _script("scripts/bench.py", "--cases", "hf_vit,hf_gpt2", "--repeats", "1", "--steps", "2", "--no-memory")
    assert out.count("same final weights: yes (bit for bit)") == 2, out


@pytest.mark.slow  # ~15 s: four engine builds on the quickstart data
def test_bench_eval_tax_times_plain_and_engine_steps(tmp_path: Path) -> None:
    config = tmp_path / "small.yaml"
    config.write_text(f"extends: {ROOT / 'configs' / 'quickstart' / 'pretrain.yaml'}\n"
                      "data: {params: {n_train: 256, n_val: 64, n_test: 64}, batch_size: 32}\n")
    out = _script("scripts/bench_eval_tax.py", "--device", "cpu", "--steps", "4", "--eval-every", "2",
                  "--repeats", "1", "--config", str(config))
    assert "step  plain PyTorch loop" in out and "full/plain" in out


def test_check_hf_scratch_trains_the_shipped_hf_architectures_in_a_plain_loop() -> None:
    pytest.importorskip("transformers", reason="needs the optional extra: pip install -e '.[hf]'")
    out = _script("scripts/check_hf_scratch.py", "--n-train", "64", "--epochs", "1")
    lines = [line for line in out.splitlines() if "val/accuracy" in line]
    assert [line.split()[0] for line in lines] == ["hf_resnet", "hf_vit"]
    assert all(0 <= float(line.split("val/accuracy ")[1].split()[0]) <= 1 for line in lines)


@pytest.mark.slow  # ~25 s: a fresh process per case, each importing torch and transformers
def test_bench_memory_compares_checkpointing_and_the_estimate_with_the_measured_peak() -> None:
    pytest.importorskip("transformers", reason="the benchmark's model is a Hugging Face ViT")
    out = _script("scripts/bench_memory.py", "--cases", "plain,full,full+ckpt", "--layers", "2", "--hidden", "32",
                  "--image", "16", "--patch", "4", "--batch", "4", "--steps", "2", "--threads", "1")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("plain ", "full"))}
    assert set(rows) == {"plain", "full", "full+ckpt"}
    assert len(rows["full"]) == 8 and float(rows["full"][6]) > 0  # rise / estimate
    assert "rise full+ckpt / full:" in out and "rise full / plain:" in out


@pytest.mark.slow  # ~25 s: three sweeps of two trials and the plain loop, in one process
def test_bench_sweep_compares_the_feature_cache_modes_and_the_plain_loop() -> None:
    out = _script("scripts/bench_sweep.py", "--lrs", "2", "--epochs", "1", "--n-train", "200", "--n-pretrain", "500",
                  "--repeats", "1")
    for mode in ("shared cache", "cache per trial", "no caching", "plain loop"):
        assert mode in out
    assert "the same in every mode: True" in out


@pytest.mark.slow  # ~10 s: six fresh processes, one of them a smoke pretrain
def test_bench_startup_breaks_the_smoke_pretrain_into_phases_that_add_up() -> None:
    out = _script("scripts/bench_startup.py", "--repeats", "1")
    seconds = {line[:50].strip(): float(line[50:].split()[0]) for line in out.splitlines() if line.startswith("  ")}
    phases = [value for name, value in seconds.items() if name.startswith(("Python", "data", "optimizer", "3 steps",
                                                                            "final", "pictures", "exit"))]
    assert len(phases) == 7 and all(value >= 0 for value in phases)
    assert sum(phases) == pytest.approx(seconds["pretrain --smoke: whole command"], abs=0.02)
