#!/bin/bash
# Setup (once): unzip ../shared/data/cifar10-5class-jpeg.zip to /tmp/cifar5; copy the first 60 train /
# 20 test images per class to /tmp/imgbench/sub/{train,test}/<class>/; export the old code with
# `git archive 76f6e70 src | tar -x -C /tmp/imgbench/before`.
# Interleaved before/after: main (upscale to 224, RandomResizedCrop) vs this branch (native 32 px, in memory; and files).
cd /tmp/imgbench
COMMON="data.name=imagefolder data.root=/tmp/imgbench/sub optim.epochs=1 train.progress=false train.threads=1 train.eval_train=false"
for round in 1 2; do
  for variant in before branch branch-files; do
    case $variant in
      before) SRC=/tmp/imgbench/before/src; EXTRA="";;
      branch) SRC=/work/wt-imgdata/src; EXTRA="";;
      branch-files) SRC=/work/wt-imgdata/src; EXTRA="data.in_memory=false";;
    esac
    start=$(date +%s.%N)
    line=$(OMP_NUM_THREADS=1 PYTHONPATH=$SRC /work/main/.venv/bin/python -m longtail train $COMMON train.output_dir=/tmp/imgbench/runs-$variant $EXTRA 2>&1 | grep -E "^training:|^\| test")
    end=$(date +%s.%N)
    echo "round $round $variant: $(echo $line | tr '\n' ' ') wall $(echo "$end - $start" | bc) s"
  done
done
