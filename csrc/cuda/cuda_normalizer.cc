// CudaNormalizer (cuda_normalizer.h): device copies of a compiled plan plus grow-only scratch
// buffers and one stream, driving the fused kernel of kernels/normalize.cu. Not thread-safe:
// one instance per worker. The FeaturePlan must outlive the normalizer.
#include "cuda/cuda_normalizer.h"

#include <string>

#include "common/error.h"
#include "cuda/cuda_runtime.h"

#ifdef MLSERVE_WITH_CUDA
#include <cuda_runtime_api.h>

#include <vector>

#include "normalize.h"
#endif

namespace mlserve {

#ifdef MLSERVE_WITH_CUDA

namespace {

// Throws Error(kInternal) for a failed CUDA call; `what` names the step.
void Check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so that it does not leak into the next call
  throw Error(ErrorCode::kInternal, std::string("CUDA error in ") + what + ": " +
                                        cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

// cudaMalloc of at least one byte (so that empty arrays still get a distinct valid pointer).
template <typename T>
T* DeviceAlloc(size_t count, const char* what) {
  void* ptr = nullptr;
  const size_t bytes = count > 0 ? count * sizeof(T) : 1;
  Check(cudaMalloc(&ptr, bytes), what);
  return static_cast<T*>(ptr);
}

void DeviceFree(void* ptr) {
  if (ptr != nullptr) cudaFree(ptr);  // errors ignored: only called on teardown paths
}

}  // namespace

struct CudaNormalizer::Impl {
  int device = 0;
  bool device_set = false;  // cudaSetDevice(device) succeeded: there may be resources to free
  cudaStream_t stream = nullptr;
  MlsPlanView device_view{};  // host struct; features/ops/edges point to device memory
  MlsFeature* d_features = nullptr;
  MlsOp* d_ops = nullptr;
  float* d_edges = nullptr;
  int64_t* d_counters = nullptr;
  float* d_in = nullptr;
  float* d_out = nullptr;
  int64_t capacity_rows = 0;  // rows that d_in / d_out hold
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
    if (stream != nullptr) cudaStreamSynchronize(stream);
    DeviceFree(d_features);
    DeviceFree(d_ops);
    DeviceFree(d_edges);
    DeviceFree(d_counters);
    DeviceFree(d_in);
    DeviceFree(d_out);
    if (stream != nullptr) cudaStreamDestroy(stream);
    cudaGetLastError();
  }

