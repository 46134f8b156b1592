// NVRTC loader and compile call (nvrtc.h).
#include "cuda/nvrtc.h"

#include <dlfcn.h>

#include <chrono>
#include <cstdlib>
#include <mutex>

#include "common/error.h"

namespace mlserve {

namespace {

// The subset of nvrtc.h used here (NVRTC's C ABI, stable across releases).
using nvrtcResult = int;
using nvrtcProgram = struct NvrtcProgramOpaque*;
constexpr nvrtcResult kNvrtcSuccess = 0;

struct NvrtcApi {
  const char* (*GetErrorString)(nvrtcResult);
  nvrtcResult (*Version)(int*, int*);
  nvrtcResult (*CreateProgram)(nvrtcProgram*, const char*, const char*, int, const char* const*,
                               const char* const*);
  nvrtcResult (*DestroyProgram)(nvrtcProgram*);
  nvrtcResult (*CompileProgram)(nvrtcProgram, int, const char* const*);
  nvrtcResult (*GetProgramLogSize)(nvrtcProgram, size_t*);
  nvrtcResult (*GetProgramLog)(nvrtcProgram, char*);
  nvrtcResult (*GetPTXSize)(nvrtcProgram, size_t*);
  nvrtcResult (*GetPTX)(nvrtcProgram, char*);
  nvrtcResult (*GetCUBINSize)(nvrtcProgram, size_t*);
  nvrtcResult (*GetCUBIN)(nvrtcProgram, char*);
};

std::mutex g_mu;
std::vector<std::string> g_candidates;  // guarded by g_mu
bool g_tried = false;                   // guarded by g_mu
bool g_loaded = false;                  // guarded by g_mu
std::string g_where;                    // guarded by g_mu: loaded path, or why not
NvrtcApi g_api{};                       // guarded by g_mu (immutable once loaded)

template <typename Fn>
bool Resolve(void* lib, const char* name, Fn* fn) {
  *fn = reinterpret_cast<Fn>(dlsym(lib, name));
  return *fn != nullptr;
}

bool TryLoad(const std::string& path, std::string* why) {
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* e = dlerror();
    *why += "\n  " + path + ": " + (e != nullptr ? e : "dlopen failed");
    return false;
  }
  NvrtcApi api{};
  const bool ok = Resolve(lib, "nvrtcGetErrorString", &api.GetErrorString) &&
                  Resolve(lib, "nvrtcVersion", &api.Version) &&
                  Resolve(lib, "nvrtcCreateProgram", &api.CreateProgram) &&
                  Resolve(lib, "nvrtcDestroyProgram", &api.DestroyProgram) &&
                  Resolve(lib, "nvrtcCompileProgram", &api.CompileProgram) &&
                  Resolve(lib, "nvrtcGetProgramLogSize", &api.GetProgramLogSize) &&
                  Resolve(lib, "nvrtcGetProgramLog", &api.GetProgramLog) &&
                  Resolve(lib, "nvrtcGetPTXSize", &api.GetPTXSize) &&
                  Resolve(lib, "nvrtcGetPTX", &api.GetPTX) &&
                  Resolve(lib, "nvrtcGetCUBINSize", &api.GetCUBINSize) &&
                  Resolve(lib, "nvrtcGetCUBIN", &api.GetCUBIN);
  if (!ok) {
    *why += "\n  " + path + ": not an NVRTC library (missing symbols)";
    dlclose(lib);
    return false;
  }
  g_api = api;  // the library stays loaded for the life of the process
  // NVRTC dlopens its builtins library (libnvrtc-builtins.so.MAJOR.MINOR) by name at the first
  // compile; in NVIDIA's wheels it lies beside libnvrtc, a folder the loader does not search.
  // Loading it from there first makes that dlopen find it (glibc matches loaded sonames).
  int major = 0;
  int minor = 0;
  const size_t slash = path.rfind('/');
  if (slash != std::string::npos && api.Version(&major, &minor) == kNvrtcSuccess) {
    const std::string builtins = path.substr(0, slash + 1) + "libnvrtc-builtins.so." +
                                 std::to_string(major) + "." + std::to_string(minor);
    dlopen(builtins.c_str(), RTLD_NOW | RTLD_GLOBAL);  // absent: NVRTC's own search decides
  }
  return true;
}

// Loads NVRTC once. Requires g_mu.
bool LoadLocked() {
  if (g_tried) return g_loaded;
  g_tried = true;
  std::vector<std::string> paths;
  if (const char* env = std::getenv("MLSERVE_NVRTC_LIBRARY"); env != nullptr && *env != '\0') {
    paths.emplace_back(env);
  }
  paths.insert(paths.end(), g_candidates.begin(), g_candidates.end());
  for (const char* p : {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so",
                        "/usr/local/cuda/lib64/libnvrtc.so.13", "/usr/local/cuda/lib64/libnvrtc.so"}) {
    paths.emplace_back(p);
  }
  std::string why = "NVRTC (libnvrtc) was not found; install it (pip install nvidia-cuda-nvrtc, "
                    "or the CUDA toolkit) or set MLSERVE_NVRTC_LIBRARY. Tried:";
  for (const std::string& p : paths) {
    if (TryLoad(p, &why)) {
      g_loaded = true;
      g_where = p;
      return true;
    }
  }
  g_where = why;
  return false;
}

std::string ResultString(nvrtcResult r) {
  const char* s = g_api.GetErrorString != nullptr ? g_api.GetErrorString(r) : nullptr;
  return s != nullptr ? s : "NVRTC error " + std::to_string(r);
}

}  // namespace

