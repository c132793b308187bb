#!/bin/bash
# Issue 19 item 5: the converged GTSRB-LT grid (gtsrb-lt-r32-converged.yaml, 200 epochs), run as
# checkpointed compare cells: seed 0 of every method, then seed 1, then seed 2 (finished cells are
# reused, an interrupted one resumes from its checkpoint). Rerun this script to continue.
#   EVIDENCE     where the grid lives (default /work/evidence/gtsrb-converged; outside git)
#   LONGTAIL_SRC the source tree to run (default: EVIDENCE/src-snapshot, copied from this repository's
#                src/ on the first start, so that later commits never change a grid half-way)
#   GTSRB_ROOT   the unzipped gtsrb-32 folder (default /tmp/gtsrb-data/gtsrb-32, unzipped if missing)
#   JOBS         cells at once (default 2, one per core; 1 leaves a core for another grid)
set -e
python -c "import torch" 2>/dev/null || {
  echo "$(basename "$0"): python cannot import torch: activate the project's environment first (README: pip install -e .)" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
EVIDENCE=${EVIDENCE:-/work/evidence/gtsrb-converged}
GTSRB_ROOT=${GTSRB_ROOT:-/tmp/gtsrb-data/gtsrb-32}
mkdir -p "$EVIDENCE"
if [ ! -d "$EVIDENCE/src-snapshot" ]; then
  cp -r "$REPO/src" "$EVIDENCE/src-snapshot"
  git -C "$REPO" rev-parse HEAD > "$EVIDENCE/src-snapshot/COMMIT"
fi
cp "$HERE/gtsrb-lt-r32-converged.yaml" "$EVIDENCE/"
export PYTHONPATH=${LONGTAIL_SRC:-$EVIDENCE/src-snapshot}
if [ ! -d "$GTSRB_ROOT" ]; then
  mkdir -p "$(dirname "$GTSRB_ROOT")" && unzip -q "$REPO/../shared/data/gtsrb-32.zip" -d "$(dirname "$GTSRB_ROOT")"
fi
METHODS=${METHODS:-bs,ccar_bs,car_bs,car_ccar_bs,ce}
cd "$EVIDENCE"
for SEEDS in 0 0,1 0,1,2; do
  nice -n 5 python -m longtail compare --config "$EVIDENCE/gtsrb-lt-r32-converged.yaml" --methods "$METHODS" \
    --seeds "$SEEDS" --output "$EVIDENCE" --jobs "${JOBS:-2}" "data.root=$GTSRB_ROOT"
  mkdir -p "seeds-$SEEDS" && cp comparison.md comparison.csv comparison.json "seeds-$SEEDS/"
done
