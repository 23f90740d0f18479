#!/usr/bin/env bash
# The README's tuned comparison: every method tuned with the same budget on the validation split
# of a 10,000-image Fashion-MNIST subset (resnet20 -> resnet8), then its best settings and its
# untuned defaults trained on 3 seeds and tested. Needs `apt-get install -y
# dataset-fashion-mnist`. Usage: bash benchmarks/tune_fashion_mnist.sh [OUT_DIR] [TRIALS]
set -euo pipefail
OUT=${1:-runs/tune-fashion-mnist}
TRIALS=${2:-10}
COMMON=(--student resnet8 --data fashion-mnist --set data.train_subset=10000
        --val-split 0.1 --epochs 5 --batch-size 128 --lr 0.1 --set optim.weight_decay=5e-4
        --set optim.schedule=cosine --no-progress)
TEACHER=$OUT/teacher
if [ ! -f "$TEACHER/summary.json" ] || ! grep -q '"finished": true' "$TEACHER/summary.json"; then
  kdzoo -q train --method baseline --student resnet20 --data fashion-mnist \
    --set data.train_subset=10000 --val-split 0.1 --epochs 10 --batch-size 128 --lr 0.1 \
    --set optim.weight_decay=5e-4 --set optim.schedule=cosine --no-progress --out "$TEACHER" \
    $( [ -d "$TEACHER" ] && echo --resume )
fi
start=$(date +%s)
for seed in 0 1 2; do  # the untuned student alone, the baseline of every row
  run=$OUT/baseline/baseline-s$seed
  [ -f "$run/student.pt" ] || kdzoo -q train --method baseline "${COMMON[@]}" --seed "$seed" \
    --out "$run" $( [ -d "$run" ] && echo --resume )
done
for method in st kd dkd dist at crd; do
  kdzoo -q tune --method "$method" --teacher resnet20 \
    --teacher-checkpoint "$TEACHER/student.pt" "${COMMON[@]}" \
    --n-trials "$TRIALS" --trial-epochs 3 --final-seeds 3 --out "$OUT/$method"
  echo "$method done after $(( $(date +%s) - start )) s"
done
kdzoo report "$OUT"/baseline "$OUT"/st "$OUT"/kd "$OUT"/dkd "$OUT"/dist "$OUT"/at "$OUT"/crd
echo "total $(( $(date +%s) - start )) s after the teacher"
