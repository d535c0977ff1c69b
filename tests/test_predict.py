"""`transfer predict` from the CLI: for each data kind a tiny run is trained, `evaluate
--predictions` labels its test split and `predict` labels the same inputs without their labels;
both must give the same classes and probabilities (to the printed 6 digits). Then the refusals:
one line, exit 2, no output file."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import read_json, run_cli, write_yaml

from scripts.make_example_data import make_reviews, make_shapes, make_table, make_word_tokenizer

FAST = {"epochs": 2, "device": "cpu"}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _decisions(rows: list[dict], drop: tuple[str, ...]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


def _train_and_evaluate(tmp: Path, data: dict, model: dict, **extra: object) -> list[dict]:
    """Train runs/t on `data`, then evaluate --predictions on its test split: that file's rows."""
    write_yaml(tmp / "cfg.yaml", {"seed": 0, "run_dir": "runs/t", "data": data, "model": model,
                                  "optim": {"lr": 0.01}, "train": FAST, **extra})
    trained = run_cli("pretrain", "cfg.yaml")
    assert trained.exit_code == 0, trained.output
    evaluated = run_cli("evaluate", "runs/t", "--predictions", "evaluated.csv")
    assert evaluated.exit_code == 0, evaluated.output
    return _rows(tmp / "evaluated.csv")


def _predict(*args: str) -> dict:
    result = run_cli("predict", *args, "--json")
    assert result.exit_code == 0, result.output
    return result.json()


def _same_as_evaluate(evaluated: list[dict], predicted: list[dict], name_column: str | None = None) -> None:
    assert len(predicted) == len(evaluated) > 0
    assert list(predicted[0])[:2] == (["index", name_column] if name_column else ["index", "predicted"])
    assert _decisions(predicted, ("index", "file", "id")) == _decisions(evaluated, ("index", "true"))


# ---- csv ---------------------------------------------------------------------------------------
def _copy_of(trained: tuple[Path, list[dict]], tmp: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[dict]]:
    """A test's own copy of a run trained once per module (the run dir's aliases are relative links)."""
    root, evaluated = trained
    shutil.copytree(root, tmp, symlinks=True, dirs_exist_ok=True)
    monkeypatch.chdir(tmp)
    return tmp, evaluated


@pytest.fixture(scope="module")
def table_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("table")
    with contextlib.chdir(root):
        make_table(root / "train.csv", n=60, seed=0)
        make_table(root / "test.csv", n=24, seed=1)
        evaluated = _train_and_evaluate(
            root, {"name": "csv", "params": {"train": "train.csv", "test": "test.csv", "val_fraction": 0.25,
                                             "label": "species"}, "batch_size": 16},
            {"name": "mlp", "params": {"hidden": [16]}})
    return root, evaluated


@pytest.fixture
def table_run(table_trained: tuple[Path, list[dict]], tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[dict]]:
    return _copy_of(table_trained, tmp_path, monkeypatch)


def _without_label(source: Path, target: Path, order: list[str]) -> Path:
    """The rows of `source` without the label column, the columns in another order."""
    rows = _rows(source)
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=order)
        writer.writeheader()
        writer.writerows({k: row[k] for k in order} for row in rows)
    return target


def test_csv_predictions_equal_evaluate_and_jsonl_agrees(table_run: tuple[Path, list[dict]]) -> None:
    tmp, evaluated = table_run
    _without_label(tmp / "test.csv", tmp / "new.csv", ["weight", "sample_id", "density", "width", "length"])
    result = run_cli("predict", "runs/t", "new.csv", "--out", "predicted.csv", "--id-column", "sample_id",
                     "--batch-size", "5", "--json")
    assert result.exit_code == 0, result.output
    summary = result.json()
    # in a pipe: plain progress lines (on stderr with --json, stdout keeps the JSON alone)
    assert "predict 5/24 inputs" in result.stderr and "predict 24/24 inputs" in result.stderr
    assert "predicted 24 inputs (multiclass) -> " in result.stderr
    assert summary["rows"] == 24 and summary["classes"] == ["amber", "basalt", "cobalt"]
    assert summary["output"] == str(tmp / "predicted.csv") and summary["task"] == "multiclass"
    predicted = _rows(tmp / "predicted.csv")
    _same_as_evaluate(evaluated, predicted, "id")
    assert [r["id"] for r in predicted] == [r["sample_id"] for r in _rows(tmp / "test.csv")]

    _predict("runs/t@last", "new.csv", "--out", "predicted.jsonl", "--format", "jsonl")
    records = [json.loads(line) for line in (tmp / "predicted.jsonl").read_text().splitlines()]
    assert [r["predicted"] for r in records] == [r["predicted"] for r in evaluated]
    assert [f"{r['probabilities']['cobalt']:.6g}" for r in records] == [r["cobalt"] for r in evaluated]


