"""The `transfer` command line. Thin: parse arguments, load the config, call one stage, map
errors to exit codes. torch is imported only when a command runs, so --help is instant."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import typer

from transfer_cli import __version__
from transfer_cli.core.errors import Interrupted, RaisedOnMain, Terminated, TransferError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Transfer learning from the command line: pretrain, fine-tune and evaluate PyTorch models "
         "from YAML configs. Exit codes: 0 ok, 1 run failed, 2 bad input, 130/143 interrupted.",
)

# ---- options shared by the stage commands ------------------------------------------------------
RunDirOpt = typer.Option(None, "--run-dir", help="Write the run here (default: the config's run_dir, "
                                                  "else runs/<config folder>/<config name>).")
SetOpt = typer.Option(None, "--set", metavar="KEY.PATH=VALUE",
                      help="Override a config key; the value is parsed as YAML. Repeatable.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace an existing run directory.")
ResumeOpt = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint.")
JsonOpt = typer.Option(False, "--json", help="Print the final report as JSON on stdout (logs go to stderr).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="Only warnings and errors.")
DebugOpt = typer.Option(False, "--debug", help="Show tracebacks.")
SmokeOpt = typer.Option(False, "--smoke", help="A few steps on a few batches, to check the plumbing fast.")
NprocOpt = typer.Option(None, "--nproc", min=1, metavar="N",
                        help="Train in N processes on this machine (DDP via torch's launcher, as "
                             "`torchrun --standalone --nproc_per_node N` would).")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"transfer {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Show the version and exit.")) -> None:
    """Transfer learning from the command line."""


def _execute(action: Callable[[Any], Any], json_mode: bool, quiet: bool, debug: bool) -> None:
    """Run `action(console)`, print its JSON on request, and turn errors into exit codes."""
    from transfer_cli.core.console import Console

    from transfer_cli.dist.distributed import shutdown, world
    from transfer_cli.runs.runlock import release_all

    console = Console(quiet=quiet, json_mode=json_mode)
    rank = f"[rank {world().rank}] " if not world().is_main else ""  # under torchrun, where an error came from
    try:
        with _signals_handled():
            result = action(console)
    except TransferError as exc:
        if debug:
            traceback.print_exc()
        # rank 0 prints what it raised on every rank's behalf, and a stop by a signal (all ranks stop together)
        if not isinstance(exc, RaisedOnMain) and not (rank and isinstance(exc, Interrupted)):
            print(f"{rank}error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:  # outside the training loop, which stops with Interrupted
        if not rank:
            print("interrupted", file=sys.stderr)
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
    except OSError as exc:  # the environment, not a bug: a full disk, a lost mount, a permission
        if debug:
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{rank}error: {exc.strerror or exc}{where}", file=sys.stderr)
        raise typer.Exit(1) from None
    except Exception as exc:  # noqa: BLE001  a bug or an environment fault: say so, exit 1
        if debug:
            traceback.print_exc()
        else:
            print(f"{rank}error: {type(exc).__name__}: {exc} (internal error; rerun with --debug for the traceback)",
                  file=sys.stderr)
        raise typer.Exit(1) from None
    finally:
        release_all()
        shutdown()
    if json_mode and world().is_main:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")


@contextlib.contextmanager
def _signals_handled() -> Iterator[None]:
    """SIGTERM stops the command like Ctrl-C (exit 143). Once the command is stopping, further
    SIGINT/SIGTERM are ignored so that they cannot cut its shutdown short. (The training loop
    installs its own handlers, which finish the step and write a checkpoint first.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    stopping = False
    try:
        yield
    except (KeyboardInterrupt, Interrupted):
        stopping = True
        raise
    finally:
        if stopping:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGTERM, previous)


def _stage(stage: str, source: Path, sets: Optional[List[str]], options: dict, **refs: Optional[str]) -> Callable:
    def action(console: Any) -> Any:
        from transfer_cli.config.resolve import load_experiment
        from transfer_cli.recipes.components import registries
        from transfer_cli.recipes.parts import RunOptions

        recipe: Callable  # this stage's recipe only: the others import what it does not need
        if stage == "pretrain":
            from transfer_cli.recipes.pretrain import pretrain as recipe
        elif stage == "finetune":
            from transfer_cli.recipes.finetune import finetune as recipe
        else:
            from transfer_cli.recipes.evaluate import evaluate as recipe
        exp = load_experiment(source, stage, sets or [], registries(), **refs)
        opts = RunOptions(config_path=None if source.is_dir() else source,
                          from_run=source if source.is_dir() else None, **options)
        return recipe(exp, opts, console)

    return action


