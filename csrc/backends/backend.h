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

class Backend {
 public:
  virtual ~Backend() = default;
  // @param x    normalized batch, n * d floats, row-major; valid only during the call
  // @param out  to fill: out->rows must equal n
  virtual void Execute(const float* x, int64_t n, int64_t d, BatchOutput* out) = 0;
  virtual std::string Name() const = 0;
  // Called by each worker thread once, after its last Execute (per-thread cleanup).
  virtual void ThreadExit() {}
};

// Built-in backends: "noop" (zeros, [n, 1]: measures the core's own overhead) and "rowsum"
// (sum of each normalized row, [n, 1]: lets tests check that each request gets its own rows).
// Returns nullptr for an unknown name.
std::unique_ptr<Backend> MakeBuiltinBackend(const std::string& name);

}  // namespace mlserve
