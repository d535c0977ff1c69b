"""`transfer rank`: score candidate starting points on a target task without training them.

Each candidate (a run directory, a weights file with the target config's model and
transfer.keys, or a Hugging Face model folder) is built and loaded as `finetune --init-from`
would, its backbone runs once over the target's training split (k-shot and seed applied), and
the features stream into the transferability estimators. Every candidate is scored before the
run directory is created, so a bad candidate stops the command with nothing written.
`--validate BUDGET` then fine-tunes each with the normal finetune recipe into the rank run and
reports how well each score's order agrees with the fine-tuned metric."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from transfer_cli.config.resolve import load_experiment
from transfer_cli.config.schema import Experiment
from transfer_cli.core.console import Console
from transfer_cli.core.errors import DataError, UsageError
from transfer_cli.data.bundle import DataBundle
from transfer_cli.eval.correlation import kendall_tau, spearman_rho
from transfer_cli.eval.transferability import FeatureStatistics, class_labels, target_matrix
from transfer_cli.models.base import TransferModel
from transfer_cli.recipes.components import registries
from transfer_cli.recipes.finetune import finetune
from transfer_cli.recipes.lifecycle import check_run_dir, record_stop, start_run
from transfer_cli.recipes.parts import RunOptions, build_data, build_model, resolve_device
from transfer_cli.report.content import data_info
from transfer_cli.report.headline import SCHEMA_VERSION
from transfer_cli.report.ranking import SCORES, ranking_markdown, ranking_table
from transfer_cli.runs.provenance import device_name, now
from transfer_cli.runs.rundir import RunDir
from transfer_cli.train.features import FeatureStore, feature_batches, feature_key, feature_key_applies
from transfer_cli.train.seeding import seed_everything
from transfer_cli.weights.files import resolve_weights
from transfer_cli.weights.load import load_initial_weights

NO_SOURCE_HEAD = "n/a: no classification source head"


@dataclass
class Candidate:
    ref: str  # as given on the command line
    kind: str  # run | weights | hf_folder
    label: str
    exp: Experiment


@dataclass
class Budget:
    """--validate BUDGET: N (epochs) or Nsteps (optimizer steps) per fine-tune."""

    epochs: Optional[int] = None
    max_steps: Optional[int] = None

    @classmethod
    def parse(cls, text: str) -> "Budget":
        match = re.fullmatch(r"\s*(\d+)\s*(epochs?|steps?)?\s*", text)
        if not match or int(match.group(1)) < 1:
            raise UsageError(f"--validate: expected a fine-tuning budget per candidate, N epochs (e.g. 5) or "
                             f"N optimizer steps (e.g. 200steps), got {text!r}")
        n = int(match.group(1))
        return cls(max_steps=n) if (match.group(2) or "").startswith("step") else cls(epochs=n)

    def describe(self) -> str:
        return f"{self.max_steps} steps" if self.max_steps else f"{self.epochs} epochs"


def rank(config: Path, refs: list[str], sets: list[str], opts: RunOptions, validate: Optional[str],
         console: Console) -> dict:
    budget = Budget.parse(validate) if validate is not None else None
    check_target_config(config)
    path = Path(opts.run_dir) if opts.run_dir else default_run_dir(config)
    run = check_run_dir(path, opts.mode if opts.mode != "resume" else "overwrite", resumable=False)
    candidates = resolve_candidates(config, refs, sets)
    target = candidates[0].exp
    tic = time.perf_counter()
    device = resolve_device(target.train.device)
    seed_everything(target.seed)
    data = build_data(target)
    check_train_split(data, config)
    results = [score_candidate(c, data, device, console) for c in candidates]
    rank_seconds = time.perf_counter() - tic
    target.run_dir = str(path.absolute())
    report = make_rank_report(target, data, results, rank_seconds, config)
    lineage = {"candidates": [r["lineage"] for r in results]}
    start_run(run, "rank", base_config(target), None, opts, lineage)
    try:
        if budget is not None:
            report["validation"] = validate_candidates(candidates, results, budget, run.path, opts, console)
            report["timings"]["finetune_seconds"] = report["validation"]["finetune_seconds"]
            report["timings"]["finetune_over_rank"] = round(report["validation"]["finetune_seconds"]
                                                            / max(rank_seconds, 1e-9), 1)
        run.write_text("report.json", json.dumps(report, indent=2, default=str) + "\n")
        run.write_text("report.md", ranking_markdown(report))
    except BaseException as exc:
        record_stop(run, None, exc)
        raise
    run.update_run(status="completed", ended_at=now(), device=device_name(device), data=report["data"])
    console.show(ranking_table(report))
    return report


def check_target_config(config: Path) -> None:
    """The first argument is the target's config file; a run directory there is a common slip."""
    if config.is_dir():
        own = config / "config.yaml"
        hint = f" (that run's config is {own})" if own.is_file() else ""
        raise UsageError(f"TARGET_CONFIG: {config} is a directory; `transfer rank` takes the target task's config "
                         f"file first{hint}, then the candidates")


