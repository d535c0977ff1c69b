#!/usr/bin/env bash
# Re-check "survives kill -9" on the built-in task: train once without interruption, then train
# the same config again while killing it with SIGKILL at random moments, resuming with --resume
# after each kill. The final weights and metrics.jsonl must be bit-identical to the
# uninterrupted run (metrics.jsonl compared on every field but the wall-clock "time").
#
#   scripts/chaos.sh [KILLS] [WORKDIR]     default: 5 kills, a new temporary directory
#   CHAOS_SEED=123 scripts/chaos.sh        the same kill moments again
#
# Prints one line per kill and a verdict; exit 0 only when the runs are identical.
set -euo pipefail

KILLS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${2:-$(mktemp -d -t transfer-chaos.XXXXXX)}
SEED=${CHAOS_SEED:-$RANDOM}
RANDOM=$SEED
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" CI=1
# the built-in task of the quickstart, shortened: 64 steps on CPU, a checkpoint every 8 steps
TRAIN=(python -m transfer_cli pretrain "$ROOT/configs/quickstart/pretrain.yaml" --quiet
       --set train.device=cpu --set train.epochs=2 --set train.eval_every_steps=8)

mkdir -p "$WORK"
cd "$WORK"
echo "chaos: work dir $WORK, seed $SEED, $KILLS kills"

start=$(date +%s.%N)
"${TRAIN[@]}" --run-dir runs/reference
span=$(python -c "print(max(1.0, $(date +%s.%N) - $start))")
echo "chaos: uninterrupted run took ${span}s"

kills=0
while [ "$kills" -lt "$KILLS" ]; do
  resume=()
  [ -f runs/chaos/run.json ] && resume=(--resume)
  "${TRAIN[@]}" --run-dir runs/chaos "${resume[@]}" &
  pid=$!
  # a moment anywhere in a run's life: start-up, training, evaluation, checkpoint writing
  delay=$(python -c "import random; random.seed($SEED * 1000 + $kills); print(round(random.uniform(0, $span), 2))")
  sleep "$delay"
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    kills=$((kills + 1))
    last=$(python -c "import os; print(os.readlink('runs/chaos/checkpoints/last'))" 2>/dev/null || echo "none yet")
    echo "chaos: kill -9 #$kills after ${delay}s (last complete checkpoint: $last)"
  else
    wait "$pid" || { echo "chaos: the run failed on its own (exit $?)"; exit 1; }
    echo "chaos: the run finished before the kill (${delay}s)"
    break
  fi
done

resume=()
[ -f runs/chaos/run.json ] && resume=(--resume)
"${TRAIN[@]}" --run-dir runs/chaos "${resume[@]}"
resumed=$(python -c "import json; print(', '.join(str(r['step']) for r in json.load(open('runs/chaos/run.json')).get('resumed', [])) or 'none')")
echo "chaos: $kills kills; the run was resumed from steps: $resumed; comparing with the uninterrupted run:"
if python "$ROOT/scripts/compare_runs.py" runs/reference runs/chaos; then
  echo "VERDICT: IDENTICAL: the run killed $kills times ends bit-identical to the uninterrupted one"
else
  echo "VERDICT: DIFFERENT: see above (work dir $WORK, seed $SEED)"
  exit 1
fi
