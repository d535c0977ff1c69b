"""`text_csv` and `hf_encoder` with a tiny Hugging Face model made here (no download): tokenized
ids + mask, finetune without init_from (lineage = the directory's weights), evaluate, errors.
Skipped without the optional extra (pip install -e ".[hf]")."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from conftest import read_json, run_cli, write_yaml
from test_data_tensors import _fails

from scripts.make_example_data import make_reviews, make_word_tokenizer

tokenizers = pytest.importorskip("tokenizers", reason="text_csv needs the optional extra: pip install -e '.[hf]'")


@pytest.fixture
def texts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    reviews = make_reviews(tmp_path / "reviews.csv", n=60)
    with open(reviews) as handle:
        make_word_tokenizer(tmp_path / "tokenizer.json", [row["review"] for row in csv.DictReader(handle)])
    return tmp_path


@pytest.fixture
def tiny_bert(texts: Path) -> Path:
    """A 2-layer BERT with random weights, saved as a local model directory (safetensors)."""
    transformers = pytest.importorskip("transformers", reason="hf_encoder needs the optional extra: pip install -e '.[hf]'")
    vocab = tokenizers.Tokenizer.from_file(str(texts / "tokenizer.json")).get_vocab_size()
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(texts / "bert")
    return texts / "bert"


def _config(tmp: Path, params: dict | None = None, model: dict | None = None, **extra: object) -> Path:
    return write_yaml(tmp / "cfg.yaml", {
        "run_dir": "runs/t",
        "data": {"name": "text_csv", "params": {"path": "reviews.csv", "text": "review", "label": "sentiment",
                                                "tokenizer": "tokenizer.json", "max_length": 16, **(params or {})},
                 "batch_size": 8},
        "model": model or {"name": "hf_encoder", "params": {"path": "bert"}},
        "optim": {"lr": 0.001}, "train": {"epochs": 1, "device": "cpu"}, **extra})


def test_texts_become_ids_and_attention_mask(texts: Path) -> None:
    from transfer_cli.data import DATASETS

    data = DATASETS.build("text_csv", {"path": "reviews.csv", "text": "review", "label": "sentiment",
                                       "tokenizer": "tokenizer.json", "max_length": 6}, seed=0)
    x = data.split("train").x
    assert x.dtype == torch.int64 and x.shape[1:] == (2, 6)
    tokenizer = tokenizers.Tokenizer.from_file(str(texts / "tokenizer.json"))
    assert bool((x[:, 0, 0] == tokenizer.token_to_id("[CLS]")).all())
    assert data.class_names == ["negative", "positive"] and data.info["truncated_texts"] > 0
    longer = DATASETS.build("text_csv", {"path": "reviews.csv", "text": "review", "label": "sentiment",
                                         "tokenizer": "tokenizer.json", "max_length": 24}, seed=0)
    mask = longer.split("train").x[:, 1]
    assert longer.info["truncated_texts"] == 0 and 0 < int(mask.sum(1).min()) < 24 and int(mask[:, -1].sum()) == 0


def test_finetune_needs_no_init_from_and_records_the_directorys_weights(tiny_bert: Path, monkeypatch) -> None:
    _config(tiny_bert.parent)
    result = run_cli("finetune", "cfg.yaml")
    assert result.exit_code == 0, result.output
    run = tiny_bert.parent / "runs" / "t"
    lineage = read_json(run / "run.json")["lineage"]
    weights = tiny_bert / "model.safetensors"
    assert lineage == {"init_from": None, "pretrained": str(tiny_bert), "weights": str(weights),
                       "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "model_type": "bert",
                       "kind": "text"}
    elsewhere = tiny_bert.parent / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run_cli("evaluate", run, "--json")
    assert result.exit_code == 0, result.output
    assert result.json()["metrics"]["test"] == read_json(run / "report.json")["metrics"]["test"]


def test_layer_groups_are_embeddings_then_layers_and_pooling_differs(tiny_bert: Path) -> None:
    from transfer_cli.models import MODELS

    cls = MODELS.build("hf_encoder", {"path": str(tiny_bert), "pooling": "cls"}, input_shape=(2, 8), num_outputs=3)
    assert cls.layer_group_names() == ["backbone.encoder.embeddings", "backbone.encoder.encoder.layer.0",
                                       "backbone.encoder.encoder.layer.1", "head"]
    assert not any(name.startswith("backbone.encoder.pooler") for name, _ in cls.named_parameters())
    mean = MODELS.build("hf_encoder", {"path": str(tiny_bert), "pooling": "mean"}, input_shape=(2, 8), num_outputs=3)
    x = torch.stack([torch.randint(1, 20, (4, 8)), torch.tensor([[1] * 5 + [0] * 3] * 4)], dim=1)
    cls.eval(), mean.eval()
    assert not torch.allclose(cls.features(x), mean.features(x))
    padded = x.clone()
    padded[:, 0, 5:] = 7  # other ids under the mask: mean pooling ignores them
    assert torch.allclose(mean.features(x), mean.features(padded), atol=1e-5)


def test_continued_pretraining_of_an_encoder_then_finetune_init_from_it(tiny_bert: Path) -> None:
    _config(tiny_bert.parent, train={"max_steps": 2, "device": "cpu"})
    result = run_cli("pretrain", "cfg.yaml")
    assert result.exit_code == 0, result.output
    run = tiny_bert.parent / "runs" / "t"
    lineage = read_json(run / "run.json")["lineage"]
    assert lineage["init"] == "pretrained" and lineage["model_type"] == "bert"
    assert lineage["sha256"] == hashlib.sha256((tiny_bert / "model.safetensors").read_bytes()).hexdigest()
    (tiny_bert / "model.safetensors").unlink()  # the run records the architecture: the folder is not needed
    cfg = _config(tiny_bert.parent, run_dir="runs/ft", train={"max_steps": 1, "device": "cpu"})
    write_yaml(cfg, {**yaml.safe_load(cfg.read_text()), "model": None})  # the run's architecture
    result = run_cli("finetune", "cfg.yaml", "--init-from", "runs/t")
    assert result.exit_code == 0, result.output
    report = read_json(tiny_bert.parent / "runs" / "ft" / "run.json")["lineage"]["load_report"]
    assert not report["missing"] and not report["unexpected"] and len(report["loaded"]) > 20


@pytest.mark.parametrize("params, model, expected", [
    ({"tokenizer": "missing.json"}, None, "data.params.tokenizer: file not found: {tmp}/missing.json"),
    ({"text": "body"}, None, "no column 'body'; it has: review, sentiment (set data.params.text)"),
    ({"max_length": 40}, None, "data.params.max_length 40 is longer than the model's 32 positions"),
    (None, {"name": "hf_encoder", "params": {"path": "nowhere"}},
     "model.params.path: {tmp}/nowhere is not a Hugging Face model directory (no config.json)"),
    (None, {"name": "resnet"}, "model 'resnet' expects images (C, H, W) per sample, but the data has samples of "
                               "shape (2, 16)"),
])
def test_bad_text_setups_get_one_clear_message(tiny_bert: Path, params, model, expected: str) -> None:
    _config(tiny_bert.parent, params, model, transfer={"init_from": None})
    stage = "finetune" if model is None or model["name"] == "hf_encoder" else "pretrain"
    assert expected.format(tmp=tiny_bert.parent) in _fails(stage, "cfg.yaml")


def test_a_foreign_tokenizer_is_caught_before_it_indexes_past_the_embeddings(tiny_bert: Path) -> None:
    import transformers

    small = transformers.BertConfig(vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, max_position_embeddings=32)
    transformers.BertModel(small).save_pretrained(tiny_bert.parent / "small")
    _config(tiny_bert.parent, model={"name": "hf_encoder", "params": {"path": "small"}})
    assert "is outside the model's vocabulary (8 tokens): the data was tokenized with another tokenizer" in _fails(
        "finetune", "cfg.yaml")


def test_hf_encoder_on_vector_data_is_refused(texts: Path) -> None:
    import numpy as np

    np.savez(texts / "d.npz", x=np.zeros((20, 5), np.float32), y=np.arange(20) % 2)
    write_yaml(texts / "cfg.yaml", {"data": {"name": "tensors", "params": {"path": "d.npz"}},
                                    "model": {"name": "hf_encoder", "params": {"path": "bert"}}})
    assert "model 'hf_encoder' expects tokenized text, (2, max_length) per sample" in _fails("finetune", "cfg.yaml")


def test_validate_treats_a_pretrained_encoder_config_as_a_finetune(tiny_bert: Path) -> None:
    _config(tiny_bert.parent)
    result = run_cli("validate", "cfg.yaml", "--json")
    assert result.exit_code == 0, result.output
    assert result.json()["stage"] == "finetune" and result.json()["data"]["input_shape"] == [2, 16]