def default_run_dir(config: Path) -> Path:
    """runs/rank/<config folder>/<config name>."""
    parent = config.parent.name
    return Path("runs") / "rank" / parent / config.stem if parent else Path("runs") / "rank" / config.stem


def base_config(exp: Experiment) -> Experiment:
    """What config.yaml holds: the target config as resolved, without the first candidate's weights
    (run.json lists every candidate)."""
    base = exp.model_copy(deep=True)
    base.transfer.init_from = None
    return base


# ---- candidates --------------------------------------------------------------------------------
def resolve_candidates(config: Path, refs: list[str], sets: list[str]) -> list[Candidate]:
    """Each candidate's experiment: the target config started from it (what its finetune would
    run); all problems with the candidates' paths are refused here, before any work."""
    if not refs:
        raise UsageError("transfer rank: no candidates; name one or more run directories, weights files or "
                         "Hugging Face model folders after the target config")
    if len(set(refs)) != len(refs):
        twice = sorted({r for r in refs if refs.count(r) > 1})
        raise UsageError(f"transfer rank: candidate {twice[0]} is named more than once; name each candidate once")
    kinds = [candidate_kind(ref) for ref in refs]
    labels = short_labels(refs)
    out = []
    for ref, (kind, folder), label in zip(refs, kinds, labels):
        if kind == "hf_folder":
            extra = ["transfer.init_from=null", "model.name=hf_encoder",
                     f"model.params.path={json.dumps(str(folder.absolute()))}"]
            exp = load_experiment(config, "finetune", sets + extra, registries())
        else:
            exp = load_experiment(config, "finetune", sets, registries(), init_from=ref)
        out.append(Candidate(ref, kind, label, exp))
    return out


def candidate_kind(ref: str) -> tuple[str, Path]:
    """(run | weights | hf_folder, its path) of a candidate reference."""
    text, at, alias = ref.rpartition("@")
    path = Path(text if at and alias in ("last", "best") else ref)
    if not path.exists():
        raise UsageError(f"candidate {ref}: no such run directory, weights file or Hugging Face model folder")
    if path.is_file():
        return "weights", path
    if (path / "checkpoints").is_dir():
        return "run", path
    if (path / "config.json").is_file() and path == Path(ref):
        from transfer_cli.models.hf_encoder import has_weights

        if not has_weights(path):  # its features would be those of a random initialisation
            raise UsageError(f"candidate {ref}: {path} is a Hugging Face model folder without weights (config.json "
                             f"only): nothing pretrained to rank; pretrain from it first (`transfer pretrain` with "
                             f"model.params.path: {path}) and rank that run")
        return "hf_folder", path
    if (path / "run.json").is_file():  # a run of a stage without weights (evaluate, rank)
        resolve_weights(ref)  # says which stage it is, in one line
    raise UsageError(f"candidate {ref}: {path} is a directory but neither a run directory (no checkpoints/) nor a "
                     f"Hugging Face model folder (no config.json); expected one of those or a weights file")


