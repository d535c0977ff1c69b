"""`transfer pretrain` of a Hugging Face architecture from its config (a folder with config.json
only, or the config inline), seeded, on the built-in images; then `finetune --init-from` that
run (without the folder), evaluate, resume and export --format hf; the bad folders and configs
are one line, exit 2. Tiny ViTs (hidden 32, 2 layers), a few steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import read_json, run_cli, write_yaml
from reliability_tools import assert_same_run, copy_run, rewind
from safetensors.torch import load_file
from test_data_tensors import _fails
from test_hf_kinds import _texts

transformers = pytest.importorskip("transformers", reason="hf_encoder needs the optional extra: pip install -e '.[hf]'")

VIT = {"model_type": "vit", "image_size": 16, "patch_size": 4, "num_channels": 1, "hidden_size": 32,
       "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
SOURCE = {"name": "motifs2d", "params": {"task": "source", "n_train": 40, "n_val": 20, "n_test": 20},
          "batch_size": 10}
TARGET = {"name": "motifs2d", "params": {"task": "target", "n_train": 30, "n_val": 15, "n_test": 15},
          "batch_size": 10}
TRAIN = {"max_steps": 2, "device": "cpu", "eval_every_steps": 1, "keep_last": 5}


def _pretrain_config(path: Path, model_params: dict, seed: int = 0) -> Path:
    return write_yaml(path, {"seed": seed, "data": SOURCE, "model": {"name": "hf_encoder", "params": model_params},
                             "optim": {"name": "adamw", "lr": 0.003}, "train": TRAIN})


def _config_only_folder(folder: Path, **config: object) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**VIT, **config}))
    return folder


def _pretrain(tmp: Path, name: str, model_params: dict, seed: int = 0) -> Path:
    result = run_cli("pretrain", _pretrain_config(tmp / f"{name}.yaml", model_params, seed),
                     "--run-dir", tmp / "runs" / name)
    assert result.exit_code == 0, result.output
    return tmp / "runs" / name


def _weights(run: Path, alias: str = "last") -> dict:
    return load_file(run / "checkpoints" / alias / "model.safetensors")


def _backbone(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if k.startswith("backbone.")}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pretrain runs of one tiny ViT: from a config-only folder (seed 0), the same inline (seed 0),
    inline with seed 1; the folder is deleted afterwards (a later stage needs the run alone)."""
    tmp = tmp_path_factory.mktemp("hfpretrain")
    folder = _config_only_folder(tmp / "vit-config")
    runs = {"folder": _pretrain(tmp, "folder", {"path": str(folder)}),
            "inline": _pretrain(tmp, "inline", {"config": VIT}),
            "seed1": _pretrain(tmp, "seed1", {"config": VIT}, seed=1)}
    shutil.rmtree(folder)
    runs["tmp"] = tmp
    return runs


def test_pretrain_from_a_config_folder_writes_its_run_and_records_the_architecture(pretrained) -> None:
    run = pretrained["folder"]
    info = read_json(run / "run.json")
    assert info["status"] == "completed" and info["lineage"] == {"init": "random", "seed": 0}
    assert read_json(run / "report.json")["metrics"]["test"]["accuracy"] >= 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())["model"]["params"]
    assert recorded["path"] is None  # the run alone rebuilds it: the architecture is inline
    assert {k: recorded["config"][k] for k in VIT} == VIT
    weights = _weights(run)
    assert weights["backbone.encoder.embeddings.patch_embeddings.projection.weight"].shape == (32, 1, 4, 4)
    assert weights["head.weight"].shape == (10, 32)  # the source task's 10 classes
    assert not any(".pooler." in k for k in weights)  # ViT's projection pooler is dropped


def test_the_seed_decides_the_random_initialisation(pretrained) -> None:
    folder, inline, seed1 = (_weights(pretrained[k]) for k in ("folder", "inline", "seed1"))
    assert folder.keys() == inline.keys() == seed1.keys()
    # the folder and the inline config are the same architecture: same seed, same weights, bit for bit
    assert all(folder[k].equal(inline[k]) for k in folder)
    assert not any(folder[k].equal(seed1[k]) for k in folder if k.endswith("query.weight"))