void SetNvrtcCandidates(std::vector<std::string> paths) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_candidates = std::move(paths);
}

bool NvrtcAvailable(std::string* where) {
  std::lock_guard<std::mutex> lock(g_mu);
  const bool ok = LoadLocked();
  if (where != nullptr) *where = g_where;
  return ok;
}

std::string NvrtcVersion() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!LoadLocked()) throw Error(ErrorCode::kUnavailable, g_where);
  int major = 0;
  int minor = 0;
  if (g_api.Version(&major, &minor) != kNvrtcSuccess) return "unknown";
  return std::to_string(major) + "." + std::to_string(minor);
}

NvrtcOutput NvrtcCompile(const std::string& source, const std::string& name,
                         const std::vector<std::pair<std::string, std::string>>& headers,
                         const std::string& arch, const std::vector<std::string>& options) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!LoadLocked()) throw Error(ErrorCode::kUnavailable, g_where);
  const bool cubin = arch.rfind("sm_", 0) == 0;
  if (!cubin && arch.rfind("compute_", 0) != 0) {
    ThrowInvalid("NVRTC architecture must be sm_XX or compute_XX, got '" + arch + "'");
  }
  std::vector<const char*> header_text;
  std::vector<const char*> header_names;
  for (const auto& [include, text] : headers) {
    header_names.push_back(include.c_str());
    header_text.push_back(text.c_str());
  }
  const std::string arch_option = "--gpu-architecture=" + arch;
  std::vector<const char*> opts{arch_option.c_str()};
  for (const std::string& o : options) opts.push_back(o.c_str());

  const auto t0 = std::chrono::steady_clock::now();
  nvrtcProgram prog = nullptr;
  nvrtcResult r = g_api.CreateProgram(&prog, source.c_str(), name.c_str(),
                                      static_cast<int>(header_text.size()), header_text.data(),
                                      header_names.data());
  if (r != kNvrtcSuccess) {
    throw Error(ErrorCode::kInternal, "nvrtcCreateProgram (" + name + "): " + ResultString(r));
  }
  struct Destroy {
    nvrtcProgram* p;
    ~Destroy() { g_api.DestroyProgram(p); }
  } destroy{&prog};

  NvrtcOutput out;
  r = g_api.CompileProgram(prog, static_cast<int>(opts.size()), opts.data());
  size_t log_size = 0;
  if (g_api.GetProgramLogSize(prog, &log_size) == kNvrtcSuccess && log_size > 1) {
    out.log.resize(log_size);
    if (g_api.GetProgramLog(prog, out.log.data()) != kNvrtcSuccess) out.log.clear();
    while (!out.log.empty() && (out.log.back() == '\0' || out.log.back() == '\n')) {
      out.log.pop_back();
    }
  }
  if (r != kNvrtcSuccess) {
    throw Error(ErrorCode::kInternal, "NVRTC could not compile " + name + " for " + arch + ": " +
                                          ResultString(r) + "\n" + out.log);
  }
  size_t size = 0;
  r = cubin ? g_api.GetCUBINSize(prog, &size) : g_api.GetPTXSize(prog, &size);
  if (r == kNvrtcSuccess) {
    out.binary.resize(size);
    r = cubin ? g_api.GetCUBIN(prog, out.binary.data()) : g_api.GetPTX(prog, out.binary.data());
  }
  if (r != kNvrtcSuccess) {
    throw Error(ErrorCode::kInternal, "NVRTC output of " + name + ": " + ResultString(r));
  }
  out.compile_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace mlserve
