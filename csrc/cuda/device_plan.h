// DevicePlan: a compiled FeaturePlan uploaded to one GPU, plus the RAII buffers the CUDA host
// code uses (DeviceBuffer: cudaMalloc'ed, PinnedBuffer: cudaHostAlloc'ed page-locked host
// memory). Only compiled into CUDA builds (MLSERVE_WITH_CUDA); nothing outside csrc/cuda
// includes this header, so the rest of the core never sees the CUDA headers.
//
// Ownership: each object owns its allocations and frees them on destruction (errors ignored:
// teardown never throws). The FeaturePlan must outlive its DevicePlan. Thread-safety: none; a
// DevicePlan is used by one owner (a normalizer or one instance's pipeline) at a time. Every
// constructor expects the plan's device to be current on the calling thread.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "cuda/jit_compile.h"
#include "cuda/jit_kernel.h"
#include "normalize.h"
#include "plan/feature_plan.h"

namespace mlserve {

// Grow-only array of T in device memory (cudaMalloc) or, kPinned, in page-locked host memory
// (cudaHostAlloc: what asynchronous copies and graph memcpy nodes need). Contents are not kept
// when it grows.
template <typename T, bool kPinned>
class CudaBuffer {
 public:
  CudaBuffer() = default;
  ~CudaBuffer() { Free(); }
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;

  // Ensures room for `count` elements (at least one byte is allocated, so empty arrays still
  // get a valid pointer). Grows geometrically. Throws Error with CUDA's message.
  T* Reserve(size_t count, const char* what);
  T* get() const { return ptr_; }
  size_t capacity() const { return capacity_; }

 private:
  void Free();
  T* ptr_ = nullptr;
  size_t capacity_ = 0;
};

template <typename T>
using DeviceBuffer = CudaBuffer<T, false>;
template <typename T>
using PinnedBuffer = CudaBuffer<T, true>;

class DevicePlan {
 public:
  // Uploads the plan's program, edges and zeroed counters to the current device (`device`) and
  // picks the kernel configuration; with kJit/kAuto also builds the plan's JIT kernel
  // (jit_kernel.h). Throws Error with CUDA's message, or, with kJit, the reason the JIT kernel
  // could not be built (kAuto falls back to the generic kernel; kernel="jit" says why).
  DevicePlan(const FeaturePlan& plan, int device,
             NormalizeKernelChoice kernel = NormalizeKernelChoice::kGeneric);
  DevicePlan(const DevicePlan&) = delete;
  DevicePlan& operator=(const DevicePlan&) = delete;

  const FeaturePlan& plan() const { return plan_; }
  const MlsPlanView& view() const { return view_; }  // features/ops/edges on the device
  const MlsCudaLaunch& launch() const { return launch_; }
  int32_t f_in() const { return view_.f_in; }
  int32_t f_out() const { return view_.f_out; }
  int32_t n_counters() const { return view_.n_counters; }
  bool has_histograms() const { return view_.n_counters > 0; }
  // Device histogram counters (n_counters int64); the normalizers keep them zero between batches.
  int64_t* counters() const { return counters_.get(); }

  // "jit" / "jit-tma" when the plan's JIT kernel was built (launches it accepts run it), else
  // "generic".
  const char* kernel_name() const {
    return jit_ == nullptr ? "generic" : jit_->tma() ? "jit-tma" : "jit";
  }
  const JitNormalizeKernel* jit() const { return jit_.get(); }

  // Enqueues the fused kernel over n rows (d_in: n * f_in, d_out: n * f_out device floats),
  // counting into counters() when `histograms`: the JIT kernel where it was built and accepts
  // the launch, else the generic one (same results). Capture-safe (no device queries). Throws
  // Error for a failed launch.
  void Enqueue(const float* d_in, int64_t n, float* d_out, bool histograms,
               cudaStream_t stream) const;

 private:
  const FeaturePlan& plan_;
  DeviceBuffer<MlsFeature> features_;
  DeviceBuffer<MlsOp> ops_;
  DeviceBuffer<float> edges_;
  DeviceBuffer<int64_t> counters_;
  MlsPlanView view_{};
  MlsCudaLaunch launch_{};
  std::unique_ptr<JitNormalizeKernel> jit_;
};

}  // namespace mlserve
