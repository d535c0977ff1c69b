"""A transfer gain you can trust: precise BatchNorm, diagnostics, the baseline's own budget and
the statistics of the gain, each checked by its outcome (figures, files, messages)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import SOURCE, TINY_BASE, read_json, read_jsonl, run_cli, write_yaml
from transfer_cli.eval import significance as sig

# ---- the statistics against hand computations ------------------------------------------------


def test_mcnemar_exact_matches_the_binomial_tail_by_hand() -> None:
    # 8 pairs only the finetuned model got right, 2 only the baseline: P(X <= 2 | n=10, 1/2) =
    # (1 + 10 + 45) / 1024, two-sided doubled
    assert sig.mcnemar_exact(8, 2) == pytest.approx(2 * 56 / 1024)
    assert sig.mcnemar_exact(2, 8) == pytest.approx(2 * 56 / 1024)
    assert sig.mcnemar_exact(5, 5) == 1.0 and sig.mcnemar_exact(0, 0) == 1.0
    assert sig.mcnemar_exact(6, 0) == pytest.approx(2 / 64)


def test_student_t_quantiles_and_tails_match_the_tables() -> None:
    assert sig.t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert sig.t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
    assert sig.t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert sig.t_two_sided_p(2.228, 10) == pytest.approx(0.05, abs=1e-4)
    assert sig.t_two_sided_p(0.0, 7) == pytest.approx(1.0)


def test_t_interval_and_share_positive_over_seeds_by_hand() -> None:
    spread = sig.over_seeds([0.01, 0.03, 0.05], higher_is_better=True)
    half = 4.302653 * 0.02 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(n); sd of (1, 3, 5)/100 is 0.02
    assert spread["mean"] == pytest.approx(0.03) and spread["std"] == pytest.approx(0.02)
    assert spread["interval"] == pytest.approx([0.03 - half, 0.03 + half], abs=1e-6)
    assert spread["share_positive"] == 1.0
    assert sig.over_seeds([0.02, -0.01], higher_is_better=True)["share_positive"] == 0.5
    assert sig.over_seeds([0.02, -0.01], higher_is_better=False)["share_positive"] == 0.5  # lower: -0.01 helped


def test_paired_t_test_by_hand() -> None:
    d = torch.tensor([1.0, 2.0, 3.0, 4.0])  # mean 2.5, sd 1.2910, t = 2.5 / (1.2910 / 2) = 3.873, df 3
    assert sig.paired_t_test(d) == pytest.approx(0.03047, abs=1e-4)


def _naive_bootstrap(ours: torch.Tensor, theirs: torch.Tensor, target: torch.Tensor, resamples: int,
                     seed: int) -> tuple[float, float]:
    """The same resamples, one at a time, accuracy by counting."""
    generator = torch.Generator().manual_seed(seed)
    n = len(target)
    index = torch.randint(n, (resamples, n), generator=generator)
    gains = []
    for row in index:
        gains.append(((ours[row] == target[row]).double().mean() - (theirs[row] == target[row]).double().mean()).item())
    values = torch.tensor(gains, dtype=torch.float64)
    return torch.quantile(values, 0.025).item(), torch.quantile(values, 0.975).item()


def test_bootstrap_interval_of_the_gain_equals_a_naive_loop_and_brackets_it() -> None:
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0] * 3)
    ours = target.clone()
    ours[:4] = (ours[:4] + 1) % 3  # 26 / 30 right
    theirs = target.clone()
    theirs[:12] = (theirs[:12] + 1) % 3  # 18 / 30 right
    stats = sig.compare_classification("accuracy", ours, theirs, target, 3, resamples=500, seed=3)
    assert stats["gain"] == pytest.approx(8 / 30)
    assert stats["interval"] == pytest.approx(list(_naive_bootstrap(ours, theirs, target, 500, 3)))
    assert stats["interval"][0] < stats["gain"] < stats["interval"][1]
    # discordant pairs: samples 4..11 only the finetuned model gets right, none the other way
    assert (stats["only_finetuned_right"], stats["only_baseline_right"]) == (8, 0)
    assert stats["p_value"] == pytest.approx(2 / 256)
    again = sig.compare_classification("accuracy", ours, theirs, target, 3, resamples=500, seed=3)
    assert again["interval"] == stats["interval"]  # seeded


def test_balanced_accuracy_and_macro_f1_on_a_fixed_example() -> None:
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([[0, 0, 1, 1, 1, 0]])
    confusion = sig.confusion_batched(pred, target.unsqueeze(0), 3)
    # recall: class 0 2/3, class 1 2/2, class 2 0/1; F1: 2*2/(3+3)=2/3, 2*2/(2+3)=0.8, 0
    assert sig.classification_metric("balanced_accuracy", confusion).item() == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert sig.classification_metric("macro_f1", confusion).item() == pytest.approx((2 / 3 + 0.8 + 0) / 3)


def test_regression_comparison_uses_the_errors() -> None:
    target = torch.zeros(6)
    ours = torch.tensor([0.1, -0.1, 0.2, -0.2, 0.1, 0.0])
    theirs = torch.tensor([1.0, -1.0, 0.5, -0.8, 0.9, 0.7])
    stats = sig.compare_regression("mae", ours, theirs, target, resamples=300)
    assert stats["gain"] == pytest.approx(ours.abs().mean().item() - theirs.abs().mean().item())
    assert stats["p_value"] == pytest.approx(sig.paired_t_test(ours.abs() - theirs.abs()))
    assert stats["interval"][1] < 0  # lower error: a negative gain in mae, and clearly so
    rmse = sig.compare_regression("rmse", ours, theirs, target, resamples=300)
    assert rmse["gain"] == pytest.approx(ours.pow(2).mean().sqrt().item() - theirs.pow(2).mean().sqrt().item())


# ---- precise BatchNorm on the built-in images ------------------------------------------------
IMAGES = {"name": "motifs2d", "params": {"task": "target", "n_train": 500, "n_val": 300, "n_test": 300},
          "batch_size": 64}
# few steps at a high LR: the running statistics still hold much of their initial (0, 1) and
# lag weights that move fast, and in eval mode the model predicts one class
LAGGING = {"seed": 0, "data": IMAGES, "model": {"name": "resnet", "params": {"widths": [8, 8], "blocks_per_stage": 1}},
           "optim": {"name": "adam", "lr": 0.05}, "train": {"max_steps": 8, "device": "cpu", "monitor": "val/accuracy"}}


@pytest.fixture
def lagging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return write_yaml(tmp_path / "lag.yaml", LAGGING)


def test_precise_bn_recovers_the_eval_mode_accuracy_of_a_short_resnet_run(lagging: Path) -> None:
    figures = {}
    for batches in (0, 20):
        result = run_cli("pretrain", lagging, "--run-dir", f"runs/bn{batches}", "--set", f"train.precise_bn={batches}")
        assert result.exit_code == 0, result.output
        figures[batches] = read_json(Path(f"runs/bn{batches}/report.json"))
    without, with_ = (figures[b]["metrics"]["test"]["accuracy"] for b in (0, 20))
    print(f"eval-mode test accuracy: precise_bn off {without:.3f}, on {with_:.3f}")
    assert with_ >= without + 0.12, (without, with_)
    assert figures[0]["diagnostics"]["collapse"]["collapsed"] is True
    assert figures[20]["diagnostics"]["collapse"]["collapsed"] is False
    # the same training (BatchNorm trains on batch statistics), other running statistics
    losses = [[r["train/loss"] for r in read_jsonl(Path(f"runs/bn{b}/metrics.jsonl"))] for b in (0, 20)]
    assert losses[0] == losses[1]
    w0 = load_file("runs/bn0/checkpoints/best/model.safetensors")
    w20 = load_file("runs/bn20/checkpoints/best/model.safetensors")
    assert torch.equal(w0["backbone.stem.0.weight"], w20["backbone.stem.0.weight"])
    assert not torch.equal(w0["backbone.stem.1.running_var"], w20["backbone.stem.1.running_var"])


def test_precise_bn_auto_is_on_for_a_short_batchnorm_run(lagging: Path) -> None:
    result = run_cli("pretrain", lagging, "--run-dir", "runs/auto", "--set", "train.precise_bn=auto")
    off = run_cli("pretrain", lagging, "--run-dir", "runs/off", "--set", "train.precise_bn=null")
    assert result.exit_code == 0 and off.exit_code == 0, result.output + off.output
    auto, none = (read_json(Path(f"runs/{name}/report.json"))["metrics"]["test"]["accuracy"] for name in ("auto", "off"))
    assert auto > none + 0.1


def test_a_frozen_backbone_keeps_its_batchnorm_statistics_bit_identical(lagging: Path) -> None:
    assert run_cli("pretrain", lagging, "--run-dir", "runs/source", "--set", "train.precise_bn=0").exit_code == 0
    for bn, strategy in (("train", "linear_probe"), ("frozen", "full")):
        result = run_cli("finetune", lagging, "--run-dir", f"runs/{strategy}", "--init-from", "runs/source",
                         "--set", f"transfer.strategy={strategy}", "--set", f"transfer.bn={bn}",
                         "--set", "transfer.cache_features=false", "--set", "train.precise_bn=20")
        assert result.exit_code == 0, result.output
        before = load_file("runs/source/checkpoints/best/model.safetensors")
        after = load_file(f"runs/{strategy}/checkpoints/best/model.safetensors")
        stats = [k for k in before if "running_" in k or "num_batches_tracked" in k]
        assert stats and all(torch.equal(before[k], after[k]) for k in stats), strategy


def test_precise_bn_statistics_of_a_class_sorted_split_are_those_of_mixed_batches() -> None:
    """A split stored class by class (as image_folder lists it): the recomputed variance must be
    the one training's shuffled batches see, not that of one-class batches."""
    from torch import nn

    from transfer_cli.data.bundle import TensorSplit
    from transfer_cli.train.precise_bn import PreciseBN

    generator = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(400, 1, generator=generator) - 2, torch.randn(400, 1, generator=generator) + 2])
    split = TensorSplit(x, torch.cat([torch.zeros(400), torch.ones(400)]).long())
    norm = nn.BatchNorm1d(1)
    PreciseBN(split, num_batches=20, batch_size=32, seed=0)(norm, [norm], torch.device("cpu"))
    assert norm.running_var.item() == pytest.approx(x.var().item(), rel=0.15)  # about 5; one class: about 1
    assert abs(norm.running_mean.item()) < 0.5
    assert norm.momentum == 0.1 and norm.training  # restored


