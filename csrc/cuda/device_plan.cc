// DevicePlan and the CUDA buffers (device_plan.h). CUDA builds only.
#include "cuda/device_plan.h"

#include "common/error.h"
#include "cuda/cuda_check.h"

namespace mlserve {

template <typename T, bool kPinned>
T* CudaBuffer<T, kPinned>::Reserve(size_t count, const char* what) {
  if (ptr_ != nullptr && count <= capacity_) return ptr_;
  // Geometric growth: a stream of slowly growing batches reallocates rarely.
  const size_t grown = capacity_ + capacity_ / 2;
  const size_t target = ptr_ == nullptr || count > grown ? count : grown;
  Free();
  void* ptr = nullptr;
  const size_t bytes = target > 0 ? target * sizeof(T) : 1;
  CudaCheck(kPinned ? cudaHostAlloc(&ptr, bytes, cudaHostAllocDefault) : cudaMalloc(&ptr, bytes),
            what);
  ptr_ = static_cast<T*>(ptr);
  capacity_ = target;
  return ptr_;
}

template <typename T, bool kPinned>
void CudaBuffer<T, kPinned>::Free() {
  // Errors ignored: teardown (or regrowth) path.
  if (ptr_ != nullptr) kPinned ? cudaFreeHost(ptr_) : cudaFree(ptr_);
  ptr_ = nullptr;
  capacity_ = 0;
}

template class CudaBuffer<float, false>;
template class CudaBuffer<int64_t, false>;
template class CudaBuffer<MlsFeature, false>;
template class CudaBuffer<MlsOp, false>;
template class CudaBuffer<float, true>;
template class CudaBuffer<int64_t, true>;

DevicePlan::DevicePlan(const FeaturePlan& plan, int device, NormalizeKernelChoice kernel)
    : plan_(plan) {
  const MlsPlanView& host = plan.view();
  const size_t nf = static_cast<size_t>(host.n_features);
  const size_t no = static_cast<size_t>(host.n_ops);
  const size_t ne = static_cast<size_t>(host.n_edges_total);
  const size_t nc = static_cast<size_t>(host.n_counters);
  MlsFeature* features = features_.Reserve(nf, "cudaMalloc (plan features)");
  MlsOp* ops = ops_.Reserve(no, "cudaMalloc (plan ops)");
  float* edges = edges_.Reserve(ne, "cudaMalloc (histogram edges)");
  int64_t* counters = counters_.Reserve(nc, "cudaMalloc (histogram counters)");
  if (nf > 0) {
    CudaCheck(cudaMemcpy(features, host.features, sizeof(MlsFeature) * nf, cudaMemcpyHostToDevice),
              "cudaMemcpy (plan features)");
  }
  if (no > 0) {
    CudaCheck(cudaMemcpy(ops, host.ops, sizeof(MlsOp) * no, cudaMemcpyHostToDevice),
              "cudaMemcpy (plan ops)");
  }
  if (ne > 0) {
    CudaCheck(cudaMemcpy(edges, host.edges, sizeof(float) * ne, cudaMemcpyHostToDevice),
              "cudaMemcpy (histogram edges)");
  }
  if (nc > 0) {
    CudaCheck(cudaMemset(counters, 0, sizeof(int64_t) * nc), "cudaMemset (histogram counters)");
  }
  view_ = host;
  view_.features = features;
  view_.ops = ops;
  view_.edges = edges;
  CudaCheck(static_cast<cudaError_t>(mls_cuda_normalize_config(&view_, device, &launch_)),
            "normalize kernel configuration");
  if (kernel == NormalizeKernelChoice::kGeneric) return;
  if (kernel != NormalizeKernelChoice::kAuto) {
    jit_ = std::make_unique<JitNormalizeKernel>(plan, device,
                                                kernel == NormalizeKernelChoice::kJitTma);
    return;
  }
  // auto: the bulk-copy variant where the device has them (sm_90+), then the plain JIT kernel,
  // then the generic one (no NVRTC, a plan too wide for a tile, a tile the device refuses).
  for (const bool tma : {true, false}) {
    try {
      jit_ = std::make_unique<JitNormalizeKernel>(plan, device, tma);
      return;
    } catch (const Error&) {
    }
  }
}

void DevicePlan::Enqueue(const float* d_in, int64_t n, float* d_out, bool histograms,
                         cudaStream_t stream) const {
  const bool counting = histograms && view_.n_counters > 0;
  if (jit_ != nullptr && n > 0 && jit_->Accepts(d_in, n, d_out, counting)) {
    CudaCheck(jit_->Launch(d_in, n, d_out, counting ? counters_.get() : nullptr, stream),
              "JIT normalize kernel launch");
    return;
  }
  CudaCheck(static_cast<cudaError_t>(mls_cuda_normalize(
                &view_, &launch_, d_in, n, d_out, histograms ? counters_.get() : nullptr, stream)),
            "normalize kernel launch");
}

}  // namespace mlserve
