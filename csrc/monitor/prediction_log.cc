// PredictionLog implementation; see prediction_log.h.
#include "monitor/prediction_log.h"

#include <chrono>
#include <functional>

#include "backends/backend.h"
#include "batcher/dynamic_batcher.h"
#include "common/error.h"

namespace mlserve {
namespace {

int64_t UnixNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

uint64_t TagHash(const std::string& tag) { return std::hash<std::string>{}(tag); }

}  // namespace

void PredictionLog::Configure(int64_t max_entries, int64_t max_age_ns) {
  if (max_entries < 0) ThrowInvalid("prediction log: max_entries must be >= 0 (0 = off)");
  if (max_entries > (int64_t{1} << 26)) ThrowInvalid("prediction log: max_entries must be <= 67108864");
  if (max_age_ns < 0) ThrowInvalid("prediction log: max_age must be >= 0 (0 = no age bound)");
  std::lock_guard<std::mutex> lock(mu_);
  max_age_ns_ = max_age_ns;
  ring_.clear();
  ring_.shrink_to_fit();
  ring_.resize(static_cast<size_t>(max_entries));
  first_seq_ = next_seq_ = 0;
  size_t slots = 16;
  while (slots < 2 * static_cast<size_t>(max_entries)) slots *= 2;  // at most half full
  index_.assign(max_entries > 0 ? slots : 0, IndexSlot{0, 0});
  index_.shrink_to_fit();
  index_mask_ = max_entries > 0 ? slots - 1 : 0;
  enabled_.store(max_entries > 0, std::memory_order_relaxed);
}

void PredictionLog::IndexPutLocked(uint64_t hash, uint64_t seq) {
  for (uint64_t i = hash & index_mask_;; i = (i + 1) & index_mask_) {
    IndexSlot& slot = index_[i];
    if (slot.seq1 == 0 || slot.hash == hash) {  // empty, or the same tag hash logged again
      slot = IndexSlot{hash, seq + 1};
      return;
    }
  }
}

const PredictionLog::IndexSlot* PredictionLog::IndexFindLocked(uint64_t hash) const {
  if (index_.empty()) return nullptr;
  for (uint64_t i = hash & index_mask_;; i = (i + 1) & index_mask_) {
    const IndexSlot& slot = index_[i];
    if (slot.seq1 == 0) return nullptr;
    if (slot.hash == hash) return &slot;
  }
}

void PredictionLog::IndexEraseLocked(uint64_t hash, uint64_t seq) {
  const IndexSlot* found = IndexFindLocked(hash);
  if (found == nullptr || found->seq1 != seq + 1) return;  // logged again later: keep it
  // Backward-shift deletion: move later members of the probe run into the hole when their home
  // slot does not lie cyclically in (hole, j], so every run stays contiguous (no tombstones).
  uint64_t hole = static_cast<uint64_t>(found - index_.data());
  for (uint64_t j = (hole + 1) & index_mask_;; j = (j + 1) & index_mask_) {
    const IndexSlot slot = index_[j];
    if (slot.seq1 == 0) break;
    const uint64_t home = slot.hash & index_mask_;
    if (((j - home) & index_mask_) >= ((j - hole) & index_mask_)) {
      index_[hole] = slot;
      hole = j;
    }
  }
  index_[hole] = IndexSlot{0, 0};
}

void PredictionLog::EvictLocked(int64_t now_ns, uint64_t room) {
  while (first_seq_ < next_seq_ &&
         (next_seq_ - first_seq_ + room > ring_.size() ||
          (max_age_ns_ > 0 && now_ns - SlotLocked(first_seq_).unix_ns > max_age_ns_))) {
    IndexEraseLocked(TagHash(SlotLocked(first_seq_).tag), first_seq_);
    ++first_seq_;
  }
}

void PredictionLog::Record(const std::vector<std::shared_ptr<Request>>& batch, const BatchOutput& out) {
  if (!enabled()) return;
  const int64_t now = UnixNowNs();
  std::lock_guard<std::mutex> lock(mu_);
  int64_t row = 0;
  for (const auto& r : batch) {
    if (!r->tag.empty()) {
      EvictLocked(now, 1);  // a full ring drops its oldest entry
      LoggedPrediction& e = SlotLocked(next_seq_);
      e.tag.assign(r->tag);  // reuses the slot's capacity
      e.unix_ns = now;
      e.rows = r->rows;
      e.width = out.width;
      const float* first = out.data.data() + row * out.width;
      e.outputs.assign(first, first + r->rows * out.width);
      IndexPutLocked(TagHash(e.tag), next_seq_++);
    }
    row += r->rows;
  }
}

std::vector<std::optional<LoggedPrediction>> PredictionLog::Find(const std::vector<std::string>& tags) {
  std::lock_guard<std::mutex> lock(mu_);
  EvictLocked(UnixNowNs(), 0);
  std::vector<std::optional<LoggedPrediction>> out;
  out.reserve(tags.size());
  for (const auto& tag : tags) {
    const IndexSlot* slot = IndexFindLocked(TagHash(tag));
    if (slot == nullptr || SlotLocked(slot->seq1 - 1).tag != tag) {
      out.emplace_back(std::nullopt);
    } else {
      out.emplace_back(SlotLocked(slot->seq1 - 1));
    }
  }
  return out;
}

int64_t PredictionLog::size() {
  std::lock_guard<std::mutex> lock(mu_);
  EvictLocked(UnixNowNs(), 0);
  return static_cast<int64_t>(next_seq_ - first_seq_);
}

}  // namespace mlserve
