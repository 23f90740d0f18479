#!/usr/bin/env bash
# GPU readiness check, in under 8 minutes on one CUDA GPU (run from anywhere):
#   bash benchmarks/gpu_check.sh
# 1. the tests marked gpu: AMP bf16 and fp16 (loss scaling), channels_last, torch.compile, data
#    on the device, the teacher cache, a 1-GPU torchrun run;
# 2. `kdzoo bench` on CUDA for the two reference KD pairs, with the projected time of a
#    240-epoch CIFAR-100 run (50,000 training images per epoch; evaluation not included).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import kdzoo" 2>/dev/null || pip install -q -e ".[test]"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA GPU: this check needs one"
print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
PY
python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
out="${TMPDIR:-/tmp}/kdzoo-gpu-check"
mkdir -p "$out"
for pair in "resnet110 resnet20" "resnet32x4 resnet8x4"; do
  set -- $pair
  python -m kdzoo bench --device cuda --cases baseline,st --teacher "$1" --student "$2" \
    --batch-size 64 --steps 50 --rounds 3 --images 4096 --test-images 512 --amp bf16 \
    --workdir "$out" --json "$out/$1-$2.json"
  python - "$out/$1-$2.json" "$1" "$2" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
for case, result in results["cases"].items():
    for side, entry in result["sides"].items():
        ips = entry["images_per_second_median"]
        hours = 240 * 50_000 / ips / 3600
        print(f"{sys.argv[2]} -> {sys.argv[3]} {case} [{side}]: {ips:.0f} img/s, "
              f"240 CIFAR-100 epochs ~ {hours:.2f} h")
PY
done
