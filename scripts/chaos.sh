#!/usr/bin/env bash
# Re-check "survives kill -9" on the built-in task: train once without interruption, then train
# the same config again while killing it with SIGKILL at random moments, resuming with --resume
# after each kill. The final weights and metrics.jsonl must be bit-identical to the
# uninterrupted run (metrics.jsonl compared on every field but the wall-clock "time").
#
#   scripts/chaos.sh [KILLS] [WORKDIR]     default: 5 kills, a new temporary directory
#   CHAOS_SEED=123 scripts/chaos.sh        the same kill moments again
#
# Prints one line per kill and a verdict. Exit 0: identical; 1: they differ (or a run failed);
# 2: inconclusive (identical, but no kill came after the first checkpoint).
set -euo pipefail

KILLS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${2:-$(mktemp -d -t transfer-chaos.XXXXXX)}
SEED=${CHAOS_SEED:-$RANDOM}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" CI=1
# the built-in task of the quickstart, shortened: 64 steps on CPU, a checkpoint every 8 steps
TRAIN=(python -m transfer_cli pretrain "$ROOT/configs/quickstart/pretrain.yaml" --quiet
       --set train.device=cpu --set train.epochs=2 --set train.eval_every_steps=8)

mkdir -p "$WORK"
cd "$WORK"
echo "chaos: work dir $WORK, seed $SEED, $KILLS kills"

start=$(date +%s.%N)
"${TRAIN[@]}" --run-dir runs/reference
span=$(python -c "print(round(max(1.0, $(date +%s.%N) - $start), 2))")
echo "chaos: the uninterrupted run took ${span}s"

resume_flag() {  # the chaotic run is resumed once it has started
  if [ -f runs/chaos/run.json ]; then echo --resume; fi
}
records() { if [ -f runs/chaos/metrics.jsonl ]; then wc -l < runs/chaos/metrics.jsonl; else echo 0; fi; }

kills=0
attempt=0
restarts=0
while [ "$kills" -lt "$KILLS" ]; do
  attempt=$((attempt + 1))
  logged=$(records)
  "${TRAIN[@]}" --run-dir runs/chaos $(resume_flag) &
  pid=$!  # python itself, so that kill -9 hits the training process
  # one kill in three at any moment of the first 60% of a run's life (start-up included); the
  # others shortly after the next evaluation is logged: while a checkpoint is written, or training
  # goes on
  read -r moment delay < <(python -c "
import random
r = random.Random($SEED * 1000 + $attempt)
print(*(('anytime', round(r.uniform(0, $span * 0.6), 2)) if r.random() < 1 / 3 else
        ('after-an-evaluation', round(r.uniform(0, $span / 16), 2))))")
  if [ "$moment" = after-an-evaluation ]; then
    while kill -0 "$pid" 2>/dev/null && [ "$(records)" -le "$logged" ]; do sleep 0.01; done
  fi
  sleep "$delay"
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    kills=$((kills + 1))
    last=$(python -c "import os; print(os.readlink('runs/chaos/checkpoints/last'))" 2>/dev/null || echo "none yet")
    echo "chaos: kill -9 #$kills, $moment +${delay}s (last complete checkpoint: $last)"
  else
    wait "$pid" || { echo "chaos: the run failed on its own (exit $?)"; exit 1; }
    if [ "$restarts" -ge 3 ]; then
      echo "chaos: the run finished before kill #$((kills + 1)); comparing what there is"
      break
    fi
    # faster than expected (the machine got less busy): start over, with kills drawn earlier
    echo "chaos: the run finished before kill #$((kills + 1)); starting the chaotic run over"
    rm -rf runs/chaos
    kills=0
    restarts=$((restarts + 1))
    span=$(python -c "print(round($span * 0.7, 2))")
  fi
done

status=$(python -c "import json; print(json.load(open('runs/chaos/run.json'))['status'])" 2>/dev/null || echo none)
if [ "$status" != completed ]; then
  "${TRAIN[@]}" --run-dir runs/chaos $(resume_flag)
fi
read -r resumed mid_run < <(python -c "
import json
steps = [r['step'] for r in json.load(open('runs/chaos/run.json')).get('resumed', [])]
print(','.join(map(str, steps)) or 'none', int(any(steps)))")
echo "chaos: $kills kills; resumed from steps: $resumed; compared with the uninterrupted run:"
if ! python "$ROOT/scripts/compare_runs.py" runs/reference runs/chaos; then
  echo "VERDICT: DIFFERENT: see above (work dir $WORK, seed $SEED)"
  exit 1
fi
if [ "$mid_run" = 0 ]; then
  echo "VERDICT: INCONCLUSIVE: identical, but no kill came after the first checkpoint; run it again"
  exit 2
fi
echo "VERDICT: IDENTICAL: the run killed $kills times ends bit-identical to the uninterrupted one"
