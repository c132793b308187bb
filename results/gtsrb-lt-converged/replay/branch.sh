#!/bin/bash
# Issue 19 item 6: from the replayed state after epoch 146 (make_branch.py), epochs 147-152 with
# Balanced Softmax alone, CCAR + BS whose weights are divided by their batch mean, and Balanced
# Softmax at twice the lr (about the step CCAR's Omega, up to 2.1, gives the samples it gets wrong).
cd /work/evidence/gtsrb-replay
. /work/venv/bin/activate
export PYTHONPATH=/work/evidence/gtsrb-converged/src-snapshot
while pgrep -f "run_name=replay" > /dev/null || [ ! -f epoch146.pt ]; do sleep 10; done
for spec in "bs-from-146 bs" "batchmean-from-146 ccar_bs weight_normalization=batch_mean" "bs-lr0.2-from-146 bs optim.lr=0.2"; do
  set -- $spec
  python make_branch.py "$@"
  nice -n 5 python -m longtail train --resume $1 > $1.log 2>&1 &
  pid=$!
  while kill -0 $pid 2>/dev/null; do
    [ "$(grep -c . $1/history.jsonl 2>/dev/null || echo 0)" -ge 152 ] && kill $pid
    sleep 2
  done
done
