"""The speed switches of `train`, each checked for correctness on CPU through the CLI: precision,
torch.compile (and its fallback), channels_last, gradient accumulation."""

from __future__ import annotations

import pytest
import torch
from conftest import read_json, read_jsonl, run_cli

from transfer_cli.runs import checkpoints as ckpt
from transfer_cli.runs.rundir import RunDir
from transfer_cli.weights.files import read_weights

CONFIG = "configs/tiny/pretrain.yaml"
ONE_EVAL = ("--set", "train.max_steps=4", "--set", "train.eval_every_steps=4")
IMAGES = ("--set", "data={name: motifs2d, params: {task: source, n_train: 64, n_val: 32, n_test: 32}, batch_size: 16}",
          "--set", "model={name: resnet, params: {widths: [4, 8]}}")


def _train(tiny, name: str, *sets: str) -> dict:
    result = run_cli("pretrain", CONFIG, *ONE_EVAL, *sets, "--run-dir", f"runs/{name}")
    assert result.exit_code == 0, result.output
    return read_jsonl(tiny / "runs" / name / "metrics.jsonl")[-1]


def _weights(tiny, name: str) -> dict[str, torch.Tensor]:
    return read_weights(tiny / "runs" / name / "checkpoints" / "last" / ckpt.WEIGHTS)


def test_precision_bf16_and_fp16_train_in_mixed_precision_with_fp32_weights(tiny) -> None:
    # precise BN off: it recomputes the statistics in the run's precision, and after 4 steps the
    # val loss then moves with bf16's rounding (6% here); this test is about the training step
    exact_stats = ("--set", "train.precise_bn=0")
    reference = _train(tiny, "fp32", *exact_stats)
    for precision, tolerance in (("bf16", 0.02), ("fp16", 0.02)):
        record = _train(tiny, precision, "--set", f"train.precision={precision}", *exact_stats)
        # lower precision really ran (the numbers differ) and stayed close to fp32
        assert record["val/loss"] != reference["val/loss"]
        assert record["val/loss"] == pytest.approx(reference["val/loss"], rel=tolerance)
        assert {t.dtype for t in _weights(tiny, precision).values() if t.is_floating_point()} == {torch.float32}
        scaler = ckpt.load_state(tiny / "runs" / precision / "checkpoints" / "last")["engine"]["scaler"]
        # fp16 needs a loss scaler (saved for an exact resume); bf16 has fp32's range and needs none
        assert bool(scaler) == (precision == "fp16")
    assert not ckpt.load_state(tiny / "runs" / "fp32" / "checkpoints" / "last")["engine"]["scaler"]


def test_compile_failure_falls_back_to_eager_with_one_warning(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, "/bin/false"))  # as on a machine without a C++ compiler
    reference = run_cli("pretrain", CONFIG, *ONE_EVAL, "--run-dir", "runs/eager")
    result = run_cli("pretrain", CONFIG, *ONE_EVAL, "--set", "train.compile=true", "--run-dir", "runs/fallback")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: train.compile")]
    assert len(warnings) == 1 and "could not compile the model" in warnings[0] and "continues uncompiled" in warnings[0]
    assert "Traceback" not in result.output
    assert reference.exit_code == 0
    # the batches that failed to compile ran eagerly: the run is the uncompiled one
    assert RunDir(tiny / "runs" / "fallback").read_metrics(wall_clock=False) == \
        RunDir(tiny / "runs" / "eager").read_metrics(wall_clock=False)
    torch._dynamo.reset()  # forget what was traced for this test's model


@pytest.mark.slow
def test_compile_trains_like_eager(tiny) -> None:  # ~1 min on 2 CPU cores: inductor compiles C++
    eager = _train(tiny, "eager")
    compiled = _train(tiny, "compiled", "--set", "train.compile=true")
    assert compiled["val/loss"] == pytest.approx(eager["val/loss"], rel=1e-4)
    for name, tensor in _weights(tiny, "eager").items():  # no _orig_mod. prefixes in the weights
        torch.testing.assert_close(_weights(tiny, "compiled")[name], tensor, rtol=1e-3, atol=1e-4)


