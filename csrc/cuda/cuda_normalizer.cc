// CudaNormalizer (cuda_normalizer.h): a DevicePlan plus grow-only scratch buffers and one stream,
// for one-off transforms of host arrays (FeaturePlan.transform_cuda). The serving path uses
// CudaBatchPipeline (cuda_pipeline.h) instead. Not thread-safe: one instance per caller. The
// FeaturePlan must outlive the normalizer.
#include "cuda/cuda_normalizer.h"

#include <string>

#include "common/error.h"
#include "cuda/cuda_runtime.h"
#include "cuda/jit_compile.h"

#ifdef MLSERVE_WITH_CUDA
#include <cuda_runtime_api.h>

#include <vector>

#include "cuda/cuda_check.h"
#include "cuda/device_plan.h"
#endif

namespace mlserve {

#ifdef MLSERVE_WITH_CUDA

struct CudaNormalizer::Impl {
  int device = 0;
  bool device_set = false;  // cudaSetDevice(device) succeeded: there may be resources to free
  cudaStream_t stream = nullptr;
  std::unique_ptr<DevicePlan> plan;
  DeviceBuffer<float> d_in;
  DeviceBuffer<float> d_out;
  // False when a histogram run failed after it may have counted on the device: the counters
  // are zeroed before the next histogram run, so a failed batch is never counted.
  bool counters_clean = true;
  std::vector<int64_t> host_counters;

  ~Impl() {
    // Teardown must not throw: errors (e.g. a context broken by an earlier fault) are ignored.
    if (!device_set) return;
    if (cudaSetDevice(device) != cudaSuccess) {
      cudaGetLastError();
      return;
    }
    if (stream != nullptr) {
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
    cudaGetLastError();
  }
};

CudaNormalizer::CudaNormalizer(const FeaturePlan& plan, int device, const std::string& kernel)
    : plan_(plan), impl_(std::make_unique<Impl>()) {
  const NormalizeKernelChoice choice = ParseNormalizeKernelChoice(kernel);
  RequireCudaDevice(device);
  Impl& impl = *impl_;
  impl.device = device;
  // The Impl destructor frees whatever was allocated if a step below throws.
  CudaSetDevice(device);
  impl.device_set = true;
  CudaCheck(cudaStreamCreateWithFlags(&impl.stream, cudaStreamNonBlocking), "cudaStreamCreate");
  impl.plan = std::make_unique<DevicePlan>(plan, device, choice);
  impl.host_counters.assign(static_cast<size_t>(impl.plan->n_counters()), 0);
}

CudaNormalizer::~CudaNormalizer() = default;

std::string CudaNormalizer::kernel_name() const { return impl_->plan->kernel_name(); }

void CudaNormalizer::Transform(const float* host_in, int64_t n, float* host_out,
                               bool histograms) {
  if (n <= 0) return;
  Impl& impl = *impl_;
  const DevicePlan& dp = *impl.plan;
  const bool count = histograms && dp.has_histograms();
  const size_t in_count = static_cast<size_t>(n) * dp.f_in();
  const size_t out_count = static_cast<size_t>(n) * dp.f_out();
  const size_t counter_bytes = static_cast<size_t>(dp.n_counters()) * sizeof(int64_t);

  // The calling thread's current device may be another one (several normalizers per process).
  CudaSetDevice(impl.device);
  float* d_in = impl.d_in.Reserve(in_count, "cudaMalloc (input)");
  float* d_out = impl.d_out.Reserve(out_count, "cudaMalloc (output)");

  if (count && !impl.counters_clean) {
    CudaCheck(cudaMemsetAsync(dp.counters(), 0, counter_bytes, impl.stream),
              "cudaMemsetAsync (histogram counters)");
    impl.counters_clean = true;
  }
  if (in_count > 0) {
    CudaCheck(cudaMemcpyAsync(d_in, host_in, in_count * sizeof(float), cudaMemcpyHostToDevice,
                              impl.stream),
              "cudaMemcpyAsync (input to device)");
  }
  if (count) impl.counters_clean = false;
  dp.Enqueue(d_in, n, d_out, count, impl.stream);
  if (out_count > 0) {
    CudaCheck(cudaMemcpyAsync(host_out, d_out, out_count * sizeof(float), cudaMemcpyDeviceToHost,
                              impl.stream),
              "cudaMemcpyAsync (output to host)");
  }
  if (count) {
    CudaCheck(cudaMemcpyAsync(impl.host_counters.data(), dp.counters(), counter_bytes,
                              cudaMemcpyDeviceToHost, impl.stream),
              "cudaMemcpyAsync (histogram counters to host)");
    CudaCheck(cudaMemsetAsync(dp.counters(), 0, counter_bytes, impl.stream),
              "cudaMemsetAsync (histogram counters)");
  }
  CudaCheck(cudaStreamSynchronize(impl.stream), "normalize kernel (cudaStreamSynchronize)");
  if (count) {
    impl.counters_clean = true;
    plan_.MergeCounters(impl.host_counters.data(), n);
  }
}

#else  // CPU-only build: no CUDA code at all; constructing one says how to get CUDA.

struct CudaNormalizer::Impl {};

CudaNormalizer::CudaNormalizer(const FeaturePlan& plan, int device, const std::string& kernel)
    : plan_(plan) {
  ParseNormalizeKernelChoice(kernel);  // the same argument errors as a CUDA build
  RequireCudaDevice(device);  // always throws Error(kUnavailable) in a CPU-only build
}

CudaNormalizer::~CudaNormalizer() = default;

std::string CudaNormalizer::kernel_name() const { return "generic"; }

void CudaNormalizer::Transform(const float* /*host_in*/, int64_t /*n*/, float* /*host_out*/,
                               bool /*histograms*/) {
  throw Error(ErrorCode::kUnavailable,
              "mlserve was built without CUDA (nvcc not found at build time); rebuild with nvcc "
              "on PATH or use the CPU path");
}

#endif  // MLSERVE_WITH_CUDA

}  // namespace mlserve
