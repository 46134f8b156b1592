// Backend: what the batcher hands a formed, normalized batch to. TensorRT, torch, onnxruntime and
// Python callables live behind this interface; the batcher never sees through it.
//
// Ownership: the batcher owns its Backend (unique_ptr) and calls Execute from its worker threads,
// possibly concurrently from several instances: implementations must be thread-safe or serialize
// internally. Execute may throw mlserve::Error (its code is kept) or any std::exception
// (reported as kInternal); either fails only that batch.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mlserve {

// Output of one batch, shared read-only by the batch's requests after Execute returns.
struct BatchOutput {
  std::vector<float> data;  // rows * width floats, row-major
  int64_t rows = 0;
  int64_t width = 1;
  int32_t ndim = 2;  // 1: the backend returned [rows] (width 1); 2: [rows, width]
};

class FeaturePlan;

// What GPU executors report in the batcher's stats, summed over instances (Engine.stats()'s
// "gpu" entry).
struct ExecutorStats {
  std::string normalize_kernel;  // the kernel built for the plan: "generic" | "jit" | "jit-tma"
  int64_t batches = 0;           // batches finished on the device
  int64_t graph_launches = 0;    // batches whose H2D copy + normalize was one CUDA graph launch
  int64_t graphs = 0;            // CUDA graphs instantiated
  int32_t graphs_disabled = 0;   // instances whose capture failed (plain launches from then on)
};

// The executor of one worker ("instance") of a backend that normalizes batches itself, e.g. on a
// GPU (backends/cuda_backend.h). Owned by the batcher, used by that worker's thread only.
class RawBatchExecutor {
 public:
  virtual ~RawBatchExecutor() = default;
  // Where the worker gathers a batch's raw rows: rows * f_in floats, row-major (page-locked
  // host memory for a GPU). Valid until the next call; 1 <= rows <= the executor's max_rows.
  // Never throws (the buffer is allocated when the executor is made).
  virtual float* Staging(int64_t rows) = 0;
  // Normalizes the n staged rows (counting the plan's histograms when asked), runs the model
  // and fills `out` (out->rows must equal n). Throws like Backend::Execute; either fails only
  // this batch.
  virtual void Run(int64_t n, bool histograms, BatchOutput* out) = 0;
  // Adds this executor's counters to *stats. Called from any thread, concurrently with Run.
  virtual void AddStats(ExecutorStats* /*stats*/) const {}
};

class Backend {
 public:
  virtual ~Backend() = default;
  // @param x    normalized batch, n * d floats, row-major; valid only during the call
  // @param out  to fill: out->rows must equal n
  virtual void Execute(const float* x, int64_t n, int64_t d, BatchOutput* out) = 0;
  virtual std::string Name() const = 0;
  // Called by each worker thread once, after its last Execute (per-thread cleanup).
  virtual void ThreadExit() {}
  // Backends that normalize batches themselves return one executor per worker; the batcher then
  // gathers raw rows into the executor instead of normalizing them and calling Execute. Called
  // by the batcher's constructor, once per instance, before any worker starts; errors (e.g. no
  // GPU) propagate to the batcher's creator. The plan outlives the executor.
  virtual std::unique_ptr<RawBatchExecutor> NewExecutor(const FeaturePlan& /*plan*/,
                                                        int32_t /*instance*/,
                                                        int64_t /*max_rows*/) {
    return nullptr;
  }
};

// Built-in backends: "noop" (zeros, [n, 1]: measures the core's own overhead) and "rowsum"
// (sum of each normalized row, [n, 1]: lets tests check that each request gets its own rows).
// Returns nullptr for an unknown name.
std::unique_ptr<Backend> MakeBuiltinBackend(const std::string& name);

}  // namespace mlserve
