// FeaturePlan compilation (validation) and the fused CPU normalizer.
//
// The normalizer works on tiles of kTileRows rows: for each feature it gathers the tile's column
// into a small contiguous buffer (L1-resident), counts the raw values into the histogram, runs
// the feature's op chain as straight loops over the buffer (which the compiler vectorises), and
// scatters the result (or the one-hot block) into the output rows, which are still in L1. The
// input and output are each touched once in memory; nothing is allocated per row.
#include "plan/feature_plan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "common/error.h"
#include "plan/plan_math.h"

namespace mlserve {
namespace {

constexpr int kTileRows = 128;  // measured best of 16..256 (input + output tile in L1/L2)
// Numeric histograms with at most this many edges count by linear scan, else binary search.
constexpr int32_t kLinearEdges = 32;
// Outputs larger than this are written with streaming stores (no read-for-ownership).
constexpr int64_t kStreamBytes = int64_t{4} << 20;
// Below this many rows per thread, extra threads cost more than they save.
constexpr int64_t kMinRowsPerThread = 16384;

std::string Quote(const std::string& s) { return "'" + s + "'"; }

[[noreturn]] void Bad(const std::string& feature, const std::string& problem) {
  ThrowInvalid("feature plan: feature " + Quote(feature) + ": " + problem);
}

double Param(const FeatureSpec& f, const OpSpec& op, const char* key) {
  for (const auto& kv : op.params) {
    if (kv.first == key) {
      if (!std::isfinite(kv.second)) {
        Bad(f.name, "op '" + op.op + "' parameter '" + key + "' must be finite, got " +
                        std::to_string(kv.second));
      }
      if (std::fabs(kv.second) > std::numeric_limits<float>::max()) {
        Bad(f.name, "op '" + op.op + "' parameter '" + key + "' does not fit in float32");
      }
      return kv.second;
    }
  }
  Bad(f.name, "op '" + op.op + "' needs parameter '" + key + "'");
}

// 1 / width as float32; a width so small that the scale overflows float32 is a bad plan.
float Scale(const FeatureSpec& f, const char* what, double width) {
  const double scale = 1.0 / width;
  if (!(scale <= std::numeric_limits<float>::max())) {
    std::ostringstream w;
    w << width;
    Bad(f.name, std::string(what) + " = " + w.str() +
                    " is too small: 1/width overflows float32");
  }
  return static_cast<float>(scale);
}

bool IsEncoding(const std::string& op) { return op == "onehot" || op == "hash_bucket"; }

// Slot of a categorical code, or -1 for none (hash: not a usable integer).
inline int32_t OneHotSlot(float x, int32_t size) {
  // NaN fails every comparison and lands in the OOV slot.
  if (x >= 0.0f && x < static_cast<float>(size) && x == std::floor(x)) {
    return static_cast<int32_t>(x);
  }
  return size;
}

inline int32_t HashSlot(float x, int32_t n) {
  constexpr float kTwo63 = 9223372036854775808.0f;
  if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < kTwo63) {
    const auto code = static_cast<uint64_t>(static_cast<int64_t>(x));
    return static_cast<int32_t>(mls_splitmix64(code) % static_cast<uint64_t>(n));
  }
  return -1;
}

#if defined(__x86_64__) && defined(__GNUC__)
// 32-byte streaming stores: a quarter fewer store instructions than SSE2's 16-byte ones per
// output row, which shows at large batches (the tile copy is per-row work).
__attribute__((target("avx"))) void StreamCopyAvx(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
  while (i < n && (reinterpret_cast<uintptr_t>(dst + i) & 31u) != 0) {
    dst[i] = src[i];
    ++i;
  }
  for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
}
const bool kHasAvx = __builtin_cpu_supports("avx");
#endif

// Copies n floats with non-temporal stores where available: the destination is not read into
// the cache first (a plain store would read each output line from memory before writing it).
inline void StreamCopy(float* dst, const float* src, int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (kHasAvx) {
    StreamCopyAvx(dst, src, n);
    return;
  }
#endif
#if defined(__SSE2__)
  int64_t i = 0;
  while (i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15u) != 0) {
    dst[i] = src[i];
    ++i;
  }
  for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
  for (; i < n; ++i) dst[i] = src[i];
#else
  std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(n));
#endif
}

inline void StreamFence() {
#if defined(__SSE2__)
  _mm_sfence();  // order the streaming stores before the caller reads or publishes the output
#endif
}

}  // namespace