def short_labels(refs: list[str]) -> list[str]:
    """Each candidate's label: the shortest trailing part of its path that no other candidate's
    path ends with (runs/a/pretrain, runs/b/pretrain, x.safetensors -> a/pretrain, b/pretrain,
    x.safetensors), then its @last/@best as given."""
    bare = [r.rpartition("@")[0] if r.endswith(("@last", "@best")) else r for r in refs]
    parts = [Path(b).absolute().parts for b in bare]
    labels = []
    for i, own in enumerate(parts):
        others = [p for p in parts if p != own]  # the same run named @last and @best: told apart by that
        depth = next((d for d in range(1, len(own) + 1) if all(p[-d:] != own[-d:] for p in others)), None)
        labels.append("/".join(own[-depth:]) if depth else str(Path(bare[i]).absolute()))
    return [label + ref[len(b):] for label, ref, b in zip(labels, refs, bare)]


def folder_name(index: int, label: str) -> str:
    """A --validate run's folder: NN-label with the path's separators and @ as dashes, without a
    weights file's extension (00-source-last, 01-a-pretrain, 02-random)."""
    stem = re.sub(r"\.(safetensors|pt|pth|bin)(?=$|@)", "", label)
    return f"{index:02d}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")


def check_train_split(data: DataBundle, config: Path) -> None:
    if "train" not in data.splits:
        raise DataError(f"{config}: transfer rank scores the candidates on the target's training split, but the "
                        f"data has none (it has: {', '.join(data.splits)}); give the data a train split")


# ---- scoring -----------------------------------------------------------------------------------
def score_candidate(cand: Candidate, data: DataBundle, device: torch.device, console: Console) -> dict:
    """Load the candidate, run its backbone once over the training split, compute every score."""
    exp = cand.exp
    model = build_model(exp, data, device)
    lineage, head = load_candidate(cand, model)
    train = data.split("train")
    store = FeatureStore(exp.transfer.feature_cache_dir) if exp.transfer.feature_cache_dir else None
    tic = time.perf_counter()
    stats, from_cache = accumulate(model, exp, data, train, device, head, store)
    extraction = time.perf_counter() - tic
    tic = time.perf_counter()
    scores, na = compute_scores(stats, data.task, head)
    result = {"candidate": cand.ref, "label": cand.label, "kind": cand.kind, "lineage": lineage,
              "feature_dim": stats.dim, "samples": stats.n, "extraction_seconds": round(extraction, 3),
              "score_seconds": round(time.perf_counter() - tic, 3), "features_from_cache": from_cache,
              "scores": scores, "not_applicable": na,
              "source_head": None if head.get("task") is None else
              {k: head[k] for k in ("task", "classes", "task_from")}}
    shown = ", ".join(f"{name} {value:.4g}" for name, value in scores.items() if value is not None)
    console.info(f"rank: {cand.label}: {shown}; {stats.dim} features of {stats.n} samples "
                 + cache_note(exp.transfer.feature_cache_dir, from_cache, train, extraction))
    return result


def cache_note(folder: Optional[str], from_cache: bool, train: Any, seconds: float) -> str:
    """How the features were had: read from the cache (no backbone pass), or extracted (and kept
    in the cache, or why not)."""
    if from_cache:
        return f"read from the feature cache {folder} in {seconds:.2f} s (the backbone did not run)"
    note = f"extracted in {seconds:.2f} s"
    if folder and feature_key_applies(train):
        return note + f" (kept in {folder} for a later linear probe)"
    if folder:
        return note + f" (not kept in {folder}: only data held in memory is cached on disk, not {type(train).__name__})"
    return note


def load_candidate(cand: Candidate, model: TransferModel) -> tuple[dict, dict]:
    """Load the weights as finetune would; (lineage, the source head: {weight, bias, task, classes}
    or {"reason"} when there is none to use)."""
    tcfg = cand.exp.transfer
    if cand.kind == "hf_folder":
        lineage = {"candidate": cand.ref, "kind": cand.kind, **model.pretrained_lineage()}
        return lineage, {"reason": NO_SOURCE_HEAD + " (a Hugging Face encoder folder brings no task head)"}
    load = load_initial_weights(model, tcfg.init_from, head=tcfg.head, strict=tcfg.strict, keys=tcfg.keys)
    lineage = {"candidate": cand.ref, "kind": cand.kind, "init_from": tcfg.init_from, "weights": load.weights,
               "sha256": load.sha256, "load_report": load.to_dict()}
    return lineage, source_head(cand, load.source_head, model.feature_dim)


