"""The transfer gain in words: one line per baseline budget, for the console and report.md."""

from __future__ import annotations

from transfer_cli.core.console import format_value
from transfer_cli.eval.significance import format_p

SIGNIFICANCE = 0.05  # below this p-value a gain is called significant
BUDGET_NAMES = {"equal_budget": "equal budget", "own_budget": "baseline's own budget"}


def gain_line(report: dict, kind: str) -> str:
    g = report["gains"][kind]
    budget = BUDGET_NAMES[kind]
    stats = g.get("significance")
    figures = f"{g['metric']} {g['value']:+.4f}"
    if stats:
        low, high = stats["interval"]
        on = "" if stats["metric"] == g["metric"] else f" (on {stats['metric']})"
        figures += f" [{low:+.4f}, {high:+.4f}], {format_p(stats['p_value'])}{on}"
    versus = f"(finetuned {format_value(g['finetuned'])} vs scratch {format_value(g['scratch'])})"
    return f"transfer gain on {g['split']}, {budget}: {figures} {versus}: {verdict(g)}"


def verdict(g: dict) -> str:
    stats = g.get("significance")
    significant = stats is None or stats["p_value"] < SIGNIFICANCE
    if not g["trustworthy"]:
        seems = "the scratch baseline seems better" if g["negative_transfer"] else "pretraining seems to help"
        return f"{seems}, but NOT TRUSTWORTHY: " + "; ".join(g["reasons"])
    if not significant:
        return f"no significant difference (p >= {SIGNIFICANCE}): more test samples or seeds would tell"
    return "NEGATIVE TRANSFER: the scratch baseline is better" if g["negative_transfer"] else "pretraining helped"


def seeds_gain_line(g: dict, kind: str) -> str:
    spread = g["over_seeds"]
    budget = BUDGET_NAMES[kind]
    interval = spread["interval"]
    shown = f" [{interval[0]:+.4f}, {interval[1]:+.4f}] (95% t-interval)" if interval else ""
    positive = round(spread["share_positive"] * spread["seeds"])
    return (f"transfer gain on {g['split']} over {spread['seeds']} seeds, {budget}: {g['metric']} "
            f"{spread['mean']:+.4f} ± {spread['std']:.4f}{shown}, better than scratch in {positive}/{spread['seeds']} "
            f"seeds: {verdict(g)}")