def test_weights_file_needs_the_config_that_trained_it(table_run: tuple[Path, list[dict]]) -> None:
    tmp, evaluated = table_run
    _without_label(tmp / "test.csv", tmp / "new.csv", ["length", "width", "density", "weight"])
    weights = next((tmp / "runs" / "t" / "checkpoints" / "best").glob("model.safetensors"))
    refused = run_cli("predict", str(weights), "new.csv", "--out", "p.csv")
    assert refused.exit_code == 2 and "add --config CONFIG.yaml" in refused.stderr
    assert not (tmp / "p.csv").exists()
    _predict(str(weights), "new.csv", "--out", "p.csv", "--config", "runs/t/config.yaml")
    _same_as_evaluate(evaluated, _rows(tmp / "p.csv"))
    # a config of another architecture (hidden 8, not 16): said so, not blamed on the classes
    other = (tmp / "runs" / "t" / "config.yaml").read_text().replace("- 16", "- 8")
    (tmp / "other.yaml").write_text(other)
    refused = run_cli("predict", str(weights), "new.csv", "--out", "q.csv", "--config", "other.yaml")
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "does not fit the model (it is another architecture than the config's model" in refused.stderr
    assert "number of classes" not in refused.stderr and not (tmp / "q.csv").exists()


def test_missing_feature_column_is_named_and_nothing_is_written(table_run: tuple[Path, list[dict]]) -> None:
    tmp, _ = table_run
    _without_label(tmp / "test.csv", tmp / "new.csv", ["length", "density", "sample_id"])
    result = run_cli("predict", "runs/t", "new.csv", "--out", "p.csv")
    assert result.exit_code == 2
    assert "missing feature columns 'width', 'weight'" in result.stderr and "new.csv" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp / "p.csv").exists()


def _refused(*args: str):  # noqa: ANN202  conftest's Result
    """`transfer predict ARGS`, refused in one line with exit 2."""
    result = run_cli("predict", *args)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    return result


def test_empty_feature_cell_names_the_line_and_asks_to_fill_it(table_run: tuple[Path, list[dict]]) -> None:
    """The features are the run's: the fix is to fill the cell, not to drop the column from a config."""
    tmp, _ = table_run
    (tmp / "new.csv").write_text("length,width,density,weight\n1.0,2.0,0.5,10\n1.0,,0.5,10\n")
    result = _refused("runs/t", "new.csv", "--out", "p.csv")
    assert "new.csv): line 3, column 'width' is empty; fill it in (the model was trained on" in result.stderr
    assert "data.params.features" not in result.stderr and not (tmp / "p.csv").exists()


def test_a_folder_for_a_csv_run_says_a_file_is_expected(table_run: tuple[Path, list[dict]]) -> None:
    tmp, _ = table_run
    (tmp / "rows").mkdir()
    result = _refused("runs/t", "rows", "--out", "p.csv")
    assert "INPUTS: rows is a folder, but a file is expected here; give the file" in result.stderr


