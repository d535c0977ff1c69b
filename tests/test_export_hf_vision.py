"""`transfer export --format hf` of a fine-tuned Hugging Face vision model: a folder that
transformers' AutoModelForImageClassification loads, with the class names in id2label, giving the
run's outputs on the run's own images; a pooling its class cannot reproduce is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import read_json, run_cli, write_yaml
from hf_tiny import IMAGE, save_model
from safetensors.torch import load_file

from scripts.make_example_data import make_shapes
from transfer_cli.models import MODELS

transformers = pytest.importorskip("transformers", reason="hf_encoder needs the optional extra: pip install -e '.[hf]'")

TOL = 1e-4


def _finetune(tmp: Path, kind: str, pooling: str = "auto") -> Path:
    save_model(tmp / kind, kind)
    write_yaml(tmp / f"{kind}.yaml", {
        "run_dir": f"runs/{kind}-{pooling}", "seed": 0,
        "data": {"name": "image_folder", "params": {"path": "shapes", "workers": 0, "val_fraction": 0.25,
                                                    "test_fraction": 0.25}, "batch_size": 4},
        "model": {"name": "hf_encoder", "params": {"path": kind, "pooling": pooling}},
        "optim": {"name": "adamw", "lr": 0.01}, "train": {"max_steps": 2, "device": "cpu"}})
    result = run_cli("finetune", f"{kind}.yaml")
    assert result.exit_code == 0, result.output
    return tmp / "runs" / f"{kind}-{pooling}"


@pytest.fixture
def shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    make_shapes(tmp_path / "shapes", per_class=6, size=IMAGE, seed=0)
    return tmp_path


@pytest.mark.parametrize("kind, cls", [("vit", "ViTForImageClassification"),
                                       ("convnext", "ConvNextForImageClassification"),
                                       ("resnet", "ResNetForImageClassification"),
                                       ("dinov2", "Dinov2ForImageClassification"),
                                       ("deit", "DeiTForImageClassification"),
                                       ("swin", "SwinForImageClassification"),
                                       ("beit", "BeitForImageClassification")])
def test_a_vision_run_exports_to_auto_model_for_image_classification(shapes: Path, kind: str, cls: str) -> None:
    run = _finetune(shapes, kind)
    result = run_cli("export", run, "--format", "hf", "--json")
    assert result.exit_code == 0, result.output
    facts = result.json()
    assert facts["class"] == cls and facts["check"]["max_abs_diff"] <= TOL
    folder = Path(facts["out"])
    loaded = transformers.AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True).eval()
    classes = read_json(run / "run.json")["data"]["class_names"]
    assert loaded.config.id2label == dict(enumerate(classes))
    # the run's own model on images it never saw in the export's check
    ours = MODELS.build("hf_encoder", {"path": str(shapes / kind)}, input_shape=(3, IMAGE, IMAGE),
                        num_outputs=len(classes))
    ours.load_state_dict(load_file(str(run / "checkpoints" / "best" / "model.safetensors")))
    pixels = torch.randn(5, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours.eval()(pixels) - loaded(pixel_values=pixels).logits).abs().max() <= TOL
    assert read_json(folder / "preprocess.json")["input"]["kind"] == "image"


def test_a_pooling_the_hf_class_cannot_reproduce_is_refused(shapes: Path) -> None:
    run = _finetune(shapes, "convnext", pooling="mean")
    result = run_cli("export", run, "--format", "hf")
    assert result.exit_code == 2, result.output
    assert "pools with 'mean'" in result.output and "pooling: model" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (run / "export").exists()