def test_finetune_init_from_the_run_starts_from_its_backbone_without_the_folder(pretrained) -> None:
    tmp = pretrained["tmp"]
    cfg = write_yaml(tmp / "probe.yaml", {"seed": 0, "data": TARGET, "optim": {"name": "adamw", "lr": 0.01},
                                          "train": TRAIN, "transfer": {"strategy": "linear_probe"}})
    source = pretrained["folder"]
    result = run_cli("finetune", cfg, "--init-from", f"{source}@last", "--run-dir", tmp / "runs" / "probe")
    assert result.exit_code == 0, result.output
    run = tmp / "runs" / "probe"
    report = read_json(run / "run.json")["lineage"]["load_report"]
    assert report["head_replaced"] and not report["missing"] and not report["unexpected"]
    assert sorted(report["loaded"]) == sorted(_backbone(_weights(source)))
    # the backbone is frozen, so the finetune's weights are its first state: the pretrain's last
    before, after = _backbone(_weights(source)), _backbone(_weights(run))
    assert before.keys() == after.keys() and all(before[k].equal(after[k]) for k in before)
    assert _weights(run)["head.weight"].shape == (5, 32)


def test_full_finetune_of_the_run_evaluates_and_resumes_bit_exact(pretrained, monkeypatch) -> None:
    tmp = pretrained["tmp"]
    monkeypatch.chdir(tmp)
    cfg = write_yaml(tmp / "full.yaml", {
        "seed": 0, "data": TARGET, "optim": {"name": "adamw", "lr": 0.003},
        "train": {**TRAIN, "max_steps": 3, "eval_every_steps": 1, "keep_last": 5},
        "transfer": {"init_from": str(pretrained["inline"])}})
    result = run_cli("finetune", cfg, "--run-dir", "runs/full")
    assert result.exit_code == 0, result.output
    run = tmp / "runs" / "full"
    start = _backbone(_weights(pretrained["inline"], "best"))
    assert any(not start[k].equal(v) for k, v in _backbone(_weights(run)).items())  # it trained the backbone
    evaluated = run_cli("evaluate", run, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.json()["metrics"]["test"] == read_json(run / "report.json")["metrics"]["test"]
    resumed = copy_run(run, tmp / "runs" / "resumed")
    rewind(resumed, 1)
    done = run_cli("finetune", cfg, "--run-dir", "runs/resumed", "--resume")
    assert done.exit_code == 0, done.output
    assert_same_run(run, resumed)


def test_a_pretrain_from_an_inline_config_resumes_bit_exact(pretrained) -> None:
    tmp = pretrained["tmp"]
    resumed = copy_run(pretrained["inline"], tmp / "runs" / "inline-resumed")
    rewind(resumed, 1)
    done = run_cli("pretrain", tmp / "inline.yaml", "--run-dir", resumed, "--resume")
    assert done.exit_code == 0, done.output
    assert_same_run(pretrained["inline"], resumed)


def test_a_decoder_pretrained_from_an_inline_config_then_finetuned_from_the_run(tmp_path: Path, monkeypatch) -> None:
    import tokenizers

    monkeypatch.chdir(tmp_path)
    vocab = tokenizers.Tokenizer.from_file(str(_texts(tmp_path, ["</s>"]))).get_vocab_size()
    gpt2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": vocab, "n_positions": 32}
    data = {"name": "text_csv", "params": {"path": "reviews.csv", "text": "review", "label": "sentiment",
                                           "tokenizer": "tokenizer.json", "max_length": 12}, "batch_size": 8}
    write_yaml(tmp_path / "pre.yaml", {"seed": 0, "data": data, "train": TRAIN,
                                       "model": {"name": "hf_encoder", "params": {"config": gpt2}}})
    assert run_cli("pretrain", "pre.yaml", "--run-dir", "runs/pre").exit_code == 0
    assert read_json(tmp_path / "runs" / "pre" / "run.json")["model"]["name"] == "hf_encoder"
    write_yaml(tmp_path / "ft.yaml", {"seed": 0, "data": data, "train": TRAIN})
    result = run_cli("finetune", "ft.yaml", "--init-from", "runs/pre@last", "--run-dir", "runs/ft")
    assert result.exit_code == 0, result.output
    report = read_json(tmp_path / "runs" / "ft" / "run.json")["lineage"]["load_report"]
    assert not report["head_replaced"] and not report["missing"] and not report["unexpected"]
    assert sorted(report["loaded"]) == sorted(_weights(tmp_path / "runs" / "pre"))  # the head too: same task


def test_export_hf_of_the_pretrain_run_loads_with_automodel(pretrained) -> None:
    run, out = pretrained["inline"], pretrained["tmp"] / "exported"
    transformers.utils.logging.enable_progress_bar()  # as in a fresh process: no folder was loaded before
    result = run_cli("export", run, "--format", "hf", "--out", out)
    assert result.exit_code == 0, result.output
    assert "Loading weights" not in result.output and "Writing model shards" not in result.output  # plain lines
    model = transformers.AutoModel.from_pretrained(str(out), local_files_only=True)
    assert model.config.model_type == "vit" and model.config.hidden_size == 32
    best = _weights(run, "best")
    for key, value in model.state_dict().items():
        if f"backbone.encoder.{key}" in best:
            assert value.equal(best[f"backbone.encoder.{key}"]), key


def test_continued_pretraining_from_a_folder_with_weights_records_them(tmp_path: Path) -> None:
    folder = tmp_path / "vit"
    transformers.AutoModel.from_config(transformers.ViTConfig(**{k: v for k, v in VIT.items() if k != "model_type"})
                                       ).save_pretrained(folder)
    run = _pretrain(tmp_path, "continued", {"path": str(folder), "config": {"hidden_dropout_prob": 0.25}})
    lineage = read_json(run / "run.json")["lineage"]
    assert lineage["init"] == "pretrained" and lineage["pretrained"] == str(folder)
    assert lineage["weights"].endswith("model.safetensors") and len(lineage["sha256"]) == 64
    recorded = yaml.safe_load((run / "config.yaml").read_text())["model"]["params"]["config"]
    assert recorded["hidden_dropout_prob"] == 0.25 and recorded["hidden_size"] == 32  # the inline key over the folder's
    err = _pretrain_fails(tmp_path, {"path": str(folder), "config": {"hidden_size": 16, "intermediate_size": 32}})
    assert f"cannot load {folder}: its weights have other shapes than the architecture" in err
    assert "drop the keys that change them, or pretrain from random initialisation" in err


def test_a_finetune_from_the_run_of_a_vision_folder_prepares_images_as_the_folder_said(tmp_path: Path) -> None:
    # the run records path: null, so the folder's preprocessor_config.json must travel with the run
    from scripts.make_example_data import make_shapes

    folder = _config_only_folder(tmp_path / "vit-config", num_channels=3)
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.4, 0.5, 0.6],
                                   image_std=[0.2, 0.3, 0.4]).save_pretrained(folder)
    for name, seed in (("source", 0), ("target", 1)):
        make_shapes(tmp_path / name, per_class=6, size=24, seed=seed)  # larger than the model's 16x16
    images = {**SOURCE, "name": "image_folder", "params": {"path": str(tmp_path / "source")}}
    write_yaml(tmp_path / "pre.yaml", {"data": images, "train": TRAIN,
                                       "model": {"name": "hf_encoder", "params": {"path": str(folder)}}})
    assert run_cli("pretrain", tmp_path / "pre.yaml", "--run-dir", tmp_path / "runs" / "pre").exit_code == 0
    shutil.rmtree(folder)  # the run alone
    write_yaml(tmp_path / "ft.yaml", {"data": {**images, "params": {"path": str(tmp_path / "target")}},
                                      "train": TRAIN, "transfer": {"init_from": str(tmp_path / "runs" / "pre")}})
    result = run_cli("finetune", tmp_path / "ft.yaml", "--run-dir", tmp_path / "runs" / "ft")
    assert result.exit_code == 0, result.output
    data = yaml.safe_load((tmp_path / "runs" / "ft" / "config.yaml").read_text())["data"]["params"]
    assert data["size"] == [16, 16] and data["mean"] == [0.4, 0.5, 0.6] and data["std"] == [0.2, 0.3, 0.4]


