// RowSampler implementation; see row_sampler.h.
#include "monitor/row_sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "backends/backend.h"
#include "batcher/dynamic_batcher.h"
#include "common/error.h"

namespace mlserve {
namespace {

// A uniform draw in (0, 1): log() of it is finite.
double Unit(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(std::numeric_limits<double>::min(), 1.0);
  return u(rng);
}

}  // namespace

void SamplerConfig::Validate() const {
  if (capacity < 0) ThrowInvalid("sampler: capacity must be >= 0, got " + std::to_string(capacity));
  if (capacity > (int64_t{1} << 24)) ThrowInvalid("sampler: capacity must be <= 16777216 rows");
  if (prediction_argmax && !prediction_edges.empty()) {
    ThrowInvalid("sampler: give prediction_edges or prediction_argmax, not both");
  }
  if (prediction_edges.size() == 1) ThrowInvalid("sampler: prediction_edges needs at least 2 edges");
  for (size_t i = 0; i < prediction_edges.size(); ++i) {
    if (std::isnan(prediction_edges[i]) || (i > 0 && !(prediction_edges[i - 1] < prediction_edges[i]))) {
      ThrowInvalid("sampler: prediction_edges must be strictly increasing (edge " + std::to_string(i) + ")");
    }
  }
}

void RowSampler::Configure(const SamplerConfig& config) {
  config.Validate();
  std::lock_guard<std::mutex> lock(mu_);
  config_ = config;
  rng_.seed(config.seed);
  width_ = 0;
  ResetLocked();
  enabled_.store(config_.capacity > 0 || !config_.prediction_edges.empty() || config_.prediction_argmax,
                 std::memory_order_relaxed);
}

void RowSampler::ResetLocked() {
  seen_ = 0;
  inputs_.clear();
  outputs_.clear();
  prediction_counts_.assign(config_.prediction_edges.empty() ? 0 : config_.prediction_edges.size() - 1, 0);
  if (config_.prediction_argmax) prediction_counts_.assign(static_cast<size_t>(width_), 0);
  prediction_missing_ = 0;
  if (config_.capacity > 0) {
    w_ = std::exp(std::log(Unit(rng_)) / static_cast<double>(config_.capacity));
    next_ = config_.capacity;
    AdvanceSkipLocked();
  }
}

void RowSampler::AdvanceSkipLocked() {
  // Algorithm L: the gap to the next replacing row is geometric with parameter W.
  const double gap = std::floor(std::log(Unit(rng_)) / std::log1p(-w_));
  constexpr double kFar = static_cast<double>(int64_t{1} << 62);
  next_ += gap < kFar ? static_cast<int64_t>(gap) : int64_t{1} << 62;
  if (next_ < 0 || next_ > (int64_t{1} << 62)) next_ = int64_t{1} << 62;  // never, in practice
}

void RowSampler::KeepLocked(int64_t slot, const float* input, const float* output) {
  const auto s = static_cast<size_t>(slot);
  std::copy(input, input + f_in_, inputs_.begin() + static_cast<std::ptrdiff_t>(s * f_in_));
  std::copy(output, output + width_, outputs_.begin() + static_cast<std::ptrdiff_t>(s * width_));
}

void RowSampler::CountPredictionLocked(const float* output) {
  if (config_.prediction_argmax) {
    int64_t best = 0;
    for (int64_t j = 0; j < width_; ++j) {
      if (std::isnan(output[j])) {
        ++prediction_missing_;
        return;
      }
      if (output[j] > output[best]) best = j;
    }
    ++prediction_counts_[static_cast<size_t>(best)];
    return;
  }
  const float v = output[0];
  if (std::isnan(v)) {
    ++prediction_missing_;
    return;
  }
  const auto& e = config_.prediction_edges;
  const auto bins = static_cast<int64_t>(e.size()) - 1;
  const int64_t j = static_cast<int64_t>(std::upper_bound(e.begin(), e.end(), v) - e.begin()) - 1;
  ++prediction_counts_[static_cast<size_t>(std::clamp<int64_t>(j, 0, bins - 1))];
}

void RowSampler::Record(const std::vector<std::shared_ptr<Request>>& batch, const BatchOutput& out) {
  if (!enabled()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (out.width != width_) {  // first batch (or a backend that changed its output width)
    width_ = out.width;
    ResetLocked();
  }
  const int64_t capacity = config_.capacity;
  const bool histogram = !prediction_counts_.empty();
  if (capacity > 0 && inputs_.empty()) {
    inputs_.resize(static_cast<size_t>(capacity * f_in_));
    outputs_.resize(static_cast<size_t>(capacity * width_));
  }
  int64_t row = 0;  // row of the batch output
  for (const auto& r : batch) {
    const float* in = r->input.data();
    for (int64_t i = 0; i < r->rows; ++i, ++row) {
      const float* o = out.data.data() + row * width_;
      if (histogram) CountPredictionLocked(o);
      if (capacity == 0) continue;
      const int64_t t = seen_ + i;
      if (t < capacity) {
        KeepLocked(t, in + i * f_in_, o);
      } else if (t == next_) {
        std::uniform_int_distribution<int64_t> slot(0, capacity - 1);
        KeepLocked(slot(rng_), in + i * f_in_, o);
        w_ *= std::exp(std::log(Unit(rng_)) / static_cast<double>(capacity));
        ++next_;
        AdvanceSkipLocked();
      }
    }
    seen_ += r->rows;
  }
}

RowSample RowSampler::Snapshot(bool reset) {
  std::lock_guard<std::mutex> lock(mu_);
  RowSample s;
  s.seen = seen_;
  s.f_in = f_in_;
  s.width = width_;
  const int64_t kept = std::min(seen_, config_.capacity);
  s.inputs.assign(inputs_.begin(), inputs_.begin() + static_cast<std::ptrdiff_t>(kept * f_in_));
  s.outputs.assign(outputs_.begin(), outputs_.begin() + static_cast<std::ptrdiff_t>(kept * width_));
  s.prediction_counts = prediction_counts_;
  s.prediction_missing = prediction_missing_;
  if (reset) ResetLocked();
  return s;
}

}  // namespace mlserve
