"""Run diagnostics: signs that a model's figures do not mean what they seem to.

- **collapse**: the share of samples given the most-predicted class, against that class's share
  of the labels. Collapsed when it is more than halfway from the label share to 100% (5 balanced
  classes: above 60%; two balanced classes: above 75%).
- **loss gap**: the final training loss against the validation loss at the last evaluation.
- **convergence**: whether the monitored metric was still improving at the last evaluation (its
  best value came there); a run that was still improving had not converged.

`warnings` holds one sentence per finding, for the console and report.md.
"""

from __future__ import annotations

from typing import Any, Optional

from transfer_cli.core.console import format_value

COLLAPSE_MARGIN = 0.5  # of the distance from the class's label share to 1
LOSS_GAP_RATIO = 3.0  # validation loss this many times the training loss is worth a warning


def collapse(split_info: dict[str, Any]) -> Optional[dict[str, Any]]:
    """From the per-class table of a single-label classification split (None otherwise)."""
    rows = split_info.get("per_class")
    matrix = split_info.get("confusion_matrix") or {}
    if not rows or matrix.get("layout") != "true_by_predicted":
        return None
    total = sum(r["support"] for r in rows)
    if not total:
        return None
    top = max(rows, key=lambda r: r["predicted"])
    prediction_share, label_share = top["predicted"] / total, top["support"] / total
    limit = label_share + COLLAPSE_MARGIN * (1 - label_share)
    return {"class": top["class"], "prediction_share": prediction_share, "label_share": label_share,
            "limit": limit, "collapsed": prediction_share > limit}


def loss_gap(history: list[dict]) -> Optional[dict[str, float]]:
    """The last evaluation that has both a training and a validation loss."""
    for record in reversed(history):
        if "train/loss" in record and "val/loss" in record:
            train, val = record["train/loss"], record["val/loss"]
            return {"step": record.get("step"), "train_loss": train, "val_loss": val, "gap": val - train,
                    "ratio": val / train if train > 0 else None}
    return None


def convergence(history: list[dict], monitor: str, higher_is_better: bool) -> dict[str, Any]:
    """Still improving at the last evaluation: the best monitored value came at the last one (of
    two or more). With one evaluation it cannot be told (`still_improving` None)."""
    values = [(r.get("step"), r[monitor]) for r in history if r.get(monitor) is not None]
    if not values:
        return {"monitor": monitor, "evaluations": 0, "still_improving": None}
    pick = max if higher_is_better else min
    best_step, best = pick(values, key=lambda sv: sv[1])
    last_step, last = values[-1]
    improving = None if len(values) < 2 else last == best and values[-2][1] != last
    return {"monitor": monitor, "evaluations": len(values), "best": best, "best_step": best_step,
            "last": last, "last_step": last_step, "still_improving": improving}


def diagnose(label: str, split: str, split_info: Optional[dict], history: list[dict], monitor: str,
             higher_is_better: bool, stop_reason: Optional[str] = None, precise_bn: int = 0) -> dict[str, Any]:
    """All diagnostics of one evaluated model (`history`: its evaluation records; empty for a
    model that was only evaluated; `precise_bn`: the batches its BatchNorm statistics were
    recomputed over, 0 when they were not)."""
    out: dict[str, Any] = {"split": split, "precise_bn": precise_bn,
                           "collapse": collapse(split_info or {}), "loss_gap": loss_gap(history),
                           "convergence": convergence(history, monitor, higher_is_better) if history else None}
    if out["convergence"] is not None and stop_reason and stop_reason.startswith("early stopping"):
        out["convergence"]["still_improving"] = False  # it stopped because it no longer improved
    out["warnings"] = _warnings(label, out)
    return out


def _warnings(label: str, d: dict[str, Any]) -> list[str]:
    notes = []
    c = d["collapse"]
    if c and c["collapsed"]:
        notes.append(f"{label} collapsed: it gives class '{c['class']}' to {c['prediction_share']:.0%} of the "
                     f"{d['split']} samples ({c['label_share']:.0%} of the labels)")
    g = d["loss_gap"]
    if g and g["ratio"] is not None and g["ratio"] > LOSS_GAP_RATIO:
        notes.append(f"{label}: validation loss {format_value(g['val_loss'])} is {g['ratio']:.1f}x its final "
                     f"training loss {format_value(g['train_loss'])} (overfitting, or BatchNorm statistics behind "
                     f"the weights: see train.precise_bn)")
    conv = d["convergence"]
    if conv and conv["still_improving"]:
        notes.append(f"{label} had not converged: {conv['monitor']} was still improving at the last evaluation "
                     f"(step {conv['last_step']})")
    return notes


def gain_caveats(finetuned: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Why a transfer gain is not to be trusted, each with what to change (empty: no reason found)."""
    reasons = []
    c = baseline.get("collapse")
    if c and c["collapsed"]:
        reasons.append(f"the baseline collapsed onto class '{c['class']}' ({c['prediction_share']:.0%} of its "
                       f"predictions): {_remedy(baseline, 'give the baseline more steps (transfer.baseline)')}")
    conv = baseline.get("convergence")
    if conv and conv["still_improving"]:
        reasons.append("the baseline had not converged (still improving at its last evaluation): give it more "
                       "steps, e.g. transfer.baseline: {epochs: N, until_converged: true}")
    c = finetuned.get("collapse")
    if c and c["collapsed"]:
        reasons.append(f"the finetuned model collapsed onto class '{c['class']}' ({c['prediction_share']:.0%} of "
                       f"its predictions): {_remedy(finetuned, 'train longer')}")
    return reasons


def _remedy(diagnosed: dict[str, Any], longer: str) -> str:
    if diagnosed.get("precise_bn"):  # the statistics were recomputed already: not the cause
        return f"{longer}, or lower optim.lr"
    return f"turn on train.precise_bn or {longer}"
