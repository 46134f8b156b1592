#!/usr/bin/env bash
# GPU verification of mlserve on a machine with an NVIDIA GPU and no package registry.
#
#   bash bench/gpu_check.sh            # from the repo root (or anywhere: it cd's there)
#
# Needs: python3 (3.12) with torch (CUDA build), numpy, onnxruntime, onnx, onnxscript, pytest,
# hypothesis, msgpack, uvloop, prometheus-client, httpx, rich, pandas, pyarrow, cmake, ninja,
# pybind11 and scikit-build-core installed, and nvcc (CUDA 13). Steps, each with a time limit
# inside an overall budget (GPU_CHECK_BUDGET_S, default 450 s, so the run ends within 8
# minutes), none of which stops the next from running:
#   1. build + install mlserve with the CUDA kernels: pip install --no-build-isolation --no-deps
#      (MLSERVE_CUDA=ON, CUDA archs 90-real;90-virtual), and check it sees the GPU;
#   2. the GPU tests (kernel vs CPU plan, pipeline, torch-cuda vs CPU engine, TensorRT and the
#      HTTP server where their packages are installed);
#   3. the measurements of bench/gpu_check.py (kernel GB/s vs a D2D copy and vs the CPU plan;
#      Engine rows/s and p50/p99 per batch size for cpu / torch-cuda / tensorrt);
# then prints ONE table, last, from whatever was measured (also written to $OUT/, when OUT is
# set, with the logs of every step; else to /tmp/mlserve-gpu-check/).
#
# GPU_CHECK_DRY_RUN=1 goes on without a GPU (the build is then only checked to import): what a
# machine without one can check of this script; the GPU tests skip and GPU measurements fail.
#
# The server test needs starlette, uvicorn, orjson and httptools, which the GPU machine lacks.
# To run it there, carry wheels in the repo's .whl/ folder (git-ignored), made on a machine that
# reaches PyPI, from the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl \
#     starlette==1.10.0 uvicorn==0.54.0 orjson==3.13.0 httptools==0.9.0
# (their other needs, anyio, h11, click and typing_extensions, are on the GPU machine). This
# script installs .whl/*.whl into /tmp/site when the folder exists; without it the server test
# is skipped with its reason. TensorRT likewise (tensorrt-cu13 wheels), else its tests skip.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
LOG=${OUT:-/tmp/mlserve-gpu-check}
mkdir -p "$LOG"
PHASES="$LOG/phases.tsv"
: > "$PHASES"
START=$SECONDS

# Seconds a step may take: its cap, bounded by what is left of the budget (25 s kept for the
# table). Prints 0 when too little is left to start it.
limit() {
  local cap=$1 left=$((BUDGET - (SECONDS - START) - 25))
  (( left < cap )) && cap=$left
  (( cap < 15 )) && cap=0
  echo "$cap"
}
record() { printf '%s\t%s\t%ss\n' "$1" "$2" "$3" >> "$PHASES"; echo "== $1: $2 ($3 s)"; }

# ---- 0. environment -------------------------------------------------------------------------------
t=$SECONDS
if ! command -v nvcc >/dev/null; then
  for d in /usr/local/cuda/bin /usr/local/cuda-13.0/bin; do
    if [[ -x $d/nvcc ]]; then export PATH="$d:$PATH"; break; fi
  done
