// Compiling a plan's specialized normalize kernels (plan/plan_codegen.h) with NVRTC, with a
// per-process cache. Builds in every configuration: compiling needs NVRTC, not a GPU or the
// CUDA runtime, so tests check the generated code on machines without either.
//
// Thread-safety: any thread; concurrent compiles of the same key may both compile (the first
// result stays cached).
#pragma once

#include <memory>
#include <string>

#include "cuda/nvrtc.h"
#include "plan/feature_plan.h"
#include "plan/plan_codegen.h"

namespace mlserve {

// Which normalize kernel a DevicePlan runs: the generic one (interprets the plan), the JIT one
// (specialized, compiled by NVRTC: construction fails when it cannot be built), or auto (the
// default: jit-tma where it builds, else jit, else the generic one; asking for kJit or kJitTma
// shows why it does not build). kJitTma: the JIT kernel moving its tiles with Hopper's bulk
// copies (sm_90+). Measured on an H100 (docs/gpu.md): generic 64% of a device-to-device copy,
// jit 77-81%, jit-tma 78-80% on the realistic plan at 4M rows.
enum class NormalizeKernelChoice { kGeneric, kJit, kJitTma, kAuto };

// "generic" | "jit" | "jit-tma" | "auto"; "" is the default: $MLSERVE_CUDA_KERNEL when set, else
// auto.
// Throws Error(kInvalidInput) for anything else.
NormalizeKernelChoice ParseNormalizeKernelChoice(const std::string& name);

struct JitBinary {
  std::shared_ptr<const NvrtcOutput> output;  // CUBIN (sm_XX) or PTX (compute_XX), log, time
  bool cached = false;                        // taken from the cache, not compiled by this call
  int tile_rows = 0;
};

// Tile the JIT kernel uses for a plan when none is given: the largest multiple of 32 rows that
// fits 16 KiB of shared memory, as the generic kernel's tile; 0 when 32 rows do not fit.
int DefaultJitTileRows(const FeaturePlan& plan);

// Generates and compiles the plan's kernels for `arch` ("sm_90" or "compute_90") in `shape`
// (tile_rows 0: DefaultJitTileRows). Throws Error(kUnavailable) when the plan does not suit the
// JIT kernel or NVRTC is missing, Error(kInvalidInput) for a bad shape, Error(kInternal) with the
// compiler's log when it fails to compile.
JitBinary CompileJitNormalizeKernel(const FeaturePlan& plan, const std::string& arch,
                                    JitKernelShape shape);

// The shape a DevicePlan's JIT kernel is built with: the default tile, unless the tuning
// variables MLSERVE_CUDA_JIT_TILE_ROWS / MLSERVE_CUDA_JIT_MIN_BLOCKS say otherwise (for
// benchmarks: bench/gpu_check.py sweeps them). Throws Error(kInvalidInput) for values that are
// not integers.
JitKernelShape JitShapeFromEnv(bool tma);

}  // namespace mlserve
