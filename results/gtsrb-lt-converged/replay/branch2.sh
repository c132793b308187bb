#!/bin/bash
# Issue 19 item 6, mitigations (6 December, second session): from the same state after epoch 146, CCAR + BS
# with its gradient norms recorded (run_branch.py; optim.clip_grad_norm=1e9 never clips, so this is the
# collapse again, bit for bit), then with the gradient norm clipped, and at half the lr. The screen grid's
# compare is paused (SIGSTOP) while a branch trains, so that no more than two trainings share the 2 cores.
#   bash branch2.sh NAME STOP_EPOCH LOSS [options as make_branch.py]   # a new branch from epoch 146
#   bash branch2.sh NAME STOP_EPOCH continue                            # go on with an existing branch
cd /work/evidence/gtsrb-replay
. /work/venv/bin/activate
export PYTHONPATH=/work/evidence/gtsrb-converged/src-snapshot
name=$1; stop=$2; shift 2
screen=$(pgrep -f "gtsrb-lt-r32-screen30.yaml" | head -1)
[ -n "$screen" ] && kill -STOP $screen
trap '[ -n "$screen" ] && kill -CONT $screen' EXIT
[ "$1" = continue ] || python make_branch.py $name "$@" || exit 1
nice -n 5 python run_branch.py $name >> $name.log 2>&1 &
pid=$!
while kill -0 $pid 2>/dev/null; do
  [ "$(grep -c . $name/history.jsonl 2>/dev/null || echo 0)" -ge $stop ] && kill $pid
  sleep 2
done
