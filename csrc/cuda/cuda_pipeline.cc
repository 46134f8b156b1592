// CudaBatchPipeline (cuda_pipeline.h): stream, reused buffers and per-batch-size CUDA graphs of
// one instance of a model placed on a GPU.
#include "cuda/cuda_pipeline.h"

#include <string>

#include "common/error.h"
#include "cuda/cuda_runtime.h"

#ifdef MLSERVE_WITH_CUDA
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstring>
#include <unordered_map>

#include "cuda/cuda_check.h"
#include "cuda/device_plan.h"
#endif

namespace mlserve {

#ifdef MLSERVE_WITH_CUDA

struct CudaBatchPipeline::Impl {
  CudaPipelineOptions options;
  bool device_set = false;  // teardown has resources to free on `options.device`
  cudaStream_t stream = nullptr;
  std::unique_ptr<DevicePlan> plan;
  // Fixed addresses for the pipeline's lifetime: the captured graphs refer to them.
  PinnedBuffer<float> staging;         // max_rows * f_in raw rows (host)
  DeviceBuffer<float> raw;             // max_rows * f_in raw rows (device)
  DeviceBuffer<float> normalized;      // max_rows * f_out normalized rows (device)
  PinnedBuffer<int64_t> host_counters; // n_counters: the batch's histogram counts
  // Grow-only.
  DeviceBuffer<float> output;          // model outputs (device)
  PinnedBuffer<float> result;          // the batch's result (host)

  std::unordered_map<int64_t, cudaGraphExec_t> graphs;  // key: n * 2 + histograms
  // Written by the pipeline's thread, read by stats() from any.
  std::atomic<int64_t> batches{0};
  std::atomic<int64_t> graph_launches{0};
  std::atomic<int64_t> graphs_made{0};
  std::atomic<bool> graphs_disabled{false};
  // The batch in flight (between Normalize and Finish/Abort).
  bool in_batch = false;
  int64_t batch_rows = 0;
  bool batch_counts = false;
  // A failed batch may have left counts on the device: zero them before the next counted one.
  bool counters_dirty = false;

  ~Impl() {
    if (!device_set) return;
    if (cudaSetDevice(options.device) == cudaSuccess) {
      if (stream != nullptr) cudaStreamSynchronize(stream);
      for (auto& entry : graphs) cudaGraphExecDestroy(entry.second);
      if (stream != nullptr) cudaStreamDestroy(stream);
    }
    cudaGetLastError();  // teardown never throws; a broken context only leaks
  }

  size_t CounterBytes() const { return static_cast<size_t>(plan->n_counters()) * sizeof(int64_t); }

  // The per-batch sequence: H2D copy, kernel, and (counting) the counts' D2H copy + reset.
  void EnqueueHead(int64_t n, bool count) {
    const size_t in_bytes = static_cast<size_t>(n) * plan->f_in() * sizeof(float);
    if (in_bytes > 0) {
      CudaCheck(cudaMemcpyAsync(raw.get(), staging.get(), in_bytes, cudaMemcpyHostToDevice, stream),
                "cudaMemcpyAsync (batch to device)");
    }
    plan->Enqueue(raw.get(), n, normalized.get(), count, stream);
    if (count) {
      CudaCheck(cudaMemcpyAsync(host_counters.get(), plan->counters(), CounterBytes(),
                                cudaMemcpyDeviceToHost, stream),
                "cudaMemcpyAsync (histogram counters to host)");
      CudaCheck(cudaMemsetAsync(plan->counters(), 0, CounterBytes(), stream),
                "cudaMemsetAsync (histogram counters)");
    }
  }