def source_head(cand: Candidate, tensors: dict, feature_dim: int) -> dict:
    """The candidate's own head as a classifier over the target's features, if it is one: the task
    is read from the run.json of the run that wrote the weights (a run, or a weights file inside a
    run's checkpoints/); a weights file of no run: several outputs are taken for a softmax classifier,
    one output is refused (binary or regression cannot be told apart)."""
    weight, bias = tensors.get("head.weight"), tensors.get("head.bias")
    if weight is None or weight.ndim != 2:
        return {"reason": NO_SOURCE_HEAD + " (the weights hold no head)"}
    if weight.shape[1] != feature_dim:
        return {"reason": NO_SOURCE_HEAD + f" (its head takes {weight.shape[1]} features, the backbone gives "
                                           f"{feature_dim})"}
    run = owning_run(cand)
    task = (RunDir(run).read_run().get("data") or {}).get("task") if run is not None else None
    task_from = "run.json" if task else "assumed from the head's shape (a weights file of no run)"
    if task is None and weight.shape[0] == 1:
        return {"reason": NO_SOURCE_HEAD + " (a one-output head of a weights file outside a run may be binary or "
                                           "regression; give the run directory that trained it)"}
    task = task or "multiclass"
    if task not in ("multiclass", "binary"):
        return {"reason": NO_SOURCE_HEAD + f" (the source task is {task})"}
    bias = bias if bias is not None else torch.zeros(weight.shape[0])
    classes = 2 if task == "binary" else weight.shape[0]
    return {"weight": weight.double(), "bias": bias.double(), "task": task, "classes": classes,
            "task_from": task_from}


def owning_run(cand: Candidate) -> Optional[Path]:
    """The run directory of a run candidate, or of a weights file inside <run>/checkpoints/<name>/."""
    if cand.kind == "run":
        return Path(cand.ref.rpartition("@")[0] if cand.ref.endswith(("@last", "@best")) else cand.ref)
    path = Path(cand.ref)
    if len(path.parents) >= 3 and path.parents[1].name == "checkpoints" and (path.parents[2] / "run.json").is_file():
        return path.parents[2]
    return None


def source_probabilities(features: torch.Tensor, head: dict) -> torch.Tensor:
    logits = features.double() @ head["weight"].to(features.device).T + head["bias"].to(features.device)
    if head["task"] == "binary":
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], 1)
    return torch.softmax(logits, 1)


def accumulate(model: TransferModel, exp: Experiment, data: DataBundle, train: Any, device: torch.device,
               head: dict, store: Optional[FeatureStore]) -> tuple[FeatureStatistics, bool]:
    """Stream the training split's features into the statistics (from the feature store when it
    has them; into it when one is configured)."""
    batch = exp.data.eval_batch_size or 2 * exp.data.batch_size
    precision = exp.train.precision
    key = feature_key(model, exp.model.model_dump(mode="json"), train, precision) if store else None
    cached = store.get(key) if store else None
    if cached is not None:
        batches = cached.batches(batch, device)
    else:
        batches = feature_batches(model, train, batch, device, precision)
    single_label = data.task in ("multiclass", "binary")
    stats = None
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for f, y in batches:
        targets = target_matrix(data.task, y, data.num_outputs)
        if stats is None:
            stats = FeatureStatistics(f.shape[1], targets.shape[1],
                                      num_classes=targets.shape[1] if single_label else None,
                                      source_classes=head.get("classes"))
        probs = source_probabilities(f, head) if "weight" in head and single_label else None
        stats.update(f, targets, class_labels(data.task, y), probs)
        if store is not None and cached is None:
            kept.append((f.cpu(), y.cpu()))
    if stats is None:
        raise DataError("transfer rank: the training split is empty")
    if kept:
        from transfer_cli.data.bundle import TensorSplit

        store.put(key, TensorSplit(torch.cat([f for f, _ in kept]), torch.cat([y for _, y in kept])))
    return stats, cached is not None