# ---- diagnostics and the gain's caveat -------------------------------------------------------


def test_a_collapsed_baseline_gets_the_caveat_and_precise_bn_removes_it(lagging: Path) -> None:
    source = {**LAGGING, "optim": {"name": "adam", "lr": 0.003}, "train": {"max_steps": 40, "device": "cpu",
                                                                           "monitor": "val/accuracy"}}
    write_yaml(Path("source.yaml"), source)
    assert run_cli("pretrain", "source.yaml", "--run-dir", "runs/source").exit_code == 0
    reports = {}
    for batches in (0, 20):
        result = run_cli("finetune", lagging, "--run-dir", f"runs/ft{batches}", "--init-from", "runs/source",
                         "--baseline", "scratch", "--set", f"train.precise_bn={batches}",
                         "--set", "optim.lr=0.05", "--set", "train.max_steps=8")
        assert result.exit_code == 0, result.output
        reports[batches] = (read_json(Path(f"runs/ft{batches}/report.json")), result)
    report, result = reports[0]
    gain = report["gains"]["equal_budget"]
    assert report["baseline"]["diagnostics"]["collapse"]["collapsed"] is True
    assert gain["trustworthy"] is False and any("baseline collapsed" in r for r in gain["reasons"])
    line = next(x for x in result.stderr.splitlines() if x.startswith("warning: transfer gain on test"))
    assert "NOT TRUSTWORTHY" in line and "train.precise_bn" in line and "pretraining helped" not in line
    assert "baseline collapsed" in result.stderr  # the diagnostic itself, after the baseline's table
    md = Path("runs/ft0/report.md").read_text()
    assert "NOT TRUSTWORTHY" in md and "## Diagnostics" in md
    fixed = reports[20][0]
    assert fixed["baseline"]["diagnostics"]["collapse"]["collapsed"] is False
    assert not any("baseline collapsed" in r for r in fixed["gains"]["equal_budget"]["reasons"])


