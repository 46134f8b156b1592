// PredictionLog implementation; see prediction_log.h.
#include "monitor/prediction_log.h"

#include <chrono>

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

}  // namespace

void PredictionLog::Configure(int64_t max_entries, int64_t max_age_ns) {
  if (max_entries < 0) ThrowInvalid("prediction log: max_entries must be >= 0 (0 = off)");
  if (max_age_ns < 0) ThrowInvalid("prediction log: max_age must be >= 0 (0 = no age bound)");
  std::lock_guard<std::mutex> lock(mu_);
  max_entries_ = max_entries;
  max_age_ns_ = max_age_ns;
  first_seq_ += entries_.size();
  entries_.clear();
  index_.clear();
  enabled_.store(max_entries > 0, std::memory_order_relaxed);
}

void PredictionLog::EvictLocked(int64_t now_ns) {
  while (!entries_.empty() &&
         (static_cast<int64_t>(entries_.size()) > max_entries_ ||
          (max_age_ns_ > 0 && now_ns - entries_.front().unix_ns > max_age_ns_))) {
    auto it = index_.find(entries_.front().tag);
    if (it != index_.end() && it->second == first_seq_) index_.erase(it);
    entries_.pop_front();
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
      LoggedPrediction e;
      e.tag = r->tag;
      e.unix_ns = now;
      e.rows = r->rows;
      e.width = out.width;
      const float* first = out.data.data() + row * out.width;
      e.outputs.assign(first, first + r->rows * out.width);
      index_[e.tag] = first_seq_ + entries_.size();
      entries_.push_back(std::move(e));
    }
    row += r->rows;
  }
  EvictLocked(now);
}

std::vector<std::optional<LoggedPrediction>> PredictionLog::Find(const std::vector<std::string>& tags) {
  std::lock_guard<std::mutex> lock(mu_);
  EvictLocked(UnixNowNs());
  std::vector<std::optional<LoggedPrediction>> out;
  out.reserve(tags.size());
  for (const auto& tag : tags) {
    auto it = index_.find(tag);
    if (it == index_.end()) {
      out.emplace_back(std::nullopt);
    } else {
      out.emplace_back(entries_[static_cast<size_t>(it->second - first_seq_)]);
    }
  }
  return out;
}

int64_t PredictionLog::size() {
  std::lock_guard<std::mutex> lock(mu_);
  EvictLocked(UnixNowNs());
  return static_cast<int64_t>(entries_.size());
}

}  // namespace mlserve
