#!/bin/bash
# Issue 23 item 7: light fine-tuning against full fine-tuning and the best from-scratch model, with
# bs / ccar_bs / car_bs on top of the recipe's mode, 3 paired seeds, on two long-tailed folders:
#   cifar5-2k : the 5-class CIFAR JPEG set, first 1400 train / 200 test images per class, IF 100 (2,040 images)
#   gtsrb-lt  : GTSRB-32 made long-tailed like gtsrb-lt-r32 (frequency order, n_max 1000, IF 100: 9,523 images)
# Each is one checkpointed `compare` (finished cells are reused): rerun this script to continue.
#   EVIDENCE (default /work/evidence/finetune-lt), LONGTAIL_SRC (default EVIDENCE/src-snapshot, copied
#   from this repository's src/ at the first start), DATASETS (default "cifar5-2k gtsrb-lt"),
#   JOBS (cells at once, default 2: one per core; 1 leaves a core for another grid).
set -e
python -c "import torch" 2>/dev/null || {
  echo "$(basename "$0"): python cannot import torch: activate the project's environment first (README: pip install -e .)" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SHARED=$REPO/../shared/data
EVIDENCE=${EVIDENCE:-/work/evidence/finetune-lt}
mkdir -p "$EVIDENCE/data"
if [ ! -d "$EVIDENCE/src-snapshot" ]; then
  cp -r "$REPO/src" "$EVIDENCE/src-snapshot" && git -C "$REPO" rev-parse HEAD > "$EVIDENCE/src-snapshot/COMMIT"
fi
export PYTHONPATH=${LONGTAIL_SRC:-$EVIDENCE/src-snapshot}
cp "$HERE/finetune.yaml" "$EVIDENCE/"
# The data: unzipped once; cifar5-2k is a folder of links to the first 1400 / 200 images of each class.
[ -d "$EVIDENCE/data/gtsrb-32" ] || unzip -q "$SHARED/gtsrb-32.zip" -d "$EVIDENCE/data"
if [ ! -d "$EVIDENCE/data/cifar5-2k" ]; then
  unzip -q "$SHARED/cifar10-5class-jpeg.zip" -d "$EVIDENCE/data"
  for split in train:1400 test:200; do
    name=${split%%:*}; keep=${split##*:}
    for class in "$EVIDENCE/data/cifar10-5class-jpeg/$name"/*/; do
      target="$EVIDENCE/data/cifar5-2k/$name/$(basename "$class")"; mkdir -p "$target"
      ls "$class" | sort | head -n "$keep" | while read -r f; do ln -s "$class$f" "$target/$f"; done
    done
  done
fi
# Methods: the recipe's mode (classifier on cached 224-px features) with three losses, then the
# modes that train through the backbone, with bs, at the sizes a CPU affords (RESULTS.md issue 23).
BACKBONE=":optim.lr=0.02:optim.epochs=4:optim.warmup_epochs=0"
METHODS="bs,ccar_bs,car_bs"
METHODS+=",bs:model.finetune=norm_bias:data.image_size=96:data.crop_padding=12$BACKBONE"
METHODS+=",bs:model.finetune=last_stage:data.image_size=96:data.crop_padding=12$BACKBONE"
METHODS+=",bs:model.finetune=lora:data.image_size=64:data.crop_padding=8$BACKBONE"
METHODS+=",bs:model.finetune=full:data.image_size=64:data.crop_padding=8$BACKBONE"
for DATASET in ${DATASETS:-cifar5-2k gtsrb-lt}; do
  case $DATASET in
    cifar5-2k) DATA="data.root=$EVIDENCE/data/cifar5-2k data.imbalance_factor=100" ;;
    gtsrb-lt)  DATA="data.root=$EVIDENCE/data/gtsrb-32 data.imbalance_factor=100 data.class_order=frequency data.n_max=1000 data.flip=false" ;;  # signs are not mirror-symmetric
  esac
  nice -n 5 python -m longtail compare --config "$EVIDENCE/finetune.yaml" --methods "$METHODS" --seeds 0,1,2 \
    --output "$EVIDENCE/$DATASET" --jobs "${JOBS:-2}" $DATA
  # From scratch on cifar5-2k (GTSRB-LT's from-scratch cells are the screen's, results/gtsrb-lt-screen/):
  # ResNet-32 at 32 px, the 30-epoch cifar5-jpeg-lt-r32 protocol.
  if [ "$DATASET" = cifar5-2k ]; then
    nice -n 5 python -m longtail compare --recipe cifar5-jpeg-lt-r32 --methods bs --seeds 0,1,2 \
      --output "$EVIDENCE/cifar5-2k-scratch" --jobs "${JOBS:-2}" "data.root=$EVIDENCE/data/cifar5-2k" train.threads=1 train.progress=false
  fi
done
