#!/usr/bin/env bash
# Reproduces the measured tables of RESULTS.md on a CPU: every method x 3 seeds on Fashion-MNIST-LT
# (embedded, IF 100) and MNIST-LT (IF 100 and 200), plus the CCAR omega and CAR alpha / beta
# ablations. Protocol: the shipped fashion-mnist-lt / mnist-lt recipes shortened to 6 epochs with a
# width-16 small CNN so that all 147 runs fit in about an hour on 2 cores.
#   bash tools/run_results.sh [OUTPUT_DIR]     (env: JOBS=2 parallel cells, DATA=../shared/data)
# Interrupted? Run it again: finished cells are kept, checkpointed ones resume.
set -euo pipefail
OUT=${1:-runs/results}
DATA=${DATA:-../shared/data}
JOBS=${JOBS:-2}
METHODS=ce,focal,cb_focal,ldam_drw,la,bs,focal_bs,ccar_ce,ccar_la,ccar_bs,car,car_bs,car_ccar_bs
PROTOCOL=(optim.epochs=6 "model.options={width: 16}")
COMMON=(--seeds 0,1,2 --jobs "$JOBS")

longtail compare --recipe fashion-mnist-lt --methods "$METHODS" --reference ce "${COMMON[@]}" \
  --output "$OUT/fashion-mnist-lt" "${PROTOCOL[@]}"

# Ablations share their default cells (same config, same paired seeds) with the main grid.
reuse() { mkdir -p "$2/cells"; for cell in "${@:3}"; do cp -rn "$1/cells/$cell" "$2/cells/" 2>/dev/null || true; done; }
reuse "$OUT/fashion-mnist-lt" "$OUT/fashion-mnist-lt-omega" ce-seed{0,1,2} ccar_ce-seed{0,1,2}
longtail compare --recipe fashion-mnist-lt --reference ce "${COMMON[@]}" --output "$OUT/fashion-mnist-lt-omega" \
  --methods ce,ccar_ce:loss.omega=0.25,ccar_ce:loss.omega=0.5,ccar_ce,ccar_ce:loss.omega=1.0 "${PROTOCOL[@]}"
reuse "$OUT/fashion-mnist-lt" "$OUT/fashion-mnist-lt-car" ce-seed{0,1,2} car-seed{0,1,2}
longtail compare --recipe fashion-mnist-lt --reference ce "${COMMON[@]}" --output "$OUT/fashion-mnist-lt-car" \
  --methods ce,car:regularizer.alpha=0.1,car,car:regularizer.alpha=0.5,car:regularizer.alpha=1.0,car:regularizer.beta=0.9 \
  "${PROTOCOL[@]}"

# Decoupled stage 2 on the main grid's ce / bs cells (same seeds): crt / lws start from them.
reuse "$OUT/fashion-mnist-lt" "$OUT/fashion-mnist-lt-decoupled" ce-seed{0,1,2} bs-seed{0,1,2}
longtail compare --recipe fashion-mnist-lt --reference ce "${COMMON[@]}" --output "$OUT/fashion-mnist-lt-decoupled" \
  --methods ce,bs,crt,lws,lws:model.init_from=^bs "${PROTOCOL[@]}"

longtail compare --recipe mnist-lt --methods "$METHODS" --reference ce --imbalance-factors 100,200 "${COMMON[@]}" \
  --output "$OUT/mnist-lt" "data.root=$DATA/mnist" "${PROTOCOL[@]}"
