// FeaturePlan: the fitted preprocessing of a model (docs/feature_plan.md), compiled once into a
// flat program (compiled_plan.h) and run by a fused, single-pass CPU normalizer that also
// updates per-feature drift histograms.
//
// Thread-safety: a compiled FeaturePlan is immutable; Transform() may run concurrently from any
// number of threads. Histogram counters are merged once per call (per worker thread) under a
// mutex, so Snapshot(reset=true) is atomic with respect to concurrent transforms: every call is
// counted wholly before or wholly after it.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "plan/compiled_plan.h"

namespace mlserve {

// Spec of one op as parsed from JSON (strings and numbers only; validated by Compile).
struct OpSpec {
  std::string op;                           // impute | clip | log1p | standardize | minmax | onehot | hash_bucket
  std::vector<std::pair<std::string, double>> params;  // e.g. {"mean", 3.2}
  int64_t vocabulary_size = -1;             // onehot: len(vocabulary) when one was given
  std::vector<std::string> vocabulary;      // onehot: category names (output column names)
};

struct FeatureSpec {
  std::string name;
  std::string kind;  // numeric | categorical
  std::vector<OpSpec> ops;
  bool histogram = false;
  std::vector<double> histogram_edges;  // numeric only; empty for categorical
};

struct PlanSpec {
  std::vector<FeatureSpec> features;
  bool has_output_order = false;
  std::vector<std::string> output_order;
};

// One feature's histogram, read from a snapshot. For numeric features `counts` has
// n_edges - 1 entries; for categorical ones, one per output slot.
struct FeatureHistogram {
  std::string name;
  int32_t encoding = MLS_ENC_NUMERIC;
  std::vector<float> edges;
  std::vector<int64_t> counts;
  int64_t underflow = 0;
  int64_t overflow = 0;
  int64_t missing = 0;  // NaN (numeric) / missing (categorical)
};

struct HistogramSnapshot {
  int64_t rows = 0;
  std::vector<FeatureHistogram> features;  // only features that declare a histogram
};

class FeaturePlan {
 public:
  // Validates and compiles; throws Error(kInvalidInput) naming the feature and the problem.
  explicit FeaturePlan(const PlanSpec& spec);

  int32_t f_in() const { return view_.f_in; }
  int32_t f_out() const { return view_.f_out; }
  const std::vector<std::string>& input_names() const { return input_names_; }
  // One name per output column: "amount", "channel=2", "channel=<oov>", "merchant_id#5".
  const std::vector<std::string>& output_names() const { return output_names_; }
  const MlsPlanView& view() const { return view_; }
  bool has_histograms() const { return view_.n_counters > 0; }

  // Normalizes n rows. in: n * in_stride floats (row i at in + i * in_stride, first f_in used);
  // out: n * f_out floats, row-major. When `histograms` is set, counts the raw values into the
  // plan's counters (merged once at the end). num_threads > 1 splits rows across threads when
  // n is large enough to pay for them. Never allocates per row. Caller checks widths.
  void Transform(const float* in, int64_t n, int64_t in_stride, float* out, bool histograms,
                 int num_threads = 1) const;

  // Merges externally computed counters (n_counters entries, e.g. from the CUDA kernel).
  void MergeCounters(const int64_t* counters, int64_t rows) const;

  HistogramSnapshot Snapshot(bool reset) const;

 private:
  // Runs rows [begin, end) into `out`, accumulating counters into `counters` (may be null).
  void TransformRange(const float* in, int64_t begin, int64_t end, int64_t in_stride, float* out,
                      int64_t* counters) const;

  std::vector<MlsFeature> features_;
  std::vector<MlsOp> ops_;
  std::vector<float> edges_;
  std::vector<std::string> input_names_;
  std::vector<std::string> output_names_;
  MlsPlanView view_{};
  bool has_encoded_ = false;  // some output block is one-hot/hashed: zero output tiles first

  mutable std::mutex counters_mu_;
  mutable std::vector<int64_t> counters_;  // guarded by counters_mu_
  mutable int64_t counted_rows_ = 0;       // guarded by counters_mu_
};

}  // namespace mlserve
