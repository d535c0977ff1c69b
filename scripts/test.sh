#!/usr/bin/env bash
# The test suite: installs the package, then runs pytest (fast tests; add `-m slow` for the long ones).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
python -m pytest "$@"