def test_a_bad_preprocessing_key_or_value_is_one_line(tmp_path: Path) -> None:
    from scripts.make_example_data import make_shapes

    make_shapes(tmp_path / "shapes", per_class=3, size=16)
    data = {**SOURCE, "name": "image_folder", "params": {"path": str(tmp_path / "shapes")}}
    for preprocessing, says in (({"sizee": 16}, "model.params.preprocessing: sizee: Extra inputs are not permitted"),
                                ({"size": "abc"}, "model.params.preprocessing: size")):
        model = {"name": "hf_encoder", "params": {"config": {**VIT, "num_channels": 3}, "preprocessing": preprocessing}}
        write_yaml(tmp_path / "bad.yaml", {"data": data, "model": model, "train": TRAIN})
        err = _fails("pretrain", str(tmp_path / "bad.yaml"), "--run-dir", str(tmp_path / "runs" / "bad"))
        assert says in err and "internal error" not in err


# ---- bad input: one line, exit 2 -----------------------------------------------------------------------
def _pretrain_fails(tmp: Path, model_params: dict) -> str:
    _pretrain_config(tmp / "bad.yaml", model_params)
    return _fails("pretrain", str(tmp / "bad.yaml"), "--run-dir", str(tmp / "runs" / "bad"))


def test_a_folder_without_config_json_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    err = _pretrain_fails(tmp_path, {"path": str(tmp_path / "empty")})
    assert f"{tmp_path / 'empty'} is not a Hugging Face model directory (no config.json)" in err
    assert not (tmp_path / "runs" / "bad").exists()