FeaturePlan::FeaturePlan(const PlanSpec& spec) {
  if (spec.features.empty()) ThrowInvalid("feature plan: 'features' is empty; declare at least one");
  std::map<std::string, int32_t> index;
  const auto n_features = static_cast<int32_t>(spec.features.size());
  for (int32_t i = 0; i < n_features; ++i) {
    const FeatureSpec& f = spec.features[i];
    if (f.name.empty()) ThrowInvalid("feature plan: feature #" + std::to_string(i) + " has no name");
    if (!index.emplace(f.name, i).second) Bad(f.name, "declared twice; feature names must be unique");
  }

  int32_t n_counters = 0;
  for (int32_t i = 0; i < n_features; ++i) {
    const FeatureSpec& f = spec.features[i];
    MlsFeature cf{};
    cf.src_col = i;
    cf.dst_col = -1;
    cf.op_begin = static_cast<int32_t>(ops_.size());
    cf.hist_begin = -1;
    cf.edge_begin = static_cast<int32_t>(edges_.size());
    if (f.kind == "numeric") {
      cf.encoding = MLS_ENC_NUMERIC;
      for (const OpSpec& op : f.ops) {
        if (op.op == "impute") {
          ops_.push_back({MLS_OP_IMPUTE, static_cast<float>(Param(f, op, "value")), 0.0f});
        } else if (op.op == "clip") {
          const double lo = Param(f, op, "lo"), hi = Param(f, op, "hi");
          if (!(lo < hi)) Bad(f.name, "clip needs lo < hi, got lo=" + std::to_string(lo) + " hi=" + std::to_string(hi));
          ops_.push_back({MLS_OP_CLIP, static_cast<float>(lo), static_cast<float>(hi)});
        } else if (op.op == "log1p") {
          ops_.push_back({MLS_OP_LOG1P, 0.0f, 0.0f});
        } else if (op.op == "standardize") {
          const double mean = Param(f, op, "mean"), std = Param(f, op, "std");
          if (!(std > 0)) Bad(f.name, "standardize needs std > 0, got " + std::to_string(std));
          ops_.push_back({MLS_OP_AFFINE, static_cast<float>(mean), Scale(f, "standardize std", std)});
        } else if (op.op == "minmax") {
          const double lo = Param(f, op, "lo"), hi = Param(f, op, "hi");
          if (!(lo < hi)) Bad(f.name, "minmax needs lo < hi, got lo=" + std::to_string(lo) + " hi=" + std::to_string(hi));
          ops_.push_back({MLS_OP_AFFINE, static_cast<float>(lo), Scale(f, "minmax hi - lo", hi - lo)});
        } else if (IsEncoding(op.op)) {
          Bad(f.name, "op '" + op.op + "' encodes categorical features; declare kind 'categorical'");
        } else {
          Bad(f.name, "unknown op '" + op.op +
                          "' (numeric ops: impute, clip, log1p, standardize, minmax)");
        }
      }
      cf.width = 1;
      if (f.histogram) {
        const auto& e = f.histogram_edges;
        if (e.size() < 2) Bad(f.name, "numeric histogram needs 'edges' with at least two values (one bin)");
        for (size_t j = 0; j < e.size(); ++j) {
          if (std::isnan(e[j])) Bad(f.name, "histogram edge " + std::to_string(j) + " is NaN");
          if (std::isinf(e[j]) && !((j == 0 && e[j] < 0) || (j + 1 == e.size() && e[j] > 0))) {
            Bad(f.name, "histogram edges may be -inf only first and +inf only last");
          }
          if (std::isfinite(e[j]) && std::fabs(e[j]) > std::numeric_limits<float>::max()) {
            Bad(f.name, "histogram edge " + std::to_string(j) + " does not fit in float32");
          }
          edges_.push_back(static_cast<float>(e[j]));
          if (j > 0 && !(edges_[edges_.size() - 1] > edges_[edges_.size() - 2])) {
            Bad(f.name, "histogram edges must be strictly increasing (as float32) at edge " + std::to_string(j));
          }
        }
        cf.n_edges = static_cast<int32_t>(e.size());
        cf.hist_begin = n_counters;
        n_counters += cf.n_edges + 2;
      }
    } else if (f.kind == "categorical") {
      if (f.ops.empty() || !IsEncoding(f.ops.back().op)) {
        Bad(f.name, "a categorical feature ends with exactly one encoding op: onehot or hash_bucket");
      }
      for (size_t k = 0; k + 1 < f.ops.size(); ++k) {
        const OpSpec& op = f.ops[k];
        if (op.op == "impute") {
          ops_.push_back({MLS_OP_IMPUTE, static_cast<float>(Param(f, op, "value")), 0.0f});
        } else if (IsEncoding(op.op)) {
          Bad(f.name, "has more than one encoding op; keep exactly one, last");
        } else {
          Bad(f.name, "op '" + op.op + "' is not allowed before the encoding of a categorical feature (only impute)");
        }
      }
      const OpSpec& enc = f.ops.back();
      if (enc.op == "onehot") {
        cf.encoding = MLS_ENC_ONEHOT;
        bool has_size = false;
        double size = 0;
        for (const auto& kv : enc.params) {
          if (kv.first == "size") { has_size = true; size = kv.second; }
        }
        if (has_size) size = Param(f, enc, "size");
        if (enc.vocabulary_size >= 0) {
          if (has_size && size != static_cast<double>(enc.vocabulary_size)) {
            Bad(f.name, "onehot size " + std::to_string(static_cast<int64_t>(size)) +
                            " disagrees with its vocabulary of " + std::to_string(enc.vocabulary_size));
          }
          size = static_cast<double>(enc.vocabulary_size);
          has_size = true;
        }
        if (!has_size) Bad(f.name, "onehot needs 'size' or 'vocabulary'");
        if (size < 1) Bad(f.name, "onehot vocabulary is empty; it needs at least one category");
        if (size != std::floor(size) || size > (1 << 24)) Bad(f.name, "onehot size must be an integer <= 2^24");
        cf.size = static_cast<int32_t>(size);
        // The output names index `vocabulary` by slot: a C++ caller may fill it without (or
        // with a different) vocabulary_size, which would read past its end.
        if (!enc.vocabulary.empty() && enc.vocabulary.size() != static_cast<size_t>(cf.size)) {
          Bad(f.name, "onehot vocabulary lists " + std::to_string(enc.vocabulary.size()) +
                          " names for " + std::to_string(cf.size) + " slots; give one name per slot");
        }
        cf.width = cf.size + 1;
        if (f.histogram) { cf.hist_begin = n_counters; n_counters += cf.size + 2; }
      } else {
        cf.encoding = MLS_ENC_HASH;
        const double n = Param(f, enc, "n");
        if (n < 1 || n != std::floor(n) || n > (1 << 24)) Bad(f.name, "hash_bucket needs an integer n >= 1 (and <= 2^24)");
        cf.size = static_cast<int32_t>(n);
        cf.width = cf.size;
        if (f.histogram) { cf.hist_begin = n_counters; n_counters += cf.size + 1; }
      }
      if (!f.histogram_edges.empty()) Bad(f.name, "categorical histograms count codes; 'edges' is for numeric features");
    } else {
      Bad(f.name, "unknown kind '" + f.kind + "' (numeric or categorical)");
    }
    cf.op_end = static_cast<int32_t>(ops_.size());
    features_.push_back(cf);
    input_names_.push_back(f.name);
  }

  // Output layout.
  std::vector<int32_t> order;
  if (spec.has_output_order) {
    std::set<std::string> seen;
    for (const auto& name : spec.output_order) {
      auto it = index.find(name);
      if (it == index.end()) ThrowInvalid("feature plan: output_order names unknown feature " + Quote(name));
      if (!seen.insert(name).second) ThrowInvalid("feature plan: output_order lists feature " + Quote(name) + " twice");
      order.push_back(it->second);
    }
    if (order.empty()) ThrowInvalid("feature plan: output_order is empty; list at least one feature");
  } else {
    for (int32_t i = 0; i < n_features; ++i) order.push_back(i);
  }
  int32_t col = 0;
  for (int32_t i : order) {
    MlsFeature& cf = features_[i];
    const std::string& name = spec.features[i].name;
    cf.dst_col = col;
    col += cf.width;
    if (cf.encoding == MLS_ENC_NUMERIC) {
      output_names_.push_back(name);
    } else if (cf.encoding == MLS_ENC_ONEHOT) {
      const std::vector<std::string>& vocab = spec.features[i].ops.back().vocabulary;
      for (int32_t k = 0; k < cf.size; ++k) {
        output_names_.push_back(name + "=" + (vocab.empty() ? std::to_string(k) : vocab[static_cast<size_t>(k)]));
      }
      output_names_.push_back(name + "=<oov>");
    } else {
      for (int32_t k = 0; k < cf.size; ++k) output_names_.push_back(name + "#" + std::to_string(k));
    }
  }
  for (MlsFeature& cf : features_) {
    if (cf.dst_col < 0) cf.width = 0;
  }

  view_.features = features_.data();
  view_.n_features = n_features;
  view_.ops = ops_.data();
  view_.n_ops = static_cast<int32_t>(ops_.size());
  view_.edges = edges_.data();
  view_.n_edges_total = static_cast<int32_t>(edges_.size());
  view_.f_in = n_features;
  view_.f_out = col;
  view_.n_counters = n_counters;
  counters_.assign(static_cast<size_t>(n_counters), 0);
  for (const MlsFeature& cf : features_) {
    has_encoded_ = has_encoded_ || (cf.dst_col >= 0 && cf.encoding != MLS_ENC_NUMERIC);
  }
}

