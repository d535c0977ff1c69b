"""`transfer validate`: build every part a stage would (data, model, loss, metrics, optimizer,
weights) and train nothing."""

from __future__ import annotations

from transfer_cli.config.schema import Experiment
from transfer_cli.core.console import Console
from transfer_cli.recipes.finetune import prepare_model
from transfer_cli.recipes.lifecycle import run_path
from transfer_cli.recipes.parts import RunOptions, build_parts
from transfer_cli.report.content import data_info, model_info
from transfer_cli.runs.rundir import RunDir
from transfer_cli.train.trainer import Trainer
from transfer_cli.weights.load import load_exact


def validate_only(exp: Experiment, stage: str, opts: RunOptions, console: Console) -> dict:
    """Build every part (data, model, loss, metrics, optimizer, weights) and train nothing."""
    parts = build_parts(exp, opts, evaluating=stage == "evaluate")
    if stage == "finetune":
        prepare_model(exp, parts, console)
    if stage == "evaluate":
        load_exact(parts.model, exp.eval.checkpoint, exp.transfer.keys)
    path = run_path(exp, opts, stage)
    steps, memory, trains = 0, None, None
    if stage != "evaluate":
        trainer = Trainer(exp, parts, None, console)  # prints the memory estimate
        steps, memory, trains = trainer.total, trainer.memory, trainer.trains_ever
    if (path / "run.json").is_file():
        console.info(f"note: {path} already holds a run; {stage} would need --resume or --overwrite")
    else:
        RunDir.check(path, "new")
    summary = {"stage": stage, "run_dir": str(path), "data": data_info(exp, parts.data),
               "model": model_info(exp, parts.model, trains), "steps": steps, "device": str(parts.device),
               "monitor": parts.monitor, "memory": memory}
    console.info(f"ok: {stage} config is valid; {summary['model']['parameters']:,} parameters, "
                 f"{steps} steps, run dir {path}")
    return summary