# ---- the baseline's own budget and both gains ------------------------------------------------
TARGET_SMALL = {"name": "motifs", "params": {"task": "target", "n_train": 100, "n_val": 100, "n_test": 200,
                                             "length": 96}, "batch_size": 16}


@pytest.fixture
def pretrained_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_yaml(tmp_path / "pre.yaml", {**TINY_BASE, "data": SOURCE})
    assert run_cli("pretrain", "pre.yaml", "--run-dir", "runs/pre").exit_code == 0
    return write_yaml(tmp_path / "ft.yaml", {**TINY_BASE, "data": TARGET_SMALL, "train": {"epochs": 1, "device": "cpu"},
                                             "transfer": {"init_from": "runs/pre",
                                                          "baseline": {"epochs": 4, "lr": 0.01,
                                                                       "until_converged": True, "patience": 2}}})


def test_baseline_with_a_budget_of_its_own_reports_both_gains_with_interval_and_p(pretrained_tiny: Path) -> None:
    result = run_cli("finetune", pretrained_tiny, "--run-dir", "runs/ft", "--baseline", "scratch")
    assert result.exit_code == 0, result.output
    report = read_json(Path("runs/ft/report.json"))
    assert set(report["gains"]) == {"equal_budget", "own_budget"}
    equal, own = report["gains"]["equal_budget"], report["gains"]["own_budget"]
    assert equal["baseline_run"].endswith("runs/ft/baseline") and own["baseline_run"].endswith("runs/ft/baseline-own")
    for g, folder in ((equal, "baseline"), (own, "baseline-own")):
        base = read_json(Path("runs/ft") / folder / "report.json")
        assert g["value"] == pytest.approx(report["metrics"]["test"]["accuracy"] - base["metrics"]["test"]["accuracy"])
        stats = g["significance"]
        assert stats["test"] == "mcnemar_exact" and stats["samples"] == 200 and 0 <= stats["p_value"] <= 1
        low, high = stats["interval"]
        assert low <= g["value"] <= high
        # the p-value is McNemar's on the saved per-sample decisions of the two runs
        ours, theirs = load_file("runs/ft/outcomes/test.safetensors"), load_file(f"runs/ft/{folder}/outcomes/test.safetensors")
        right, other = ours["pred"] == ours["target"], theirs["pred"] == theirs["target"]
        assert stats["p_value"] == pytest.approx(sig.mcnemar_exact(int((right & ~other).sum()), int((~right & other).sum())))
    assert equal["budget"]["steps"] == report["timings"]["steps"]
    assert own["budget"]["lr"] == 0.01 and own["budget"]["until_converged"] is True
    own_run = read_json(Path("runs/ft/baseline-own/report.json"))
    assert own_run["timings"]["steps"] > report["timings"]["steps"]  # 4 epochs (or early-stopped) vs 1
    lines = [x for x in result.output.splitlines() if "transfer gain on test" in x]
    assert len(lines) == 2 and any("equal budget" in x for x in lines) and any("own budget" in x for x in lines)
    assert all("], p" in x for x in lines)


