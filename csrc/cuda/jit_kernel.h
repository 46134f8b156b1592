// JitNormalizeKernel: the normalize kernel specialized for one plan (plan/plan_codegen.h),
// compiled by NVRTC for the device's architecture and loaded with cudaLibraryLoadData. CUDA
// builds only (like device_plan.h, which owns one when the plan runs with the JIT kernel).
//
// Compiled binaries are cached per process by (source, architecture), so the instances of one
// model (one DevicePlan each) compile once. The first compile of a plan takes a fraction of a
// second to a few seconds (reported by compile_ms()); it happens at model load, never per batch.
//
// Thread-safety: construction may run concurrently (the cache is locked); a constructed kernel is
// immutable and Launch may be called from any thread. Launch does not query the device, so it can
// be captured into a CUDA graph.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "plan/feature_plan.h"

namespace mlserve {

class JitNormalizeKernel {
 public:
  // Generates, compiles (or takes from the cache) and loads the plan's kernels on `device`,
  // which must be current. Throws Error(kUnavailable) when the plan does not suit it (rows too
  // wide for a 32-row tile, or no output and no histograms), the tile does not fit the device's
  // shared memory, or NVRTC is missing, and
  // Error(kInternal) when compiling or loading fails, with the reason.
  // tma: the variant with Hopper's bulk copies (sm_90+; Unavailable on older devices). The tile
  // and launch bounds come from JitShapeFromEnv (defaults unless tuning variables are set).
  JitNormalizeKernel(const FeaturePlan& plan, int device, bool tma = false);
  ~JitNormalizeKernel();
  JitNormalizeKernel(const JitNormalizeKernel&) = delete;
  JitNormalizeKernel& operator=(const JitNormalizeKernel&) = delete;

  // Whether a launch with these arguments runs here: 16-byte aligned buffers, and, when
  // counting, counters that fit in shared memory and fewer than 2^32 elements. Otherwise the
  // caller runs the generic kernel (same results).
  bool Accepts(const float* d_in, int64_t n, const float* d_out, bool counting) const;

  // Runs the plan over n rows (see mls_cuda_normalize for the buffers). d_counters null: no
  // histograms. Returns a cudaError_t.
  cudaError_t Launch(const float* d_in, int64_t n, float* d_out, int64_t* d_counters,
                     cudaStream_t stream) const;

  int tile_rows() const { return tile_rows_; }
  int blocks_per_sm() const { return blocks_per_sm_; }
  int max_blocks() const { return max_blocks_; }
  double compile_ms() const { return compile_ms_; }  // 0 when the binary came from the cache
  const std::string& arch() const { return arch_; }
  bool tma() const { return tma_; }
  int min_blocks() const { return min_blocks_; }
  int registers() const { return registers_; }      // per thread, the larger of the two kernels
  int local_bytes() const { return local_bytes_; }  // per thread (register spills)

 private:
  // Launches both kernels over no rows and waits: loads them into the context now (with lazy
  // loading a library kernel is loaded at its first launch, which would be inside the pipeline's
  // stream capture), and a launch configuration the device refuses fails at model load (where
  // kernel="auto" falls back to the generic kernel) instead of on every batch.
  void Preload() const;

  int f_in_ = 0;
  int f_out_ = 0;
  int n_counters_ = 0;
  int tile_rows_ = 0;
  int blocks_per_sm_ = 0;
  int max_blocks_ = 0;
  double compile_ms_ = 0.0;
  bool tma_ = false;
  int min_blocks_ = 0;
  int registers_ = 0;
  int local_bytes_ = 0;
  std::string arch_;
  cudaLibrary_t library_ = nullptr;
  cudaKernel_t plain_ = nullptr;    // mls_jit_normalize
  cudaKernel_t counted_ = nullptr;  // mls_jit_normalize_counted
};

}  // namespace mlserve
