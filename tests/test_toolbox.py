"""The transfer toolbox from the CLI: strategies, freezing, BN policy, phases, feature caching,
scratch baseline and transfer gain, seeds. Each reads the run directories it produced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import read_json, read_jsonl, run_cli
from safetensors.torch import load_file

BN_STATS = ("running_mean", "running_var")


@pytest.fixture
def pretrained(tiny: Path) -> Path:
    assert run_cli("pretrain", "configs/tiny/pretrain.yaml").exit_code == 0
    return tiny / "runs" / "pretrain"


def weights(run: Path, alias: str = "best") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / alias / "model.safetensors"))


def finetune(*sets: str, extra: tuple[str, ...] = ()) -> Path:
    args = ["finetune", "configs/tiny/finetune.yaml", *extra]
    for item in sets:
        args += ["--set", item]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    run_dir = extra[extra.index("--run-dir") + 1] if "--run-dir" in extra else "runs/finetune"
    return Path(run_dir).resolve()


def changed(before: dict, after: dict, prefix: str) -> set[str]:
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


def test_linear_probe_leaves_the_backbone_bit_identical(pretrained: Path) -> None:
    run = finetune("transfer.strategy=linear_probe")
    before, after = weights(pretrained), weights(run, "last")
    backbone = [k for k in after if k.startswith("backbone.")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # weights and BN statistics
    info = read_json(run / "run.json")
    assert info["strategy"]["phases"][0]["name"] == "probe"


def test_bn_eval_keeps_running_statistics(pretrained: Path) -> None:
    run = finetune("transfer.bn=eval")
    before, after = weights(pretrained), weights(run, "last")
    stats = [k for k in before if k.endswith(BN_STATS)]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert changed(before, after, "backbone.block0.1.weight")  # BN affine still trains


def test_bn_frozen_keeps_statistics_and_affine(pretrained: Path) -> None:
    run = finetune("transfer.bn=frozen")
    before, after = weights(pretrained), weights(run, "last")
    bn = [k for k in before if k.startswith("backbone.block") and ".1." in k]
    assert bn and all(torch.equal(before[k], after[k]) for k in bn)
    assert changed(before, after, "backbone.block0.0.weight")  # the convolutions train


def test_freeze_globs_on_top_of_the_strategy(pretrained: Path, capsys: pytest.CaptureFixture) -> None:
    run = finetune("transfer.freeze=[backbone.block0.*]")
    before, after = weights(pretrained), weights(run, "last")
    assert not changed(before, after, "backbone.block0.")
    assert changed(before, after, "backbone.block1.")


def test_lp_ft_probes_then_trains_everything(pretrained: Path) -> None:
    run = finetune("transfer.strategy=lp_ft", "transfer.probe_epochs=1", "train.epochs=2", "train.keep_last=5",
                   "transfer.cache_features=false", "transfer.backbone_lr_mult=0.1", "optim.lr=0.01")
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["phase"] for r in records] == ["probe", "finetune"]
    assert [r["lr"] for r in records] == [0.01, 0.01]  # the head's LR, not a backbone group's (0.001)
    probe_end = load_file(str(run / "checkpoints" / f"step-{records[0]['step']:08d}" / "model.safetensors"))
    before, after = weights(pretrained), weights(run, "last")
    assert not changed(before, probe_end, "backbone.")
    assert changed(probe_end, after, "backbone.")


def test_gradual_unfreezes_from_the_head_back(pretrained: Path) -> None:
    run = finetune("transfer.strategy=gradual", "transfer.unfreeze_every=1", "train.epochs=3", "train.keep_last=5")
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["phase"] for r in records] == ["unfreeze-1", "unfreeze-2", "unfreeze-3"]
    ckpt = [load_file(str(run / "checkpoints" / f"step-{r['step']:08d}" / "model.safetensors")) for r in records]
    before = weights(pretrained)
    assert not changed(before, ckpt[0], "backbone.")           # epoch 1: head only
    assert changed(before, ckpt[1], "backbone.block1.")        # epoch 2: + the last block
    assert not changed(before, ckpt[1], "backbone.block0.")
    assert changed(ckpt[1], ckpt[2], "backbone.block0.")       # epoch 3: everything


def test_feature_cache_gives_the_same_result(pretrained: Path, tmp_path: Path) -> None:
    cached = finetune("transfer.strategy=lp_ft", "transfer.cache_features=true", "train.epochs=2",
                      extra=("--run-dir", "runs/cached"))
    plain = finetune("transfer.strategy=lp_ft", "transfer.cache_features=false", "train.epochs=2",
                     extra=("--run-dir", "runs/plain"))
    a, b = weights(cached, "last"), weights(plain, "last")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    ra, rb = read_json(cached / "report.json"), read_json(plain / "report.json")
    assert ra["metrics"]["test"]["accuracy"] == pytest.approx(rb["metrics"]["test"]["accuracy"], abs=0.011)


def test_cache_features_true_needs_a_head_only_phase(pretrained: Path) -> None:
    result = run_cli("finetune", "configs/tiny/finetune.yaml", "--set", "transfer.cache_features=true")
    assert result.exit_code == 2
    assert "transfer.cache_features: true, but features cannot be cached" in result.stderr


def test_probe_epochs_must_leave_room(pretrained: Path) -> None:
    result = run_cli("finetune", "configs/tiny/finetune.yaml", "--set", "transfer.strategy=lp_ft",
                     "--set", "transfer.probe_epochs=2")
    assert result.exit_code == 2
    assert "transfer.probe_epochs" in result.stderr


def test_scratch_baseline_and_transfer_gain(pretrained: Path) -> None:
    run = finetune(extra=("--baseline", "scratch"))
    report = read_json(run / "report.json")
    base = read_json(run / "baseline" / "report.json")
    assert read_json(run / "baseline" / "run.json")["lineage"]["init"] == "random"
    ours, theirs = report["metrics"]["test"], base["metrics"]["test"]
    assert report["transfer_gain"]["accuracy"] == pytest.approx(ours["accuracy"] - theirs["accuracy"])
    assert report["baseline"]["metrics"]["test"] == theirs
    assert report["negative_transfer"] == (report["transfer_gain"]["accuracy"] < 0)
    assert base["timings"]["steps"] == report["timings"]["steps"]  # the same budget


def test_seeds_report_mean_and_std(pretrained: Path) -> None:
    result = run_cli("finetune", "configs/tiny/finetune.yaml", "--seeds", "0,1", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    run = Path("runs/finetune")
    per_seed = [read_json(run / f"seed-{s}" / "report.json")["metrics"]["test"]["accuracy"] for s in (0, 1)]
    report = read_json(run / "report.json")
    assert report["metrics"]["test"]["accuracy"] == pytest.approx(sum(per_seed) / 2)
    assert report["metrics_std"]["test"]["accuracy"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2 ** 0.5)
    assert read_json(run / "seed-1" / "run.json")["seed"] == 1


def test_k_shot_is_stratified_and_seeded(pretrained: Path) -> None:
    run = finetune("data.per_class=3", "train.epochs=1")
    info = read_json(run / "run.json")
    assert info["data"]["sizes"]["train"] == 15 and info["data"]["per_class"] == 3


def test_lr_groups_no_decay_backbone_mult_and_layer_decay() -> None:
    from transfer_cli.models import MODELS
    from transfer_cli.train.optim import lr_scales, param_groups

    model = MODELS.build("cnn1d", {"channels": [4, 4]}, input_shape=(1, 32), num_outputs=3)
    scale = lr_scales(model.layer_group_names(), backbone_lr_mult=0.1, layer_decay=0.5)
    assert scale("head.weight") == 1.0
    assert scale("backbone.block1.0.weight") == pytest.approx(0.1 * 0.5)
    assert scale("backbone.block0.0.weight") == pytest.approx(0.1 * 0.25)
    groups = param_groups(model, lr=1.0, weight_decay=0.1, lr_scale=scale)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["head.bias"]["weight_decay"] == 0 and by_name["head.weight"]["weight_decay"] == 0.1
    assert by_name["backbone.block0.1.weight"]["weight_decay"] == 0  # a norm weight
    assert by_name["backbone.block0.0.weight"]["base_lr"] == pytest.approx(0.025)


def test_lora_run_exports_merged_plain_weights(pretrained: Path) -> None:
    run = finetune("transfer.strategy=lora", "transfer.lora.rank=2", "transfer.lora.targets=[backbone.*]")
    before, after = weights(pretrained), weights(run)
    assert set(after) == set(before)  # the plain architecture: no lora_ keys
    assert changed(before, after, "backbone.block0.0.weight")  # adapters merged into the conv weight
    stats = [k for k in before if k.endswith(BN_STATS)]
    assert all(torch.equal(before[k], after[k]) for k in stats)  # frozen BN layers run in eval mode
    result = run_cli("evaluate", str(run), "--json")
    assert result.exit_code == 0, result.output
    assert result.json()["metrics"]["test"] == read_json(run / "report.json")["metrics"]["test"]



def test_a_lora_run_counts_as_trainable_what_its_phase_trains(pretrained: Path) -> None:
    model = read_json(finetune("transfer.strategy=lora") / "run.json")["model"]
    # frozen: the backbone's own parameters (its BatchNorm statistics are buffers, not parameters)
    backbone = [t for k, t in weights(pretrained).items() if k.startswith("backbone.") and not k.endswith((*BN_STATS, "num_batches_tracked"))]
    assert model["parameters"] - model["trainable"] == sum(t.numel() for t in backbone) > 0


def test_cached_and_uncached_runs_evaluate_at_the_same_steps(pretrained: Path) -> None:
    common = ("transfer.strategy=lp_ft", "train.epochs=3", "train.eval_every_steps=4")
    cached = finetune(*common, "transfer.cache_features=true", extra=("--run-dir", "runs/cached"))
    plain = finetune(*common, "transfer.cache_features=false", extra=("--run-dir", "runs/plain"))
    steps = [[(r["step"], r["phase"]) for r in read_jsonl(run / "metrics.jsonl")] for run in (cached, plain)]
    assert steps[0] == steps[1]


def test_smoke_runs_every_strategy_within_its_budget(pretrained: Path) -> None:
    for strategy in ("lp_ft", "gradual"):
        run = finetune(f"transfer.strategy={strategy}", "transfer.probe_epochs=5", "transfer.unfreeze_every=3",
                       extra=("--smoke", "--run-dir", f"runs/smoke-{strategy}", "--overwrite"))
        phases = read_json(run / "run.json")["strategy"]["phases"]
        assert len(phases) >= 2 and phases[-1]["end_step"] == 3


def test_early_stopping_decision_is_in_the_checkpoint(pretrained: Path) -> None:
    run = finetune("train.epochs=10", "train.early_stopping.patience=1", "train.early_stopping.min_delta=10",
                   "train.monitor=val/loss")
    state = torch.load(run / "checkpoints" / "last" / "state.pt", weights_only=True)
    assert state["train_state"]["stop_reason"].startswith("early stopping")
    assert len(read_jsonl(run / "metrics.jsonl")) == 2


def test_toolbox_config_mistakes_are_exit_2(pretrained: Path) -> None:
    cases = {
        ("transfer.freeze=[backbone.blok0.*]",): "transfer.freeze: 'backbone.blok0.*' matches no parameter",
        ("optim.name=sgd", "optim.params.nesterov=true", "optim.params.momentum=0"): "optim.params: Nesterov",
        ("optim.params.betas=[1.5, 0.9]",): "optim.params.betas[0]",
    }
    for sets, message in cases.items():
        args = [item for s in sets for item in ("--set", s)]
        result = run_cli("finetune", "configs/tiny/finetune.yaml", *args)
        assert result.exit_code == 2 and message in result.stderr, (sets, result.output)


def test_validate_applies_lora_and_notes_an_existing_run(pretrained: Path) -> None:
    result = run_cli("validate", "configs/tiny/finetune.yaml", "--set", "transfer.strategy=lora",
                     "--set", "transfer.lora.targets=[nomatch]")
    assert result.exit_code == 2 and "transfer.lora.targets" in result.stderr
    result = run_cli("validate", "configs/tiny/pretrain.yaml")
    assert result.exit_code == 0, result.output
    assert "already holds a run" in result.stdout


def test_multi_seed_resume_checks_the_config_before_touching_the_parent(pretrained: Path) -> None:
    from conftest import tree_digest

    args = ["finetune", "configs/tiny/finetune.yaml", "--seeds", "0,1", "--set", "train.epochs=1"]
    assert run_cli(*args).exit_code == 0
    parent = Path("runs/finetune")
    before = tree_digest(parent)
    changed_run = run_cli(*args, "--resume", "--set", "optim.lr=0.01")
    assert changed_run.exit_code == 2 and "optim.lr" in changed_run.stderr
    assert run_cli(*args, "--resume").exit_code == 0  # completed: left as it is
    assert tree_digest(parent) == before
    assert run_cli("compare", "runs/finetune", "runs/finetune/seed-0").exit_code == 0
