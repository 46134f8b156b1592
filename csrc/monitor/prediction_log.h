// PredictionLog: the outputs of recent tagged requests (a tag is the server's request id), so
// ground truth that arrives later can be joined to what the model predicted (online accuracy,
// ROC-AUC, log-loss / RMSE per model version). Filled once per executed batch by the worker that
// ran it, before the batch's results are published: a client that has its answer always finds
// its prediction logged.
//
// Retention is bounded twice: at most `max_entries` requests (the oldest are dropped first) and
// none older than `max_age_ns`. A tag logged again replaces the earlier entry in lookups.
//
// Cost: entries live in a ring allocated once (each slot keeps its string and float capacity,
// so a full log records without allocating), indexed by a 64-bit hash of the tag in a flat
// open-addressing table (linear probing, at most half full, deletion by backward shift: no
// allocation and about one cache miss per insert or removal; std::unordered_map's node chains
// were most of the monitored server's logging time). A lookup compares the stored tag, so a
// hash collision reads as "not logged", never as another request's prediction.
//
// Thread-safety: every method is thread-safe (one mutex, taken once per batch and per lookup).
// Ownership: Record only reads the batch during the call; Find returns copies.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
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
  // Drops entries older than max_age, and the oldest until `room` slots are free.
  void EvictLocked(int64_t now_ns, uint64_t room);
  LoggedPrediction& SlotLocked(uint64_t seq) {
    return ring_[static_cast<size_t>(seq % ring_.size())];
  }

  std::atomic<bool> enabled_{false};
  std::mutex mu_;
  int64_t max_age_ns_ = 0;                       // guarded by mu_
  std::vector<LoggedPrediction> ring_;           // max_entries slots; guarded by mu_
  uint64_t first_seq_ = 0;                       // oldest logged sequence number; guarded by mu_
  uint64_t next_seq_ = 0;                        // guarded by mu_
  // The index: tag hash -> newest sequence number. Slots with seq1 == 0 are empty (seq1 is the
  // sequence number + 1). Guarded by mu_.
  struct IndexSlot {
    uint64_t hash;
    uint64_t seq1;
  };
  std::vector<IndexSlot> index_;
  uint64_t index_mask_ = 0;
  void IndexPutLocked(uint64_t hash, uint64_t seq);
  // The slot of `hash`, or nullptr.
  const IndexSlot* IndexFindLocked(uint64_t hash) const;
  // Removes `hash` when it still points at `seq`.
  void IndexEraseLocked(uint64_t hash, uint64_t seq);
};

}  // namespace mlserve
