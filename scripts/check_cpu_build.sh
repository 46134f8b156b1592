#!/usr/bin/env bash
# Builds the extension with MLSERVE_CUDA=OFF (as on a machine without nvcc) into build/cpu-only,
# then imports that build on its own and checks it normalizes like the default build.
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/cpu-only
rm -rf "$out/wheel" "$out/site"
MLSERVE_CUDA=OFF python -m pip wheel -q --no-build-isolation --no-deps \
  -C build-dir="$out/cmake" -w "$out/wheel" .
python -m zipfile -e "$out"/wheel/mlserve-*.whl "$out/site"
# -S: skip site.py, so the editable install's import hook (a .pth file) is not loaded; the
# venv's site-packages is appended by hand for numpy.
python -S - "$out/site" <<'PY'
import sys
import sysconfig

site = __import__("os").path.abspath(sys.argv[1])
sys.path.insert(0, site)
sys.path.append(sysconfig.get_paths()["purelib"])
import numpy as np  # noqa: E402

import mlserve  # noqa: E402

assert mlserve.__file__.startswith(site), mlserve.__file__
assert not mlserve.cuda_built() and mlserve.cuda_devices() == []
plan = mlserve.FeaturePlan({"features": [
    {"name": "a", "kind": "numeric", "ops": [{"op": "impute", "value": 1}, {"op": "standardize", "mean": 1, "std": 2}]},
    {"name": "c", "kind": "categorical", "ops": [{"op": "onehot", "size": 2}]}]})
y = plan.transform(np.array([[np.nan, 1], [5, 7]], np.float32))
np.testing.assert_array_equal(y, [[0, 0, 1, 0], [2, 0, 0, 1]])
try:
    plan.transform_cuda(np.zeros((1, 2), np.float32))
except mlserve.errors.Unavailable as e:
    print("cpu-only build: ok (transform_cuda ->", type(e).__name__ + ")")
else:
    raise SystemExit("transform_cuda did not raise Unavailable in a CPU-only build")
# The GPU backends and tools import, and every GPU path says the build has no CUDA.
from mlserve import Engine, _core, gpu, gpu_cli, tensorrt_engine  # noqa: E402,F401
for backend, model in (("normalize-cuda", None), ("python-cuda", lambda b: b),
                       ("torch-cuda", "model.pt"), ("tensorrt", "model.plan")):
    try:
        Engine(plan, model, backend=backend)
    except mlserve.errors.Unavailable as e:
        assert "without CUDA" in str(e), e
    else:
        raise SystemExit(f"backend {backend} did not raise Unavailable in a CPU-only build")
assert gpu.backend_status()["torch-cuda"] != "ok"
a = _core._dlpack_host_array(np.ones((2, 3), np.float32))
np.testing.assert_array_equal(np.from_dlpack(a), np.ones((2, 3)))
assert _core.cuda_driver_version() == 0
print("cpu-only build: GPU backends -> Unavailable, DLPack on host arrays: ok")
PY
