// NVRTC, CUDA's run-time compiler, loaded with dlopen on first use: the specialized normalize
// kernels (plan/plan_codegen.h) are compiled with it at model load. Loading it at run time keeps
// it an optional dependency: a process without libnvrtc imports, serves on the CPU and on the GPU
// with the generic kernel, and reports why the specialized one is not available.
//
// Where it is looked for, in order: $MLSERVE_NVRTC_LIBRARY (a path), the paths given by
// SetNvrtcCandidates (mlserve's Python package passes site-packages' nvidia/*/lib, where the
// nvidia-cuda-nvrtc wheel that CUDA builds of torch depend on puts it), then the loader's
// search path (libnvrtc.so.13, .so.12, .so) and /usr/local/cuda/lib64. Builds in every
// configuration (no CUDA headers): NVRTC compiles without a GPU.
//
// Thread-safety: every function may be called from any thread (loading and compiling are
// serialized by one mutex).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace mlserve {

// Extra library paths to try before the loader's search path (replaces earlier ones; has no
// effect once NVRTC was loaded).
void SetNvrtcCandidates(std::vector<std::string> paths);

// Whether NVRTC loads. Fills `where` with the library path it loaded or, on false, the reasons
// each candidate failed.
bool NvrtcAvailable(std::string* where);

// "major.minor" of the loaded NVRTC; throws Error(kUnavailable) when it does not load.
std::string NvrtcVersion();

struct NvrtcOutput {
  std::vector<char> binary;  // CUBIN for an sm_XX architecture, PTX (NUL-terminated) for compute_XX
  std::string log;           // the compiler's log (warnings), may be empty
  double compile_ms = 0.0;
};

// Compiles `source` (named `name` in messages) with the in-memory `headers` (include name,
// contents) for `arch` ("sm_90": CUBIN, "compute_90": PTX), plus `options` (e.g. "--fmad=false").
// Throws Error(kUnavailable) when NVRTC does not load and Error(kInternal) with the compiler's log
// when compilation fails.
NvrtcOutput NvrtcCompile(const std::string& source, const std::string& name,
                         const std::vector<std::pair<std::string, std::string>>& headers,
                         const std::string& arch, const std::vector<std::string>& options);

}  // namespace mlserve
