#!/bin/bash
# Issue 19 item 6 (README.md here): replay converged ccar_bs seed 0 exactly (same config, code snapshot, seed; the
# trainer is deterministic) and keep its checkpoint after epoch 146, the state just before the
# training diverged at epoch 147; the replay itself goes on to epoch 152 (does it diverge again at
# 147? the check that the replay is exact) and is then stopped. Branches from the kept state: branch.sh.
cd /work/evidence/gtsrb-replay
. /work/venv/bin/activate
export PYTHONPATH=/work/evidence/gtsrb-converged/src-snapshot
nice -n 5 python -m longtail train --config ccar_bs-seed0-original-config.yaml data.root=/tmp/gtsrb-data/gtsrb-32 \
    train.output_dir=/work/evidence/gtsrb-replay train.run_name=replay > replay.log 2>&1 &
pid=$!
while kill -0 $pid 2>/dev/null; do
  n=$(grep -c . replay/history.jsonl 2>/dev/null || echo 0)
  if [ "$n" -eq 146 ] && [ ! -f epoch146.pt ]; then cp replay/checkpoints/last.pt epoch146.tmp && mv epoch146.tmp epoch146.pt; fi
  if [ "$n" -ge 152 ]; then kill $pid; fi
  sleep 2
done