def test_an_evaluate_run_is_named_as_one_that_holds_no_weights(table_run: tuple[Path, list[dict]]) -> None:
    tmp, _ = table_run
    assert run_cli("evaluate", "runs/t", "--run-dir", "runs/ev", "-q").exit_code == 0
    for args in (("predict", "runs/ev", "test.csv", "--out", "p.csv"), ("rank", "runs/t/config.yaml", "runs/ev"),
                 ("evaluate", "runs/ev")):
        result = run_cli(*args)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert "runs/ev is an evaluate run, which holds no weights (no checkpoints/); give the run that trained them" \
            in result.stderr
    assert not (tmp / "p.csv").exists()


def test_an_unfinished_run_predicts_with_a_warning(table_run: tuple[Path, list[dict]]) -> None:
    tmp, _ = table_run
    info = read_json(tmp / "runs" / "t" / "run.json")
    (tmp / "runs" / "t" / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    result = run_cli("predict", "runs/t@last", "test.csv", "--out", "p.csv")
    assert result.exit_code == 0 and (tmp / "p.csv").is_file()
    assert "runs/t is interrupted, not completed: predicting with the checkpoint it had reached (step-" in result.stderr


def test_a_csv_split_by_another_delimiter_is_said_so(table_run: tuple[Path, list[dict]]) -> None:
    tmp, _ = table_run
    (tmp / "semi.csv").write_text("length;width;density;weight\n1;2;0.5;10\n")
    result = _refused("runs/t", "semi.csv", "--out", "p.csv")
    assert "the file has: length;width;density;weight (it looks separated by ';'" in result.stderr


def test_existing_output_is_kept_without_overwrite(table_run: tuple[Path, list[dict]]) -> None:
    tmp, evaluated = table_run
    _without_label(tmp / "test.csv", tmp / "new.csv", ["length", "width", "density", "weight"])
    (tmp / "p.csv").write_text("mine\n")
    result = run_cli("predict", "runs/t", "new.csv", "--out", "p.csv")
    assert result.exit_code == 2 and "--out: " in result.stderr and "--overwrite" in result.stderr
    assert (tmp / "p.csv").read_text() == "mine\n"
    _predict("runs/t", "new.csv", "--out", "p.csv", "--overwrite")
    _same_as_evaluate(evaluated, _rows(tmp / "p.csv"))
    before = (tmp / "new.csv").read_bytes()  # the inputs are never replaced by their predictions
    result = run_cli("predict", "runs/t", "new.csv", "--out", "./new.csv", "--overwrite")
    assert result.exit_code == 2
    assert "--out: new.csv is INPUTS itself; the predictions would replace the inputs" in result.stderr
    assert (tmp / "new.csv").read_bytes() == before


def test_refused_under_torchrun(table_run: tuple[Path, list[dict]], monkeypatch: pytest.MonkeyPatch) -> None:
    tmp, _ = table_run
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = run_cli("predict", "runs/t", "test.csv", "--out", "p.csv")
    assert result.exit_code == 2 and "runs in one process, but torchrun started 2" in result.stderr
    assert not (tmp / "p.csv").exists()


def test_bad_device_is_a_usage_error(table_run: tuple[Path, list[dict]]) -> None:
    tmp, _ = table_run
    result = run_cli("predict", "runs/t", "test.csv", "--out", "p.csv", "--device", "tpu")
    assert result.exit_code == 2 and "--device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'" in result.stderr
    assert not (tmp / "p.csv").exists()


# ---- image_folder --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("images")
    with contextlib.chdir(root):
        make_shapes(root / "shapes" / "train", per_class=8, size=20, seed=0)
        make_shapes(root / "shapes" / "test", per_class=3, size=20, seed=1)
        evaluated = _train_and_evaluate(
            root, {"name": "image_folder", "params": {"train": "shapes/train", "test": "shapes/test",
                                                      "val_fraction": 0.25, "size": 12, "resize": 14,
                                                      "random_crop": True, "flip": True, "workers": 0},
                   "batch_size": 6},
            {"name": "resnet", "params": {"widths": [4]}})
    return root, evaluated


@pytest.fixture
def image_run(image_trained: tuple[Path, list[dict]], tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[dict]]:
    return _copy_of(image_trained, tmp_path, monkeypatch)


def test_image_folder_with_class_folders_and_flat(image_run: tuple[Path, list[dict]]) -> None:
    tmp, evaluated = image_run
    _predict("runs/t", "shapes/test", "--out", "tree.csv")
    tree = _rows(tmp / "tree.csv")
    _same_as_evaluate(evaluated, tree, "file")
    assert tree[0]["file"].startswith("circle/")  # relative to INPUTS; the folder names are not labels

    flat = tmp / "flat"
    flat.mkdir()
    for row in tree:  # the same images in one folder, renamed so that they sort in the same order
        shutil.copy(tmp / "shapes" / "test" / row["file"], flat / f"{int(row['index']):03d}-{Path(row['file']).name}")
    (flat / "._000-circle.png").write_bytes(b"\x00\x05\x16\x07 macOS metadata, not an image")  # hidden: skipped
    _predict("runs/t", "flat", "--out", "flat.csv")
    _same_as_evaluate(evaluated, _rows(tmp / "flat.csv"), "file")


def test_unreadable_image_is_named(image_run: tuple[Path, list[dict]]) -> None:
    tmp, _ = image_run
    (tmp / "new").mkdir()
    shutil.copy(next((tmp / "shapes" / "test" / "circle").iterdir()), tmp / "new" / "good.png")
    (tmp / "new" / "broken.png").write_bytes(b"not a picture")
    result = run_cli("predict", "runs/t", "new", "--out", "p.csv")
    assert result.exit_code == 2 and "broken.png" in result.stderr and "cannot read image" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp / "p.csv").exists()


