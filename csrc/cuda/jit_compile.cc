// CompileJitNormalizeKernel (jit_compile.h).
#include "cuda/jit_compile.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <utility>

#include "common/error.h"
#include "plan/plan_codegen.h"

namespace mlserve {

namespace {

constexpr int kJitTileBytes = 16 * 1024;

std::mutex g_cache_mu;
// (arch, source) -> compiled output; guarded by g_cache_mu. Plans are few per process (one per
// served model version), so entries are never evicted.
std::map<std::pair<std::string, std::string>, std::shared_ptr<const NvrtcOutput>> g_cache;

}  // namespace

NormalizeKernelChoice ParseNormalizeKernelChoice(const std::string& name) {
  std::string value = name;
  if (value.empty()) {
    const char* env = std::getenv("MLSERVE_CUDA_KERNEL");
    value = env != nullptr && *env != '\0' ? env : "auto";
  }
  if (value == "generic") return NormalizeKernelChoice::kGeneric;
  if (value == "jit") return NormalizeKernelChoice::kJit;
  if (value == "jit-tma") return NormalizeKernelChoice::kJitTma;
  if (value == "auto") return NormalizeKernelChoice::kAuto;
  ThrowInvalid("normalize kernel must be 'generic', 'jit', 'jit-tma' or 'auto' (argument or "
               "MLSERVE_CUDA_KERNEL), got '" + value + "'");
}

int DefaultJitTileRows(const FeaturePlan& plan) { return JitTileRows(plan.view(), kJitTileBytes); }

JitKernelShape JitShapeFromEnv(bool tma) {
  JitKernelShape shape;
  shape.tma = tma;
  shape.tile_rows = 0;
  for (auto [name, field] : {std::pair<const char*, int*>{"MLSERVE_CUDA_JIT_TILE_ROWS",
                                                          &shape.tile_rows},
                             {"MLSERVE_CUDA_JIT_MIN_BLOCKS", &shape.min_blocks}}) {
    const char* env = std::getenv(name);
    if (env == nullptr || *env == '\0') continue;
    char* end = nullptr;
    const long value = std::strtol(env, &end, 10);
    if (*end != '\0' || value < 0 || value > 4096) {
      ThrowInvalid(std::string(name) + " must be a non-negative integer, got '" + env + "'");
    }
    *field = static_cast<int>(value);
  }
  return shape;
}

JitBinary CompileJitNormalizeKernel(const FeaturePlan& plan, const std::string& arch,
                                    JitKernelShape shape) {
  const int tile_rows = shape.tile_rows;
  const bool tma = shape.tma;
  const MlsPlanView& v = plan.view();
  if (v.f_in <= 0) {
    throw Error(ErrorCode::kUnavailable, "the JIT normalize kernel needs a plan with inputs");
  }
  JitBinary out;
  out.tile_rows = tile_rows > 0 ? tile_rows : DefaultJitTileRows(plan);
  if (out.tile_rows < 32) {
    throw Error(ErrorCode::kUnavailable,
                "rows of this plan (" + std::to_string(v.f_in) + " inputs + " +
                    std::to_string(v.f_out) +
                    " outputs) are too wide for the JIT kernel's 32-row tiles; the generic "
                    "kernel runs it");
  }
  if (tma) {
    // sm_XX / compute_XX with XX >= 90: the bulk copies are Hopper instructions.
    const size_t digits = arch.find_first_of("0123456789");
    if (digits == std::string::npos || std::stoi(arch.substr(digits)) < 90) {
      throw Error(ErrorCode::kUnavailable,
                  "the jit-tma kernel needs sm_90 or newer (bulk copies), not " + arch);
    }
  }
  shape.tile_rows = out.tile_rows;
  const std::string source = GenerateNormalizeSource(plan, shape, true);
  auto key = std::make_pair(arch, source);
  {
    std::lock_guard<std::mutex> lock(g_cache_mu);
    auto it = g_cache.find(key);
    if (it != g_cache.end()) {
      out.output = it->second;
      out.cached = true;
      return out;
    }
  }
  // Same float semantics as the generic kernel: no FMA contraction, IEEE division and square
  // root, denormals kept (NVRTC's defaults except --fmad).
  auto compiled = std::make_shared<NvrtcOutput>(NvrtcCompile(
      source, "mlserve_normalize_jit.cu", JitHeaders(), arch,
      {"--fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false", "--std=c++17"}));
  out.output = compiled;
  std::lock_guard<std::mutex> lock(g_cache_mu);
  g_cache.emplace(std::move(key), std::move(compiled));
  return out;
}

}  // namespace mlserve