def compute_scores(stats: FeatureStatistics, task: str, head: dict) -> tuple[dict, dict]:
    """{score: value or None}, {score: why it does not apply}."""
    try:
        scores: dict[str, Optional[float]] = {"logme": stats.logme()}
    except ValueError:
        raise DataError(f"transfer rank: every target of the training split is 0 ({task}); LogME has nothing to "
                        f"score: check the data's label or target columns") from None
    na: dict[str, str] = {}
    single_label = task in ("multiclass", "binary")
    scores["hscore"] = stats.hscore() if single_label else None
    if not single_label:
        na["hscore"] = f"n/a: needs single-label target classes (the target is {task})"
    for name in ("nce", "leep"):
        if not single_label:
            scores[name], na[name] = None, f"n/a: needs single-label target classes (the target is {task})"
        elif "weight" not in head:
            scores[name], na[name] = None, head["reason"]
        else:
            scores[name] = getattr(stats, name)()
    return scores, na


# ---- report ------------------------------------------------------------------------------------
def make_rank_report(exp: Experiment, data: DataBundle, results: list[dict], rank_seconds: float,
                     config: Path) -> dict:
    ordered = sorted(results, key=lambda r: -r["scores"]["logme"])
    return {"schema_version": SCHEMA_VERSION, "stage": "rank", "name": exp.name, "run_dir": exp.run_dir,
            "target_config": str(config.absolute()), "task": data.task, "data": data_info(exp, data),
            "seed": exp.seed, "scores": list(SCORES), "order_by": "logme", "candidates": ordered,
            "validation": None, "timings": {"rank_seconds": round(rank_seconds, 3)}}


# ---- validation --------------------------------------------------------------------------------
def validate_candidates(candidates: list[Candidate], results: list[dict], budget: Budget, root: Path,
                        opts: RunOptions, console: Console) -> dict:
    """Fine-tune every candidate with the target config and `budget` into <rank run>/finetune/,
    then the rank correlations of each score with the fine-tuned headline metric."""
    by_ref = {r["candidate"]: r for r in results}
    tic = time.perf_counter()
    metric = split = None
    higher = True
    for index, cand in enumerate(candidates):
        exp = cand.exp.model_copy(deep=True)
        exp.train.epochs, exp.train.max_steps = budget.epochs or exp.train.epochs, budget.max_steps
        exp.transfer.baseline = "none"  # the candidates are compared with each other, not with scratch
        exp.run_dir = None
        folder = root / "finetune" / folder_name(index, cand.label)
        console.info(f"validate: fine-tuning {cand.label} for {budget.describe()} -> {folder}")
        report = finetune(exp, RunOptions(run_dir=str(folder), smoke=opts.smoke), console)
        metric, higher = report["headline"]["metric"], report["headline"]["higher_is_better"]
        split = report["eval_split"]
        by_ref[cand.ref]["finetuned"] = {"run_dir": str(folder.absolute()), "split": split, "metric": metric,
                                         "value": report["metrics"][split][metric]}
    seconds = time.perf_counter() - tic
    return {"budget": {"epochs": budget.epochs, "max_steps": budget.max_steps}, "split": split, "metric": metric,
            "higher_is_better": higher, "finetune_seconds": round(seconds, 3),
            "correlations": correlations(results, higher)}


def correlations(results: list[dict], higher_is_better: bool) -> dict:
    """Kendall's tau and Spearman's rho of each score with the fine-tuned metric (oriented so that
    +1 means the score orders the candidates as fine-tuning does), over the candidates it applies to."""
    out = {}
    for name in SCORES:
        pairs = [(r["scores"][name], r["finetuned"]["value"] * (1 if higher_is_better else -1))
                 for r in results if r["scores"].get(name) is not None]
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        out[name] = {"candidates": len(pairs), "kendall_tau": kendall_tau(xs, ys) if len(pairs) > 1 else None,
                     "spearman_rho": spearman_rho(xs, ys) if len(pairs) > 1 else None}
    return out