// x86-64: AVX-512 (x86-64-v4) and AVX2 clones of the normalizer; the loader picks the best one
// the CPU has (the baseline build is SSE2 only). AVX-512 also vectorises the column gathers and
// scatters (measured: 58 -> 41-45 ns a row for a 20 -> 97 column plan). -ffp-contract=off keeps
// FMA out: every clone computes the same values as the SSE2 path and the numpy reference.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif
void FeaturePlan::TransformRange(const float* in, int64_t begin, int64_t end, int64_t in_stride,
                                 float* out, int64_t* counters) const {
  alignas(64) float col[kTileRows];
  const int64_t f_out = view_.f_out;
  // Large outputs: build each tile in an L1-resident scratch buffer, then stream it out.
  const bool stream = (end - begin) * f_out * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
  thread_local std::vector<float> scratch;
  if (stream && scratch.size() < static_cast<size_t>(kTileRows * f_out)) {
    scratch.resize(static_cast<size_t>(kTileRows * f_out));
  }
  for (int64_t row0 = begin; row0 < end; row0 += kTileRows) {
    const int m = static_cast<int>(std::min<int64_t>(kTileRows, end - row0));
    const float* tin = in + row0 * in_stride;
    float* tout = stream ? scratch.data() : out + row0 * f_out;
    // One contiguous memset of the tile's output rows: encoded blocks then only set their 1.0.
    if (has_encoded_) std::memset(tout, 0, sizeof(float) * static_cast<size_t>(m * f_out));
    for (const MlsFeature& f : features_) {
      const bool count = counters != nullptr && f.hist_begin >= 0;
      if (f.dst_col < 0 && !count) continue;
      for (int r = 0; r < m; ++r) col[r] = tin[r * in_stride + f.src_col];

      if (count) {
        int64_t* c = counters + f.hist_begin;
        if (f.encoding == MLS_ENC_NUMERIC) {
          const float* e = edges_.data() + f.edge_begin;
          const int32_t k = f.n_edges;
          // Counter index = number of edges <= x (0: underflow .. k: overflow), k + 1 for NaN.
          alignas(64) int32_t idx[kTileRows];
          if (k <= kLinearEdges) {
            // Branch-free count over the edges, vectorised across the tile's rows.
            for (int r = 0; r < m; ++r) idx[r] = 0;
            for (int32_t j = 0; j < k; ++j) {
              const float ej = e[j];
              for (int r = 0; r < m; ++r) idx[r] += col[r] >= ej ? 1 : 0;
            }
          } else {
            for (int r = 0; r < m; ++r) idx[r] = static_cast<int32_t>(std::upper_bound(e, e + k, col[r]) - e);
          }
          for (int r = 0; r < m; ++r) ++c[col[r] != col[r] ? k + 1 : idx[r]];
        } else if (f.encoding == MLS_ENC_ONEHOT) {
          for (int r = 0; r < m; ++r) {
            const float x = col[r];
            ++c[std::isnan(x) ? f.size + 1 : OneHotSlot(x, f.size)];
          }
        } else {
          for (int r = 0; r < m; ++r) {
            const int32_t s = HashSlot(col[r], f.size);
            ++c[s < 0 ? f.size : s];
          }
        }
      }
      if (f.dst_col < 0) continue;

      for (int32_t o = f.op_begin; o < f.op_end; ++o) {
        const MlsOp op = ops_[o];
        switch (op.code) {
          case MLS_OP_IMPUTE:
            for (int r = 0; r < m; ++r) col[r] = std::isnan(col[r]) ? op.a : col[r];
            break;
          case MLS_OP_CLIP:
            // Written so NaN stays NaN (comparisons with NaN are false).
            for (int r = 0; r < m; ++r) {
              float x = col[r];
              x = x < op.a ? op.a : x;
              col[r] = x > op.b ? op.b : x;
            }
            break;
          case MLS_OP_LOG1P:
            for (int r = 0; r < m; ++r) col[r] = mls_log1pf(col[r]);
            break;
          case MLS_OP_AFFINE:
            for (int r = 0; r < m; ++r) col[r] = (col[r] - op.a) * op.b;
            break;
          default:
            MLSERVE_CHECK(false);
        }
      }

      float* dst = tout + f.dst_col;
      if (f.encoding == MLS_ENC_NUMERIC) {
        for (int r = 0; r < m; ++r) dst[r * f_out] = col[r];
      } else {
        if (f.encoding == MLS_ENC_ONEHOT) {
          for (int r = 0; r < m; ++r) dst[r * f_out + OneHotSlot(col[r], f.size)] = 1.0f;
        } else {
          for (int r = 0; r < m; ++r) {
            const int32_t s = HashSlot(col[r], f.size);
            if (s >= 0) dst[r * f_out + s] = 1.0f;
          }
        }
      }
    }
    if (stream) StreamCopy(out + row0 * f_out, tout, static_cast<int64_t>(m) * f_out);
  }
  if (stream) StreamFence();
}

