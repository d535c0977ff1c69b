"""`transfer rank` end to end: sources pretrained through the CLI, ranked on a tiny target;
the run directory, the ordering by LogME, n/a scores, --json, --validate, the feature cache
shared with a linear probe, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import read_json, run_cli, write_yaml

ARCH = {"name": "cnn1d", "params": {"channels": [16, 16], "kernel_size": 5}}
SOURCE = {"name": "motifs", "params": {"task": "source", "n_train": 1000, "n_val": 200, "n_test": 100,
                                       "length": 96}, "batch_size": 32}
TARGET = {"name": "motifs", "params": {"task": "target", "n_train": 200, "n_val": 100, "n_test": 200,
                                       "length": 96}, "batch_size": 10, "per_class": 8}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sources pretrained through the CLI (the target's motif world, and another world whose
    motifs the target never shows), a random-init backbone file without head, a target config."""
    root = tmp_path_factory.mktemp("rank")
    base = {"seed": 0, "model": ARCH, "optim": {"name": "adamw", "lr": 0.003}, "train": {"epochs": 3, "device": "cpu"}}
    write_yaml(root / "configs" / "source.yaml", {**base, "data": SOURCE})
    other = {**SOURCE, "params": {**SOURCE["params"], "world_seed": 7}}
    write_yaml(root / "configs" / "other.yaml", {**base, "data": other})
    write_yaml(root / "configs" / "target.yaml", {**base, "data": TARGET, "train": {"epochs": 2, "device": "cpu"}})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name in ("source", "other"):
            result = run_cli("pretrain", f"configs/{name}.yaml", "--run-dir", f"runs/{name}", "--quiet")
            assert result.exit_code == 0, result.output
    from transfer_cli.models import MODELS

    torch.manual_seed(0)
    model = MODELS.build("cnn1d", MODELS.get("cnn1d").params(**ARCH["params"]), input_shape=(1, 96), num_outputs=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")},
              str(root / "random.safetensors"))
    return root


@pytest.fixture
def here(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    return project


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_rank_orders_by_logme_writes_its_run_dir_and_says_n_a(here: Path):
    result = run_cli("rank", "configs/target.yaml", "runs/other", "random.safetensors", "runs/source",
                     "--run-dir", "runs/rank/a", "--json")
    assert result.exit_code == 0, result.output
    report = result.json()
    cands = report["candidates"]
    logme = [c["scores"]["logme"] for c in cands]
    assert logme == sorted(logme, reverse=True)
    assert cands[0]["candidate"] == "runs/source"  # the source of the target's own motifs ranks first
    by = {c["candidate"]: c for c in cands}
    assert by["runs/source"]["scores"]["logme"] > by["random.safetensors"]["scores"]["logme"]
    assert by["runs/source"]["scores"]["hscore"] > by["random.safetensors"]["scores"]["hscore"]
    for c in cands:
        assert c["feature_dim"] == 16 and c["samples"] == 40 and c["extraction_seconds"] >= 0
    # NCE/LEEP need a classification source head: the runs have theirs, the backbone file has none
    assert by["runs/source"]["scores"]["nce"] is not None and by["runs/source"]["source_head"]["classes"] == 10
    assert by["random.safetensors"]["scores"]["nce"] is None and by["random.safetensors"]["scores"]["leep"] is None
    assert by["random.safetensors"]["not_applicable"]["nce"].startswith("n/a: no classification source head")
    # the run directory contract
    run = here / "runs" / "rank" / "a"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "run.json", "report.json", "report.md"}
    info = read_json(run / "run.json")
    assert info["stage"] == "rank" and info["status"] == "completed" and info["seed"] == 0
    lineage = {c["candidate"]: c for c in info["lineage"]["candidates"]}
    assert set(lineage) == {"runs/source", "runs/other", "random.safetensors"}
    for entry in lineage.values():
        assert entry["sha256"] == sha256(entry["weights"])
    assert read_json(run / "report.json")["candidates"] == cands
    markdown = (run / "report.md").read_text()
    assert "| 1 | source |" in markdown and "n/a" in markdown