def test_baseline_mapping_without_a_budget_is_refused(pretrained_tiny: Path) -> None:
    config = write_yaml(Path("no-budget.yaml"), {**TINY_BASE, "data": TARGET_SMALL,
                                                 "transfer": {"init_from": "runs/pre", "baseline": {"equal_budget": True}}})
    result = run_cli("finetune", config)
    assert result.exit_code == 2
    assert "transfer.baseline: a baseline mapping sets a budget of its own" in result.stderr
    assert "Traceback" not in result.output


def test_seeds_report_the_gain_with_a_t_interval(pretrained_tiny: Path) -> None:
    result = run_cli("finetune", pretrained_tiny, "--run-dir", "runs/seeds", "--seeds", "0,1,2",
                     "--set", "transfer.baseline=scratch")
    assert result.exit_code == 0, result.output
    report = read_json(Path("runs/seeds/report.json"))
    g = report["gains"]["equal_budget"]
    values = [read_json(Path(f"runs/seeds/seed-{s}/report.json"))["gains"]["equal_budget"]["value"] for s in (0, 1, 2)]
    assert g["per_seed"] == pytest.approx(values)
    spread = sig.over_seeds(values, higher_is_better=True)
    assert g["over_seeds"]["interval"] == pytest.approx(spread["interval"])
    assert g["over_seeds"]["share_positive"] == spread["share_positive"]
    assert "over 3 seeds" in result.output and "t-interval" in result.output