# ---- tensors (multiclass, multilabel, regression) ----------------------------------------------
@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel", "regression"])
def test_tensors_npz_with_x_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str) -> None:
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for name, n in (("train", 64), ("test", 20)):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        y = {"multiclass": (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0),
             "binary": (x[:, 0] > 0).astype(np.int64),
             "multilabel": (x[:, :3] > 0).astype(np.int64),
             "regression": (2 * x[:, 0] - x[:, 1]).astype(np.float32)}[task]
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        np.savez(tmp_path / f"{name}-x.npz", x=x)
    params = {"train": "train.npz", "test": "test.npz", "val_fraction": 0.25,
              **({"task": "multilabel", "classes": ["red", "green", "blue"]} if task == "multilabel" else {}),
              **({"task": "binary", "classes": ["no", "yes"]} if task == "binary" else {})}
    loss = {"multiclass": "cross_entropy", "binary": "bce", "multilabel": "bce", "regression": "mse"}[task]
    extra = {"eval": {"threshold": 0.3}} if task == "binary" else {}  # the run's threshold decides, as in evaluate
    evaluated = _train_and_evaluate(tmp_path, {"name": "tensors", "params": params, "batch_size": 16},
                                    {"name": "mlp", "params": {"hidden": [8]}}, loss={"name": loss}, **extra)
    summary = _predict("runs/t", "test-x.npz", "--out", "p.csv")
    assert summary["rows"] == 20 and summary["task"] == task
    predicted = _rows(tmp_path / "p.csv")
    _same_as_evaluate(evaluated, predicted)
    if task == "multilabel":
        assert list(predicted[0]) == ["index", "predicted", "red", "green", "blue"]
    if task == "binary":
        assert all((float(r["yes"]) > 0.3) == (r["predicted"] == "yes") for r in predicted)

    np.savez(tmp_path / "wide.npz", x=rng.normal(size=(5, 7)).astype(np.float32))
    result = run_cli("predict", "runs/t", "wide.npz", "--out", "w.csv")
    assert result.exit_code == 2 and "samples of shape (7,), but the model takes (6,)" in result.stderr
    assert not (tmp_path / "w.csv").exists()