void FeaturePlan::Transform(const float* in, int64_t n, int64_t in_stride, float* out,
                            bool histograms, int num_threads) const {
  if (n <= 0) return;
  const bool count = histograms && view_.n_counters > 0;
  const size_t nc = static_cast<size_t>(view_.n_counters);
  int threads = std::max(1, num_threads);
  threads = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(1, n / kMinRowsPerThread)));

  if (threads == 1) {
    // Reused per thread: no allocation on the batcher's hot path after the first call.
    thread_local std::vector<int64_t> local;
    if (count) local.assign(nc, 0);
    TransformRange(in, 0, n, in_stride, out, count ? local.data() : nullptr);
    if (count) MergeCounters(local.data(), n);
    return;
  }
  std::vector<std::vector<int64_t>> locals(static_cast<size_t>(threads),
                                           std::vector<int64_t>(count ? nc : 0, 0));
  std::vector<std::thread> pool;
  const int64_t chunk = (n + threads - 1) / threads;
  for (int t = 1; t < threads; ++t) {
    const int64_t b = t * chunk, e = std::min(n, b + chunk);
    pool.emplace_back([&, t, b, e] {
      TransformRange(in, b, e, in_stride, out, count ? locals[t].data() : nullptr);
    });
  }
  TransformRange(in, 0, std::min(n, chunk), in_stride, out, count ? locals[0].data() : nullptr);
  for (auto& th : pool) th.join();
  if (count) {
    for (int t = 1; t < threads; ++t) {
      for (size_t k = 0; k < nc; ++k) locals[0][k] += locals[t][k];
    }
    MergeCounters(locals[0].data(), n);
  }
}

