"""transfer.keys from the CLI: weights saved elsewhere (DDP prefixes, other names, .pt/.safetensors)
load after mapping, the load report in run.json says what each rule did, include/exclude leave
tensors at their fresh init, and bad rules or unmapped keys fail clearly with exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TARGET, read_json, run_cli, write_yaml
from safetensors.torch import load_file, save_file

from transfer_cli.config.schema import KeyMap
from transfer_cli.core.errors import ConfigError
from transfer_cli.weights.keymap import map_keys, suggest_key_map

BACKBONE_KEYS = 12  # cnn1d channels [8, 8]: 2 x (conv weight + 5 batch-norm tensors)


@pytest.fixture
def pretrained(tiny: Path) -> dict[str, torch.Tensor]:
    """A pretrain run's best weights, and configs/tiny/from_file.yaml: a finetune that names its
    architecture (a weights file, unlike a run dir, does not carry one)."""
    assert run_cli("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.epochs=1", "--quiet").exit_code == 0
    write_yaml(tiny / "configs" / "tiny" / "from_file.yaml", {
        "extends": "base.yaml", "run_dir": "runs/finetune", "data": {**TARGET, "per_class": 5},
        "train": {"epochs": 1}})
    return load_file(str(tiny / "runs" / "pretrain" / "checkpoints" / "best" / "model.safetensors"))


def _finetune(*args: str) -> "object":
    return run_cli("finetune", "configs/tiny/from_file.yaml", *args)


def test_ddp_prefixed_pt_needs_strip_prefix(tiny: Path, pretrained: dict) -> None:
    torch.save({"module." + k: v for k, v in pretrained.items()}, tiny / "ddp.pt")

    refused = _finetune("--init-from", "ddp.pt")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "do not fit the model" in refused.stderr
    assert f"{BACKBONE_KEYS} missing" in refused.stderr
    assert "try transfer.keys.strip_prefix: ['module.']" in refused.stderr
    assert not (tiny / "runs" / "finetune").exists()

    result = _finetune("--init-from", "ddp.pt", "--set", "transfer.keys.strip_prefix=[model., module.]")
    assert result.exit_code == 0, result.output
    report = read_json(tiny / "runs" / "finetune" / "run.json")["lineage"]["load_report"]
    assert report["key_map"]["strip_prefix"] == ["model.", "module."]
    assert report["key_rules"] == [{"rule": "strip_prefix", "pattern": "model.", "changed": 0},
                                   {"rule": "strip_prefix", "pattern": "module.", "changed": len(pretrained)}]
    assert len(report["loaded"]) == BACKBONE_KEYS and all(k.startswith("backbone.") for k in report["loaded"])
    assert report["missing"] == report["unexpected"] == report["mismatched"] == report["dropped"] == []
    assert report["head_replaced"] is True and report["head_reason"] == "10 -> 5 outputs"
    assert "keys mapped: strip_prefix 'module.' x14" in result.stdout


def test_safetensors_from_elsewhere_renamed_by_regex(tiny: Path, pretrained: dict) -> None:
    renamed = {"model." + k.replace("backbone.", "encoder.").replace("head.", "classifier."): v
               for k, v in pretrained.items()}
    save_file(renamed, str(tiny / "other.safetensors"))
    write_yaml(tiny / "configs" / "tiny" / "mapped.yaml", r"""
extends: from_file.yaml
transfer:
  init_from: other.safetensors
  keys:
    strip_prefix: [model.]
    rename: {'^encoder\.': backbone., '^classifier\.': head.}