# ---- text_csv ----------------------------------------------------------------------------------
def test_text_csv_with_a_local_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizers = pytest.importorskip("tokenizers", reason="text_csv needs the optional extra: pip install -e '.[hf]'")
    transformers = pytest.importorskip("transformers", reason="hf_encoder needs the optional extra")
    import torch

    monkeypatch.chdir(tmp_path)
    make_reviews(tmp_path / "train.csv", n=48, seed=0)
    make_reviews(tmp_path / "test.csv", n=16, seed=1)
    texts = [row["review"] for name in ("train", "test") for row in _rows(tmp_path / f"{name}.csv")]
    make_word_tokenizer(tmp_path / "tokenizer.json", texts)
    vocab = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")).get_vocab_size()
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    write_yaml(tmp_path / "cfg.yaml", {
        "seed": 0, "run_dir": "runs/t",
        "data": {"name": "text_csv", "params": {"train": "train.csv", "test": "test.csv", "val_fraction": 0.25,
                                                "text": "review", "label": "sentiment",
                                                "tokenizer": "tokenizer.json", "max_length": 16}, "batch_size": 8},
        "model": {"name": "hf_encoder", "params": {"path": "bert"}}, "optim": {"lr": 0.001}, "train": FAST})
    assert run_cli("finetune", "cfg.yaml").exit_code == 0
    evaluated = run_cli("evaluate", "runs/t", "--predictions", "evaluated.csv")
    assert evaluated.exit_code == 0, evaluated.output
    _without_label(tmp_path / "test.csv", tmp_path / "new.csv", ["review"])
    _predict("runs/t", "new.csv", "--out", "p.csv")
    _same_as_evaluate(_rows(tmp_path / "evaluated.csv"), _rows(tmp_path / "p.csv"))
    assert read_json(tmp_path / "runs" / "t" / "run.json")["data"]["class_names"] == ["negative", "positive"]

    # the tokenizer file changes after training (here: retrained with one more word): the ids no
    # longer mean what the model learned, so predict, evaluate and export refuse it in one line
    trained_with = (tmp_path / "tokenizer.json").read_bytes()
    make_word_tokenizer(tmp_path / "tokenizer.json", texts + ["zebra"])
    for args in (("predict", "runs/t", "new.csv", "--out", "q.csv"), ("evaluate", "runs/t"),
                 ("export", "runs/t", "--format", "torchscript")):
        refused = run_cli(*args)
        assert refused.exit_code == 2, refused.output
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.output
        assert "data.params.tokenizer: " in refused.stderr
        assert "tokenizer.json is not the tokenizer the run was trained with (sha256 " in refused.stderr
    assert not (tmp_path / "q.csv").exists() and not (tmp_path / "runs" / "t" / "export").exists()
    resumed = run_cli("finetune", "cfg.yaml", "--resume")
    assert resumed.exit_code == 2 and "tokenizer_sha256" in resumed.stderr  # the config differs: refused too

    # a run from before the hash was recorded still resumes (its config.yaml lacks the key)
    (tmp_path / "tokenizer.json").write_bytes(trained_with)
    config = tmp_path / "runs" / "t" / "config.yaml"
    config.write_text("\n".join(line for line in config.read_text().splitlines() if "tokenizer_sha256" not in line))
    resumed = run_cli("finetune", "cfg.yaml", "--resume")
    assert resumed.exit_code == 0, resumed.output


# ---- the built-in data: an .npz of x -------------------------------------------------------------
def test_builtin_motifs_run_predicts_an_npz(tiny: Path) -> None:
    import yaml

    from transfer_cli.data import DATASETS

    assert run_cli("pretrain", "configs/tiny/pretrain.yaml").exit_code == 0
    evaluated = run_cli("evaluate", "runs/pretrain", "--predictions", "evaluated.csv")
    assert evaluated.exit_code == 0, evaluated.output
    data = yaml.safe_load((tiny / "runs" / "pretrain" / "config.yaml").read_text())["data"]
    x = DATASETS.build("motifs", data["params"], seed=0).split("test").x
    np.savez(tiny / "test-x.npz", x=x.numpy())
    _predict("runs/pretrain", "test-x.npz", "--out", "p.csv")
    _same_as_evaluate(_rows(tiny / "evaluated.csv"), _rows(tiny / "p.csv"))
