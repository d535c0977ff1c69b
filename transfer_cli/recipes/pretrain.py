"""The pretrain stage: random initialisation, fit, evaluate the best weights, report."""

from __future__ import annotations

from transfer_cli.config.schema import Experiment, TransferConfig
from transfer_cli.core.console import Console
from transfer_cli.recipes.common import train_and_report
from transfer_cli.recipes.parts import RunOptions, build_parts


def pretrain(exp: Experiment, opts: RunOptions, console: Console) -> dict:
    if exp.transfer != TransferConfig():
        console.warn("the transfer section is ignored by pretrain (it trains everything from random initialisation)")
        exp.transfer = TransferConfig()
    parts = build_parts(exp, opts)
    return train_and_report("pretrain", exp, parts, opts, console, lineage={"init": "random", "seed": exp.seed})
