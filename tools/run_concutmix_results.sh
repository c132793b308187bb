#!/usr/bin/env bash
# Evidence grid of issue 14 (NOT run yet on this machine: about 2 x 30 h of 2-core CPU, see docs/concutmix.md).
#   bash tools/run_concutmix_results.sh [OUTPUT_DIR]     (env: JOBS=2 parallel cells, DATA=../shared/data)
# Interrupted? Run it again: finished cells are kept, checkpointed ones resume.
#
# Main protocol: cifar5-jpeg-lt-r32 = five CIFAR-10 classes as JPEG (natural RGB images, so the
# contrastive branch's colour / blur views mean something), long-tailed IF 100 with the LDAM-DRW
# generator (7289 training images), ResNet-32, 30 epochs, batch 128, lr 0.1 (x0.01 at 24, x0.0001
# at 27), decoded once into memory (batched on-device views). 30 epochs = 1710 steps: more than
# ten times what the contrastive branch gets in a few-epoch run, and ConCutMix uses the rectified
# label for the second half (epochs 16-30). Every method sees the same split, initialisation and
# data order per seed (compare --paired); nothing is tuned on the test split (no selection: the
# final epoch's weights are reported).
set -euo pipefail
OUT=${1:-runs/concutmix-results}
DATA=${DATA:-../shared/data}
JOBS=${JOBS:-2}
COMMON=(--seeds 0,1,2 --jobs "$JOBS")

JPEG=$OUT/data/cifar10-5class-jpeg
if [ ! -d "$JPEG/train" ]; then
  mkdir -p "$OUT/data" && python -c "import zipfile,sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
    "$DATA/cifar10-5class-jpeg.zip" "$OUT/data"
fi

# 1. Natural images: baselines, CCAR / CAR, ConCutMix and CAR + ConCutMix (8 methods x 3 seeds).
longtail compare --recipe cifar5-jpeg-lt-r32 --reference bs "${COMMON[@]}" --output "$OUT/cifar5-jpeg" \
  --methods ce,bs,ldam_drw,ccar_bs,car_bs,car_ccar_bs,concutmix,car_concutmix "data.root=$JPEG"

# 2. Ablation that separates the parts (same protocol, same paired seeds): BCL alone, BCL + CutMix
#    with the area label, full ConCutMix (rectified label), the last shared with grid 1.
mkdir -p "$OUT/cifar5-jpeg-ablation/cells"
cp -rn "$OUT/cifar5-jpeg/cells/"concutmix-seed{0,1,2} "$OUT/cifar5-jpeg-ablation/cells/" 2>/dev/null || true
longtail compare --recipe cifar5-jpeg-lt-r32 --reference bcl "${COMMON[@]}" --output "$OUT/cifar5-jpeg-ablation" \
  --methods bcl,bcl_cutmix,concutmix "data.root=$JPEG"

# 3. Rectification strength: the released omega_s (K / 1275) against omega_s = 1 (the label moves up
#    to rho of its mass), to tell whether the rectified label matters at all (docs/concutmix.md).
mkdir -p "$OUT/cifar5-jpeg-omega/cells"
cp -rn "$OUT/cifar5-jpeg/cells/"concutmix-seed{0,1,2} "$OUT/cifar5-jpeg-omega/cells/" 2>/dev/null || true
longtail compare --recipe cifar5-jpeg-lt-r32 --reference concutmix "${COMMON[@]}" --output "$OUT/cifar5-jpeg-omega" \
  --methods concutmix,concutmix:loss.omega_s=1.0 "data.root=$JPEG"

# 4. Fashion-MNIST-LT (embedded, grey 28 x 28, small CNN, 12 epochs): ConCutMix and CAR + ConCutMix
#    against bs and car_ccar_bs.
longtail compare --recipe fashion-mnist-lt --reference bs "${COMMON[@]}" --output "$OUT/fashion-mnist-lt" \
  --methods bs,car_ccar_bs,concutmix,car_concutmix
