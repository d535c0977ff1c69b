"""A Hugging Face vision model's own preprocessing (preprocessor_config.json) drives image_folder
unless the config overrides it: the same pixels as transformers' own image processor, recorded in
the run's config.yaml and reused by evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import read_json, run_cli, write_yaml
from hf_tiny import IMAGE, save_model

from scripts.make_example_data import make_shapes

transformers = pytest.importorskip("transformers", reason="hf_encoder needs the optional extra: pip install -e '.[hf]'")
pytest.importorskip("PIL")


def _processors():  # noqa: ANN202
    T = transformers
    return {
        "vit": (T.ViTImageProcessor(size={"height": 16, "width": 16}, resample=3, image_mean=[0.4, 0.5, 0.6],
                                    image_std=[0.2, 0.3, 0.25]),
                {"resize": [16, 16], "size": [16, 16], "resample": "bicubic", "mean": [0.4, 0.5, 0.6]}),
        "deit": (T.DeiTImageProcessor(size={"height": 20, "width": 20}, crop_size={"height": 16, "width": 16},
                                      resample=2),
                 {"resize": [20, 20], "size": [16, 16], "resample": "bilinear"}),
        "convnext": (T.ConvNextImageProcessor(size={"shortest_edge": 16}, crop_pct=0.875),
                     {"resize": 18, "size": [16, 16], "resample": "bicubic"}),
        "dinov2": (T.BitImageProcessor(size={"shortest_edge": 18}, crop_size={"height": 16, "width": 16}),
                   {"resize": 18, "size": [16, 16], "resample": "bicubic"}),
    }


@pytest.mark.parametrize("name", ["vit", "deit", "convnext", "dinov2"])
def test_the_folders_preprocessing_gives_the_pixels_of_its_own_image_processor(tmp_path: Path, name: str) -> None:
    from PIL import Image

    from transfer_cli.data.image_folder import ImageFolderParams, _transform
    from transfer_cli.data.imaging import ImageTransform
    from transfer_cli.models.hf_preprocess import image_preprocessing

    processor, expected = _processors()[name]
    processor.save_pretrained(tmp_path / "model")
    params = image_preprocessing(tmp_path / "model")
    assert {k: params[k] for k in expected} == expected and params["rescale"] == pytest.approx(1 / 255)
    image = tmp_path / "a.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (24, 30, 3), dtype=np.uint8)).save(image)
    resolved = ImageFolderParams(path=str(tmp_path), **params)
    transform = _transform(resolved, resolved.size)
    transform = ImageTransform(**{**transform.__dict__, "mean": tuple(params["mean"]), "std": tuple(params["std"])})
    ours = transform(str(image), None)
    theirs = processor(images=Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, 16, 16)
    assert torch.allclose(ours, theirs, atol=1e-5)


def _config(tmp: Path, **params: object) -> Path:
    return write_yaml(tmp / "cfg.yaml", {
        "run_dir": "runs/t", "seed": 0,
        "data": {"name": "image_folder", "params": {"path": "shapes", "workers": 0, "val_fraction": 0.25,
                                                    "test_fraction": 0.25, **params}, "batch_size": 4},
        "model": {"name": "hf_encoder", "params": {"path": "vit"}},
        "train": {"max_steps": 2, "device": "cpu"}})


def test_finetune_records_the_models_preprocessing_and_evaluate_reuses_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_shapes(tmp_path / "shapes", per_class=6, size=24, seed=0)  # larger than the model's 16x16
    save_model(tmp_path / "vit", "vit")
    _processors()["deit"][0].save_pretrained(tmp_path / "vit")  # resize 20x20, crop 16x16
    _config(tmp_path, std=[0.3, 0.3, 0.3])  # the config overrides the folder's std
    result = run_cli("finetune", "cfg.yaml")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "t"
    params = yaml.safe_load((run / "config.yaml").read_text())["data"]["params"]
    assert params["size"] == [16, 16] and params["resize"] == [20, 20] and params["resample"] == "bilinear"
    assert params["mean"] == [0.5, 0.5, 0.5] and params["std"] == [0.3, 0.3, 0.3]
    assert params["rescale"] == pytest.approx(1 / 255)
    assert read_json(run / "run.json")["data"]["input_shape"] == [3, IMAGE, IMAGE]
    (tmp_path / "vit" / "preprocessor_config.json").unlink()  # evaluate takes it from the run, not the folder
    result = run_cli("evaluate", run, "--json")
    assert result.exit_code == 0, result.output
    assert result.json()["metrics"]["test"] == read_json(run / "report.json")["metrics"]["test"]


def test_without_a_preprocessor_config_a_size_the_vit_cannot_take_is_one_line(tmp_path: Path, monkeypatch) -> None:
    from test_data_tensors import _fails

    monkeypatch.chdir(tmp_path)
    make_shapes(tmp_path / "shapes", per_class=6, size=24, seed=0)
    save_model(tmp_path / "vit", "vit")
    _config(tmp_path)
    err = _fails("finetune", "cfg.yaml")
    assert "cannot take images of shape (3, 24, 24)" in err and "set data.params.size: 16" in err
