// CUDA error handling of the core's CUDA host code (only included where MLSERVE_WITH_CUDA is
// set). Every failed CUDA call becomes mlserve::Error carrying the step and CUDA's own message:
// kUnavailable for conditions a client may retry elsewhere or later (no device, out of memory,
// device busy), kInternal for everything else. Nothing here aborts. Stateless, thread-safe.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "common/error.h"

namespace mlserve {

inline ErrorCode CudaErrorCode(cudaError_t err) {
  switch (err) {
    case cudaErrorMemoryAllocation:
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorDevicesUnavailable:
    case cudaErrorLaunchOutOfResources:
      return ErrorCode::kUnavailable;
    default:
      return ErrorCode::kInternal;
  }
}

inline std::string CudaMessage(cudaError_t err) {
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

// Throws Error for a failed CUDA call; `what` names the step. A non-sticky error is cleared so
// that it does not surface again as the error of an unrelated later call.
inline void CudaCheck(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();
  throw Error(CudaErrorCode(err), std::string("CUDA error in ") + what + ": " + CudaMessage(err));
}

// Makes `device` current on the calling thread (several models may use several devices).
inline void CudaSetDevice(int device) {
  const cudaError_t err = cudaSetDevice(device);
  if (err == cudaSuccess) return;
  cudaGetLastError();
  throw Error(ErrorCode::kUnavailable, "CUDA device " + std::to_string(device) +
                                           " cannot be used: " + CudaMessage(err));
}

}  // namespace mlserve
