// PredictionExport implementation; see prediction_export.h.
#include "monitor/prediction_export.h"

#include <chrono>
#include <utility>

#include "backends/backend.h"
#include "batcher/dynamic_batcher.h"
#include "common/error.h"

namespace mlserve {

namespace {

// FNV-1a, then MurmurHash3's 64-bit finalizer: a fixed function of the tag's bytes (std::hash
// may differ between builds, and the same request id must be sampled alike by every replica)
// whose top bits are uniform even for short, sequential ids (FNV-1a's alone are not).
uint64_t TagHash(const std::string& tag) {
  uint64_t h = 14695981039346656037ull;
  for (const unsigned char c : tag) {
    h ^= c;
    h *= 1099511628211ull;
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

}  // namespace

void PredictionExport::Configure(int64_t max_rows, double sample) {
  if (max_rows < 0) ThrowInvalid("prediction export: max_rows must be >= 0 (0 = off)");
  if (!(sample > 0.0 && sample <= 1.0)) ThrowInvalid("prediction export: sample must be in (0, 1]");
  std::lock_guard<std::mutex> lock(mu_);
  max_rows_ = max_rows;
  sample_all_ = sample >= 1.0;
  sample_below_ = static_cast<uint64_t>(sample * 18446744073709551615.0);
  buffered_rows_ = 0;
  buf_ = ExportedPredictions{};
  enabled_.store(max_rows > 0, std::memory_order_relaxed);
}

void PredictionExport::Record(const std::vector<std::shared_ptr<Request>>& batch,
                              const BatchOutput& out, int64_t f_in) {
  if (!enabled()) return;
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  std::lock_guard<std::mutex> lock(mu_);
  if (buf_.width != 0 && (buf_.width != out.width || buf_.f_in != f_in)) {
    // A model's output width never changes; this would mix matrices, so the old rows go.
    buf_.dropped_requests += static_cast<int64_t>(buf_.tags.size());
    buf_.dropped_rows += buffered_rows_;
    buf_.tags.clear();
    buf_.unix_ns.clear();
    buf_.rows.clear();
    buf_.inputs.clear();
    buf_.outputs.clear();
    buffered_rows_ = 0;
  }
  buf_.f_in = f_in;
  buf_.width = out.width;
  int64_t row = 0;
  for (const auto& r : batch) {
    if (!r->tag.empty() && (sample_all_ || TagHash(r->tag) < sample_below_)) {
      if (buffered_rows_ + r->rows > max_rows_) {
        ++buf_.dropped_requests;
        buf_.dropped_rows += r->rows;
      } else {
        buf_.tags.push_back(r->tag);
        buf_.unix_ns.push_back(now);
        buf_.rows.push_back(r->rows);
        buf_.inputs.insert(buf_.inputs.end(), r->input.data(), r->input.data() + r->rows * f_in);
        const float* first = out.data.data() + row * out.width;
        buf_.outputs.insert(buf_.outputs.end(), first, first + r->rows * out.width);
        buffered_rows_ += r->rows;
      }
    }
    row += r->rows;
  }
}

ExportedPredictions PredictionExport::Drain() {
  std::lock_guard<std::mutex> lock(mu_);
  ExportedPredictions taken = std::move(buf_);
  buf_ = ExportedPredictions{};
  buffered_rows_ = 0;
  return taken;
}

}  // namespace mlserve
