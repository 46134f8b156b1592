// PredictionLog: the outputs of recent tagged requests (a tag is the server's request id), so
// ground truth that arrives later can be joined to what the model predicted (online accuracy,
// ROC-AUC, log-loss / RMSE per model version). Filled once per executed batch by the worker that
// ran it, before the batch's results are published: a client that has its answer always finds
// its prediction logged.
//
// Retention is bounded twice: at most `max_entries` requests (the oldest are dropped first) and
// none older than `max_age_ns`. A tag logged again replaces the earlier entry in lookups.
//
// Thread-safety: every method is thread-safe (one mutex, taken once per batch and per lookup).
// Ownership: Record only reads the batch during the call; Find returns copies.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace mlserve {

struct Request;
struct BatchOutput;

struct LoggedPrediction {
  std::string tag;
  int64_t unix_ns = 0;          // when the batch finished (system clock)
  int64_t rows = 0;
  int64_t width = 0;
  std::vector<float> outputs;   // rows * width floats, row-major
};

class PredictionLog {
 public:
  // Replaces the bounds and clears the log; max_entries 0 turns logging off.
  // Throws kInvalidInput for negative bounds.
  void Configure(int64_t max_entries, int64_t max_age_ns);
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

  // Logs every request of the batch that carries a tag; `out` is the batch's output.
  void Record(const std::vector<std::shared_ptr<Request>>& batch, const BatchOutput& out);

  // The logged entry of each tag (nullopt: never logged, or already dropped).
  std::vector<std::optional<LoggedPrediction>> Find(const std::vector<std::string>& tags);

  int64_t size();

 private:
  void EvictLocked(int64_t now_ns);

  std::atomic<bool> enabled_{false};
  std::mutex mu_;
  int64_t max_entries_ = 0;  // guarded by mu_
  int64_t max_age_ns_ = 0;   // guarded by mu_
  std::deque<LoggedPrediction> entries_;             // oldest first; guarded by mu_
  uint64_t first_seq_ = 0;                           // sequence number of entries_.front()
  std::unordered_map<std::string, uint64_t> index_;  // tag -> newest sequence number
};

}  // namespace mlserve
