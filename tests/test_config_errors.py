"""Config errors: one clear message naming the file, line and key path, exit 2, all at once."""

from __future__ import annotations

from pathlib import Path

from conftest import TINY_BASE, run_cli, write_yaml


def _config(tiny: Path, text: str) -> Path:
    return write_yaml(tiny / "configs" / "tiny" / "bad.yaml", text)


def _fails(*args: str) -> str:
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.stderr


def test_top_level_typo_names_file_line_and_suggestion(tiny: Path) -> None:
    _config(tiny, "extends: base.yaml\ndata: {name: motifs}\ntrian: {epochs: 3}\n")
    err = _fails("pretrain", "configs/tiny/bad.yaml")
    assert "configs/tiny/bad.yaml:3: trian: unknown key (did you mean 'train'?)" in err


def test_typo_inside_params_is_caught_with_suggestion(tiny: Path) -> None:
    _config(tiny, "extends: base.yaml\ndata: {name: motifs}\nmodel:\n  name: cnn1d\n  params: {chanels: [8]}\n")
    err = _fails("pretrain", "configs/tiny/bad.yaml")
    assert "bad.yaml:5: model.params.chanels: unknown key (did you mean 'channels'?)" in err


def test_all_problems_are_reported_at_once(tiny: Path) -> None:
    _config(tiny, """extends: base.yaml
data: {name: motifs, batch_size: 0, params: {tsk: source}}
optim: {name: adam, lr: fast}
train: {precision: fp8, epochs: -1}
model: {name: cnn2d}
""")
    err = _fails("pretrain", "configs/tiny/bad.yaml")
    assert "(6 problems)" in err
    assert "data.batch_size: Input should be greater than or equal to 1; got 0" in err
    assert "optim.lr: Input should be a valid number" in err and "got 'fast'" in err
    assert "train.precision: Input should be 'fp32', 'bf16' or 'fp16'" in err
    assert "train.epochs: Input should be greater than or equal to 1; got -1" in err
    assert "model.name: unknown model 'cnn2d' (did you mean 'cnn1d'?); known: cnn1d, hf_encoder, mlp, resnet" in err
    assert "data.params.tsk: unknown key (did you mean 'task'?)" in err


def test_error_points_at_the_file_that_set_the_key(tiny: Path) -> None:
    write_yaml(tiny / "configs" / "tiny" / "base.yaml", {**TINY_BASE, "optim": {"name": "adamw", "lr": -1}})
    err = _fails("pretrain", "configs/tiny/pretrain.yaml")
    assert "configs/tiny/base.yaml:" in err and "optim.lr: Input should be greater than 0; got -1" in err


def test_missing_config_file(tiny: Path) -> None:
    err = _fails("pretrain", "configs/tiny/nope.yaml")
    assert "config file not found: configs/tiny/nope.yaml" in err


def test_missing_extends_file(tiny: Path) -> None:
    _config(tiny, "extends: ../nowhere/base.yaml\n")
    err = _fails("pretrain", "configs/tiny/bad.yaml")
    assert "extends: file not found" in err and "nowhere/base.yaml" in err


def test_extends_cycle_is_detected(tiny: Path) -> None:
    write_yaml(tiny / "configs" / "tiny" / "a.yaml", "extends: b.yaml\n")
    write_yaml(tiny / "configs" / "tiny" / "b.yaml", "extends: a.yaml\n")
    err = _fails("pretrain", "configs/tiny/a.yaml")
    assert "extends cycle" in err


def test_unknown_key_via_set_names_the_flag(tiny: Path) -> None:
    err = _fails("pretrain", "configs/tiny/pretrain.yaml", "--set", "optim.lrr=0.1")
    assert "--set optim.lrr=0.1: optim.lrr: unknown key (did you mean 'lr'?)" in err


def test_malformed_set(tiny: Path) -> None:
    err = _fails("pretrain", "configs/tiny/pretrain.yaml", "--set", "optim.lr")
    assert "expected KEY.PATH=VALUE" in err