def test_rank_table_on_the_console_and_default_run_dir(here: Path):
    result = run_cli("rank", "configs/target.yaml", "random.safetensors", "runs/source@last")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#"))
    assert lines[first + 1].split()[:2] == ["1", "source@last"]
    assert lines[first + 2].split()[:2] == ["2", "random.safetensors"]
    assert "n/a" in lines[first + 2]
    assert any("NCE n/a: no classification source head" in line and "random.safetensors" in line for line in lines)
    assert (here / "runs" / "rank" / "configs" / "target" / "report.json").is_file()
    again = run_cli("rank", "configs/target.yaml", "random.safetensors")  # never silently replaced
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_validate_fine_tunes_every_candidate_and_reports_tau_and_rho(here: Path):
    result = run_cli("rank", "configs/target.yaml", "runs/source", "runs/other", "random.safetensors",
                     "--run-dir", "runs/rank/v", "--validate", "2", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = result.json()
    validation = report["validation"]
    assert validation["budget"] == {"epochs": 2, "max_steps": None}
    assert validation["metric"] == "accuracy" and validation["split"] == "test"
    for cand in report["candidates"]:
        done = read_json(Path(cand["finetuned"]["run_dir"]) / "report.json")
        assert done["stage"] == "finetune" and done["lineage"]["init_from"] is not None
        assert cand["finetuned"]["value"] == done["metrics"]["test"]["accuracy"]
        assert Path(cand["finetuned"]["run_dir"]).parent == here / "runs" / "rank" / "v" / "finetune"
    logme = validation["correlations"]["logme"]
    assert logme["candidates"] == 3 and -1 <= logme["kendall_tau"] <= 1 and -1 <= logme["spearman_rho"] <= 1
    from transfer_cli.eval.correlation import kendall_tau

    xs = [c["scores"]["logme"] for c in report["candidates"]]
    ys = [c["finetuned"]["value"] for c in report["candidates"]]
    assert logme["kendall_tau"] == pytest.approx(kendall_tau(xs, ys))
    assert validation["correlations"]["nce"]["candidates"] == 2  # the backbone file has no source head
    assert report["timings"]["finetune_seconds"] > 0 and report["timings"]["finetune_over_rank"] > 0


def test_features_are_shared_with_a_later_linear_probe(here: Path):
    sets = ["--set", "transfer.feature_cache_dir=runs/features"]
    first = run_cli("rank", "configs/target.yaml", "runs/source", "--run-dir", "runs/rank/c1", "--json", *sets)
    assert first.exit_code == 0, first.output
    assert first.json()["candidates"][0]["features_from_cache"] is False
    assert len(list((here / "runs" / "features").glob("*.safetensors"))) == 1
    second = run_cli("rank", "configs/target.yaml", "runs/source", "--run-dir", "runs/rank/c2", "--json", *sets)
    assert second.json()["candidates"][0]["features_from_cache"] is True
    assert second.json()["candidates"][0]["scores"] == pytest.approx(first.json()["candidates"][0]["scores"])
    assert "extracted in" in first.stderr and "(kept in " in first.stderr
    assert "read from the feature cache " in second.stderr and "(the backbone did not run)" in second.stderr
    probe = run_cli("finetune", "configs/target.yaml", "--init-from", "runs/source", "--run-dir", "runs/probe",
                    "--set", "transfer.strategy=linear_probe", *sets)
    assert probe.exit_code == 0, probe.output
    assert "features of the train split read from" in probe.stdout
    assert "the backbone ran once" not in probe.stdout  # it did not run over the training split


def test_a_weights_files_head_takes_the_task_of_the_run_that_wrote_it(here: Path):
    """A regression source's head is no classifier, named as its run or as the weights file inside
    that run; a one-output head of a file outside any run is not guessed to be binary."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 1, 96)).astype("float32")
    np.savez(here / "reg.npz", x=x, y=x.mean(axis=(1, 2)).astype("float32"))
    write_yaml(here / "configs" / "reg.yaml", {
        "seed": 0, "model": ARCH, "optim": {"lr": 0.003}, "train": {"epochs": 1, "device": "cpu"},
        "loss": {"name": "mse"}, "data": {"name": "tensors", "params": {"path": "reg.npz", "task": "regression",
                                                                         "val_fraction": 0.25}, "batch_size": 20}})
    assert run_cli("pretrain", "configs/reg.yaml", "--run-dir", "runs/reg", "-q").exit_code == 0
    inside = "runs/reg/checkpoints/best/model.safetensors"
    save_file(load_file(str(here / inside)), str(here / "loose.safetensors"))
    result = run_cli("rank", "configs/target.yaml", "runs/reg", inside, "loose.safetensors",
                     "runs/source/checkpoints/last/model.safetensors", "--run-dir", "runs/rank/heads", "--json", "-q")
    assert result.exit_code == 0, result.output
    by = {c["candidate"]: c for c in result.json()["candidates"]}
    for ref in ("runs/reg", inside):
        assert by[ref]["scores"]["nce"] is None and by[ref]["scores"]["leep"] is None
        assert by[ref]["not_applicable"]["leep"].endswith("(the source task is regression)")
    assert by["loose.safetensors"]["scores"]["nce"] is None
    assert "may be binary or regression" in by["loose.safetensors"]["not_applicable"]["nce"]
    source = by["runs/source/checkpoints/last/model.safetensors"]
    assert source["scores"]["leep"] is not None
    assert source["source_head"] == {"task": "multiclass", "classes": 10, "task_from": "run.json"}


def test_image_folder_features_are_said_not_to_be_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Data decoded from files is not kept in transfer.feature_cache_dir: rank says so rather than
    let the user count on a cache that stays empty."""
    from scripts.make_example_data import make_shapes

    monkeypatch.chdir(tmp_path)
    make_shapes(tmp_path / "shapes", per_class=4, size=16)
    model = {"name": "resnet", "params": {"widths": [4]}}
    write_yaml(tmp_path / "images.yaml", {
        "seed": 0, "model": model, "train": {"epochs": 1, "device": "cpu"},
        "data": {"name": "image_folder", "params": {"path": "shapes", "size": 12, "workers": 0}, "batch_size": 8},
        "transfer": {"feature_cache_dir": "features"}})
    from transfer_cli.models import MODELS

    backbone = MODELS.build("resnet", MODELS.get("resnet").params(**model["params"]), input_shape=(3, 12, 12),
                            num_outputs=3)
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items() if not k.startswith("head.")},
              str(tmp_path / "random.safetensors"))
    result = run_cli("rank", "images.yaml", "random.safetensors", "--run-dir", "runs/rank/images")
    assert result.exit_code == 0, result.output
    assert f"(not kept in {tmp_path / 'features'}: only data held in memory is cached on disk" in result.output
    assert not (tmp_path / "features").exists()


