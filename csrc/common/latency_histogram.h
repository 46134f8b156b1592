// LatencyHistogram: fixed-bucket counts of durations, in the shape Prometheus histograms take.
//
// The bucket upper bounds are kLatencyBoundsNs (100 µs .. 10 s, inclusive like Prometheus' `le`),
// plus an implicit +Inf bucket. They are the one definition of the latency buckets: Python reads
// them as mlserve._core.LATENCY_BUCKETS_S, which mlserve.metrics.LATENCY_BUCKETS is. Record() is
// O(1) (a binary search over 16 bounds) and never allocates; the exact sum is kept in ns.
//
// Thread-safety: none; the owner guards it (DynamicBatcher records under its stats mutex).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>

namespace mlserve {

inline constexpr std::array<int64_t, 16> kLatencyBoundsNs = {
    100'000,       250'000,       500'000,        1'000'000,     2'500'000,     5'000'000,
    10'000'000,    25'000'000,    50'000'000,     100'000'000,   250'000'000,   500'000'000,
    1'000'000'000, 2'500'000'000, 5'000'000'000, 10'000'000'000,
};

struct LatencyHistogram {
  static constexpr size_t kBuckets = kLatencyBoundsNs.size() + 1;  // the last one is +Inf

  // counts[k]: observations in (bound[k-1], bound[k]]; counts[kBuckets - 1]: above the last bound.
  std::array<int64_t, kBuckets> counts{};
  int64_t sum_ns = 0;

  // @param ns  one observed duration in nanoseconds
  void Record(int64_t ns) {
    const auto it = std::lower_bound(kLatencyBoundsNs.begin(), kLatencyBoundsNs.end(), ns);
    ++counts[static_cast<size_t>(it - kLatencyBoundsNs.begin())];
    sum_ns += ns;
  }

  // Prometheus' cumulative form: out[k] = observations <= bound[k]; out.back() = all of them.
  std::array<int64_t, kBuckets> Cumulative() const {
    std::array<int64_t, kBuckets> out{};
    int64_t running = 0;
    for (size_t k = 0; k < kBuckets; ++k) {
      running += counts[k];
      out[k] = running;
    }
    return out;
  }

  int64_t Count() const { return Cumulative().back(); }
};

}  // namespace mlserve
