"""The pretrain stage: random initialisation (or, for a model that brings weights of its own,
those: continued pretraining), fit, evaluate the best weights, report."""

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
    pretrained = parts.model.pretrained_lineage()
    # the run's config.yaml then rebuilds the architecture without what it was read from (a model folder)
    exp.model.params = parts.model.recorded_params(exp.model.params)
    if pretrained:
        console.info(f"init: pretrained weights of {pretrained['pretrained']} (continued pretraining)")
        lineage = {"init": "pretrained", "seed": exp.seed, **pretrained}
    else:
        lineage = {"init": "random", "seed": exp.seed}
    return train_and_report("pretrain", exp, parts, opts, console, lineage=lineage)