def test_python_yaml_tags_are_refused_and_never_run(tiny: Path) -> None:
    marker = tiny / "pwned"
    _config(tiny, f"extends: base.yaml\ndata: !!python/object/apply:os.system ['touch {marker}']\n")
    err = _fails("pretrain", "configs/tiny/bad.yaml")
    assert "bad.yaml:2" in err and "not allowed" in err
    assert not marker.exists()


def test_yaml_syntax_error_names_the_line(tiny: Path) -> None:
    _config(tiny, "data:\n  name: motifs\n  params: {task: source\n")
    err = _fails("pretrain", "configs/tiny/bad.yaml")
    assert "cannot parse YAML" in err and "bad.yaml:" in err


def test_duplicate_keys_are_an_error(tiny: Path) -> None:
    _config(tiny, "seed: 1\nseed: 2\n")
    err = _fails("pretrain", "configs/tiny/bad.yaml")
    assert "bad.yaml:2: seed: key appears twice" in err


def test_monitor_must_be_logged(tiny: Path) -> None:
    err = _fails("pretrain", "configs/tiny/pretrain.yaml", "--set", "train.monitor=val/acuracy")
    assert "train.monitor: 'val/acuracy' is not logged (did you mean 'val/accuracy'?)" in err


def test_wrong_loss_for_the_task(tiny: Path) -> None:
    err = _fails("pretrain", "configs/tiny/pretrain.yaml", "--set", "loss.name=mse")
    assert "loss.name: 'mse' needs a regression task, but the data is multiclass" in err


def test_model_that_does_not_fit_the_data(tiny: Path) -> None:
    err = _fails("pretrain", "configs/tiny/pretrain.yaml", "--set", "model={name: resnet}")
    assert "model 'resnet' expects images (C, H, W) per sample" in err and "(1, 96)" in err


def test_pretrain_refuses_init_from(tiny: Path) -> None:
    err = _fails("pretrain", "configs/tiny/pretrain.yaml", "--set", "transfer.init_from=somewhere")
    assert "transfer.init_from: pretrain trains from random initialisation" in err


def test_finetune_needs_existing_init_from(tiny: Path) -> None:
    err = _fails("finetune", "configs/tiny/finetune.yaml", "--init-from", "runs/missing")
    assert "--init-from runs/missing: transfer.init_from: no such run directory or weights file" in err


def test_evaluate_needs_a_checkpoint(tiny: Path) -> None:
    err = _fails("evaluate", "configs/tiny/pretrain.yaml")
    assert "eval.checkpoint: required" in err


def test_unknown_metric_name(tiny: Path) -> None:
    err = _fails("pretrain", "configs/tiny/pretrain.yaml", "--set", "eval.metrics=[accuracy, macro_f2]")
    assert "eval.metrics[1]: unknown metric 'macro_f2' (did you mean 'macro_f1'?)" in err


def test_config_error_leaves_no_run_dir(tiny: Path) -> None:
    _fails("pretrain", "configs/tiny/pretrain.yaml", "--set", "optim.lr=-1")
    assert not (tiny / "runs").exists()


def test_a_data_error_raised_while_the_data_is_generated_in_another_process_stays_one_line(tiny: Path) -> None:
    """The built-in data is generated in a forked process; its ConfigError comes back pickled and
    must read as raised here (it came back as one 'problem' per letter of its message)."""
    import pickle

    from transfer_cli.core.errors import ConfigError, RaisedOnMain

    again = pickle.loads(pickle.dumps(ConfigError(["a.b: wrong", "c: bad"], header="invalid x")))
    assert again.problems == ["a.b: wrong", "c: bad"] and str(again).startswith("invalid x (2 problems):")
    assert pickle.loads(pickle.dumps(RaisedOnMain("stopped", 2))).exit_code == 2
    err = _fails("pretrain", "configs/tiny/pretrain.yaml", "--set", "data.params.length=8")
    assert err.strip() == "error: invalid config: data.params: length 8 is too small to hold 2 motifs of width 15"
    assert not (tiny / "runs" / "pretrain").exists()