@app.command()
def pretrain(
    config: Path = typer.Argument(..., help="Experiment config (YAML)."),
    run_dir: Optional[str] = RunDirOpt, sets: Optional[List[str]] = SetOpt, overwrite: bool = OverwriteOpt,
    resume: bool = ResumeOpt, smoke: bool = SmokeOpt, json_out: bool = JsonOpt, quiet: bool = QuietOpt,
    debug: bool = DebugOpt, nproc: Optional[int] = NprocOpt,
) -> None:
    """Train a model from random initialisation on a source task."""
    options = dict(run_dir=run_dir, overwrite=overwrite, resume=resume, smoke=smoke)
    if nproc and nproc > 1:
        _relaunch(nproc, ["pretrain", str(config)], sets, dict(options, json=json_out, quiet=quiet, debug=debug))
    _execute(_stage("pretrain", config, sets, options), json_out, quiet, debug)


@app.command()
def finetune(
    config: Path = typer.Argument(..., help="Experiment config (YAML)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", metavar="RUN_OR_WEIGHTS",
                                            help="Start from this run dir (best weights; RUN@last for last) "
                                                 "or weights file (.safetensors/.pt)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", metavar="0,1,2",
                                        help="Repeat over these seeds (runs in RUN/seed-N); report mean and std."),
    baseline: Optional[str] = typer.Option(None, "--baseline", metavar="scratch",
                                           help="Also train the same model from scratch and report the transfer gain."),
    run_dir: Optional[str] = RunDirOpt, sets: Optional[List[str]] = SetOpt, overwrite: bool = OverwriteOpt,
    resume: bool = ResumeOpt, smoke: bool = SmokeOpt, json_out: bool = JsonOpt, quiet: bool = QuietOpt,
    debug: bool = DebugOpt, nproc: Optional[int] = NprocOpt,
) -> None:
    """Adapt pretrained weights to a target task."""
    options = dict(run_dir=run_dir, overwrite=overwrite, resume=resume, smoke=smoke)
    if nproc and nproc > 1:
        _relaunch(nproc, ["finetune", str(config)], sets, dict(options, json=json_out, quiet=quiet, debug=debug,
                                                                init_from=init_from, seeds=seeds, baseline=baseline))
    flags = dict(init_from=init_from, seeds=_seed_list(seeds), baseline=baseline)
    _execute(_stage("finetune", config, sets, options, **flags), json_out, quiet, debug)


