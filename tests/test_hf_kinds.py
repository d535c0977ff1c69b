"""`hf_encoder` on every common kind of Hugging Face folder (tiny random models saved here, no
download): text encoders, vision models and decoder-only LMs; layer groups covering every
parameter; LoRA on their projections; CLI finetune / evaluate / resume on real files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from conftest import read_json, run_cli, write_yaml
from hf_tiny import DECODERS, IMAGE, VISION, save_model
from reliability_tools import assert_same_run, copy_run, rewind
from test_data_tensors import _fails

from scripts.make_example_data import make_reviews, make_shapes

transformers = pytest.importorskip("transformers", reason="hf_encoder needs the optional extra: pip install -e '.[hf]'")
tokenizers = pytest.importorskip("tokenizers", reason="text_csv needs the optional extra: pip install -e '.[hf]'")

EXPECTED_KIND = {"bert": "text", **{k: "vision" for k in VISION}, **{k: "decoder" for k in DECODERS}}
FINAL_NORM = {"vit": "layernorm", "deit": "layernorm", "beit": "pooler", "dinov2": "layernorm",
              "convnext": "layernorm", "swin": "layernorm", "gpt2": "ln_f", "llama": "norm", "qwen2": "norm"}


def _build(folder: Path, kind: str, **params: object):  # noqa: ANN202
    from transfer_cli.models import MODELS

    shape = (3, IMAGE, IMAGE) if EXPECTED_KIND[kind] == "vision" else (2, 8)
    return MODELS.build("hf_encoder", {"path": str(folder), **params}, input_shape=shape, num_outputs=3)


@pytest.mark.parametrize("kind", list(EXPECTED_KIND))
def test_layer_groups_cover_every_parameter_once_for_each_kind(tmp_path: Path, kind: str) -> None:
    model = _build(save_model(tmp_path / kind, kind), kind)
    assert model.backbone.kind == EXPECTED_KIND[kind]
    groups = model.layer_group_names()
    assert groups[-1] == "head" and len(groups) >= 4  # embeddings, blocks, (norm), head
    for name, _ in model.named_parameters():
        assert sum(name.startswith(g + ".") for g in groups) == 1, name
    assert "embed" in groups[0] or groups[0].endswith(".wte")  # GPT-2 calls its token embeddings wte
    if kind in FINAL_NORM:  # the final norm is a group of its own, right below the head
        assert groups[-2] == f"backbone.encoder.{FINAL_NORM[kind]}"
    x = torch.randn(2, 3, IMAGE, IMAGE) if EXPECTED_KIND[kind] == "vision" else \
        torch.stack([torch.randint(0, 64, (2, 8)), torch.ones(2, 8, dtype=torch.int64)], 1)
    assert model.eval()(x).shape == (2, 3)


def test_a_vit_drops_its_projection_pooler_and_pools_its_first_token(tmp_path: Path) -> None:
    model = _build(save_model(tmp_path / "vit", "vit"), "vit").eval()
    assert not any(".pooler." in name for name, _ in model.named_parameters())
    x = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        hidden = model.backbone.encoder(pixel_values=x).last_hidden_state
        assert torch.allclose(model.features(x), hidden[:, 0])


def test_decoders_pool_the_last_non_padding_token(tmp_path: Path) -> None:
    model = _build(save_model(tmp_path / "gpt2", "gpt2"), "gpt2").eval()
    ids = torch.randint(1, 64, (2, 8))
    mask = torch.tensor([[1] * 5 + [0] * 3, [1] * 8])
    x = torch.stack([ids, mask], 1)
    with torch.no_grad():
        hidden = model.backbone.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        features = model.features(x)
        assert torch.allclose(features[0], hidden[0, 4], atol=1e-6) and torch.allclose(features[1], hidden[1, 7])
        other = x.clone()
        other[0, 0, 5:] = 9  # other ids under the mask: the pooled token never saw them (causal)
        assert torch.allclose(model.features(other), features, atol=1e-5)
        other[0, 0, 4] = (ids[0, 4] + 1) % 64  # the last real token matters
        assert not torch.allclose(model.features(other)[0], features[0])


def test_lora_adapts_gpt2s_conv1d_projections_and_merges_exactly(tmp_path: Path) -> None:
    from transfer_cli.models.lora import add_lora, merged_state_dict

    model = _build(save_model(tmp_path / "gpt2", "gpt2"), "gpt2").eval()
    adapted = add_lora(model, rank=2, alpha=4.0, dropout=0.0, targets=["*"])
    assert "backbone.encoder.h.0.attn.c_attn" in adapted and "backbone.encoder.h.1.mlp.c_fc" in adapted
    for name, param in model.named_parameters():
        if name.endswith("lora_B"):
            torch.nn.init.normal_(param)
    x = torch.stack([torch.randint(0, 64, (2, 8)), torch.ones(2, 8, dtype=torch.int64)], 1)
    with torch.no_grad():
        expected = model(x)
        plain = _build(tmp_path / "gpt2", "gpt2").eval()
        plain.load_state_dict(merged_state_dict(model))
        assert torch.allclose(plain(x), expected, atol=1e-5)


def test_bn_frozen_freezes_rmsnorm_too(tmp_path: Path) -> None:
    from transfer_cli.train.strategies import norm_parameter_names

    model = _build(save_model(tmp_path / "llama", "llama"), "llama")
    assert "backbone.encoder.norm.weight" in norm_parameter_names(model)
    assert "backbone.encoder.layers.0.input_layernorm.weight" in norm_parameter_names(model)


def test_an_unsupported_folder_is_one_line_naming_its_model_type(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    transformers.T5Model(transformers.T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8,
                                               vocab_size=32)).save_pretrained(tmp_path / "t5")
    make_shapes(tmp_path / "shapes", per_class=4, size=IMAGE, seed=0)
    _vision_config(tmp_path, "t5")
    err = _fails("finetune", "cfg.yaml")
    assert "model_type 't5', which hf_encoder cannot use (it is an encoder-decoder model)" in err
    assert "supported: text encoders" in err and "convnext" in err and "gpt2" in err


# ---- from the CLI ---------------------------------------------------------------------------------------
def _vision_config(tmp: Path, folder: str, **transfer: object) -> Path:
    return write_yaml(tmp / "cfg.yaml", {
        "run_dir": "runs/t", "seed": 0,
        "data": {"name": "image_folder", "params": {"path": "shapes", "workers": 0, "val_fraction": 0.25,
                                                    "test_fraction": 0.25}, "batch_size": 4},
        "model": {"name": "hf_encoder", "params": {"path": folder}},
        "optim": {"name": "adamw", "lr": 0.001},
        "train": {"max_steps": 3, "device": "cpu", "eval_every_steps": 1, "keep_last": 5}, "transfer": transfer})


@pytest.fixture
def shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    make_shapes(tmp_path / "shapes", per_class=8, size=IMAGE, seed=0)
    return tmp_path


@pytest.mark.parametrize("kind", ["vit", "convnext", "resnet"])
def test_finetune_a_vision_folder_then_evaluate_and_resume_bit_exact(shapes: Path, kind: str) -> None:
    save_model(shapes / kind, kind)
    _vision_config(shapes, kind)
    result = run_cli("finetune", "cfg.yaml")
    assert result.exit_code == 0, result.output
    run = shapes / "runs" / "t"
    lineage = read_json(run / "run.json")["lineage"]
    assert lineage["model_type"] == kind and lineage["kind"] == "vision"
    assert read_json(run / "run.json")["data"]["input_shape"] == [3, IMAGE, IMAGE]
    evaluated = run_cli("evaluate", run, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.json()["metrics"]["test"] == read_json(run / "report.json")["metrics"]["test"]
    resumed = copy_run(run, shapes / "runs" / "resumed")
    rewind(resumed, 1)
    done = run_cli("finetune", "cfg.yaml", "--run-dir", "runs/resumed", "--resume")
    assert done.exit_code == 0, done.output
    assert_same_run(run, resumed)


def test_a_linear_probe_of_a_vit_trains_on_cached_features_and_leaves_it_intact(shapes: Path) -> None:
    from safetensors.torch import load_file

    save_model(shapes / "vit", "vit")
    _vision_config(shapes, "vit", strategy="linear_probe", cache_features=True)
    result = run_cli("finetune", "cfg.yaml", "--json")
    assert result.exit_code == 0, result.output
    assert result.json()["timings"]["feature_cache_seconds"] > 0
    pretrained = _build(shapes / "vit", "vit").state_dict()  # the folder's weights, under our names
    trained = load_file(str(shapes / "runs" / "t" / "checkpoints" / "best" / "model.safetensors"))
    backbone = [key for key in pretrained if key.startswith("backbone.")]
    assert backbone and all(torch.equal(trained[key], pretrained[key]) for key in backbone)


@pytest.mark.parametrize("strategy", ["lora", "gradual"])
def test_lora_and_gradual_on_a_vision_folder(shapes: Path, strategy: str) -> None:
    save_model(shapes / "swin", "swin")
    _vision_config(shapes, "swin", strategy=strategy, layer_decay=0.8, unfreeze_every=1)
    result = run_cli("finetune", "cfg.yaml", "--json", "--smoke")
    assert result.exit_code == 0, result.output
    phases = read_json(shapes / "runs" / "t" / "run.json")["strategy"]["phases"]
    assert phases and phases[0]["name"] in ("lora", "unfreeze-1")


def _texts(tmp: Path, specials: list[str]) -> Path:
    """reviews.csv and a word-level tokenizer.json whose special tokens are `specials`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    make_reviews(tmp / "reviews.csv", n=40)
    with open(tmp / "reviews.csv") as handle:
        texts = [row["review"] for row in csv.DictReader(handle)]
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", *specials]))
    tokenizer.save(str(tmp / "tokenizer.json"))
    return tmp / "tokenizer.json"


