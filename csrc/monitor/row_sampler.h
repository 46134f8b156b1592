// RowSampler: a bounded uniform sample of the rows a batcher ran (each row's raw input and the
// model's output for it) and the histogram of the prediction, for drift monitoring
// (python/mlserve/drift). Filled once per executed batch by the worker thread that ran it, so
// monitoring adds no work to the request path and none under the GIL.
//
// The sample is a reservoir (Li's Algorithm L: geometric skips, so a full reservoir costs O(1)
// per batch plus O(1) per kept row, not a random draw per row) of at most `capacity` rows of the
// rows recorded since the last Snapshot(reset=true): every one of them is in it with the same
// probability. The prediction histogram counts every recorded row: output column 0 into
// `prediction_edges` (values clamped into [e0, ek], so the outer bins hold everything beyond the
// edges, as numpy.histogram of clipped values), or the argmax column when `prediction_argmax`.
//
// Thread-safety: every method is thread-safe (one mutex, taken once per batch).
// Ownership: Record only reads the batch during the call; Snapshot returns copies.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <vector>

namespace mlserve {

struct Request;
struct BatchOutput;

struct SamplerConfig {
  int64_t capacity = 0;                 // rows kept in the reservoir; 0 = no sample
  std::vector<float> prediction_edges;  // k + 1 strictly increasing edges; empty = no histogram
  bool prediction_argmax = false;       // count the argmax output column instead of edges
  uint64_t seed = 0;                    // of the reservoir's random draws

  // Throws kInvalidInput naming the field.
  void Validate() const;
};

// What Snapshot returns: the rows recorded since the last reset.
struct RowSample {
  int64_t seen = 0;                  // rows recorded (the sample is a subset of them)
  int64_t f_in = 0;                  // input width
  int64_t width = 0;                 // output width (0 until a batch was recorded)
  std::vector<float> inputs;         // rows * f_in raw input floats, row-major
  std::vector<float> outputs;        // rows * width output floats, row-major
  std::vector<int64_t> prediction_counts;  // per bin (edges) or per output column (argmax)
  int64_t prediction_missing = 0;    // rows whose prediction was NaN
};

class RowSampler {
 public:
  explicit RowSampler(int64_t f_in) : f_in_(f_in) {}

  // Replaces the configuration and clears everything recorded. Throws kInvalidInput.
  void Configure(const SamplerConfig& config);
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

  // Records the rows of one executed batch: `batch` in batch order, `out` its output
  // (out.rows == sum of the requests' rows).
  void Record(const std::vector<std::shared_ptr<Request>>& batch, const BatchOutput& out);

  // A copy of what was recorded since the last reset; reset=true starts a new sample.
  RowSample Snapshot(bool reset);

 private:
  void ResetLocked();
  // Draws the stream index of the next row that replaces one in the full reservoir.
  void AdvanceSkipLocked();
  void KeepLocked(int64_t slot, const float* input, const float* output);
  void CountPredictionLocked(const float* output);

  const int64_t f_in_;
  std::atomic<bool> enabled_{false};
  std::mutex mu_;
  SamplerConfig config_;        // guarded by mu_
  std::mt19937_64 rng_;         // guarded by mu_
  double w_ = 0.0;              // Algorithm L's W; guarded by mu_
  int64_t next_ = 0;            // stream index of the next replacing row; guarded by mu_
  int64_t seen_ = 0;            // guarded by mu_
  int64_t width_ = 0;           // guarded by mu_
  std::vector<float> inputs_;   // guarded by mu_
  std::vector<float> outputs_;  // guarded by mu_
  std::vector<int64_t> prediction_counts_;  // guarded by mu_
  int64_t prediction_missing_ = 0;          // guarded by mu_
};

}  // namespace mlserve
