#!/usr/bin/env bash
# The GPU checks of issue 16, in one run (about 5-10 minutes on one H100/H200). NOT RUN YET: no GPU was lent
# while this was written; docs/performance.md says so until its figures are filled in from a run.
#   scripts/gpu_check.sh [IMAGE_FOLDER]    (default: 1,000 generated JPEGs in 20 classes)
# 1. installs the pinned stack into .venv-gpu (the repository's requirements, as `make setup` does);
# 2. checks that batches fed through pinned memory equal the CPU path's, bit for bit;
# 3. `clipbench bench --data`: store decode rate against torchvision, warm start, peak memory, and ViT-B/16
#    bf16 training images/s fed from the store beside the same step on images already on the device;
# 4. `clipbench bench --rehearse --arch ViT-B-16`: the CIFAR-100-sized stream through the store, on the GPU;
# 5. the real-suite slow test (paper, mtil, cil_cifar100 on ViT-B-32, a few steps each) on the GPU.
# Everything it prints is also written under ${OUT:-gpu_check_out}/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

nvidia-smi || { echo "no GPU visible"; exit 1; }
VENV=.venv-gpu
if [ ! -x "$VENV/bin/clipbench" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e .
fi
PY="$VENV/bin/python"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"

DATA="${1:-}"
if [ -z "$DATA" ]; then
  DATA="$OUT/folder1k"
  "$PY" - "$DATA" <<'PYEOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
root, rng = Path(sys.argv[1]), np.random.default_rng(0)
for k in range(1000):
    folder = root / f"class{k % 20:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    h, w = rng.integers(200, 600, 2)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{k:04d}.jpg", quality=90)
PYEOF
fi

echo "== pinned feeding equals the CPU path"
"$PY" - <<'PYEOF'
import torch
from clipbench.avalanche_api import TensorBatches
from clipbench.evaluate import encode_images
from clipbench.models import load_model
images = torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8)
labels = torch.arange(100) % 7
for device in ("cpu", "cuda"):
    torch.manual_seed(0)
    got = [(x.cpu(), y.cpu()) for x, y, _ in TensorBatches(images, labels, 16, batches=9, device=device)]
    if device == "cpu":
        want = got
assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(want, got)), "pinned batches differ"
loaded = load_model("clipbench-tiny", None, "cuda")
gpu = encode_images(loaded, images, 16, device="cuda")
assert gpu.device.type == "cpu" and gpu.shape[0] == 100
print("pinned batches equal the CPU path; features come back to the CPU")
PYEOF

echo "== clipbench bench --data $DATA"
"$VENV/bin/clipbench" bench --data "$DATA" --data-only --repeats 1 | tee "$OUT/bench_data.json"

echo "== real scale rehearsed: a CIFAR-100-sized stream (50,000 + 10,000 JPEGs at 224 px), ViT-B/16 on the GPU"
"$VENV/bin/clipbench" bench --rehearse --arch ViT-B-16 | tee "$OUT/bench_rehearse.json"

echo "== real suites on the GPU (slow test)"
"$PY" -m pytest -q -m slow tests/test_real_suites.py --durations=5 | tee "$OUT/slow_test.txt"
echo "gpu_check done"
