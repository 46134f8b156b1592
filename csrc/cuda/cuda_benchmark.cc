// TimeCudaNormalize (cuda_benchmark.h).
#include "cuda/cuda_benchmark.h"

#include <algorithm>
#include <string>
#include <vector>

#include "common/error.h"
#include "cuda/cuda_runtime.h"
#include "cuda/jit_compile.h"

#ifdef MLSERVE_WITH_CUDA
#include <cuda_runtime_api.h>

#include <memory>

#include "cuda/cuda_check.h"
#include "cuda/device_plan.h"
#endif

namespace mlserve {

#ifdef MLSERVE_WITH_CUDA

namespace {

// Owns a stream and two events; destroys them on scope exit (errors ignored).
struct TimingStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  ~TimingStream() {
    if (stream != nullptr) cudaStreamSynchronize(stream);
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
    if (stream != nullptr) cudaStreamDestroy(stream);
    cudaGetLastError();
  }
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Median of `iterations` timed calls of enqueue(i) on ts.stream (after 3 untimed ones).
template <typename Enqueue>
double TimeMedian(TimingStream& ts, int iterations, Enqueue enqueue) {
  for (int i = 0; i < 3; ++i) enqueue(i);
  std::vector<double> ms;
  for (int i = 0; i < iterations; ++i) {
    CudaCheck(cudaEventRecord(ts.start, ts.stream), "cudaEventRecord");
    enqueue(i);
    CudaCheck(cudaEventRecord(ts.stop, ts.stream), "cudaEventRecord");
    CudaCheck(cudaEventSynchronize(ts.stop), "cudaEventSynchronize (timed work)");
    float elapsed = 0.0f;
    CudaCheck(cudaEventElapsedTime(&elapsed, ts.start, ts.stop), "cudaEventElapsedTime");
    ms.push_back(elapsed);
  }
  return Median(std::move(ms));
}

}  // namespace

CudaNormalizeTiming TimeCudaNormalize(const FeaturePlan& plan, const float* host_in, int64_t n,
                                      int device, int iterations, bool histograms,
                                      const std::string& kernel) {
  const NormalizeKernelChoice choice = ParseNormalizeKernelChoice(kernel);
  if (n < 1 || iterations < 1) ThrowInvalid("benchmark needs n >= 1 rows and iterations >= 1");
  RequireCudaDevice(device);
  CudaSetDevice(device);
  TimingStream ts;
  CudaCheck(cudaStreamCreateWithFlags(&ts.stream, cudaStreamNonBlocking), "cudaStreamCreate");
  CudaCheck(cudaEventCreate(&ts.start), "cudaEventCreate");
  CudaCheck(cudaEventCreate(&ts.stop), "cudaEventCreate");
  DevicePlan dp(plan, device, choice);

  const size_t in_count = static_cast<size_t>(n) * dp.f_in();
  const size_t out_count = static_cast<size_t>(n) * dp.f_out();
  CudaNormalizeTiming t;
  t.bytes = static_cast<int64_t>((in_count + out_count) * sizeof(float));
  t.kernel = dp.kernel_name();
  if (const JitNormalizeKernel* jit = dp.jit(); jit != nullptr) {
    t.tile_rows = jit->tile_rows();
    t.blocks_per_sm = jit->blocks_per_sm();
    t.max_blocks = jit->max_blocks();
    t.jit_compile_ms = jit->compile_ms();
    t.registers = jit->registers();
    t.local_bytes = jit->local_bytes();
  } else {
    t.tile_rows = dp.launch().tile_rows;
    t.blocks_per_sm = dp.launch().blocks_per_sm;
    t.max_blocks = dp.launch().max_blocks;
  }
  // Enough sets that one round over them (>= 256 MiB) cannot stay in L2 (50-60 MB on Hopper).
  const int64_t round_bytes = int64_t{256} << 20;
  const int sets = static_cast<int>(std::clamp<int64_t>((round_bytes + t.bytes - 1) / t.bytes, 1, 16));
  t.buffer_sets = sets;

  std::vector<std::unique_ptr<DeviceBuffer<float>>> ins, outs, copy_src, copy_dst;
  const size_t copy_count = (in_count + out_count + 1) / 2;  // read + written = kernel's bytes
  for (int s = 0; s < sets; ++s) {
    ins.push_back(std::make_unique<DeviceBuffer<float>>());
    outs.push_back(std::make_unique<DeviceBuffer<float>>());
    copy_src.push_back(std::make_unique<DeviceBuffer<float>>());
    copy_dst.push_back(std::make_unique<DeviceBuffer<float>>());
    float* in = ins.back()->Reserve(in_count, "cudaMalloc (benchmark input)");
    outs.back()->Reserve(out_count, "cudaMalloc (benchmark output)");
    float* src = copy_src.back()->Reserve(copy_count, "cudaMalloc (copy source)");
    copy_dst.back()->Reserve(copy_count, "cudaMalloc (copy destination)");
    CudaCheck(cudaMemcpy(in, host_in, in_count * sizeof(float), cudaMemcpyHostToDevice),
              "cudaMemcpy (benchmark input)");
    CudaCheck(cudaMemset(src, 0x3f, copy_count * sizeof(float)), "cudaMemset (copy source)");
  }

  t.kernel_ms = TimeMedian(ts, iterations, [&](int i) {
    const int s = i % sets;
    dp.Enqueue(ins[s]->get(), n, outs[s]->get(), histograms, ts.stream);
  });
  t.copy_ms = TimeMedian(ts, iterations, [&](int i) {
    const int s = i % sets;
    CudaCheck(cudaMemcpyAsync(copy_dst[s]->get(), copy_src[s]->get(), copy_count * sizeof(float),
                              cudaMemcpyDeviceToDevice, ts.stream),
              "cudaMemcpyAsync (D2D)");
  });
  CudaCheck(cudaStreamSynchronize(ts.stream), "cudaStreamSynchronize (benchmark)");
  return t;
}

#else  // CPU-only build

CudaNormalizeTiming TimeCudaNormalize(const FeaturePlan& /*plan*/, const float* /*host_in*/,
                                      int64_t /*n*/, int device, int /*iterations*/,
                                      bool /*histograms*/, const std::string& kernel) {
  ParseNormalizeKernelChoice(kernel);
  RequireCudaDevice(device);  // always throws Error(kUnavailable) in a CPU-only build
  return {};
}

#endif  // MLSERVE_WITH_CUDA

}  // namespace mlserve
