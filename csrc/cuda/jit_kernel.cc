// JitNormalizeKernel (jit_kernel.h). CUDA builds only.
#include "cuda/jit_kernel.h"

#include <string>

#include "common/error.h"
#include "cuda/cuda_check.h"
#include "cuda/jit_compile.h"
#include "cuda/nvrtc.h"

namespace mlserve {

namespace {

constexpr int kThreads = 256;          // MLS_JIT_THREADS in kernels/normalize_jit.cuh
constexpr int kMaxSharedCounters = 4096;  // as the generic kernel: 16 KiB of uint32 counters

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Shared memory of one block (kernels/normalize_jit.cuh): the tiles (double-buffered, after two
// 8-byte mbarriers padded to 16 bytes, with tma) and the counters.
size_t SharedBytes(bool tma, int tile_rows, int f_in, int f_out, int counters) {
  const size_t tiles = static_cast<size_t>(tile_rows) * (f_in + f_out) * sizeof(float);
  return (tma ? 16 + 2 * tiles : tiles) + static_cast<size_t>(counters) * sizeof(unsigned int);
}

}  // namespace

JitNormalizeKernel::JitNormalizeKernel(const FeaturePlan& plan, int device, bool tma)
    : tma_(tma) {
  const MlsPlanView& v = plan.view();
  f_in_ = v.f_in;
  f_out_ = v.f_out;
  n_counters_ = v.n_counters <= kMaxSharedCounters ? v.n_counters : 0;
  int major = 0;
  int minor = 0;
  int sms = 0;
  CudaCheck(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
            "cudaDeviceGetAttribute (compute capability)");
  CudaCheck(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device),
            "cudaDeviceGetAttribute (compute capability)");
  CudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
            "cudaDeviceGetAttribute (multiprocessors)");
  arch_ = "sm_" + std::to_string(major) + std::to_string(minor);

  const JitKernelShape shape = JitShapeFromEnv(tma_);
  min_blocks_ = shape.min_blocks;
  const JitBinary bin = CompileJitNormalizeKernel(plan, arch_, shape);
  tile_rows_ = bin.tile_rows;
  compile_ms_ = bin.cached ? 0.0 : bin.output->compile_ms;
  const cudaError_t loaded = cudaLibraryLoadData(&library_, bin.output->binary.data(), nullptr,
                                                 nullptr, 0, nullptr, nullptr, 0);
  if (loaded != cudaSuccess) {
    // The usual cause: an NVRTC newer than the driver (its CUBIN needs a newer driver).
    int driver = 0;
    cudaDriverGetVersion(&driver);
    cudaGetLastError();
    CudaCheck(loaded, ("cudaLibraryLoadData (JIT normalize kernel compiled by NVRTC " +
                       NvrtcVersion() + "; the driver supports CUDA " +
                       std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10) +
                       ")").c_str());
  }
  try {
    CudaCheck(cudaLibraryGetKernel(&plain_, library_, "mls_jit_normalize"),
              "cudaLibraryGetKernel (mls_jit_normalize)");
    CudaCheck(cudaLibraryGetKernel(&counted_, library_, "mls_jit_normalize_counted"),
              "cudaLibraryGetKernel (mls_jit_normalize_counted)");
    // Registers and spills per thread (benchmark_cuda and gpu_check report them).
    for (cudaKernel_t k : {plain_, counted_}) {
      cudaFuncAttributes attributes{};
      CudaCheck(cudaFuncGetAttributes(&attributes, reinterpret_cast<const void*>(k)),
                "cudaFuncGetAttributes (JIT normalize kernel)");
      registers_ = attributes.numRegs > registers_ ? attributes.numRegs : registers_;
      local_bytes_ = attributes.localSizeBytes > local_bytes_
                         ? static_cast<int>(attributes.localSizeBytes)
                         : local_bytes_;
    }
    // Occupancy of the counting kernel (the larger shared footprint) sizes the persistent grid.
    const size_t shared = SharedBytes(tma_, tile_rows_, f_in_, f_out_, n_counters_);
    int shared_limit = 0;
    CudaCheck(cudaDeviceGetAttribute(&shared_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                     device),
              "cudaDeviceGetAttribute (shared memory per block)");
    if (shared > static_cast<size_t>(shared_limit)) {
      throw Error(ErrorCode::kUnavailable,
                  "JIT normalize kernel: a tile of " + std::to_string(tile_rows_) + " rows needs " +
                      std::to_string(shared) + " bytes of shared memory per block; the device "
                      "allows " + std::to_string(shared_limit) +
                      " (lower MLSERVE_CUDA_JIT_TILE_ROWS)");
    }
    if (shared > 48 * 1024) {  // past the default dynamic limit (jit-tma's double buffers)
      for (cudaKernel_t k : {plain_, counted_}) {
        CudaCheck(cudaFuncSetAttribute(reinterpret_cast<const void*>(k),
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(shared)),
                  "cudaFuncSetAttribute (JIT normalize kernel shared memory)");
      }
    }
    int per_sm = 0;
    CudaCheck(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                  &per_sm, reinterpret_cast<const void*>(counted_), kThreads, shared),
              "cudaOccupancyMaxActiveBlocksPerMultiprocessor (JIT normalize kernel)");
    blocks_per_sm_ = per_sm > 0 ? per_sm : 1;
    max_blocks_ = blocks_per_sm_ * (sms > 0 ? sms : 1);
    Preload();
  } catch (...) {
    cudaLibraryUnload(library_);
    throw;
  }
}

