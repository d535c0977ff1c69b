#!/usr/bin/env bash
# The built-in demo: installs transfer, then on the built-in motif task (generated on the fly,
# nothing downloaded) pretrains on the source task, fine-tunes on the target task from 10
# labelled examples per class with a from-scratch baseline (the transfer gain), evaluates the
# fine-tuned run and compares the runs. Runs go to runs/quickstart/ (replaced on every demo run).
# About a minute and a half on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
step() { printf '\n== %s\n' "$*"; "$@"; }
step transfer pretrain configs/quickstart/pretrain.yaml --overwrite
step transfer finetune configs/quickstart/finetune.yaml --init-from runs/quickstart/pretrain --baseline scratch --overwrite
step transfer evaluate configs/quickstart/evaluate.yaml --checkpoint runs/quickstart/finetune --overwrite
step transfer compare runs/quickstart/pretrain runs/quickstart/finetune/baseline runs/quickstart/finetune runs/quickstart/evaluate
printf '\nRun directories: runs/quickstart/{pretrain,finetune,finetune/baseline,evaluate} (report.md, plots/, checkpoints/)\n'
