"""From command-line arguments to a validated Experiment for one stage.

Order: the config file (and what it extends) or a run dir's config, `--set` overrides, the
CLI flags (`--init-from`, `--checkpoint`, `--split`: the most specific wins), then the architecture of the run
a finetune/evaluate starts from (under everything else), then validation and stage rules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional, Sequence

from transfer_cli.config.loader import RawConfig, apply_sets, load_raw
from transfer_cli.config.schema import Experiment, absolute_ref
from transfer_cli.config.validate import validate
from transfer_cli.config.yamlio import read_mapping
from transfer_cli.core.errors import ConfigError, UsageError, a_or_an

Stage = Literal["pretrain", "finetune", "evaluate"]


def key_layer(keypath: tuple[str, ...], value: object, origin: str) -> RawConfig:
    data: dict = {}
    node = data
    for part in keypath[:-1]:
        node = node.setdefault(part, {})
    node[keypath[-1]] = value
    return RawConfig(data, {keypath: origin}, origin)


def read_sources(source: Path, stage: Stage, sets: list[str], init_from: Optional[str] = None,
                 checkpoint: Optional[str] = None, split: Optional[str] = None,
                 seeds: Optional[list[int]] = None, baseline: Optional[str] = None,
                 layers: Sequence[RawConfig] = ()) -> RawConfig:
    """The raw config for `source` (a YAML file, or for evaluate a run directory). `layers`: more
    overrides after the `--set` ones, each with its own origin (a sweep's trial values)."""
    if source.is_dir():
        if stage != "evaluate":
            raise UsageError(f"{source} is a directory; `transfer {stage}` takes a config file")
        if not (source / "config.yaml").is_file():
            raise UsageError(f"{source} is not a run directory (no config.yaml)")
        raw = load_raw(source / "config.yaml", **run_config_naming(source))
        raw = _keep_source(raw, raw.merged(key_layer(("eval", "checkpoint"), str(source), f"run dir {source}")))
    elif not source.exists():
        raise UsageError(f"config file not found: {source}")
    else:
        raw = load_raw(source)
    raw = apply_sets(raw, sets)
    for layer in layers:
        raw = _keep_source(raw, raw.merged(layer))
    shortcuts = [(("transfer", "init_from"), init_from, "--init-from"),
                 (("eval", "checkpoint"), checkpoint, "--checkpoint"), (("eval", "split"), split, "--split"),
                 (("transfer", "seeds"), seeds, "--seeds"), (("transfer", "baseline"), baseline, "--baseline")]
    if baseline == "scratch" and isinstance((raw.data.get("transfer") or {}).get("baseline"), dict):
        shortcuts.pop()  # the config's baseline is a scratch baseline already, with a budget of its own
    for keypath, value, flag in shortcuts:
        if value is not None:
            raw = _keep_source(raw, raw.merged(key_layer(keypath, value, f"{flag} {value}")))
    return raw


def _keep_source(old: RawConfig, new: RawConfig) -> RawConfig:
    new.source = old.source
    return new


def starting_ref(raw: RawConfig, stage: Stage) -> Optional[str]:
    section, key = ("transfer", "init_from") if stage == "finetune" else ("eval", "checkpoint")
    block = raw.data.get(section)
    value = block.get(key) if isinstance(block, dict) else None
    return value if isinstance(value, str) else None


def inherit_architecture(raw: RawConfig, ref: Optional[str]) -> RawConfig:
    """Put the `model` section of the run that `ref` names under the config, so a finetune or
    evaluate takes the architecture of the run it starts from unless it says otherwise."""
    parent = _run_config(ref)
    model = parent.get("model") if parent else None
    if not isinstance(model, dict):
        return raw
    config_file = _run_dir(ref) / "config.yaml"
    base = RawConfig({"model": model}, {("model",): f"{config_file} (model of the run started from)"})
    if raw.data.get("model", None) is None:  # absent or `model: null`: take the run's model as it is
        raw = RawConfig({k: v for k, v in raw.data.items() if k != "model"},
                        {k: v for k, v in raw.origins.items() if k[0] != "model"}, raw.source)
    return _keep_source(raw, base.merged(raw))


def stage_problems(exp: Experiment, stage: Stage, raw: RawConfig, registries: Optional[dict] = None) -> list[str]:
    """Rules that depend on the stage, all reported together."""
    problems = []
    where = raw.origin_of
    if exp.model is None:
        problems.append(f"{where(('model',))}: model: required (a finetune/evaluate from a run directory takes "
                        f"it from that run's config; from a weights file it must be given)")
    pretrained = exp.model is not None and loads_pretrained(exp.model.name, exp.model.params, registries)
    if stage == "pretrain" and exp.transfer.init_from:
        problems.append(f"{where(('transfer', 'init_from'))}: transfer.init_from: pretrain trains from random "
                        f"initialisation; use `transfer finetune` to start from weights")
    if stage == "finetune" and not exp.transfer.init_from and not pretrained and exp.model is not None \
            and has_own_weights_hook(exp.model.name, registries):
        problems.append(f"{where(('transfer', 'init_from'))}: transfer.init_from: required: model '{exp.model.name}' "
                        f"as configured brings no weights of its own (a folder with config.json only, or the "
                        f"architecture inline, is for `transfer pretrain`); give a run pretrained from it "
                        f"(--init-from RUN) or a model folder with weights")
    elif stage == "finetune" and (exp.transfer.init_from or not pretrained):
        problems += _ref_problems(exp.transfer.init_from, "transfer.init_from", "--init-from",
                                  where(("transfer", "init_from")))
    if stage == "evaluate":
        problems += _ref_problems(exp.eval.checkpoint, "eval.checkpoint", "--checkpoint",
                                  where(("eval", "checkpoint")))
    return problems


def loads_pretrained(model_name: str, params: object, registries: Optional[dict]) -> bool:
    """Whether the model, with these params, loads pretrained weights by itself (its params class
    says so: e.g. hf_encoder, from a folder with weights)."""
    if not has_own_weights_hook(model_name, registries):
        return False
    hook = registries["model"].get(model_name).params.loads_pretrained  # type: ignore[index]
    return bool(hook(params if isinstance(params, dict) else {}))


def has_own_weights_hook(model_name: str, registries: Optional[dict]) -> bool:
    """Whether the model can load weights of its own (its params class has `loads_pretrained`)."""
    if not registries or model_name not in registries["model"]:
        return False
    return callable(getattr(registries["model"].get(model_name).params, "loads_pretrained", None))


def inherit_fitted_data(raw: RawConfig, ref: Optional[str], registries: dict) -> RawConfig:
    """For evaluate: take the data params that the run being evaluated derived from its training
    data (class order, normalization statistics, ...) unless the config sets them, so that
    labels and inputs are mapped exactly as in training."""
    parent = _run_config(ref)
    data = raw.data.get("data")
    if not parent or not isinstance(data, dict) or not isinstance(parent.get("data"), dict):
        return raw
    if data.get("name") != parent["data"].get("name") or data.get("name") not in registries["data"]:
        return raw
    fitted = getattr(registries["data"].get(data["name"]).params, "fitted_keys", ())
    params = data.get("params") if isinstance(data.get("params"), dict) else {}
    stored = parent["data"].get("params") or {}
    taken = {key: stored[key] for key in fitted if params.get(key) is None and stored.get(key) is not None}
    if not taken:
        return raw
    origin = f"{_run_dir(ref) / 'config.yaml'} (fitted on the training data of the run evaluated)"
    layer = RawConfig({"data": {"params": taken}}, {("data", "params", k): origin for k in taken}, origin)
    return _keep_source(raw, raw.merged(layer))


def _run_dir(ref: str) -> Path:
    return Path(ref.rpartition("@")[0] if ref.endswith(("@last", "@best")) else ref)


def _run_config(ref: Optional[str]) -> Optional[dict]:
    if not ref or not (_run_dir(ref) / "config.yaml").is_file():
        return None
    data, _lines = read_mapping(_run_dir(ref) / "config.yaml", **run_config_naming(_run_dir(ref)))
    return data


def run_config_naming(run: Path) -> dict[str, str]:
    """How an error names a run's config.yaml and what it suggests (see yamlio.read_mapping)."""
    return {"shown": f"{run / 'config.yaml'} (the config of run {run})",
            "hint": "a run's config.yaml records the config it ran with: restore it from a copy, or run that "
                    "stage again"}


def _ref_problems(ref: Optional[str], key: str, flag: str, origin: str) -> list[str]:
    if not ref:
        return [f"{origin}: {key}: required: a run directory or weights file (or {flag} RUN_OR_WEIGHTS)"]
    path = Path(ref.rpartition("@")[0] if ref.endswith(("@last", "@best")) else ref)
    if not path.exists():
        return [f"{origin}: {key}: no such run directory or weights file: {path}"]
    if path.is_dir() and not (path / "checkpoints").is_dir():
        stage = recorded_stage(path)
        if stage:
            return [f"{origin}: {key}: {holds_no_weights(path, stage)}"]
        return [f"{origin}: {key}: {path} is a directory but not a run directory (no checkpoints/); "
                f"expected a run directory or a weights file"]
    return []


def recorded_stage(path: Path) -> Optional[str]:
    """The stage a run directory's run.json records, or None (no run.json, or unreadable)."""
    try:
        info = json.loads((path / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info.get("stage") if isinstance(info, dict) and isinstance(info.get("stage"), str) else None


def holds_no_weights(path: Path, stage: str) -> str:
    """What to say of a run of a stage that trains nothing (evaluate, rank) given for weights."""
    return (f"{path} is {a_or_an(stage)} run, which holds no weights (no checkpoints/); give the run that trained "
            f"them (a pretrain or finetune run) or a weights file")


def load_experiment(source: Path, stage: Stage, sets: list[str], registries: dict, **flags: object) -> Experiment:
    """Everything the command line says, validated for `stage`; all problems in one ConfigError.
    `flags`: init_from, checkpoint, split, seeds, baseline (the CLI's shortcuts), layers."""
    raw = read_sources(source, stage, sets, **flags)
    ref = starting_ref(raw, stage)
    raw = inherit_architecture(raw, absolute_ref(ref) if ref else None)
    if stage == "evaluate":
        raw = inherit_fitted_data(raw, absolute_ref(ref) if ref else None, registries)
    exp = validate(raw, registries)
    problems = stage_problems(exp, stage, raw, registries)
    if problems:
        raise ConfigError(problems, header=f"invalid config {raw.source} for {stage}")
    return exp


def guess_stage(raw: RawConfig, registries: dict) -> Stage:
    """For `transfer validate`: finetune if it starts from weights (or its model loads pretrained
    weights by itself), evaluate if it names a checkpoint, else pretrain."""
    model = raw.data.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    if starting_ref(raw, "finetune") or (isinstance(name, str) and loads_pretrained(name, params, registries)):
        return "finetune"
    if starting_ref(raw, "evaluate"):
        return "evaluate"
    return "pretrain"
