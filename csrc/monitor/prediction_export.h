// PredictionExport: every tagged request's raw input rows and outputs, buffered until the server
// drains them into its durable prediction log (python/mlserve/predlog.py: Parquet parts in a
// directory or object storage, which feedback from any replica joins offline).
//
// Filled once per executed batch by the worker that ran it (beside the PredictionLog), so every
// request path (JSON, msgpack, the core's msgpack lane, GPU) is covered and the request path does
// no per-request work for it. Bounded: at most `max_rows` buffered rows; a request that does not
// fit is dropped and counted (the drainer is late), never blocking a worker.
//
// Thread-safety: every method is thread-safe (one mutex, taken once per batch and per drain).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace mlserve {

struct Request;
struct BatchOutput;

// What Drain returns: per request its tag, finish time and row count; per row its raw input
// (f_in floats) and output (width floats), request after request.
struct ExportedPredictions {
  std::vector<std::string> tags;
  std::vector<int64_t> unix_ns;
  std::vector<int64_t> rows;
  std::vector<float> inputs;   // sum(rows) * f_in
  std::vector<float> outputs;  // sum(rows) * width
  int64_t f_in = 0;
  int64_t width = 0;           // 0 when nothing was recorded
  int64_t dropped_requests = 0;  // since the previous drain: did not fit in max_rows
  int64_t dropped_rows = 0;
};

class PredictionExport {
 public:
  // max_rows 0 turns it off (and drops what is buffered). sample in (0, 1]: the share of
  // requests kept, chosen by a hash of the tag, so the same request id is kept or left out
  // everywhere (a retry, another replica). Throws kInvalidInput for a bound out of range.
  void Configure(int64_t max_rows, double sample = 1.0);
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

  // Buffers every tagged request of the batch; `out` is the batch's output.
  void Record(const std::vector<std::shared_ptr<Request>>& batch, const BatchOutput& out,
              int64_t f_in);

  // Everything buffered since the last drain (the buffer starts empty again).
  ExportedPredictions Drain();

 private:
  std::atomic<bool> enabled_{false};
  std::mutex mu_;
  int64_t max_rows_ = 0;            // guarded by mu_
  uint64_t sample_below_ = 0;       // keep tags whose hash is below this; guarded by mu_
  bool sample_all_ = true;          // guarded by mu_
  int64_t buffered_rows_ = 0;       // guarded by mu_
  ExportedPredictions buf_;         // guarded by mu_
};

}  // namespace mlserve
