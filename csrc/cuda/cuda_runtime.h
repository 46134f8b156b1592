// What CUDA devices this build of the core can use.
//
// Compiled in every build. Without MLSERVE_WITH_CUDA (CPU-only build) CudaBuilt() is false and
// CudaDevices() is empty. With it, the static CUDA runtime is linked, and any runtime error
// (no driver: 35, no device: 100, ...) or zero devices means "no GPU": an empty list, never a
// crash. Thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mlserve {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  int64_t total_memory_bytes = 0;
  int multiprocessors = 0;
};

bool CudaBuilt();
// CUDA runtime version this build was compiled against (e.g. 13000), 0 in CPU-only builds.
int CudaRuntimeVersion();
// Newest CUDA version the installed driver supports (e.g. 13000); 0 without a driver or CUDA.
int CudaDriverVersion();
std::vector<CudaDeviceInfo> CudaDevices();
// Throws Error(kUnavailable) saying why (not built with CUDA / no driver / no such device).
void RequireCudaDevice(int device);

// Makes work queued on `consumer` after this call wait for the work queued on `producer` so
// far (an event recorded on producer, waited on by consumer; no host synchronisation). Both are
// cudaStream_t handles of `device`; consumer may be one of CUDA's special handles (1: legacy
// default stream, 2: per-thread default stream). No-op when they are the same stream. Throws
// Error (kInternal / kUnavailable) with CUDA's message, kUnavailable in a CPU-only build.
void CudaStreamWaitStream(void* consumer, void* producer, int device);

}  // namespace mlserve