""")
    result = run_cli("finetune", "configs/tiny/mapped.yaml")
    assert result.exit_code == 0, result.output
    report = read_json(tiny / "runs" / "finetune" / "run.json")["lineage"]["load_report"]
    assert [(r["rule"], r["changed"]) for r in report["key_rules"]] == [
        ("strip_prefix", 14), ("rename", BACKBONE_KEYS), ("rename", 2)]
    assert len(report["loaded"]) == BACKBONE_KEYS and not report["unexpected"] and not report["missing"]
    assert report["head_reason"] == "10 -> 5 outputs"  # the renamed head was recognised as a head


def test_backbone_only_pth_with_add_prefix(tiny: Path, pretrained: dict) -> None:
    backbone = {k.removeprefix("backbone."): v for k, v in pretrained.items() if k.startswith("backbone.")}
    torch.save(backbone, tiny / "backbone.pth")
    refused = _finetune("--init-from", "backbone.pth")
    assert refused.exit_code == 2 and "try transfer.keys.add_prefix: 'backbone.'" in refused.stderr

    result = _finetune("--init-from", "backbone.pth", "--set", "transfer.keys.add_prefix=backbone.")
    assert result.exit_code == 0, result.output
    report = read_json(tiny / "runs" / "finetune" / "run.json")["lineage"]["load_report"]
    assert len(report["loaded"]) == BACKBONE_KEYS
    assert report["head_replaced"] and report["head_reason"] == "no head in the weights"


def test_exclude_leaves_tensors_at_fresh_init(tiny: Path, pretrained: dict) -> None:
    from transfer_cli.recipes.parts import RunOptions, build_parts
    from transfer_cli.recipes.components import registries
    from transfer_cli.config.resolve import load_experiment

    # a vanishing learning rate for one step, so the saved weights are the loaded ones (to 1e-8)
    sets = ["transfer.init_from=runs/pretrain/checkpoints/best/model.safetensors", "optim.lr=1e-12",
            "train.max_steps=1", "transfer.keys.exclude=[backbone.block0.*]"]
    result = _finetune(*[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    report = read_json(tiny / "runs" / "finetune" / "run.json")["lineage"]["load_report"]
    block0 = sorted(k for k in pretrained if k.startswith("backbone.block0."))
    assert report["dropped"] == block0 and report["missing"] == []
    assert report["key_rules"] == [{"rule": "exclude", "pattern": "backbone.block0.*", "dropped": len(block0)}]
    assert len(report["loaded"]) == BACKBONE_KEYS - len(block0)

    # the model exactly as the finetune built it, before loading: same config, same seed
    exp = load_experiment(Path("configs/tiny/from_file.yaml"), "finetune", sets, registries())
    fresh = build_parts(exp, RunOptions()).model.state_dict()
    saved = load_file(str(tiny / "runs" / "finetune" / "checkpoints" / "best" / "model.safetensors"))
    for key, pre in (("backbone.block0.0.weight", False), ("backbone.block1.0.weight", True)):
        expected = pretrained[key] if pre else fresh[key]
        other = fresh[key] if pre else pretrained[key]
        assert torch.allclose(saved[key], expected, atol=1e-8), key
        assert not torch.allclose(saved[key], other, atol=1e-3), key


def test_bad_regex_names_the_key_and_pattern(tiny: Path, pretrained: dict) -> None:
    for rename, reason in (("{'(enc': x}", "missing ), unterminated subpattern"),
                           ("{'^enc': '\\1'}", "invalid group reference 1")):
        result = _finetune("--init-from", "runs/pretrain", "--set", f"transfer.keys.rename={rename}")
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "transfer.keys.rename:" in result.stderr and reason in result.stderr
        assert ("'(enc'" if "(" in rename else "'^enc'") in result.stderr
    validate = run_cli("validate", "configs/tiny/from_file.yaml", "--init-from", "runs/pretrain",
                       "--set", "transfer.keys.rename={'[': x}")
    assert validate.exit_code == 2 and "transfer.keys.rename:" in validate.stderr
    assert not (tiny / "runs" / "finetune").exists()


def test_exclude_everything_is_an_error_not_a_silent_scratch_run(tiny: Path, pretrained: dict) -> None:
    result = _finetune("--init-from", "runs/pretrain", "--set", "transfer.keys.include=[nothing.*]")
    assert result.exit_code == 2
    assert "include/exclude left out all 14 keys" in result.stderr


def test_not_strict_loads_what_fits_and_reports_the_rest(tiny: Path, pretrained: dict) -> None:
    partial = {("module." + k if "block1" in k else k): v for k, v in pretrained.items()}
    torch.save(partial, tiny / "partial.pt")
    result = _finetune("--init-from", "partial.pt", "--set", "transfer.strict=false")
    assert result.exit_code == 0, result.output
    report = read_json(tiny / "runs" / "finetune" / "run.json")["lineage"]["load_report"]
    assert len(report["loaded"]) == 6 and len(report["missing"]) == 6 and len(report["unexpected"]) == 6
    assert all(k.startswith("module.backbone.block1.") for k in report["unexpected"])


# ---- the mapping as a function ----------------------------------------------------------------
def _keys(names: list[str]) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(1) for name in names}


def test_rules_apply_in_order_and_count_what_they_did() -> None:
    keys = KeyMap(strip_prefix=["module.", "module.model."], add_prefix="net.",
                  rename={r"^net\.enc\.": "backbone.", r"\.fc\.": ".linear."},
                  include=["backbone.*", "net.model.*"], exclude=["*.bn.*"])
    mapped = map_keys(_keys(["module.enc.fc.weight", "module.enc.bn.bias", "module.model.x", "y"]), keys)
    # the first matching prefix wins ("module." before "module.model.")
    assert sorted(mapped.state) == ["backbone.linear.weight", "net.model.x"]
    assert sorted(mapped.dropped) == ["backbone.bn.bias", "net.y"]
    assert [(r["rule"], r.get("changed", r.get("dropped"))) for r in mapped.rules] == [
        ("strip_prefix", 3), ("strip_prefix", 0), ("add_prefix", 4), ("rename", 2), ("rename", 1),
        ("include", 1), ("exclude", 1)]


def test_include_drops_what_it_does_not_name() -> None:
    mapped = map_keys(_keys(["a.w", "b.w", "c.w"]), KeyMap(include=["a.*", "c.*"]))
    assert sorted(mapped.state) == ["a.w", "c.w"] and mapped.dropped == ["b.w"]
    assert mapped.rules == [{"rule": "include", "pattern": ["a.*", "c.*"], "dropped": 1}]


def test_two_keys_mapped_to_one_name_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'module.w' and 'w' in f.pt both map to 'w'"):
        map_keys(_keys(["module.w", "w"]), KeyMap(strip_prefix=["module."]), source="f.pt")


def test_suggestions() -> None:
    model = ["backbone.a.weight", "backbone.a.bias", "head.weight"]
    assert "strip_prefix: ['module.']" in suggest_key_map(["module." + k for k in model], model)
    assert "add_prefix: 'backbone.'" in suggest_key_map(["a.weight", "a.bias"], model)
    assert r"rename: {'^encoder\.': 'backbone.'}" in suggest_key_map(["encoder.a.weight", "encoder.a.bias"], model)
    assert suggest_key_map(["x.y", "z.w"], model) == ""


def test_evaluate_maps_the_keys_of_a_weights_file(tiny: Path, pretrained: dict) -> None:
    torch.save({"module." + k: v for k, v in pretrained.items()}, tiny / "ddp.pt")
    source = ("--set", "data.params.task=source", "--set", "model={name: cnn1d, params: {channels: [8, 8], "
              "kernel_size: 5}}", "--checkpoint", "ddp.pt", "--json")
    refused = run_cli("evaluate", "configs/tiny/evaluate.yaml", *source, "--run-dir", "runs/refused")
    assert refused.exit_code == 2 and "does not fit the model" in refused.stderr
    assert "try transfer.keys.strip_prefix: ['module.']" in refused.stderr
    mapped = run_cli("evaluate", "configs/tiny/evaluate.yaml", *source, "--set", "transfer.keys.strip_prefix=[module.]",
                     "--run-dir", "runs/mapped")
    assert mapped.exit_code == 0, mapped.output
    direct = run_cli("evaluate", "configs/tiny/evaluate.yaml", "--set", "data.params.task=source",
                     "--checkpoint", "runs/pretrain", "--json", "--run-dir", "runs/direct")
    assert direct.exit_code == 0, direct.output
    assert mapped.json()["metrics"]["test"] == direct.json()["metrics"]["test"]
