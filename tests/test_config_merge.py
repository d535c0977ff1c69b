"""extends / --set semantics, on the loader itself (pure functions)."""

from __future__ import annotations

from pathlib import Path

from conftest import write_yaml

from transfer_cli.config.loader import apply_sets, load_raw


def test_deep_merge_and_component_rename_replaces_params(tmp_path: Path) -> None:
    write_yaml(tmp_path / "base.yaml", {"model": {"name": "cnn1d", "params": {"channels": [8], "kernel_size": 3}},
                                        "optim": {"name": "adamw", "lr": 0.1, "params": {"eps": 1e-6}},
                                        "train": {"epochs": 3, "precision": "bf16"}})
    write_yaml(tmp_path / "child.yaml", {"extends": "base.yaml",
                                         "model": {"name": "mlp", "params": {"hidden": [4]}},
                                         "optim": {"lr": 0.2}, "train": {"epochs": 5}})
    raw = load_raw(tmp_path / "child.yaml")
    assert raw.data["model"] == {"name": "mlp", "params": {"hidden": [4]}}  # no cnn1d params left over
    assert raw.data["optim"] == {"name": "adamw", "lr": 0.2, "params": {"eps": 1e-6}}  # same name: merged
    assert raw.data["train"] == {"epochs": 5, "precision": "bf16"}
    assert raw.origin_of(("train", "precision")).startswith(str(tmp_path / "base.yaml"))
    assert raw.origin_of(("train", "epochs")).startswith(str(tmp_path / "child.yaml"))


def test_extends_list_in_order_and_lists_replaced(tmp_path: Path) -> None:
    write_yaml(tmp_path / "a.yaml", {"seed": 1, "eval": {"metrics": ["accuracy", "nll"]}})
    write_yaml(tmp_path / "b.yaml", {"seed": 2})
    write_yaml(tmp_path / "c.yaml", {"extends": ["a.yaml", "b.yaml"], "eval": {"metrics": ["ece"]}})
    raw = load_raw(tmp_path / "c.yaml")
    assert raw.data == {"seed": 2, "eval": {"metrics": ["ece"]}}


def test_set_values_are_yaml_and_applied_in_order(tmp_path: Path) -> None:
    write_yaml(tmp_path / "c.yaml", {"optim": {"lr": 0.1}})
    raw = apply_sets(load_raw(tmp_path / "c.yaml"),
                     ["optim.lr=1e-2", "train.clip_grad_norm=null", "eval.metrics=[accuracy]", "name=x", "name=y"])
    assert raw.data["optim"]["lr"] == 0.01
    assert raw.data["train"] == {"clip_grad_norm": None}
    assert raw.data["eval"] == {"metrics": ["accuracy"]}
    assert raw.data["name"] == "y"
    assert raw.origin_of(("name",)) == "--set name=y"