fi
{
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem \
    --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
  $PY --version 2>&1
  timeout 60 $PY -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'numpy', numpy.__version__)" 2>&1
  nvcc --version 2>&1 | tail -1
  echo "cores: $(nproc)"
} 2>&1 | tee "$LOG/env.txt"
if compgen -G ".whl/*.whl" >/dev/null; then
  if timeout 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
       --target /tmp/site .whl/*.whl >> "$LOG/env.txt" 2>&1; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    echo "carried wheels installed: $(ls .whl | tr '\n' ' ')" | tee -a "$LOG/env.txt"
  else
    echo "carried wheels did not install (see env.txt); server test will skip" | tee -a "$LOG/env.txt"
  fi
fi
record environment "$(head -1 "$LOG/env.txt" | cut -c1-80)" $((SECONDS - t))

# ---- 1. build -------------------------------------------------------------------------------------
t=$SECONDS
built=0
lim=$(limit 240)
if (( lim > 0 )); then
  # The build tools the machine provides (scikit-build-core >= 0.11 and pybind11 >= 2.13 needed).
  $PY -m pip list 2>/dev/null | grep -iE '^(scikit[-_]build[-_]core|pybind11|cmake|ninja|torch) ' \
    > "$LOG/build.log"
  MLSERVE_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) timeout -k 5 "$lim" \
    $PY -m pip install --no-build-isolation --no-deps --no-index --no-cache-dir -v \
    -C "cmake.define.CMAKE_CUDA_ARCHITECTURES=90-real;90-virtual" . >> "$LOG/build.log" 2>&1
  status=$?
  if (( status == 0 )) && gpu=$(timeout 60 $PY -c "
import mlserve
assert mlserve.cuda_built(), 'built without CUDA'
devices = mlserve.cuda_devices()
if not devices and '${GPU_CHECK_DRY_RUN:-0}' == '1':
    print('no GPU (dry run)')
    raise SystemExit(0)
assert devices, 'the core sees no GPU'
print(devices[0]['name'], 'sm_%d%d' % tuple(devices[0]['compute_capability']))
" 2>> "$LOG/build.log"); then
    built=1
    so=$($PY -c "import mlserve._core as c; print(c.__file__)" 2>/dev/null)
    if command -v cuobjdump >/dev/null && [[ -n "$so" ]]; then
      echo "SASS: $(timeout 30 cuobjdump --list-elf "$so" 2>&1 | tr '\n' ' ')" >> "$LOG/build.log"
      echo "PTX:  $(timeout 30 cuobjdump --list-ptx "$so" 2>&1 | tr '\n' ' ')" >> "$LOG/build.log"
    fi
    record build "ok, core sees $gpu" $((SECONDS - t))
  else
    tail -30 "$LOG/build.log"
    record build "FAILED (exit $status, see build.log)" $((SECONDS - t))
  fi
else
  record build "skipped: no time left" 0
fi

# ---- 2. GPU tests ---------------------------------------------------------------------------------
t=$SECONDS
lim=$(limit 150)
if (( built == 1 && lim > 0 )); then
  extra=()
  $PY -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout=150)
  # Two runs: everything on the generic kernel first, then the JIT kernels (and `auto`, which
  # picks them), so that a JIT kernel that faults (a sticky CUDA error fails everything after it
  # in the process) cannot take the other GPU tests down with it.
  summary=""
  status=0
  for select in "not (jit or auto)" "jit or auto"; do
    touch "$LOG/tests.log"
    start=$(wc -l < "$LOG/tests.log")
    timeout -k 5 "$lim" $PY -m pytest -q -p no:cacheprovider -rs ${extra[@]+"${extra[@]}"} \
      -W "ignore::DeprecationWarning" -W "ignore::FutureWarning" -W "ignore::UserWarning" \
      -k "$select" \
      tests/unit/test_cuda.py tests/unit/test_gpu_pipeline.py tests/unit/test_gpu_backends.py \
      tests/integration/test_gpu_serving.py >> "$LOG/tests.log" 2>&1
    rc=$?
    (( rc != 0 && status != 124 )) && status=$rc
    # This run's summary line only (both runs append to tests.log).
    part=$(tail -n +$((start + 1)) "$LOG/tests.log" \
      | grep -E '^(=+ )?[0-9]+ (passed|failed|errors?|skipped)|[0-9]+ [a-z]+.* in [0-9.]+s' \
      | tail -1 | sed 's/=//g; s/^ *//')
    (( rc > 1 )) && part="${part:+$part, }exit $rc"
    summary="${summary:+$summary; }[$select] ${part:-no summary (exit $rc)}"
    lim=$(limit 120)
    (( lim > 0 )) || break
  done
  tail -25 "$LOG/tests.log"
  (( status == 124 )) && summary="TIMED OUT; ${summary}"
  record tests "${summary:-no summary (exit $status)}" $((SECONDS - t))
else
  record tests "skipped (build $built, ${lim}s left)" 0
fi

# ---- 3. measurements ------------------------------------------------------------------------------
t=$SECONDS
lim=$(limit 200)
if (( built == 1 && lim > 0 )); then
  secs=1.0
  (( lim < 90 )) && secs=0.3
  timeout -k 5 "$lim" $PY -m bench.gpu_check --out "$LOG" --seconds-per-batch "$secs" \
    > "$LOG/bench.log" 2>&1
  status=$?
  grep -E '^\[gpu_check' "$LOG/bench.log" | tail -40
  record measurements "exit $status$( (( status == 124 )) && echo ' (timed out: partial)')" \
    $((SECONDS - t))
else
  record measurements "skipped (build $built, ${lim}s left)" 0
fi

# ---- the table, always, last ------------------------------------------------------------------------
echo
echo "total: $((SECONDS - START)) s"
$PY -m bench.gpu_check --out "$LOG" --phases "$PHASES" --table > "$LOG/gpu_check_table.txt" 2>&1 \
  || { echo "(table script failed; phases:)"; cat "$PHASES"; } >> "$LOG/gpu_check_table.txt"
cat "$LOG/gpu_check_table.txt"
