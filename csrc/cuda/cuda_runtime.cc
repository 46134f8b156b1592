// What CUDA devices this build can use (cuda_runtime.h). With MLSERVE_WITH_CUDA the static CUDA
// runtime is asked; any error it returns (no driver, no device, ...) means "no GPU" and is
// cleared so that it cannot surface later as the error of an unrelated call. Stateless and
// thread-safe (the CUDA runtime API is).
#include "cuda/cuda_runtime.h"

#include <string>
#include <vector>

#include "common/error.h"

#ifdef MLSERVE_WITH_CUDA
#include <cuda_runtime_api.h>

#include "cuda/cuda_check.h"
#endif

namespace mlserve {

#ifdef MLSERVE_WITH_CUDA

namespace {

// Number of usable devices, or the runtime's error (cleared) when it cannot say.
cudaError_t DeviceCount(int* count) {
  *count = 0;
  const cudaError_t err = cudaGetDeviceCount(count);
  if (err != cudaSuccess) {
    *count = 0;
    cudaGetLastError();
  }
  return err;
}

std::string Describe(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + " (" + std::to_string(static_cast<int>(err)) +
         "): " + cudaGetErrorString(err);
}

}  // namespace

bool CudaBuilt() { return true; }

int CudaRuntimeVersion() { return CUDART_VERSION; }

int CudaDriverVersion() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return version;
}

std::vector<CudaDeviceInfo> CudaDevices() {
  std::vector<CudaDeviceInfo> devices;
  int count = 0;
  if (DeviceCount(&count) != cudaSuccess) return devices;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    CudaDeviceInfo info;
    info.index = i;
    info.name = prop.name;
    info.compute_major = prop.major;
    info.compute_minor = prop.minor;
    info.total_memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
    info.multiprocessors = prop.multiProcessorCount;
    devices.push_back(std::move(info));
  }
  return devices;
}

void RequireCudaDevice(int device) {
  int count = 0;
  const cudaError_t err = DeviceCount(&count);
  if (err != cudaSuccess) {
    throw Error(ErrorCode::kUnavailable,
                "no usable GPU was found: the CUDA runtime reports " + Describe(err) +
                    "; check the NVIDIA driver and device visibility (CUDA_VISIBLE_DEVICES), or "
                    "use the CPU path");
  }
  if (count == 0) {
    throw Error(ErrorCode::kUnavailable,
                "no usable GPU was found: the CUDA runtime sees 0 devices; use the CPU path");
  }
  if (device < 0 || device >= count) {
    throw Error(ErrorCode::kUnavailable,
                "CUDA device " + std::to_string(device) + " does not exist: " +
                    std::to_string(count) + " device(s) visible (valid indices 0.." +
                    std::to_string(count - 1) + ")");
  }
}

void CudaStreamWaitStream(void* consumer, void* producer, int device) {
  if (consumer == producer) return;
  CudaSetDevice(device);
  cudaEvent_t event = nullptr;
  CudaCheck(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
  cudaError_t err = cudaEventRecord(event, static_cast<cudaStream_t>(producer));
  if (err == cudaSuccess) err = cudaStreamWaitEvent(static_cast<cudaStream_t>(consumer), event, 0);
  cudaEventDestroy(event);  // released once the wait completes; the wait stays valid
  CudaCheck(err, "stream synchronisation for DLPack (cudaEventRecord/cudaStreamWaitEvent)");
}

#else  // CPU-only build

namespace {
constexpr const char* kNotBuilt =
    "mlserve was built without CUDA (nvcc not found at build time); rebuild with nvcc on PATH "
    "or use the CPU path";
}  // namespace

bool CudaBuilt() { return false; }

int CudaRuntimeVersion() { return 0; }

int CudaDriverVersion() { return 0; }

std::vector<CudaDeviceInfo> CudaDevices() { return {}; }

void RequireCudaDevice(int /*device*/) { throw Error(ErrorCode::kUnavailable, kNotBuilt); }

void CudaStreamWaitStream(void* /*consumer*/, void* /*producer*/, int /*device*/) {
  throw Error(ErrorCode::kUnavailable, kNotBuilt);
}

#endif  // MLSERVE_WITH_CUDA

}  // namespace mlserve
