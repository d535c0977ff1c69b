"""The memory switches, through the CLI on tiny models: activation checkpointing (same losses as
without it, with freeze / LoRA / linear probe, resumable with the switch flipped), the memory
estimate (printed by validate, recorded in the run), and frozen parameters kept in bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import read_json, read_jsonl, run_cli, write_yaml
from hf_tiny import IMAGE, config
from reliability_tools import assert_same_run, copy_run, rewind

from scripts.make_example_data import make_shapes

from transfer_cli.models import MODELS
from transfer_cli.models.checkpointing import checkpoint_modules

FINETUNE = "configs/tiny/finetune.yaml"
# precise BN off: the val losses then also check BatchNorm's running statistics
SHORT = ("--set", "train.max_steps=6", "--set", "train.eval_every_steps=2", "--set", "train.precise_bn=0")
CHECKPOINTING = ("--set", "train.activation_checkpointing=true")


def _losses(run: Path, key: str = "train/loss") -> list[float]:
    """The logged losses of each evaluation (train: the running loss since the previous one)."""
    return [r[key] for r in read_jsonl(run / "metrics.jsonl") if r.get("event") == "eval"]


def _pretrain(tiny: Path) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.max_steps=4")
    assert result.exit_code == 0, result.output


def _finetune(name: str, *sets: str) -> tuple[Path, str]:
    result = run_cli("finetune", FINETUNE, *SHORT, *sets, "--run-dir", f"runs/{name}")
    assert result.exit_code == 0, result.output
    return Path("runs") / name, result.output


# full and linear_probe are slow only to keep this file fast: LoRA and freeze (below) are the frozen prefixes
@pytest.mark.parametrize("strategy", [pytest.param("full", marks=pytest.mark.slow), "lora",
                                      pytest.param("linear_probe", marks=pytest.mark.slow)])
def test_activation_checkpointing_gives_the_same_losses(tiny: Path, strategy: str) -> None:
    _same_losses_with_and_without_checkpointing(tiny, strategy)


def _same_losses_with_and_without_checkpointing(tiny: Path, strategy: str) -> tuple[Path, tuple[str, ...]]:
    _pretrain(tiny)
    sets = {"full": (), "freeze": ("--set", "transfer.freeze=['backbone.block0.*']"),
            # cached features would skip the backbone: run it, checkpointed, every step
            "linear_probe": ("--set", "transfer.strategy=linear_probe", "--set", "transfer.cache_features=false"),
            "lora": ("--set", "transfer.strategy=lora", "--set", "transfer.lora.rank=2")}[strategy]
    # dropout on: the recomputation must replay the forward's masks
    sets += ("--set", "model={name: cnn1d, params: {channels: [8, 8], kernel_size: 5, dropout: 0.3}}")
    plain, plain_output = _finetune("plain", *sets)
    checkpointed, output = _finetune("checkpointed", *sets, *CHECKPOINTING)
    assert "activation checkpointing: per layer group (2 groups)" in output
    assert "activation checkpointing" not in plain_output
    losses = _losses(plain)
    assert len(losses) == 3 and len(set(losses)) == 3
    assert _losses(checkpointed) == pytest.approx(losses, abs=1e-6)
    # BatchNorm's running statistics were not updated twice: the evaluations agree too
    assert _losses(checkpointed, "val/loss") == pytest.approx(_losses(plain, "val/loss"), abs=1e-6)
    final = read_json(checkpointed / "report.json")["metrics"]["test"]["loss"]
    assert final == pytest.approx(read_json(plain / "report.json")["metrics"]["test"]["loss"], abs=1e-6)
    return plain, sets


def test_checkpointed_groups_recompute_and_keep_their_gradients() -> None:
    """The wrapper really checkpoints (fewer tensors saved for backward), gradients are equal, and
    a frozen first group (input and parameters not requiring grad) does not break the backward."""
    torch.manual_seed(0)
    model = MODELS.build("mlp", {"hidden": [64, 64, 64], "norm": "batch", "dropout": 0.2}, input_shape=(32,),
                         num_outputs=3)
    x, y = torch.randn(16, 32), torch.randint(0, 3, (16,))

    def step() -> tuple[dict[str, torch.Tensor], int]:
        saved = []
        model.zero_grad()
        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, sum(saved)

    for p in model.backbone.block0.parameters():
        p.requires_grad_(False)
    plain_grads, plain_saved = step()
    stats = model.backbone.block1[1].running_mean.clone()
    assert checkpoint_modules(model.layer_groups()[:-1]) == 3
    grads, saved = step()
    assert saved < plain_saved / 2
    assert set(grads) == set(plain_grads) and "backbone.block0.0.weight" not in grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=1e-6)
    # one update of the running statistics per forward, as without checkpointing (momentum 0.1)
    assert not torch.equal(model.backbone.block1[1].running_mean, stats)
    assert int(model.backbone.block1[1].num_batches_tracked) == 2


def test_a_run_resumes_with_activation_checkpointing_switched_on(tiny: Path) -> None:
    """It changes the memory of a step, not its numbers: resuming with it flipped is the same run."""
    run, sets = _same_losses_with_and_without_checkpointing(tiny, "freeze")
    resumed = copy_run(run, tiny / "runs" / "resumed")
    rewind(resumed, 1)
    done = run_cli("finetune", FINETUNE, *SHORT, *sets, *CHECKPOINTING, "--run-dir", "runs/resumed", "--resume")
    assert done.exit_code == 0, done.output
    assert "activation checkpointing: per layer group" in done.output
    assert_same_run(run, resumed)


def _vision_run(tmp_path: Path, kind: str, **transfer: object) -> None:
    make_shapes(tmp_path / "shapes", per_class=6, size=IMAGE, seed=0)
    write_yaml(tmp_path / "cfg.yaml", {
        "seed": 0, "data": {"name": "image_folder", "params": {"path": "shapes", "workers": 0, "val_fraction": 0.25,
                                                                "test_fraction": 0.25}, "batch_size": 4},
        "model": {"name": "hf_encoder", "params": {"path": kind}}, "optim": {"name": "adamw", "lr": 0.001},
        "train": {"max_steps": 4, "device": "cpu", "eval_every_steps": 2, "precise_bn": 0}, "transfer": transfer})


@pytest.mark.parametrize("kind, how", [("vit", "the model's own gradient checkpointing (vit)"),
                                       ("resnet", "per layer group")])  # HF ResNet has no switch of its own
def test_hugging_face_models_checkpoint_with_the_same_losses(tmp_path: Path, monkeypatch, kind: str,
                                                             how: str) -> None:
    transformers = pytest.importorskip("transformers", reason="needs the optional extra: pip install -e '.[hf]'")

    monkeypatch.chdir(tmp_path)
    _vision_run(tmp_path, kind, freeze=["backbone.encoder.embe*"])  # a frozen prefix
    settings = config(kind)
    if kind == "vit":  # dropout on: the recomputation must replay the forward's masks
        settings.hidden_dropout_prob = settings.attention_probs_dropout_prob = 0.2
    torch.manual_seed(0)
    transformers.AutoModel.from_config(settings).save_pretrained(tmp_path / kind)
    runs = {}
    for name, sets in (("plain", ()), ("checkpointed", CHECKPOINTING)):
        result = run_cli("finetune", "cfg.yaml", *sets, "--run-dir", f"runs/{name}")
        assert result.exit_code == 0, result.output
        runs[name] = Path("runs") / name
    assert f"activation checkpointing: {how}" in result.output
    losses = _losses(runs["plain"])
    assert len(losses) == 2 and losses[0] != losses[1]
    assert _losses(runs["checkpointed"]) == pytest.approx(losses, abs=1e-6)
    assert _losses(runs["checkpointed"], "val/loss") == pytest.approx(_losses(runs["plain"], "val/loss"), abs=1e-6)
    # the estimate counts one checkpointed unit's activations at a time; the tiny ResNet's four units
    # (a frozen stem among them) save less than what the checkpoints keep, and its estimate says so
    memory = {name: read_json(run / "run.json")["memory"] for name, run in runs.items()}
    if kind == "vit":
        assert 0 < memory["checkpointed"]["activations"] < 0.7 * memory["plain"]["activations"]


# ---- the memory estimate ------------------------------------------------------------------------------
def _estimate(*sets: str, config: str = "configs/tiny/pretrain.yaml") -> tuple[dict, str]:
    result = run_cli("validate", config, "--json", *sets)
    assert result.exit_code == 0, result.output
    return result.json()["memory"], result.stderr


@pytest.mark.parametrize("optimizer, states", [("adamw", 2), ("adam", 2), ("sgd", 1), ("rmsprop", 1)])
def test_validate_prints_the_memory_estimate_per_optimizer(tiny: Path, optimizer: str, states: int) -> None:
    memory, printed = _estimate("--set", f"optim.name={optimizer}")
    parameters = 4 * 482  # cnn1d [8, 8], kernel 5, 10 classes, all float32
    assert memory["parameters"] == memory["gradients"] == parameters
    assert memory["optimizer_states_per_parameter"] == states
    assert memory["optimizer_state"] == states * parameters
    assert memory["micro_batch"] == 32 and memory["activations"] > 0
    assert memory["total"] == parameters * (2 + states) + memory["activations"]
    assert "memory estimate: parameters 1.9 KiB" in printed and f"({states} per trained parameter)" in printed


def test_the_optimizer_state_follows_its_settings(tiny: Path) -> None:
    assert _estimate("--set", "optim.name=sgd", "--set", "optim.params.momentum=0")[0]["optimizer_state"] == 0
    amsgrad = _estimate("--set", "optim.params.amsgrad=true")[0]
    assert amsgrad["optimizer_states_per_parameter"] == 3
    centered = _estimate("--set", "optim.name=rmsprop", "--set", "optim.params.centered=true",
                         "--set", "optim.params.momentum=0.9")[0]
    assert centered["optimizer_states_per_parameter"] == 3


def test_activations_grow_with_the_micro_batch_and_shrink_with_checkpointing(tiny: Path) -> None:
    deep = ("--set", "model={name: mlp, params: {hidden: [64, 64, 64, 64, 64, 64], norm: layer}}")
    half = _estimate(*deep, "--set", "data.batch_size=16")[0]["activations"]
    full = _estimate(*deep, "--set", "data.batch_size=32")[0]
    assert 1.8 < full["activations"] / half < 2.2
    checkpointed, printed = _estimate(*deep, "--set", "data.batch_size=32", *CHECKPOINTING)
    # each block keeps its input (its Linear's; LayerNorm's input and ReLU's output are recomputed),
    # and one block's activations are recomputed at a time: on an MLP that saves little
    assert checkpointed["activations"] < 0.95 * full["activations"]
    assert "with activation checkpointing" in printed


def test_a_finetune_records_the_estimate_and_a_linear_probe_trains_only_the_head(tiny: Path) -> None:
    _pretrain(tiny)
    run, output = _finetune("probe", "--set", "transfer.strategy=linear_probe")
    memory = read_json(run / "run.json")["memory"]
    head = 4 * (8 * 5 + 5)  # the head of the target task: 8 features -> 5 classes
    assert memory["gradients"] == memory["trainable_parameters"] == head
    assert memory["frozen_parameters"] == memory["parameters"] - head
    assert memory["frozen_by_dtype"] == {"float32": memory["frozen_parameters"]}
    assert memory["optimizer_state"] == 2 * head
    assert "memory estimate:" in output


# ---- frozen parameters in bf16 --------------------------------------------------------------------------
MLP = ("--set", "model={name: mlp, params: {hidden: [64, 64], norm: layer}}")
BF16 = ("--set", "train.frozen_dtype=bf16")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from transfer_cli.runs import checkpoints as ckpt
    from transfer_cli.weights.files import read_weights

    return read_weights(run / "checkpoints" / "best" / ckpt.WEIGHTS)


def test_a_bf16_linear_probe_halves_the_frozen_bytes_trains_evaluates_and_exports(tiny: Path) -> None:
    result = run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.max_steps=4", *MLP)
    assert result.exit_code == 0, result.output
    probe = ("--set", "transfer.strategy=linear_probe", "--set", "transfer.cache_features=false")
    fp32, _ = _finetune("fp32", *probe)
    bf16, output = _finetune("bf16", *probe, *BF16)
    assert "kept in bfloat16" in output
    plain, halved = (read_json(run / "run.json")["memory"] for run in (fp32, bf16))
    assert halved["frozen_parameters"] * 2 == plain["frozen_parameters"] > 0
    assert halved["frozen_by_dtype"] == {"bfloat16": halved["frozen_parameters"]}
    assert halved["trainable_parameters"] == plain["trainable_parameters"]
    # the parameter bytes are counted from the model's tensors: the head stayed float32
    assert halved["parameters"] == halved["frozen_parameters"] + plain["trainable_parameters"]
    # the backbone is the pretrained one rounded to bf16, the head trained as in float32 (but computed on
    # bf16 features: not bit for bit); all float32 on disk
    weights, start, reference = _weights(bf16), _weights(tiny / "runs" / "pretrain"), _weights(fp32)
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    backbone = [k for k in weights if k.startswith("backbone.") and weights[k].is_floating_point()]
    assert backbone and all(torch.equal(weights[k], start[k].bfloat16().float()) for k in backbone)
    assert not torch.equal(weights["head.weight"], reference["head.weight"])
    torch.testing.assert_close(weights["head.weight"], reference["head.weight"], atol=2e-2, rtol=0)
    # evaluate (float32, as the final evaluation of the finetune) and export take the run as any other
    evaluated = run_cli("evaluate", bf16, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.json()["metrics"]["test"] == read_json(bf16 / "report.json")["metrics"]["test"]
    exported = run_cli("export", bf16, "--format", "safetensors", "--json")
    assert exported.exit_code == 0, exported.output


def test_bf16_lora_base_trains_resumes_bit_exact_and_evaluates_in_float32(tiny: Path) -> None:
    _pretrain(tiny)  # cnn1d: the convs' base weights go bf16, BatchNorm stays float32
    lora = ("--set", "transfer.strategy=lora", "--set", "transfer.lora.rank=2", "--set", "train.keep_last=5")
    fp32, _ = _finetune("fp32", *lora)
    run, output = _finetune("bf16", *lora, *BF16)
    memory = read_json(run / "run.json")["memory"]
    assert set(memory["frozen_by_dtype"]) == {"bfloat16", "float32"}  # BatchNorm's weights stay float32
    assert memory["frozen_parameters"] < read_json(fp32 / "run.json")["memory"]["frozen_parameters"]
    losses = _losses(run)
    assert losses == pytest.approx(_losses(fp32), rel=0.02) and losses != _losses(fp32)
    evaluated = run_cli("evaluate", run, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.json()["metrics"]["test"] == read_json(run / "report.json")["metrics"]["test"]
    resumed = copy_run(run, tiny / "runs" / "resumed")
    rewind(resumed, 1)
    done = run_cli("finetune", FINETUNE, *SHORT, *lora, *BF16, "--run-dir", "runs/resumed", "--resume")
    assert done.exit_code == 0, done.output
    assert_same_run(run, resumed)
    # a resume in another dtype would mix two experiments
    refused = run_cli("finetune", FINETUNE, *SHORT, *lora, "--run-dir", "runs/resumed", "--resume")
    assert refused.exit_code == 2
    assert "train.frozen_dtype (run: 'bf16', now: 'fp32')" in refused.stderr and "Traceback" not in refused.output


def test_bf16_with_nothing_frozen_warns_and_keeps_float32(tiny: Path) -> None:
    memory, printed = _estimate(*BF16)
    assert "no parameter stays frozen under strategy 'full'" in printed
    assert memory["frozen_parameters"] == 0 and memory["parameters"] == 4 * 482


def test_bf16_leaves_a_layer_with_a_trained_parameter_in_float32(tiny: Path) -> None:
    # the head's bias frozen, its weight trained: the layer computes in one dtype, so it stays float32
    # (casting the bias alone made its forward mix bf16 and float32: a RuntimeError)
    _pretrain(tiny)
    frozen = ("--set", 'transfer.freeze=["backbone.*", "head.bias"]')
    run, output = _finetune("mixed", *frozen, *BF16)
    assert "kept in bfloat16" in output
    memory = read_json(run / "run.json")["memory"]["frozen_by_dtype"]
    # against the backbone alone frozen (its BatchNorm stays float32): head.bias is the only difference
    backbone, _ = _finetune("backbone", "--set", 'transfer.freeze=["backbone.*"]', *BF16)
    alone = read_json(backbone / "run.json")["memory"]["frozen_by_dtype"]
    head_bias = 4 * 5  # float32, 5 classes
    assert memory == {"bfloat16": alone["bfloat16"], "float32": alone["float32"] + head_bias}
    assert alone["bfloat16"] > 0


@pytest.mark.parametrize("kind", ["vit", "gpt2"])  # GPT-2's projections are transformers' Conv1D
def test_bf16_lora_base_of_hugging_face_models(tmp_path: Path, monkeypatch, kind: str) -> None:
    from hf_tiny import save_model
    from test_hf_kinds import _text_config, _texts
    from tokenizers import Tokenizer

    monkeypatch.chdir(tmp_path)
    lora = {"strategy": "lora", "lora": {"rank": 2}}
    if kind == "vit":
        save_model(tmp_path / kind, kind)
        _vision_run(tmp_path, kind, **lora)
    else:
        tokenizer = _texts(tmp_path, ["<|endoftext|>"])
        save_model(tmp_path / kind, kind, vocab=Tokenizer.from_file(str(tokenizer)).get_vocab_size())
        _text_config(tmp_path, kind, **lora)
    result = run_cli("finetune", "cfg.yaml", *BF16, "--run-dir", "runs/t")
    assert result.exit_code == 0, result.output
    memory = read_json(Path("runs/t/run.json"))["memory"]
    # all but the few parameters outside a layer (ViT's position embeddings and class token)
    assert memory["frozen_by_dtype"]["bfloat16"] > 0.8 * memory["frozen_parameters"]
    evaluated = run_cli("evaluate", "runs/t", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.json()["metrics"]["test"] == read_json(Path("runs/t/report.json"))["metrics"]["test"]


@pytest.mark.slow  # ~40 s: three two-process runs
def test_under_torchrun_checkpointing_trains_alike_and_fsdp_refuses_bf16(tiny: Path) -> None:
    import subprocess
    import sys

    from reliability_tools import ENV

    def transfer(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "transfer_cli", "pretrain", "configs/tiny/pretrain.yaml",
                               "--nproc", "2", "--set", "train.max_steps=4", "--set", "train.eval_every_steps=2",
                               "--set", "train.precise_bn=0", *args], cwd=tiny, env=ENV, capture_output=True,
                              text=True, timeout=240)

    plain = transfer("--run-dir", "runs/ddp")
    checkpointed = transfer(*CHECKPOINTING, "--run-dir", "runs/ddp-ckpt")
    assert plain.returncode == 0 and checkpointed.returncode == 0, checkpointed.stderr
    assert "activation checkpointing: per layer group" in checkpointed.stdout + checkpointed.stderr
    assert _losses(tiny / "runs/ddp-ckpt") == pytest.approx(_losses(tiny / "runs/ddp"), abs=1e-6)
    refused = transfer("--set", "train.distributed=fsdp", *BF16, "--run-dir", "runs/fsdp")
    assert refused.returncode == 2
    assert "train.frozen_dtype: bf16 is not available with train.distributed: fsdp" in refused.stderr
    assert "Traceback" not in refused.stderr
