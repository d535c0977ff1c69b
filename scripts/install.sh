#!/usr/bin/env bash
# Installs transfer (editable, with the test tools) into the active Python environment.
# torch first: without one, pip would resolve `torch` to a multi-GB CUDA build; the pinned
# release is a CPU wheel on CPU-only machines with a local wheel cache.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