def test_channels_last_image_model_trains_nhwc_and_like_nchw(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _train(tiny, "nchw", *IMAGES)
    layouts = []
    real_forward = torch.nn.Conv2d.forward

    def observed(conv, x):
        if conv.training:
            layouts.append(x.is_contiguous(memory_format=torch.channels_last)
                           and conv.weight.is_contiguous(memory_format=torch.channels_last))
        return real_forward(conv, x)

    monkeypatch.setattr(torch.nn.Conv2d, "forward", observed)
    record = _train(tiny, "nhwc", *IMAGES, "--set", "train.channels_last=true")
    assert layouts and all(layouts)
    assert record["val/loss"] == pytest.approx(reference["val/loss"], rel=1e-4)
    # the checkpoint loads into a plain model: evaluate it in one process
    result = run_cli("evaluate", "runs/nhwc", "--run-dir", "runs/nhwc-eval", "--json")
    assert result.exit_code == 0, result.output
    # NHWC and NCHW convolutions sum in different orders: equal up to float rounding
    assert result.json()["metrics"]["test"] == pytest.approx(
        read_json(tiny / "runs" / "nhwc" / "report.json")["metrics"]["test"], rel=1e-6)


def test_channels_last_on_signals_is_a_config_error(tiny) -> None:
    result = run_cli("pretrain", CONFIG, "--set", "train.channels_last=true")
    assert result.exit_code == 2
    assert "train.channels_last: true applies to image models (samples of shape (C, H, W)); the data has " \
           "samples of shape (1, 96)" in result.stderr
    assert not (tiny / "runs" / "pretrain").exists()


def test_accumulating_two_batches_of_b_is_one_batch_of_2b(tiny) -> None:
    # no BatchNorm (its statistics depend on the batch); plain SGD: the update is linear in the gradient
    same = ("--set", "model={name: mlp, params: {hidden: [32], norm: layer}}", "--set", "optim={name: sgd, lr: 0.2}",
            "--set", "train.max_steps=3", "--set", "train.eval_every_steps=3")
    runs = {"big": ("data.batch_size=32", "train.grad_accum=1"), "accumulated": ("data.batch_size=16", "train.grad_accum=2"),
            "small": ("data.batch_size=16", "train.grad_accum=1")}
    for name, (batch, accum) in runs.items():
        result = run_cli("pretrain", CONFIG, *same, "--set", batch, "--set", accum, "--run-dir", f"runs/{name}")
        assert result.exit_code == 0, result.output
    big, accumulated, small = (_weights(tiny, name) for name in runs)
    for name, tensor in big.items():
        torch.testing.assert_close(accumulated[name], tensor, rtol=1e-5, atol=1e-6)
    # what the comparison would see if accumulation were wrong (3 steps of 16 samples each)
    assert max((small[k] - big[k]).abs().max().item() for k in big) > 1e-3
    logs = {name: read_jsonl(tiny / "runs" / name / "metrics.jsonl")[-1] for name in ("big", "accumulated")}
    assert logs["big"]["step"] == logs["accumulated"]["step"] == 3
    assert logs["accumulated"]["train/loss"] == pytest.approx(logs["big"]["train/loss"], rel=1e-6)


def test_a_short_last_accumulation_group_is_not_scaled_down(tiny) -> None:
    # 200 samples: 13 batches of 16 (the last of 8), so with grad_accum 2 the epoch's last step
    # has one micro-batch; it must count fully, as the last batch of 8 does with batches of 32
    same = ("--set", "model={name: mlp, params: {hidden: [32], norm: layer}}", "--set", "optim={name: sgd, lr: 0.2}",
            "--set", "train.epochs=1")
    for name, batch, accum in (("accumulated", 16, 2), ("big", 32, 1)):
        result = run_cli("pretrain", CONFIG, *same, "--set", f"data.batch_size={batch}",
                         "--set", f"train.grad_accum={accum}", "--run-dir", f"runs/{name}")
        assert result.exit_code == 0, result.output
        assert read_jsonl(tiny / "runs" / name / "metrics.jsonl")[-1]["step"] == 7
    big, accumulated = _weights(tiny, "big"), _weights(tiny, "accumulated")
    for name, tensor in big.items():
        torch.testing.assert_close(accumulated[name], tensor, rtol=1e-5, atol=1e-6)
