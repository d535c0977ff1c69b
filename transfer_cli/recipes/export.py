"""`transfer export RUN`: the run's best (or RUN@last) weights as a self-contained folder in one
format, with preprocess.json, a model card (README.md) and export.json (what was checked).

The model is rebuilt exactly as `transfer evaluate RUN` builds it (the run's config and data, the
checkpoint loaded exactly; LoRA runs save merged weights), on the CPU; the exported file is then
loaded back in its own runtime and compared with it on a batch of the run's eval split."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from transfer_cli.config.resolve import load_experiment
from transfer_cli.core.console import Console
from transfer_cli.core.errors import CheckpointError, RunFailed, TransferError, UsageError, a_or_an, one_line
from transfer_cli.data.preprocess import preprocess_spec
from transfer_cli.export.card import model_card
from transfer_cli.export.folder import check_target, staged
from transfer_cli.recipes.components import registries
from transfer_cli.recipes.parts import RunOptions, build_parts
from transfer_cli.runs.checkpoints import META, alias_target
from transfer_cli.runs.provenance import now, sha256_of, versions
from transfer_cli.runs.rundir import RunDir, write_atomic
from transfer_cli.weights.files import resolve_weights
from transfer_cli.weights.load import load_exact

FORMATS = ("onnx", "torchscript", "safetensors", "hf")
CHECK_SAMPLES = 16  # the round-trip batch; the export itself traces a batch of 2 (the batch axis is dynamic)


def export_run(ref: str, fmt: str, out: Optional[Path], overwrite: bool, console: Console) -> dict:
    if fmt not in FORMATS:
        raise UsageError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("transfer export runs in one process; run it without torchrun")
    run = RunDir(_run_path(ref))
    run_info, report = _read_run(run)
    if fmt == "onnx":
        from transfer_cli.export.onnx_format import require_packages

        require_packages()
    if fmt == "hf":
        from transfer_cli.export.hf_format import check_model_name

        check_model_name(str((run.read_config().get("model") or {}).get("name")))
    target = check_target(out or run.path / "export" / fmt, overwrite)
    weights, _ = resolve_weights(ref)
    exp = load_experiment(run.path, "evaluate", ["train.device=cpu"], registries(), checkpoint=ref)
    parts = build_parts(exp, RunOptions(from_run=run.path), evaluating=True)
    load_exact(parts.model, ref)
    model = parts.model.eval()
    if fmt == "hf":
        from transfer_cli.export.hf_format import check_mappable

        check_mappable(model)
    check_split, check = _check_batch(parts.data, exp.eval.split)
    with torch.no_grad():  # once, eagerly: a model's one-time input checks (hf_encoder's token ids, a
        model(check)       # data-dependent branch) are then done, and stay out of the traced graph
    spec = preprocess_spec(run.read_config(), run_info, where=str(run.path))
    facts = {"format": fmt, "run": str(run.path), "ref": ref, "weights": str(weights), "step": _step(weights),
             "weights_kind": _kind(run.path, weights), "lora_merged": exp.transfer.strategy == "lora",
             "check_split": check_split, "created_at": now(), "versions": versions()}
    with staged(target) as folder:
        tokenizer = None
        if spec["input"]["kind"] == "text":
            from transfer_cli.export.tokenizer import copy_tokenizer

            tokenizer = copy_tokenizer(spec, folder)
        facts.update(_write_model(fmt, model, check, folder, spec, tokenizer, exp, parts))
        write_atomic(folder / "preprocess.json", json.dumps(spec, indent=2) + "\n")
        facts["source_stage"] = _source_stage(run_info)
        facts["sha256"] = {p.name: sha256_of(p) for p in sorted(folder.iterdir()) if p.is_file()}
        write_atomic(folder / "README.md", model_card(facts, report, run_info, spec))
        facts["sha256"]["README.md"] = sha256_of(folder / "README.md")
        write_atomic(folder / "export.json", json.dumps(facts, indent=2, default=str) + "\n")
    facts["out"] = str(target)
    check_facts = facts["check"]
    console.info(f"{fmt}: max abs difference vs PyTorch {check_facts['max_abs_diff']:.3g} on {check_facts['samples']} "
                 f"{check_split} samples ({check_facts['runtime']}; tolerance {check_facts['tolerance']:g})")
    console.info(f"exported {run.path} ({facts['weights_kind']} weights, step {facts['step']}) -> {target}")
    return facts


EXPORTERS = {"onnx": "torch's ONNX exporter", "torchscript": "torch.jit.trace"}


def _write_model(fmt: str, model: torch.nn.Module, check: torch.Tensor, folder: Path, spec: dict, tokenizer: Any,
                 exp: Any, parts: Any) -> dict:
    try:
        return _write_with(fmt, model, check, folder, spec, tokenizer, exp, parts)
    except (TransferError, OSError):
        raise
    except Exception as exc:  # the exporter cannot handle something in this model: a failed run, in one line
        if fmt not in EXPORTERS:  # our own code (hf): a bug, reported as such
            raise
        others = ", ".join(f for f in FORMATS if f != fmt)
        raise RunFailed(f"--format {fmt}: {EXPORTERS[fmt]} could not export the model of this run "
                        f"({type(exc).__name__}: {one_line(exc)}); nothing was written. Another format may "
                        f"work ({others}); --debug shows the exporter's traceback") from exc


def _write_with(fmt: str, model: torch.nn.Module, check: torch.Tensor, folder: Path, spec: dict, tokenizer: Any,
                exp: Any, parts: Any) -> dict:
    example = check[:2]
    if fmt == "onnx":
        from transfer_cli.export.onnx_format import export_onnx

        return export_onnx(model, example, check, folder)
    if fmt == "torchscript":
        from transfer_cli.export.torchscript_format import export_torchscript

        return export_torchscript(model, example, check, folder)
    if fmt == "safetensors":
        from transfer_cli.export.safetensors_format import export_safetensors

        architecture = {"name": exp.model.name, "params": exp.model.params, "input_shape": list(parts.data.input_shape),
                        "num_outputs": parts.data.num_outputs}
        return export_safetensors(model, example, check, folder, architecture)
    from transfer_cli.export.hf_format import export_hf

    return export_hf(model, check, folder, spec, tokenizer)


def _run_path(ref: str) -> Path:
    path_text, at, alias = ref.rpartition("@")
    return Path(path_text if at and alias in ("last", "best") else ref)


def _read_run(run: RunDir) -> tuple[dict, dict]:
    """run.json and report.json of a run that holds weights and finished, or one line saying why not."""
    path = run.path
    if not path.is_dir() or not run.run_file.is_file() or not (path / "config.yaml").is_file():
        raise UsageError(f"{path} is not a run directory (expected the folder a pretrain or finetune wrote, with "
                         f"run.json and config.yaml)")
    info = run.read_run()
    if any(path.glob("seed-*/run.json")):
        raise UsageError(f"{path} is a multi-seed run; export one of its seed runs, e.g. {path}/seed-0")
    if info.get("stage") == "evaluate" or not run.checkpoints.is_dir():
        raise CheckpointError(f"{path} holds no weights ({a_or_an(info.get('stage', 'run'))} run without "
                              f"checkpoints/); export the run that trained them")
    report = path / "report.json"
    if not report.is_file():
        raise UsageError(f"{path} has no report.json (status: {info.get('status', 'unknown')}); finish the run "
                         f"(--resume) before exporting it, so the model card can say how good it is")
    return info, json.loads(report.read_text(encoding="utf-8"))


def _check_batch(data: Any, split: str) -> tuple[str, torch.Tensor]:
    """The first CHECK_SAMPLES samples of the eval split, else of the first of val, test, train
    (then any) that has the 3 samples the check needs."""
    order = list(dict.fromkeys(s for s in (split, "val", "test", "train", *data.splits) if s in data.splits))
    sizes = {name: len(data.split(name)) for name in order}
    name = next((s for s in order if sizes[s] >= 3), None)
    if name is None:
        shown = ", ".join(f"{s} {n}" for s, n in sizes.items())
        raise UsageError(f"the run's splits hold too few samples for the round-trip check, which needs 3 in one "
                         f"split ({shown})")
    x, _ = next(iter(data.split(name).batches(CHECK_SAMPLES, torch.device("cpu"))))
    return name, x


def _step(weights: Path) -> Optional[int]:
    try:
        return json.loads((weights.parent / META).read_text(encoding="utf-8")).get("step")
    except (OSError, ValueError):
        return None


def _kind(run: Path, weights: Path) -> str:
    for alias in ("best", "last"):
        target = alias_target(run / "checkpoints", alias)
        if target is not None and target.resolve() == weights.parent.resolve():
            return alias
    return "step"


def _source_stage(run_info: dict) -> Optional[str]:
    source = (run_info.get("lineage") or {}).get("init_from")
    if not source:
        return None
    return RunDir(_run_path(str(source))).read_run().get("stage")