def test_an_unsupported_model_type_is_one_line_naming_it(tmp_path: Path) -> None:
    transformers.T5Config(d_model=16, num_layers=1).save_pretrained(tmp_path / "t5")  # config.json only
    err = _pretrain_fails(tmp_path, {"path": str(tmp_path / "t5")})
    assert "model_type 't5', which hf_encoder cannot use (it is an encoder-decoder model)" in err
    err = _pretrain_fails(tmp_path, {"config": {"model_type": "no-such-model"}})
    assert "model.params.config describes a model of model_type 'no-such-model'" in err
    assert "transformers has no AutoModel class for it" in err


def test_an_inline_encoder_decoder_or_multimodal_config_is_refused_as_a_folder_is(tmp_path: Path) -> None:
    # inline, the keys that say so (is_encoder_decoder, text_config/vision_config) are the model type's
    # defaults, not written: the kind must come from the whole config, as from a saved folder
    err = _pretrain_fails(tmp_path, {"config": {"model_type": "t5", "d_model": 16, "num_layers": 1}})
    assert "model.params.config describes a model of model_type 't5', which hf_encoder cannot use (it is an " \
           "encoder-decoder model)" in err
    err = _pretrain_fails(tmp_path, {"config": {"model_type": "clip"}})
    assert "model_type 'clip', which hf_encoder cannot use (it is a multimodal (text and vision) model)" in err


def test_a_typo_in_the_inline_config_is_one_line_with_a_suggestion(tmp_path: Path) -> None:
    err = _pretrain_fails(tmp_path, {"config": {**VIT, "hiden_size": 32}})
    assert "model.params.config.hiden_size: not a key of a vit config (did you mean 'hidden_size'?)" in err
    err = _pretrain_fails(tmp_path, {"config": {"hidden_size": 32}})
    assert "model_type is required" in err
    err = _pretrain_fails(tmp_path, {})
    assert "give path (a model folder with config.json) or config" in err


def test_a_value_of_the_wrong_type_in_the_inline_config_says_what_was_expected(tmp_path: Path) -> None:
    # transformers puts the reason on the line after "Validation error for field 'hidden_size':"
    err = _pretrain_fails(tmp_path, {"config": {**VIT, "hidden_size": "abc"}})
    assert "model.params.config: not a valid vit config (Validation error for field 'hidden_size': " in err
    assert "expected int, got str (value: 'abc')" in err


def test_an_inline_config_without_layers_names_the_inline_config(tmp_path: Path) -> None:
    err = _pretrain_fails(tmp_path, {"config": {**VIT, "num_hidden_layers": 0}})
    assert "model.params.config: cannot find the blocks (a list of at least one layer) of the model" in err
    assert "model.params.path" not in err


def test_images_the_architecture_cannot_take_are_one_line(tmp_path: Path) -> None:
    err = _pretrain_fails(tmp_path, {"config": {**VIT, "image_size": 32}})
    assert "cannot take images of shape (1, 16, 16)" in err and "set data.params.size: 32" in err


def test_finetune_of_a_config_only_folder_without_init_from_is_one_line(tmp_path: Path) -> None:
    folder = _config_only_folder(tmp_path / "vit-config")
    write_yaml(tmp_path / "ft.yaml", {"data": TARGET, "model": {"name": "hf_encoder", "params": {"path": str(folder)}},
                                      "train": TRAIN})
    err = _fails("finetune", str(tmp_path / "ft.yaml"), "--run-dir", str(tmp_path / "runs" / "ft"))
    assert "transfer.init_from: required: model 'hf_encoder' as configured brings no weights of its own" in err