def _relaunch(nproc: int, head: list[str], sets: Optional[List[str]], options: dict) -> None:
    """Run this command again in `nproc` processes (without --nproc) and exit with their code."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("error: --nproc starts the processes; under torchrun they exist already: drop --nproc",
              file=sys.stderr)
        raise typer.Exit(2)
    from transfer_cli.dist.launch import launch

    args = list(head) + [arg for value in sets or [] for arg in ("--set", value)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (None, False):
            args += [flag, str(value)]
    raise typer.Exit(launch(nproc, args))


def _seed_list(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers like 0,1,2, got {text!r}",
                                 param_hint="--seeds") from None


@app.command()
def evaluate(
    source: Path = typer.Argument(..., metavar="CONFIG_OR_RUN", help="Experiment config, or a run directory "
                                                                      "(evaluates it with its own config and data)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", metavar="RUN_OR_WEIGHTS",
                                             help="Weights to evaluate: a run dir (best; RUN@last) or a file."),
    split: Optional[str] = typer.Option(None, "--split", help="train, val or test (default: eval.split)."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", metavar="FILE.csv",
                                               help="Also write one CSV row per sample: index, true label, "
                                                    "predicted label, class probabilities."),
    run_dir: Optional[str] = RunDirOpt, sets: Optional[List[str]] = SetOpt, overwrite: bool = OverwriteOpt,
    smoke: bool = SmokeOpt, json_out: bool = JsonOpt, quiet: bool = QuietOpt, debug: bool = DebugOpt,
) -> None:
    """Evaluate a checkpoint on a split of the configured data."""
    options = dict(run_dir=run_dir, overwrite=overwrite, resume=False, smoke=smoke, predictions=predictions)
    _execute(_stage("evaluate", source, sets, options, checkpoint=checkpoint, split=split), json_out, quiet, debug)


@app.command()
def validate(
    config: Path = typer.Argument(..., help="Experiment config (YAML)."),
    stage: Optional[str] = typer.Option(None, "--stage", help="pretrain, finetune or evaluate "
                                                               "(default: guessed from the config)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", metavar="RUN_OR_WEIGHTS"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", metavar="RUN_OR_WEIGHTS"),
    run_dir: Optional[str] = RunDirOpt, sets: Optional[List[str]] = SetOpt, json_out: bool = JsonOpt,
    quiet: bool = QuietOpt, debug: bool = DebugOpt,
) -> None:
    """Check a config and build everything it names (data, model, weights); train nothing. A sweep
    file: check it, its base config and every swept value on it."""

    def action(console: Any) -> Any:
        from transfer_cli.config.resolve import guess_stage, load_experiment, read_sources
        from transfer_cli.core.errors import UsageError
        from transfer_cli.recipes.components import registries
        from transfer_cli.recipes.parts import RunOptions
        from transfer_cli.recipes.validate import validate_only
        from transfer_cli.sweep.schema import is_sweep_file, read_sweep

        if is_sweep_file(config):
            from transfer_cli.sweep.run import validate_sweep

            return validate_sweep(read_sweep(config), console)
        chosen = stage
        if chosen is None:
            chosen = guess_stage(read_sources(config, "finetune" if init_from else "evaluate" if checkpoint
                                              else "pretrain", sets or [], init_from, checkpoint), registries())
        if chosen not in ("pretrain", "finetune", "evaluate"):
            raise UsageError(f"--stage: expected pretrain, finetune or evaluate, got {chosen!r}")
        exp = load_experiment(config, chosen, sets or [], registries(), init_from=init_from, checkpoint=checkpoint)
        opts = RunOptions(config_path=config, run_dir=run_dir)
        return validate_only(exp, chosen, opts, console)

    _execute(action, json_out, quiet, debug)


@app.command()
def compare(
    runs: List[Path] = typer.Argument(..., metavar="RUN...", help="Run directories (each with a report.json)."),
    split: Optional[str] = typer.Option(None, "--split", help="Which split to compare (default: the first "
                                                               "run's eval split)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the table as Markdown (for a pull request)."),
    json_out: bool = JsonOpt,
) -> None:
    """One table of several runs' metrics, with each run's difference to the first."""

    def action(console: Any) -> Any:
        from transfer_cli.report.compare import compare_runs, comparison_table, load_reports

        comparison = compare_runs(load_reports(runs), split)
        table = comparison_table(comparison)
        if markdown:
            print(f"**{table.title}**\n\n{table.markdown()}")
        elif not json_out:
            console.show(table)
        return comparison

    _execute(action, json_out, quiet=False, debug=False)


@app.command()
def predict(
    weights: str = typer.Argument(..., metavar="RUN_OR_WEIGHTS", help="A run dir (best weights; RUN@last for "
                                                                     "last) or a weights file (with --config)."),
    inputs: Path = typer.Argument(..., metavar="INPUTS", help="Unlabelled inputs of the run's data kind: a CSV, "
                                                              "an image folder, a text CSV, an .npz/.pt of x."),
    out: Path = typer.Option(..., "--out", metavar="FILE", help="Write the predictions here (one row per input)."),
    config: Optional[Path] = typer.Option(None, "--config", metavar="CONFIG.yaml",
                                          help="With a weights file: the config that trained it."),
    output_format: str = typer.Option("csv", "--format", help="csv or jsonl (one JSON object per line)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                             help="Inputs per batch (default: the run's evaluation batch size)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    id_column: Optional[str] = typer.Option(None, "--id-column", metavar="COLUMN",
                                            help="CSV inputs: copy this column into the output as `id`."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    json_out: bool = typer.Option(False, "--json", help="Print a summary as JSON on stdout (logs go to stderr)."),
    quiet: bool = QuietOpt, debug: bool = DebugOpt,
) -> None:
    """Label new, unlabelled inputs with a trained model, preprocessed as the run was."""

    def action(console: Any) -> Any:
        from transfer_cli.recipes.predict import PredictOptions
        from transfer_cli.recipes.predict import predict as run_predict

        return run_predict(PredictOptions(weights, inputs, out, config, output_format, batch_size, device,
                                          id_column, overwrite), console)

    _execute(action, json_out, quiet, debug)


@app.command()
def export(
    run: str = typer.Argument(..., metavar="RUN", help="A run directory (its best weights; RUN@last for the last)."),
    fmt: str = typer.Option(..., "--format", metavar="onnx|torchscript|safetensors|hf", help="What to export to."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="The folder to write (default: "
                                                                          "RUN/export/<format>)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing, non-empty --out folder."),
    json_out: bool = JsonOpt, quiet: bool = QuietOpt, debug: bool = DebugOpt,
) -> None:
    """Export a run's model as a self-contained folder (model file, preprocess.json, model card), checked
    against PyTorch."""

    def action(console: Any) -> Any:
        from transfer_cli.recipes.export import export_run

        return export_run(run, fmt, out, overwrite, console)

    _execute(action, json_out, quiet, debug)


@app.command()
def rank(
    config: Path = typer.Argument(..., metavar="TARGET_CONFIG", help="The target task's config (YAML), as for "
                                                                    "finetune."),
    candidates: Optional[List[str]] = typer.Argument(None, metavar="CANDIDATE...",
                                                     help="Run dirs (RUN, RUN@last), weights files or Hugging Face "
                                                          "model folders."),
    validate: Optional[str] = typer.Option(None, "--validate", metavar="BUDGET",
                                           help="Also fine-tune each candidate for BUDGET (N epochs, or Nsteps) and "
                                                "report Kendall's tau and Spearman's rho of each score with the "
                                                "fine-tuned metric."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Write the ranking here (default: "
                                                                 "runs/rank/<config folder>/<config name>)."),
    sets: Optional[List[str]] = SetOpt, overwrite: bool = OverwriteOpt, json_out: bool = JsonOpt,
    quiet: bool = QuietOpt, debug: bool = DebugOpt,
) -> None:
    """Rank candidate starting points on the target task from their features, without training."""

    def action(console: Any) -> Any:
        from transfer_cli.recipes.parts import RunOptions
        from transfer_cli.recipes.rank import rank as rank_candidates

        opts = RunOptions(config_path=config, run_dir=run_dir, overwrite=overwrite)
        return rank_candidates(config, list(candidates or []), sets or [], opts, validate, console)

    _execute(action, json_out, quiet, debug)


@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., metavar="SWEEP.yaml", help="A sweep file: base config, space, method, "
                                                                      "budget, objective, pruning."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Write the sweep here (default: runs/<sweep "
                                                                 "folder>/<sweep name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a stopped sweep: finished trials kept, the "
                                                        "interrupted one continued."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing sweep directory."),
    parallel: int = typer.Option(1, "--parallel", min=1, metavar="N", help="Run trials in N processes on this "
                                                                           "machine (one shared sqlite study)."),
    smoke: bool = SmokeOpt, json_out: bool = JsonOpt, quiet: bool = QuietOpt, debug: bool = DebugOpt,
    worker: Optional[int] = typer.Option(None, "--worker", hidden=True),
) -> None:
    """Search hyperparameters: many finetune (or pretrain) trials of one base config, pruned, resumable,
    with one table of all trials and the best config written out."""

    def action(console: Any) -> Any:
        from transfer_cli.sweep.run import SweepOptions, run_sweep
        from transfer_cli.sweep.schema import read_sweep

        opts = SweepOptions(run_dir, resume, overwrite, parallel, smoke, worker)
        return run_sweep(read_sweep(sweep_file), opts, console)

    _execute(action, json_out, quiet, debug)


@app.command("list")
def list_components(json_out: bool = JsonOpt) -> None:
    """Show the registered data sets, models, optimizers, schedules, losses and metrics."""

    def action(console: Any) -> Any:
        from transfer_cli.recipes.components import registries

        listing = {section: {name: reg.get(name).summary for name in reg.names()}
                   for section, reg in registries().items()}
        if not json_out:
            for section, entries in listing.items():
                console.info(f"{section}:")
                for name, summary in entries.items():
                    console.info(f"  {name:<18} {summary}")
        return listing

    _execute(action, json_out, quiet=False, debug=False)


def main() -> None:
    """The `transfer` command, as a process of its own. Once the command has returned, its exit
    handlers have run and its output is flushed, the process leaves by os._exit: the
    interpreter's usual teardown, freeing torch's, torch._dynamo's and matplotlib's modules one
    object at a time, adds about a second to every command and changes nothing it wrote."""
    try:
        app()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # what SystemExit does with a message
        print(code, file=sys.stderr)
        code = 1
    _exit_now(code)


def _exit_now(code: int) -> None:
    import atexit
    import os

    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:  # not CPython: the usual way out
        sys.exit(code)
    run_exit_handlers()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe: the status CPython gives when its final flush fails
        code = code or 120
    os._exit(code)


if __name__ == "__main__":
    main()
