// Timing of the fused normalize kernel against a device-to-device copy of the same bytes, for
// benchmarks (bench/gpu_check.sh). Measured with CUDA events on one stream, inputs and outputs
// rotated over enough buffer sets that they do not stay in L2. Stateless; throws Error with
// CUDA's message, Error(kUnavailable) without a CUDA build or device.
#pragma once

#include <cstdint>
#include <string>

#include "plan/feature_plan.h"

namespace mlserve {

struct CudaNormalizeTiming {
  double kernel_ms = 0.0;  // median time of one kernel launch over n rows
  double copy_ms = 0.0;    // median time of one cudaMemcpyAsync D2D moving the same bytes
  int64_t bytes = 0;       // bytes the kernel reads + writes (n * (f_in + f_out) * 4)
  int32_t tile_rows = 0;   // kernel configuration (0: per-element kernel)
  int32_t blocks_per_sm = 0;
  int32_t max_blocks = 0;
  int32_t buffer_sets = 0;  // rotated input/output sets
  std::string kernel;       // "jit" or "generic": the kernel that ran
  double jit_compile_ms = 0.0;  // NVRTC time of the JIT kernel (0: generic, or from the cache)
  int32_t registers = 0;    // JIT kernel: registers per thread (0: generic kernel, not queried)
  int32_t local_bytes = 0;  // JIT kernel: local memory per thread (register spills)
};

// Times `iterations` launches over the n rows at host_in (n * f_in floats).
// kernel: "generic" | "jit" | "auto" (cuda/jit_compile.h); "": $MLSERVE_CUDA_KERNEL, else generic.
CudaNormalizeTiming TimeCudaNormalize(const FeaturePlan& plan, const float* host_in, int64_t n,
                                      int device, int iterations, bool histograms,
                                      const std::string& kernel = "");

}  // namespace mlserve
