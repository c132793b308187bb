#!/bin/bash
# The branches continued to epoch 200 were stopped once their epoch-200 history line was written, before
# the final test evaluation; --resume of a run whose every epoch is done runs only that evaluation (metrics.json).
cd /work/evidence/gtsrb-replay
. /work/venv/bin/activate
export PYTHONPATH=/work/evidence/gtsrb-converged/src-snapshot
screen=$(pgrep -f "gtsrb-lt-r32-screen30.yaml" | head -1)
[ -n "$screen" ] && kill -STOP $screen
trap '[ -n "$screen" ] && kill -CONT $screen' EXIT
for name in "$@"; do nice -n 5 python run_branch.py $name >> $name.log 2>&1; done