  // The instantiated graph of EnqueueHead(n, count), captured on first use; nullptr when graphs
  // are off, the cache is full, or capture failed (then graphs stay off for this pipeline).
  cudaGraphExec_t GraphFor(int64_t n, bool count) {
    if (!options.cuda_graphs || graphs_disabled.load(std::memory_order_relaxed)) return nullptr;
    const int64_t key = n * 2 + (count ? 1 : 0);
    const auto found = graphs.find(key);
    if (found != graphs.end()) return found->second;
    if (static_cast<int64_t>(graphs.size()) >= options.max_graphs) return nullptr;

    // Thread-local capture mode: other instances' threads may keep making any CUDA call.
    if (cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      cudaGetLastError();
      graphs_disabled.store(true, std::memory_order_relaxed);
      return nullptr;
    }
    bool captured = true;
    try {
      EnqueueHead(n, count);
    } catch (const Error&) {
      captured = false;
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream, &graph);  // always leaves capture
    cudaGraphExec_t exec = nullptr;
    cudaError_t made = cudaErrorStreamCaptureInvalidated;
    if (captured && ended == cudaSuccess && graph != nullptr) {
      made = cudaGraphInstantiate(&exec, graph, 0);
    }
    if (graph != nullptr) cudaGraphDestroy(graph);
    if (made != cudaSuccess) {
      cudaGetLastError();
      graphs_disabled.store(true, std::memory_order_relaxed);
      return nullptr;
    }
    graphs.emplace(key, exec);
    graphs_made.fetch_add(1, std::memory_order_relaxed);
    return exec;
  }
};

CudaBatchPipeline::CudaBatchPipeline(const FeaturePlan& plan, const CudaPipelineOptions& options)
    : impl_(std::make_unique<Impl>()) {
  if (options.max_rows < 1) ThrowInvalid("CUDA pipeline: max_rows must be >= 1");
  if (options.max_graphs < 0) ThrowInvalid("CUDA pipeline: max_graphs must be >= 0");
  RequireCudaDevice(options.device);
  Impl& impl = *impl_;
  impl.options = options;
  // The Impl destructor frees whatever was made if a step below throws.
  CudaSetDevice(options.device);
  impl.device_set = true;
  CudaCheck(cudaStreamCreateWithFlags(&impl.stream, cudaStreamNonBlocking), "cudaStreamCreate");
  impl.plan = std::make_unique<DevicePlan>(plan, options.device,
                                           ParseNormalizeKernelChoice(options.normalize_kernel));
  const size_t rows = static_cast<size_t>(options.max_rows);
  impl.staging.Reserve(rows * plan.f_in(), "cudaHostAlloc (staging rows)");
  impl.raw.Reserve(rows * plan.f_in(), "cudaMalloc (batch rows)");
  impl.normalized.Reserve(rows * plan.f_out(), "cudaMalloc (normalized rows)");
  impl.host_counters.Reserve(static_cast<size_t>(impl.plan->n_counters()),
                             "cudaHostAlloc (histogram counters)");
}

CudaBatchPipeline::~CudaBatchPipeline() = default;

float* CudaBatchPipeline::staging() const { return impl_->staging.get(); }
int64_t CudaBatchPipeline::max_rows() const { return impl_->options.max_rows; }
int CudaBatchPipeline::device() const { return impl_->options.device; }
void* CudaBatchPipeline::stream() const { return impl_->stream; }
CudaPipelineStats CudaBatchPipeline::stats() const {
  const Impl& impl = *impl_;
  CudaPipelineStats out;
  out.normalize_kernel = impl.plan->kernel_name();
  out.batches = impl.batches.load(std::memory_order_relaxed);
  out.graph_launches = impl.graph_launches.load(std::memory_order_relaxed);
  out.graphs = impl.graphs_made.load(std::memory_order_relaxed);
  out.graphs_disabled = impl.graphs_disabled.load(std::memory_order_relaxed);
  return out;
}

const float* CudaBatchPipeline::Normalize(int64_t n, bool histograms) {
  Impl& impl = *impl_;
  if (n < 1 || n > impl.options.max_rows) {
    throw Error(ErrorCode::kInternal, "CUDA pipeline: batch of " + std::to_string(n) +
                                          " rows outside 1.." +
                                          std::to_string(impl.options.max_rows));
  }
  CudaSetDevice(impl.options.device);
  const bool count = histograms && impl.plan->has_histograms();
  impl.in_batch = true;
  impl.batch_rows = n;
  impl.batch_counts = count;
  if (count && impl.counters_dirty) {
    CudaCheck(cudaMemsetAsync(impl.plan->counters(), 0, impl.CounterBytes(), impl.stream),
              "cudaMemsetAsync (histogram counters)");
    impl.counters_dirty = false;
  }
  if (cudaGraphExec_t exec = impl.GraphFor(n, count)) {
    CudaCheck(cudaGraphLaunch(exec, impl.stream), "cudaGraphLaunch (batch to device + normalize)");
    impl.graph_launches.fetch_add(1, std::memory_order_relaxed);
  } else {
    impl.EnqueueHead(n, count);
  }
  return impl.normalized.get();
}

float* CudaBatchPipeline::OutputBuffer(int64_t count) {
  Impl& impl = *impl_;
  if (count < 0) ThrowInvalid("CUDA pipeline: negative output size");
  const size_t want = static_cast<size_t>(count);
  if (impl.output.get() == nullptr || want > impl.output.capacity()) {
    // Queued work may still use the old buffer (a model that asks twice in one batch).
    CudaSetDevice(impl.options.device);
    CudaCheck(cudaStreamSynchronize(impl.stream), "cudaStreamSynchronize (output buffer)");
  }
  return impl.output.Reserve(want, "cudaMalloc (model output)");
}

void CudaBatchPipeline::Finish(const float* d_result, int64_t count, float* host_out) {
  Impl& impl = *impl_;
  CudaSetDevice(impl.options.device);
  const size_t bytes = static_cast<size_t>(count > 0 ? count : 0) * sizeof(float);
  float* result = nullptr;
  if (bytes > 0) {
    result = impl.result.Reserve(static_cast<size_t>(count), "cudaHostAlloc (batch result)");
    CudaCheck(cudaMemcpyAsync(result, d_result, bytes, cudaMemcpyDeviceToHost, impl.stream),
              "cudaMemcpyAsync (result to host)");
  }
  // The batch's one synchronisation; errors of the kernel or the model surface here.
  CudaCheck(cudaStreamSynchronize(impl.stream), "batch execution (cudaStreamSynchronize)");
  if (impl.batch_counts) impl.plan->plan().MergeCounters(impl.host_counters.get(), impl.batch_rows);
  if (bytes > 0) std::memcpy(host_out, result, bytes);
  impl.in_batch = false;
  impl.batch_counts = false;
  impl.batches.fetch_add(1, std::memory_order_relaxed);
}

void CudaBatchPipeline::Abort() noexcept {
  Impl& impl = *impl_;
  if (impl.device_set && cudaSetDevice(impl.options.device) == cudaSuccess &&
      impl.stream != nullptr) {
    cudaStreamSynchronize(impl.stream);
  }
  cudaGetLastError();
  if (impl.in_batch && impl.batch_counts) impl.counters_dirty = true;
  impl.in_batch = false;
  impl.batch_counts = false;
}

#else  // CPU-only build: constructing one says how to get CUDA.

struct CudaBatchPipeline::Impl {};

CudaBatchPipeline::CudaBatchPipeline(const FeaturePlan& /*plan*/,
                                     const CudaPipelineOptions& options) {
  RequireCudaDevice(options.device);  // always throws Error(kUnavailable) in a CPU-only build
}

CudaBatchPipeline::~CudaBatchPipeline() = default;

namespace {
[[noreturn]] void NotBuilt() {
  throw Error(ErrorCode::kUnavailable,
              "mlserve was built without CUDA (nvcc not found at build time); rebuild with nvcc "
              "on PATH or use the CPU path");
}
}  // namespace

float* CudaBatchPipeline::staging() const { NotBuilt(); }
int64_t CudaBatchPipeline::max_rows() const { NotBuilt(); }
int CudaBatchPipeline::device() const { NotBuilt(); }
void* CudaBatchPipeline::stream() const { NotBuilt(); }
const float* CudaBatchPipeline::Normalize(int64_t, bool) { NotBuilt(); }
float* CudaBatchPipeline::OutputBuffer(int64_t) { NotBuilt(); }
void CudaBatchPipeline::Finish(const float*, int64_t, float*) { NotBuilt(); }
void CudaBatchPipeline::Abort() noexcept {}
CudaPipelineStats CudaBatchPipeline::stats() const { return {}; }

#endif  // MLSERVE_WITH_CUDA

}  // namespace mlserve
