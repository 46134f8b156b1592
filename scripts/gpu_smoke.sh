#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and no package registry (Python, torch, CMake, ninja, pybind11,
# scikit-build-core preinstalled): builds mlserve with the CUDA kernels, checks the binary holds
# sm_90 SASS + PTX, runs the CUDA tests (kernel vs CPU plan) and prints one small timing table.
# The full GPU verification (bench/gpu_check.sh, throughput targets) belongs to the GPU issue.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
t0=$(date +%s)
MLSERVE_CUDA=ON $PY -m pip install -q --no-build-isolation --no-deps --no-cache-dir . 2>&1 | tail -5
echo "build: $(( $(date +%s) - t0 )) s"
so=$($PY -c "import mlserve._core as c; print(c.__file__)")
if command -v cuobjdump >/dev/null; then
  echo "SASS: $(cuobjdump --list-elf "$so" | tr '\n' ' ')"
  echo "PTX:  $(cuobjdump --list-ptx "$so" | tr '\n' ' ')"
fi
$PY -m pytest -q -p no:cacheprovider tests/unit/test_cuda.py tests/unit/test_plan_property.py
$PY - <<'PY'
import time

import numpy as np

import mlserve

print("devices:", mlserve.cuda_devices())
rng = np.random.default_rng(0)
feats = [{"name": f"n{i}", "kind": "numeric",
          "ops": [{"op": "impute", "value": 0.5}, {"op": "clip", "lo": -3, "hi": 50},
                  {"op": "log1p"}, {"op": "standardize", "mean": 1.0, "std": 2.0}],
          "histogram": {"edges": [-np.inf, 0, 1, 2, 4, 8, np.inf]}} for i in range(16)]
feats += [{"name": f"c{i}", "kind": "categorical", "ops": [{"op": "onehot", "size": s}],
           "histogram": True} for i, s in enumerate((4, 12, 30))]
plan = mlserve.FeaturePlan({"features": feats})
print(f"{'rows':>9} {'cpu ms':>9} {'gpu ms (incl. copies)':>22} {'max |diff|':>11}")
for n in (1_000, 100_000, 1_000_000):
    x = rng.normal(2, 3, (n, plan.f_in)).astype(np.float32)
    x[:, 16:] = rng.integers(-1, 35, (n, 3))
    x[rng.random(x.shape) < 0.02] = np.nan
    plan.transform_cuda(x)  # warm-up (context, allocation)
    t = time.perf_counter(); a = plan.transform(x, num_threads=8); tc = time.perf_counter() - t
    t = time.perf_counter(); b = plan.transform_cuda(x); tg = time.perf_counter() - t
    diff = float(np.nanmax(np.abs(a - b))) if n else 0.0
    print(f"{n:>9} {tc * 1e3:>9.2f} {tg * 1e3:>22.2f} {diff:>11.2e}")
PY
