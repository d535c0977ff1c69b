#!/usr/bin/env bash
# The README's ONNX figure: the quickstart chain (pretrain, finetune) and `transfer export --format onnx`
# of the finetune, run in a scratch folder (default: a new temporary one). Prints the export's lines,
# including the max abs difference between onnxruntime and PyTorch on the run's test samples.
# Needs the [export] extra (onnx, onnxruntime, onnxscript).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work" && cd "$work"
run() { PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" python -m transfer_cli "$@"; }
run pretrain "$repo/configs/quickstart/pretrain.yaml" --quiet
run finetune "$repo/configs/quickstart/finetune.yaml" --init-from runs/quickstart/pretrain --quiet
run export runs/quickstart/finetune --format onnx
python - <<'PY'
import json
facts = json.load(open("runs/quickstart/finetune/export/onnx/export.json"))
print("export.json check:", json.dumps(facts["check"]))
PY