void FeaturePlan::MergeCounters(const int64_t* counters, int64_t rows) const {
  std::lock_guard<std::mutex> lock(counters_mu_);
  for (size_t k = 0; k < counters_.size(); ++k) counters_[k] += counters[k];
  counted_rows_ += rows;
}

HistogramSnapshot FeaturePlan::Snapshot(bool reset) const {
  std::vector<int64_t> c;
  HistogramSnapshot snap;
  {
    std::lock_guard<std::mutex> lock(counters_mu_);
    c = counters_;
    snap.rows = counted_rows_;
    if (reset) {
      std::fill(counters_.begin(), counters_.end(), 0);
      counted_rows_ = 0;
    }
  }
  for (size_t i = 0; i < features_.size(); ++i) {
    const MlsFeature& f = features_[i];
    if (f.hist_begin < 0) continue;
    FeatureHistogram h;
    h.name = input_names_[i];
    h.encoding = f.encoding;
    const int64_t* p = c.data() + f.hist_begin;
    if (f.encoding == MLS_ENC_NUMERIC) {
      h.edges.assign(edges_.begin() + f.edge_begin, edges_.begin() + f.edge_begin + f.n_edges);
      h.underflow = p[0];
      h.counts.assign(p + 1, p + f.n_edges);
      h.overflow = p[f.n_edges];
      h.missing = p[f.n_edges + 1];
    } else {
      const int32_t slots = f.encoding == MLS_ENC_ONEHOT ? f.size + 1 : f.size;
      h.counts.assign(p, p + slots);
      h.missing = p[slots];
    }
    snap.features.push_back(std::move(h));
  }
  return snap;
}

}  // namespace mlserve