def test_candidate_labels_and_validate_folders_are_short():
    from transfer_cli.recipes.rank import folder_name, short_labels

    refs = ["runs/a/pretrain", "runs/b/pretrain", "random.safetensors", "runs/a/pretrain@last",
            "runs/reg", "runs/reg/checkpoints/best/model.safetensors"]
    labels = short_labels(refs)
    assert labels == ["a/pretrain", "b/pretrain", "random.safetensors", "a/pretrain@last", "reg", "model.safetensors"]
    assert [folder_name(i, label) for i, label in enumerate(labels)] == [
        "00-a-pretrain", "01-b-pretrain", "02-random", "03-a-pretrain-last", "04-reg", "05-model"]
    # each label as short as its own path allows (was: every label as deep as the deepest needed)
    assert short_labels(["runs/x", "runs/a/checkpoints/best/model.safetensors",
                         "runs/b/checkpoints/best/model.safetensors"]) == [
        "x", "a/checkpoints/best/model.safetensors", "b/checkpoints/best/model.safetensors"]


@pytest.mark.parametrize("args,message", [
    ((), "no candidates"),
    (("runs/missing",), "candidate runs/missing: no such run directory, weights file or Hugging Face model folder"),
    (("configs",), "neither a run directory"),
    (("runs/source", "runs/source"), "named more than once"),
    (("wrong.safetensors",), "do not fit the model"),
    (("runs/source", "--validate", "soon"), "--validate: expected"),
    (("weightless",), "candidate weightless: weightless is a Hugging Face model folder without weights"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(here: Path, args, message):
    save_file({"backbone.0.weight": torch.zeros(3, 3)}, str(here / "wrong.safetensors"))
    (here / "weightless").mkdir(exist_ok=True)  # config.json only: for `transfer pretrain`, nothing to rank
    (here / "weightless" / "config.json").write_text('{"model_type": "vit"}')
    result = run_cli("rank", "configs/target.yaml", *args, "--run-dir", "runs/rank/bad")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (here / "runs" / "rank" / "bad").exists()


def test_a_run_directory_as_the_target_config_is_refused_naming_rank(here: Path):
    result = run_cli("rank", "runs/source", "runs/other", "--run-dir", "runs/rank/bad")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert ("TARGET_CONFIG: runs/source is a directory; `transfer rank` takes the target task's config file first "
            "(that run's config is runs/source/config.yaml)") in result.stderr
    assert not (here / "runs" / "rank" / "bad").exists()


def test_hugging_face_folders_are_candidates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two tiny local BERT folders ranked on a text target: built as hf_encoder on each folder,
    lineage = the folder's weights and sha256, NCE/LEEP n/a (no task head)."""
    transformers = pytest.importorskip("transformers", reason="hf_encoder needs the optional extra: pip install -e '.[hf]'")
    tokenizers = pytest.importorskip("tokenizers")
    import csv

    from scripts.make_example_data import make_reviews, make_word_tokenizer

    monkeypatch.chdir(tmp_path)
    reviews = make_reviews(tmp_path / "reviews.csv", n=60)
    with open(reviews) as handle:
        make_word_tokenizer(tmp_path / "tokenizer.json", [row["review"] for row in csv.DictReader(handle)])
    vocab = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")).get_vocab_size()
    for seed, name in ((0, "bert-a"), (1, "bert-b")):
        torch.manual_seed(seed)
        config = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=32)
        transformers.BertModel(config).save_pretrained(tmp_path / name)
    write_yaml(tmp_path / "text.yaml", {
        "data": {"name": "text_csv", "params": {"path": "reviews.csv", "text": "review", "label": "sentiment",
                                                "tokenizer": "tokenizer.json", "max_length": 16}, "batch_size": 8},
        "model": {"name": "hf_encoder", "params": {"path": "bert-a", "pooling": "cls"}},
        "train": {"epochs": 1, "device": "cpu"}})
    result = run_cli("rank", "text.yaml", "bert-a", "bert-b", "--json")
    assert result.exit_code == 0, result.output
    cands = {c["candidate"]: c for c in result.json()["candidates"]}
    for name in ("bert-a", "bert-b"):
        lineage = cands[name]["lineage"]
        assert cands[name]["kind"] == "hf_folder" and lineage["pretrained"] == str(tmp_path / name)
        assert lineage["sha256"] == sha256(tmp_path / name / "model.safetensors")
        assert cands[name]["feature_dim"] == 16 and cands[name]["scores"]["logme"] is not None
        assert cands[name]["scores"]["nce"] is None
        assert "Hugging Face encoder folder brings no task head" in cands[name]["not_applicable"]["leep"]
    assert cands["bert-a"]["scores"]["logme"] != cands["bert-b"]["scores"]["logme"]