def _text_config(tmp: Path, folder: str, **transfer: object) -> Path:
    return write_yaml(tmp / "cfg.yaml", {
        "run_dir": "runs/t", "seed": 0,
        "data": {"name": "text_csv", "params": {"path": "reviews.csv", "text": "review", "label": "sentiment",
                                                "tokenizer": "tokenizer.json", "max_length": 12}, "batch_size": 8},
        "model": {"name": "hf_encoder", "params": {"path": folder}},
        "optim": {"name": "adamw", "lr": 0.001},
        "train": {"max_steps": 3, "device": "cpu", "eval_every_steps": 1, "keep_last": 5}, "transfer": transfer})


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_decoder_without_a_pad_token_finetunes_evaluates_and_resumes(tmp_path: Path, monkeypatch, kind) -> None:
    monkeypatch.chdir(tmp_path)
    tokenizer = _texts(tmp_path, ["</s>"])  # no padding token: the end-of-text token pads
    save_model(tmp_path / kind, kind, vocab=tokenizers.Tokenizer.from_file(str(tokenizer)).get_vocab_size())
    _text_config(tmp_path, kind)
    result = run_cli("finetune", "cfg.yaml")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "t"
    info = read_json(run / "run.json")
    assert info["lineage"]["kind"] == "decoder" and info["data"]["pad_token"] == "</s>"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["params"]["pad_token"] == "</s>"
    evaluated = run_cli("evaluate", run, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert evaluated.json()["metrics"]["test"] == read_json(run / "report.json")["metrics"]["test"]
    resumed = copy_run(run, tmp_path / "runs" / "resumed")
    rewind(resumed, 1)
    done = run_cli("finetune", "cfg.yaml", "--run-dir", "runs/resumed", "--resume")
    assert done.exit_code == 0, done.output
    assert_same_run(run, resumed)


@pytest.mark.parametrize("strategy", ["lora", "linear_probe"])
def test_lora_and_cached_linear_probe_on_gpt2(tmp_path: Path, monkeypatch, strategy: str) -> None:
    monkeypatch.chdir(tmp_path)
    tokenizer = _texts(tmp_path, ["<|endoftext|>"])
    save_model(tmp_path / "gpt2", "gpt2", vocab=tokenizers.Tokenizer.from_file(str(tokenizer)).get_vocab_size())
    _text_config(tmp_path, "gpt2", strategy=strategy, lora={"rank": 2})
    result = run_cli("finetune", "cfg.yaml", "--json")
    assert result.exit_code == 0, result.output
    weights = read_json(tmp_path / "runs" / "t" / "run.json")
    assert weights["data"]["pad_token"] == "<|endoftext|>"
    if strategy == "linear_probe":
        assert result.json()["timings"]["feature_cache_seconds"] > 0


def test_a_decoder_run_exports_to_onnx_padding_as_it_was_trained(tmp_path: Path, monkeypatch) -> None:
    """A GPT-2-style run padded with the pad_token its config chose ('</s>', where the tokenizer's
    first known padding token would be '<|endoftext|>'): the exported tokenizer.json pads with it,
    preprocess.json names it, and the ONNX file (last-token pooling) runs in onnxruntime like torch."""
    pytest.importorskip("onnxruntime", reason="--format onnx needs the optional extra: pip install -e '.[export]'")
    pytest.importorskip("onnxscript", reason="--format onnx needs the optional extra: pip install -e '.[export]'")
    monkeypatch.chdir(tmp_path)
    tokenizer = _texts(tmp_path, ["</s>", "<|endoftext|>"])
    save_model(tmp_path / "gpt2", "gpt2", vocab=tokenizers.Tokenizer.from_file(str(tokenizer)).get_vocab_size())
    config = _text_config(tmp_path, "gpt2")
    data = yaml.safe_load(config.read_text())
    data["data"]["params"]["pad_token"] = "</s>"
    write_yaml(config, data)
    assert run_cli("finetune", "cfg.yaml", "-q").exit_code == 0
    result = run_cli("export", "runs/t", "--format", "onnx", "--json")
    assert result.exit_code == 0, result.output
    facts = result.json()
    assert facts["check"]["max_abs_diff"] <= 1e-4
    folder = Path(facts["out"])
    assert read_json(folder / "preprocess.json")["text"]["pad_token"] == "</s>"
    exported = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert exported.padding["pad_token"] == "</s>"
    assert exported.encode("a great film").ids[-1] == exported.token_to_id("</s>")