  void Reserve(int64_t rows, const MlsPlanView& view) {
    if (rows <= capacity_rows) return;
    // Grow geometrically so that a stream of slowly growing batches reallocates rarely.
    const int64_t grown = capacity_rows + capacity_rows / 2;
    const int64_t target = rows > grown ? rows : grown;
    DeviceFree(d_in);
    DeviceFree(d_out);
    d_in = nullptr;
    d_out = nullptr;
    capacity_rows = 0;
    d_in = DeviceAlloc<float>(static_cast<size_t>(target) * view.f_in, "cudaMalloc (input)");
    d_out = DeviceAlloc<float>(static_cast<size_t>(target) * view.f_out, "cudaMalloc (output)");
    capacity_rows = target;
  }
};

CudaNormalizer::CudaNormalizer(const FeaturePlan& plan, int device)
    : plan_(plan), impl_(std::make_unique<Impl>()) {
  RequireCudaDevice(device);
  Impl& impl = *impl_;
  impl.device = device;
  // The Impl destructor frees whatever was allocated if a step below throws.
  const cudaError_t set = cudaSetDevice(device);
  if (set != cudaSuccess) {
    cudaGetLastError();
    throw Error(ErrorCode::kUnavailable, "CUDA device " + std::to_string(device) +
                                             " cannot be used: " + cudaGetErrorName(set) + ": " +
                                             cudaGetErrorString(set));
  }
  impl.device_set = true;
  Check(cudaStreamCreateWithFlags(&impl.stream, cudaStreamNonBlocking), "cudaStreamCreate");

  const MlsPlanView& view = plan.view();
  impl.d_features = DeviceAlloc<MlsFeature>(view.n_features, "cudaMalloc (plan features)");
  impl.d_ops = DeviceAlloc<MlsOp>(view.n_ops, "cudaMalloc (plan ops)");
  impl.d_edges = DeviceAlloc<float>(view.n_edges_total, "cudaMalloc (histogram edges)");
  impl.d_counters = DeviceAlloc<int64_t>(view.n_counters, "cudaMalloc (histogram counters)");
  if (view.n_features > 0) {
    Check(cudaMemcpy(impl.d_features, view.features, sizeof(MlsFeature) * view.n_features,
                     cudaMemcpyHostToDevice),
          "cudaMemcpy (plan features)");
  }
  if (view.n_ops > 0) {
    Check(cudaMemcpy(impl.d_ops, view.ops, sizeof(MlsOp) * view.n_ops, cudaMemcpyHostToDevice),
          "cudaMemcpy (plan ops)");
  }
  if (view.n_edges_total > 0) {
    Check(cudaMemcpy(impl.d_edges, view.edges, sizeof(float) * view.n_edges_total,
                     cudaMemcpyHostToDevice),
          "cudaMemcpy (histogram edges)");
  }
  if (view.n_counters > 0) {
    Check(cudaMemset(impl.d_counters, 0, sizeof(int64_t) * view.n_counters),
          "cudaMemset (histogram counters)");
  }
  impl.host_counters.assign(static_cast<size_t>(view.n_counters), 0);

  impl.device_view = view;
  impl.device_view.features = impl.d_features;
  impl.device_view.ops = impl.d_ops;
  impl.device_view.edges = impl.d_edges;
}

CudaNormalizer::~CudaNormalizer() = default;

void CudaNormalizer::Transform(const float* host_in, int64_t n, float* host_out,
                               bool histograms) {
  if (n <= 0) return;
  Impl& impl = *impl_;
  const MlsPlanView& view = impl.device_view;
  const bool count = histograms && view.n_counters > 0;
  const size_t in_bytes = static_cast<size_t>(n) * view.f_in * sizeof(float);
  const size_t out_bytes = static_cast<size_t>(n) * view.f_out * sizeof(float);
  const size_t counter_bytes = static_cast<size_t>(view.n_counters) * sizeof(int64_t);

  // The calling thread's current device may be another one (several normalizers per process).
  Check(cudaSetDevice(impl.device), "cudaSetDevice");
  impl.Reserve(n, view);

  if (count && !impl.counters_clean) {
    Check(cudaMemsetAsync(impl.d_counters, 0, counter_bytes, impl.stream),
          "cudaMemsetAsync (histogram counters)");
    impl.counters_clean = true;
  }
  if (in_bytes > 0) {
    Check(cudaMemcpyAsync(impl.d_in, host_in, in_bytes, cudaMemcpyHostToDevice, impl.stream),
          "cudaMemcpyAsync (input to device)");
  }
  if (count) impl.counters_clean = false;
  Check(static_cast<cudaError_t>(mls_cuda_normalize(&view, impl.d_in, n, impl.d_out,
                                                    count ? impl.d_counters : nullptr,
                                                    impl.stream)),
        "normalize kernel launch");
  if (out_bytes > 0) {
    Check(cudaMemcpyAsync(host_out, impl.d_out, out_bytes, cudaMemcpyDeviceToHost, impl.stream),
          "cudaMemcpyAsync (output to host)");
  }
  if (count) {
    Check(cudaMemcpyAsync(impl.host_counters.data(), impl.d_counters, counter_bytes,
                          cudaMemcpyDeviceToHost, impl.stream),
          "cudaMemcpyAsync (histogram counters to host)");
    Check(cudaMemsetAsync(impl.d_counters, 0, counter_bytes, impl.stream),
          "cudaMemsetAsync (histogram counters)");
  }
  Check(cudaStreamSynchronize(impl.stream), "normalize kernel (cudaStreamSynchronize)");
  if (count) {
    impl.counters_clean = true;
    plan_.MergeCounters(impl.host_counters.data(), n);
  }
}

#else  // CPU-only build: no CUDA code at all; constructing one says how to get CUDA.

struct CudaNormalizer::Impl {};

CudaNormalizer::CudaNormalizer(const FeaturePlan& plan, int device) : plan_(plan) {
  RequireCudaDevice(device);  // always throws Error(kUnavailable) in a CPU-only build
}

CudaNormalizer::~CudaNormalizer() = default;

void CudaNormalizer::Transform(const float* /*host_in*/, int64_t /*n*/, float* /*host_out*/,
                               bool /*histograms*/) {
  throw Error(ErrorCode::kUnavailable,
              "mlserve was built without CUDA (nvcc not found at build time); rebuild with nvcc "
              "on PATH or use the CPU path");
}

#endif  // MLSERVE_WITH_CUDA

}  // namespace mlserve