void JitNormalizeKernel::Preload() const {
  // One block over no rows: the kernels zero and merge nothing and write no global memory.
  cudaStream_t stream = nullptr;
  CudaCheck(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
            "cudaStreamCreate (JIT normalize kernel preload)");
  const float* in = nullptr;
  long long rows = 0;
  float* out = nullptr;
  int64_t* counters = nullptr;
  void* args[] = {&in, &rows, &out, &counters};
  cudaError_t err = cudaLaunchKernel(reinterpret_cast<const void*>(plain_), dim3(1),
                                     dim3(kThreads), args,
                                     SharedBytes(tma_, tile_rows_, f_in_, f_out_, 0), stream);
  // The counting kernel zeroes its compiled-in counters: only where they fit (n_counters_ > 0).
  if (err == cudaSuccess && n_counters_ > 0) {
    err = cudaLaunchKernel(reinterpret_cast<const void*>(counted_), dim3(1), dim3(kThreads), args,
                           SharedBytes(tma_, tile_rows_, f_in_, f_out_, n_counters_), stream);
  }
  const cudaError_t synced = cudaStreamSynchronize(stream);
  cudaStreamDestroy(stream);
  CudaCheck(err != cudaSuccess ? err : synced, "JIT normalize kernel (first launch, no rows)");
}

JitNormalizeKernel::~JitNormalizeKernel() {
  if (library_ != nullptr) cudaLibraryUnload(library_);  // errors ignored: teardown
}

bool JitNormalizeKernel::Accepts(const float* d_in, int64_t n, const float* d_out,
                                 bool counting) const {
  if (!Aligned16(d_in) || (d_out != nullptr && !Aligned16(d_out))) return false;
  if (d_out == nullptr && f_out_ > 0) return false;
  if (!counting) return true;
  // Private 32-bit counts cannot overflow below 2^32 elements in the whole launch.
  return n_counters_ > 0 && n * static_cast<int64_t>(f_in_) < (int64_t{1} << 32);
}

cudaError_t JitNormalizeKernel::Launch(const float* d_in, int64_t n, float* d_out,
                                       int64_t* d_counters, cudaStream_t stream) const {
  if (n <= 0) return cudaSuccess;
  const bool counting = d_counters != nullptr;
  const int64_t tiles = (n + tile_rows_ - 1) / tile_rows_;
  const unsigned int blocks =
      static_cast<unsigned int>(tiles < max_blocks_ ? tiles : max_blocks_);
  const size_t shared =
      SharedBytes(tma_, tile_rows_, f_in_, f_out_, counting ? n_counters_ : 0);
  const float* in = d_in;
  long long rows = n;
  float* out = d_out;
  int64_t* counters = d_counters;
  void* args[] = {&in, &rows, &out, &counters};
  return cudaLaunchKernel(reinterpret_cast<const void*>(counting ? counted_ : plain_),
                          dim3(blocks), dim3(kThreads), args, shared, stream);
}

}  // namespace mlserve
