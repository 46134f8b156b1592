// CudaNormalizer: runs a compiled FeaturePlan on a GPU (kernels/normalize.cu).
//
// Owns device copies of the plan's program, edge and counter arrays and scratch buffers for one
// device. Not thread-safe: one instance per worker (stream). Every CUDA error becomes
// Error(kInternal) or Error(kUnavailable) with the CUDA message; constructing one in a CPU-only
// build or without a usable device throws Error(kUnavailable).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "plan/feature_plan.h"

namespace mlserve {

class CudaNormalizer {
 public:
  // kernel: "generic" | "jit" | "auto"; "": $MLSERVE_CUDA_KERNEL, else generic (jit_compile.h).
  CudaNormalizer(const FeaturePlan& plan, int device, const std::string& kernel = "");
  // "jit" or "generic": the kernel this normalizer runs (where the JIT one accepts a launch).
  std::string kernel_name() const;
  ~CudaNormalizer();
  CudaNormalizer(const CudaNormalizer&) = delete;
  CudaNormalizer& operator=(const CudaNormalizer&) = delete;

  // host_in: n * plan.f_in() floats; host_out: n * plan.f_out() floats. Copies in, runs the
  // fused kernel, copies out, and (histograms) merges the kernel's counters into the plan.
  void Transform(const float* host_in, int64_t n, float* host_out, bool histograms);

 private:
  struct Impl;
  const FeaturePlan& plan_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mlserve
