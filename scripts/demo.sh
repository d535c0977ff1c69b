#!/usr/bin/env bash
# The built-in demo: installs transfer, then pretrain -> finetune -> evaluate on the built-in
# motif task (generated on the fly, nothing downloaded). Runs go to runs/quickstart/ (replaced on
# every demo run). About a minute on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
set -x
transfer pretrain configs/quickstart/pretrain.yaml --overwrite
transfer finetune configs/quickstart/finetune.yaml --init-from runs/quickstart/pretrain --overwrite
transfer evaluate configs/quickstart/evaluate.yaml --checkpoint runs/quickstart/finetune --overwrite
