// Unit tests of the native core without Python: FeaturePlan (compile errors, the fused
// normalizer, histograms, threading), LatencyHistogram, DynamicBatcher (batching, scatter,
// errors, completion queue, concurrency, latency stats) with the built-in "rowsum" backend and a
// failing custom Backend, and the monitoring recorders (RowSampler, PredictionLog).
//
// Run: build/<dir>/core_tests [name-substring]. Prints `N passed, M failed` last and exits non-zero
// on any failure. Batching tests use HoldUntilQueued so batch sizes never depend on timing; waits
// use generous timeouts so that slow (sanitized, loaded) machines only make them slower.
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "backends/backend.h"
#include "backends/cuda_backend.h"
#include "batcher/dynamic_batcher.h"
#include "common/error.h"
#include "common/latency_histogram.h"
#include "features/lmdb_env.h"
#include "features/online_records.h"
#include "mdb_batch.h"
#include "monitor/prediction_export.h"
#include "monitor/prediction_log.h"
#include "monitor/row_sampler.h"
#include "plan/feature_plan.h"
#include "server/msgpack_lane.h"
#include "test_harness.h"

using mlserve::BatchOutput;
using mlserve::BatcherConfig;
using mlserve::DynamicBatcher;
using mlserve::ErrorCode;
using mlserve::FeaturePlan;
using mlserve::FeatureSpec;
using mlserve::HistogramSnapshot;
using mlserve::kLatencyBoundsNs;
using mlserve::LatencyHistogram;
using mlserve::PredictionExport;
using mlserve::PredictionLog;
using mlserve::OpSpec;
using mlserve::PlanSpec;
using mlserve::Request;
using mlserve::RequestState;
using mlserve::RowSampler;
using mlserve::SamplerConfig;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr std::chrono::seconds kWaitLimit{30};

// ---- plan builders -----------------------------------------------------------------------------

OpSpec Op(const std::string& name, std::vector<std::pair<std::string, double>> params = {}) {
  OpSpec op;
  op.op = name;
  op.params = std::move(params);
  return op;
}

FeatureSpec Numeric(const std::string& name, std::vector<OpSpec> ops,
                    std::vector<double> histogram_edges = {}) {
  FeatureSpec f;
  f.name = name;
  f.kind = "numeric";
  f.ops = std::move(ops);
  f.histogram = !histogram_edges.empty();
  f.histogram_edges = std::move(histogram_edges);
  return f;
}

FeatureSpec Categorical(const std::string& name, std::vector<OpSpec> ops, bool histogram = false) {
  FeatureSpec f;
  f.name = name;
  f.kind = "categorical";
  f.ops = std::move(ops);
  f.histogram = histogram;
  return f;
}

PlanSpec Plan(std::vector<FeatureSpec> features) {
  PlanSpec spec;
  spec.features = std::move(features);
  return spec;
}

// Written from docs/feature_plan.md, independently of mls_splitmix64.
uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

int HashSlotOf(int64_t code, int n) {
  return static_cast<int>(SplitMix64(static_cast<uint64_t>(code)) % static_cast<uint64_t>(n));
}

// Checks out[0..width) is a one-hot block with a 1 at `slot` (slot < 0: all zeros).
void CheckOneHot(const float* out, int width, int slot, int row) {
  for (int k = 0; k < width; ++k) {
    const float want = k == slot ? 1.0f : 0.0f;
    if (out[k] != want) {
      test_harness::ReportFailure(__FILE__, __LINE__,
                                  "row " + std::to_string(row) + " slot " + std::to_string(k) +
                                      ": got " + std::to_string(out[k]) + ", want " +
                                      std::to_string(want));
    }
  }
}

// The plan of the Transform tests: every op, both encodings, three histograms.
PlanSpec SmallPlan() {
  return Plan({
      Numeric("amount",
              {Op("impute", {{"value", 0.0}}), Op("clip", {{"lo", 0.0}, {"hi", 100.0}}), Op("log1p"),
               Op("standardize", {{"mean", 1.0}, {"std", 2.0}})},
              {0.0, 1.0, 10.0}),
      Numeric("age", {Op("minmax", {{"lo", 0.0}, {"hi", 10.0}})}),
      Categorical("channel", {Op("impute", {{"value", 1.0}}), Op("onehot", {{"size", 3.0}})}, true),
      Categorical("merchant", {Op("hash_bucket", {{"n", 8.0}})}, true),
  });
}

void ExpectInvalidPlan(const PlanSpec& spec, std::vector<std::string> needles, int line) {
  const int before = test_harness::FailedChecks().load();
  CHECK_THROWS_CODE(FeaturePlan(spec), ErrorCode::kInvalidInput, (needles));
  if (test_harness::FailedChecks().load() != before) {
    std::fprintf(stderr, "  (bad plan declared at line %d)\n", line);
  }
}
#define EXPECT_INVALID_PLAN(spec, ...) ExpectInvalidPlan((spec), __VA_ARGS__, __LINE__)

// Distance in float32 steps between a and b (both finite or equal specials).
int64_t UlpDistance(float a, float b) {
  auto key = [](float v) {
    int32_t i;
    std::memcpy(&i, &v, sizeof(i));
    return i < 0 ? int64_t{INT32_MIN} - i : int64_t{i};  // monotonic in v, -0 == +0
  };
  return std::llabs(key(a) - key(b));
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool SameSnapshot(const HistogramSnapshot& a, const HistogramSnapshot& b) {
  if (a.rows != b.rows || a.features.size() != b.features.size()) return false;
  for (size_t i = 0; i < a.features.size(); ++i) {
    const auto& x = a.features[i];
    const auto& y = b.features[i];
    if (x.name != y.name || x.counts != y.counts || x.underflow != y.underflow ||
        x.overflow != y.overflow || x.missing != y.missing || x.edges != y.edges) {
      return false;
    }
  }
  return true;
}

// ---- batcher helpers ---------------------------------------------------------------------------

// f_in = 3, f_out = 6. Row sums differ per request when the inputs do.
std::shared_ptr<const FeaturePlan> BatcherPlan() {
  return std::make_shared<const FeaturePlan>(Plan({
      Numeric("a", {Op("standardize", {{"mean", 1.0}, {"std", 2.0}})}, {0.0, 10.0}),
      Numeric("b", {Op("minmax", {{"lo", 0.0}, {"hi", 4.0}})}),
      Categorical("c", {Op("onehot", {{"size", 3.0}})}, true),
  }));
}

// `rows` raw rows tagged by `tag`, so that a request's rows never match another's.
std::vector<float> RequestRows(int64_t rows, float tag) {
  std::vector<float> x;
  for (int64_t i = 0; i < rows; ++i) {
    x.push_back(tag + static_cast<float>(i));
    x.push_back(0.5f * tag - static_cast<float>(i));
    x.push_back(static_cast<float>(i % 5) - 1.0f);  // -1 and 3 are out of vocabulary
  }
  return x;
}

// What "rowsum" must return for these raw rows: the sum of each normalized row.
std::vector<float> ExpectedRowSums(const FeaturePlan& plan, const std::vector<float>& x) {
  const int64_t rows = static_cast<int64_t>(x.size()) / plan.f_in();
  std::vector<float> norm(static_cast<size_t>(rows * plan.f_out()));
  plan.Transform(x.data(), rows, plan.f_in(), norm.data(), /*histograms=*/false);
  std::vector<float> sums;
  for (int64_t i = 0; i < rows; ++i) {
    double s = 0.0;
    for (int64_t j = 0; j < plan.f_out(); ++j) s += norm[static_cast<size_t>(i * plan.f_out() + j)];
    sums.push_back(static_cast<float>(s));
  }
  return sums;
}

// Number of rows of `r` whose published result differs from `want` (all when not kDone).
int64_t WrongRows(const Request& r, const std::vector<float>& want) {
  if (r.state != RequestState::kDone || !r.output || r.output->width != 1) return r.rows;
  if (r.row_offset < 0 || r.row_offset + r.rows > r.output->rows) return r.rows;
  int64_t wrong = 0;
  for (int64_t i = 0; i < r.rows; ++i) {
    if (r.output->data[static_cast<size_t>(r.row_offset + i)] != want[static_cast<size_t>(i)]) ++wrong;
  }
  return wrong;
}

struct Submitted {
  std::shared_ptr<Request> request;
  std::vector<float> want;
};

Submitted SubmitTagged(DynamicBatcher& b, int64_t rows, float tag, bool notify_queue = false,
                       int32_t priority = 0, int64_t timeout_us = 0, bool wake_workers = true) {
  std::vector<float> x = RequestRows(rows, tag);
  Submitted s;
  s.want = ExpectedRowSums(b.plan(), x);
  s.request = b.Submit(x.data(), rows, priority, timeout_us, notify_queue, {}, wake_workers);
  return s;
}

void CheckDone(const Submitted& s) {
  CHECK(DynamicBatcher::Wait(*s.request, kWaitLimit));
  CHECK(s.request->state == RequestState::kDone);
  CHECK_EQ(WrongRows(*s.request, s.want), 0);
}

void CheckFailed(Request& r, ErrorCode code, const std::string& needle) {
  CHECK(DynamicBatcher::Wait(r, kWaitLimit));
  CHECK(r.state == RequestState::kFailed);
  CHECK(r.error_code == code);
  if (r.error_message.find(needle) == std::string::npos) {
    test_harness::ReportFailure(__FILE__, __LINE__,
                                "error message lacks '" + needle + "': " + r.error_message);
  }
}

// Holds batching until three tagged requests (2, 3 and 4 rows) are queued, so that they form
// one batch, and checks each gets its own rows' results.
std::tuple<Submitted, Submitted, Submitted> RunThreeHeldRequests(DynamicBatcher& b) {
  b.HoldUntilQueued(3);
  Submitted r1 = SubmitTagged(b, 2, 10.0f);
  Submitted r2 = SubmitTagged(b, 3, 20.0f);
  Submitted r3 = SubmitTagged(b, 4, 30.0f);
  CheckDone(r1);
  CheckDone(r2);
  CheckDone(r3);
  return {std::move(r1), std::move(r2), std::move(r3)};
}

std::unique_ptr<DynamicBatcher> MakeBatcher(BatcherConfig config,
                                            std::unique_ptr<mlserve::Backend> backend = nullptr) {
  if (!backend) backend = mlserve::MakeBuiltinBackend("rowsum");
  return std::make_unique<DynamicBatcher>(BatcherPlan(), std::move(backend), std::move(config));
}

// Batch sizes that occurred, as {rows: batches}, ignoring zero entries.
std::map<int64_t, int64_t> BatchSizes(const DynamicBatcher& b) {
  std::map<int64_t, int64_t> out;
  const auto sizes = b.Stats().batch_sizes;
  for (size_t k = 0; k < sizes.size(); ++k) {
    if (sizes[k] != 0) out[static_cast<int64_t>(k)] = sizes[k];
  }
  return out;
}

}  // namespace

// ================================ FeaturePlan ===================================================

TEST(PlanCompileErrorsNameTheFeature) {
  EXPECT_INVALID_PLAN(Plan({Numeric("amount", {Op("sqrt")})}), {"'amount'", "unknown op 'sqrt'"});
  EXPECT_INVALID_PLAN(Plan({Numeric("amount", {Op("standardize", {{"mean", 0.0}, {"std", 0.0}})})}),
                      {"'amount'", "std > 0"});
  EXPECT_INVALID_PLAN(Plan({Numeric("x", {}), Numeric("age", {Op("clip", {{"lo", 5.0}, {"hi", 5.0}})})}),
                      {"'age'", "lo < hi"});
  EXPECT_INVALID_PLAN(Plan({Numeric("age", {Op("minmax", {{"lo", 1.0}})})}),
                      {"'age'", "needs parameter 'hi'"});
  EXPECT_INVALID_PLAN(Plan({Numeric("age", {Op("impute", {{"value", std::nan("")}})})}),
                      {"'age'", "finite"});
  EXPECT_INVALID_PLAN(Plan({Numeric("age", {Op("impute", {{"value", 1e300}})})}),
                      {"'age'", "float32"});
  EXPECT_INVALID_PLAN(Plan({Numeric("channel", {Op("onehot", {{"size", 3.0}})})}),
                      {"'channel'", "categorical"});
  EXPECT_INVALID_PLAN(Plan({Categorical("channel", {Op("impute", {{"value", 0.0}})})}),
                      {"'channel'", "encoding op"});
  EXPECT_INVALID_PLAN(
      Plan({Categorical("channel", {Op("log1p"), Op("onehot", {{"size", 3.0}})})}),
      {"'channel'", "only impute"});
  EXPECT_INVALID_PLAN(
      Plan({Categorical("channel", {Op("hash_bucket", {{"n", 4.0}}), Op("onehot", {{"size", 3.0}})})}),
      {"'channel'", "more than one encoding"});
  OpSpec empty_vocab = Op("onehot");
  empty_vocab.vocabulary_size = 0;
  EXPECT_INVALID_PLAN(Plan({Categorical("channel", {empty_vocab})}), {"'channel'", "empty"});
  OpSpec disagree = Op("onehot", {{"size", 4.0}});
  disagree.vocabulary_size = 3;
  EXPECT_INVALID_PLAN(Plan({Categorical("channel", {disagree})}), {"'channel'", "disagrees"});
  EXPECT_INVALID_PLAN(Plan({Categorical("merchant", {Op("hash_bucket", {{"n", 0.0}})})}),
                      {"'merchant'", "n >= 1"});
  EXPECT_INVALID_PLAN(Plan({Numeric("amount", {}, {1.0, 1.0})}), {"'amount'", "strictly increasing"});
  EXPECT_INVALID_PLAN(Plan({Numeric("amount", {}, {1.0})}), {"'amount'", "at least two"});
  OpSpec short_vocab = Op("onehot", {{"size", 3.0}});
  short_vocab.vocabulary = {"web", "pos"};  // names 2 of 3 slots (vocabulary_size left unset)
  EXPECT_INVALID_PLAN(Plan({Categorical("channel", {short_vocab})}), {"'channel'", "vocabulary"});
  EXPECT_INVALID_PLAN(Plan({Numeric("amount", {}, {0.0, -kInf})}), {"'amount'", "-inf only first"});
  EXPECT_INVALID_PLAN(Plan({Numeric("amount", {}), Numeric("amount", {})}), {"'amount'", "twice"});
  FeatureSpec odd = Numeric("weird", {});
  odd.kind = "text";
  EXPECT_INVALID_PLAN(Plan({odd}), {"'weird'", "unknown kind 'text'"});
  PlanSpec order = Plan({Numeric("amount", {})});
  order.has_output_order = true;
  order.output_order = {"amount", "missing_one"};
  EXPECT_INVALID_PLAN(order, {"'missing_one'"});
  EXPECT_INVALID_PLAN(PlanSpec{}, {"empty"});
}

TEST(TransformSmallPlanByHand) {
  const FeaturePlan plan(SmallPlan());
  CHECK_EQ(plan.f_in(), 4);
  CHECK_EQ(plan.f_out(), 1 + 1 + 4 + 8);
  CHECK(plan.has_histograms());
  const auto& names = plan.output_names();
  CHECK_EQ(names.size(), 14u);
  CHECK_EQ(names[0], std::string("amount"));
  CHECK_EQ(names[2], std::string("channel=0"));
  CHECK_EQ(names[5], std::string("channel=<oov>"));
  CHECK_EQ(names[13], std::string("merchant#7"));

  const float e_minus_1 = 1.71828182845904523f;
  // amount, age, channel, merchant
  const std::vector<float> x = {
      kNaN,      5.0f,  2.0f,  3.0f,    // amount imputed; channel in vocabulary
      e_minus_1, -10.f, kNaN,  kNaN,    // log1p -> 1; minmax does not clip; channel imputed to 1
      1000.0f,   10.0f, 5.0f,  -7.0f,   // clipped to hi; channel too large; negative hash code
      -5.0f,     2.5f,  1.5f,  2.5f,    // clipped to lo; fractional codes
      0.5f,      0.0f,  -1.0f, kInf,    // negative code -> OOV; inf code -> no bucket
      kInf,      kNaN,  0.0f,  0.0f,    // +inf clipped; NaN passes through minmax
      10.0f,     1.0f,  3.0f,  1.0f,    // code == size -> OOV
      1.0f,      7.5f,  kNaN,  -kInf,
  };
  const int64_t n = 8;
  std::vector<float> out(static_cast<size_t>(n * plan.f_out()), -99.0f);
  plan.Transform(x.data(), n, plan.f_in(), out.data(), /*histograms=*/true);

  const double log101 = std::log1p(100.0);
  const double amount[n] = {-0.5, 0.0, (log101 - 1) * 0.5, -0.5, (std::log1p(0.5) - 1) * 0.5,
                            (log101 - 1) * 0.5, (std::log1p(10.0) - 1) * 0.5, (std::log(2.0) - 1) * 0.5};
  const double age[n] = {0.5, -1.0, 1.0, 0.25, 0.0, std::nan(""), 0.1, 0.75};
  const int channel[n] = {2, 1, 3, 3, 3, 0, 3, 1};
  const int merchant[n] = {HashSlotOf(3, 8), -1, HashSlotOf(-7, 8), -1, -1, HashSlotOf(0, 8),
                           HashSlotOf(1, 8), -1};
  for (int i = 0; i < n; ++i) {
    const float* row = out.data() + i * plan.f_out();
    CHECK_NEAR(row[0], amount[i], 1e-5);
    CHECK_NEAR(row[1], age[i], 1e-6);
    CheckOneHot(row + 2, 4, channel[i], i);
    CheckOneHot(row + 6, 8, merchant[i], i);
  }

  const HistogramSnapshot snap = plan.Snapshot(/*reset=*/true);
  CHECK_EQ(snap.rows, n);
  CHECK_EQ(snap.features.size(), 3u);
  if (snap.features.size() == 3) {
    // Raw amount: NaN, 1.718, 1000, -5, 0.5, inf, 10, 1 against edges [0, 1, 10].
    const auto& a = snap.features[0];
    CHECK_EQ(a.name, std::string("amount"));
    CHECK(a.edges == (std::vector<float>{0.0f, 1.0f, 10.0f}));
    CHECK_EQ(a.underflow, 1);
    CHECK(a.counts == (std::vector<int64_t>{1, 2}));  // [0,1): 0.5; [1,10): 1.718, 1
    CHECK_EQ(a.overflow, 3);                         // 1000, inf, 10 (x >= last edge)
    CHECK_EQ(a.missing, 1);
    // Raw channel codes (before impute): 2, NaN, 5, 1.5, -1, 0, 3, NaN.
    const auto& c = snap.features[1];
    CHECK_EQ(c.name, std::string("channel"));
    CHECK(c.counts == (std::vector<int64_t>{1, 0, 1, 4}));  // OOV: 5, 1.5, -1, 3
    CHECK_EQ(c.missing, 2);
    // Raw merchant codes: 3, NaN, -7, 2.5, inf, 0, 1, -inf.
    const auto& m = snap.features[2];
    std::vector<int64_t> want(8, 0);
    for (int64_t code : {3, -7, 0, 1}) ++want[static_cast<size_t>(HashSlotOf(code, 8))];
    CHECK(m.counts == want);
    CHECK_EQ(m.missing, 4);
  }
  const HistogramSnapshot zero = plan.Snapshot(/*reset=*/false);
  CHECK_EQ(zero.rows, 0);
  for (const auto& f : zero.features) {
    CHECK_EQ(f.underflow + f.overflow + f.missing, 0);
    for (int64_t c : f.counts) CHECK_EQ(c, 0);
  }
  // histograms=false counts nothing.
  plan.Transform(x.data(), n, plan.f_in(), out.data(), /*histograms=*/false);
  CHECK_EQ(plan.Snapshot(false).rows, 0);
}

TEST(SplitMixReferenceMatchesPublishedValue) {
  // First output of the splitmix64 generator seeded with 0.
  CHECK_EQ(SplitMix64(0), 0xE220A8397B1DCDAFull);
  CHECK_EQ(mls_splitmix64(12345), SplitMix64(12345));
}

TEST(OneHotVocabularyNamesColumns) {
  OpSpec vocab = Op("onehot");
  vocab.vocabulary = {"web", "pos", "app"};
  vocab.vocabulary_size = 3;
  const FeaturePlan plan(Plan({Categorical("channel", {vocab})}));
  CHECK((plan.output_names() ==
         std::vector<std::string>{"channel=web", "channel=pos", "channel=app", "channel=<oov>"}));
  // A plan without histograms counts no rows even when asked to.
  const float x[2] = {1.0f, 7.0f};
  float out[8];
  plan.Transform(x, 2, 1, out, /*histograms=*/true);
  CheckOneHot(out, 4, 1, 0);
  CheckOneHot(out + 4, 4, 3, 1);
  const HistogramSnapshot snap = plan.Snapshot(true);
  CHECK_EQ(snap.rows, 0);
  CHECK(snap.features.empty());
}

TEST(Log1pWithinOneUlpOfLibm) {
  // Every 2053rd float32 bit pattern (both signs, all exponents) plus the specials, through the
  // plan's vectorised log1p. 2M+ rows (8 MB out) also take the streaming-store output path.
  std::vector<float> x;
  for (uint64_t bits = 0; bits <= 0xFFFFFFFFull; bits += 2053) {
    const uint32_t b32 = static_cast<uint32_t>(bits);
    float v;
    std::memcpy(&v, &b32, sizeof(v));
    x.push_back(v);
  }
  for (float v : {0.0f, -0.0f, -1.0f, -0.9999999f, -1.0000001f, 1e-30f, -1e-30f, 1e-45f,
                  0.41421354f, 0.41421357f, -0.29289323f, 1.0f, 3.4e38f, kInf, -kInf, kNaN}) {
    x.push_back(v);
  }
  const FeaturePlan plan(Plan({Numeric("x", {Op("log1p")})}));
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> out(x.size());
  plan.Transform(x.data(), n, 1, out.data(), false);
  int64_t worst = 0, bad_specials = 0;
  float worst_x = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float want = static_cast<float>(std::log1p(static_cast<double>(x[i])));
    const float got = out[static_cast<size_t>(i)];
    if (std::isnan(want) || std::isinf(want) || x[i] == 0.0f) {
      // NaN for x < -1 and NaN, -inf at -1, +inf at +inf, and +-0 keeps its sign.
      const bool same = std::isnan(want) ? std::isnan(got)
                                         : (got == want && std::signbit(got) == std::signbit(want));
      bad_specials += same ? 0 : 1;
      continue;
    }
    const int64_t d = std::isfinite(got) ? UlpDistance(got, want) : INT64_MAX;
    if (d > worst) {
      worst = d;
      worst_x = x[static_cast<size_t>(i)];
    }
  }
  CHECK_EQ(bad_specials, 0);
  if (worst > 1) {
    test_harness::ReportFailure(__FILE__, __LINE__, "log1p is " + std::to_string(worst) +
                                                        " ulp off at x = " + std::to_string(worst_x));
  }
}

TEST(NumericHistogramLinearAndBinarySearchAgree) {
  // 32 edges take the linear scan, 33 the binary search: both must follow
  // searchsorted(edges, x, side="right") - 1, with -inf first and +inf last allowed.
  std::vector<double> linear = {-kInf}, binary;
  for (int j = 0; j < 30; ++j) linear.push_back(j * 0.5);
  linear.push_back(kInf);
  for (int j = 0; j < 33; ++j) binary.push_back(j * 0.5 - 1.0);
  CHECK_EQ(linear.size(), 32u);
  const FeaturePlan plan(Plan({Numeric("lin", {}, linear), Numeric("bin", {}, binary)}));
  std::vector<float> x;
  for (int j = -8; j < 80; ++j) {
    const float v = j * 0.25f;
    x.insert(x.end(), {v, v});
  }
  for (float v : {kInf, -kInf, kNaN, 1e-40f, -0.0f, 14.5f, 15.0f, 15.25f}) x.insert(x.end(), {v, v});
  const int64_t n = static_cast<int64_t>(x.size() / 2);
  std::vector<float> out(x.size());
  plan.Transform(x.data(), n, 2, out.data(), true);
  const HistogramSnapshot snap = plan.Snapshot(true);
  CHECK_EQ(snap.features.size(), 2u);
  for (size_t f = 0; f < snap.features.size() && f < 2; ++f) {
    const std::vector<double>& e = f == 0 ? linear : binary;
    // counters as the doc lays them out: [underflow, bins..., overflow, nan]
    std::vector<int64_t> want(e.size() + 2, 0);
    for (int64_t i = 0; i < n; ++i) {
      const float v = x[static_cast<size_t>(2 * i + f)];
      if (std::isnan(v)) {
        ++want[e.size() + 1];
        continue;
      }
      size_t le = 0;  // edges <= v
      while (le < e.size() && static_cast<float>(e[le]) <= v) ++le;
      ++want[le];
    }
    const auto& h = snap.features[f];
    std::vector<int64_t> got = {h.underflow};
    got.insert(got.end(), h.counts.begin(), h.counts.end());
    got.push_back(h.overflow);
    got.push_back(h.missing);
    if (got != want) {
      test_harness::ReportFailure(__FILE__, __LINE__, "histogram of '" + h.name + "' differs");
    }
  }
}

TEST(TransformOutputOrderAndStride) {
  PlanSpec spec = SmallPlan();
  spec.has_output_order = true;
  spec.output_order = {"merchant", "amount"};  // age and channel are read but not output
  const FeaturePlan plan(spec);
  CHECK_EQ(plan.f_out(), 8 + 1);
  const int64_t stride = 7;  // three padding columns per row must be ignored
  const std::vector<float> x = {kNaN, 1.f, 2.f, 3.f, 111.f, 222.f, 333.f,
                                0.5f, 2.f, 9.f, 0.f, -1.f,  kNaN,  kInf};
  std::vector<float> out(2 * 9, -99.0f);
  plan.Transform(x.data(), 2, stride, out.data(), true);
  CheckOneHot(out.data(), 8, HashSlotOf(3, 8), 0);
  CHECK_NEAR(out[8], -0.5, 1e-6);
  CheckOneHot(out.data() + 9, 8, HashSlotOf(0, 8), 1);
  CHECK_NEAR(out[17], (std::log1p(0.5) - 1) * 0.5, 1e-6);
  // Features left out of the output are still histogrammed.
  const HistogramSnapshot snap = plan.Snapshot(true);
  CHECK_EQ(snap.rows, 2);
  CHECK(snap.features.size() == 3 && snap.features[1].counts == (std::vector<int64_t>{0, 0, 1, 1}));
  plan.Transform(x.data(), 0, stride, out.data(), true);  // n = 0 is a no-op
  CHECK_EQ(plan.Snapshot(false).rows, 0);
}

TEST(TransformTwoThreadsEqualsOneThread) {
  const int64_t n = 100000;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> value(-20.0f, 200.0f);
  std::uniform_int_distribution<int> code(-2, 12);
  std::uniform_int_distribution<int> special(0, 19);
  std::vector<float> x(static_cast<size_t>(n * 4));
  for (int64_t i = 0; i < n; ++i) {
    float* row = x.data() + i * 4;
    row[0] = value(rng);
    row[1] = value(rng);
    row[2] = static_cast<float>(code(rng));
    row[3] = static_cast<float>(code(rng)) * 1000.0f;
    switch (special(rng)) {
      case 0: row[0] = kNaN; row[2] = kNaN; break;
      case 1: row[1] = -kInf; row[3] = kNaN; break;
      case 2: row[2] += 0.5f; row[3] = 0.25f; break;
      default: break;
    }
  }
  const FeaturePlan one(SmallPlan());
  const FeaturePlan two(SmallPlan());
  std::vector<float> out1(static_cast<size_t>(n * one.f_out())), out2(out1.size(), -1.0f);
  one.Transform(x.data(), n, 4, out1.data(), true, 1);
  two.Transform(x.data(), n, 4, out2.data(), true, 2);
  CHECK(SameBits(out1, out2));
  // One call writes 5.6 MB (streaming stores); 1000-row calls stay below the threshold.
  std::vector<float> small(out1.size(), -1.0f);
  const FeaturePlan chunked(SmallPlan());
  for (int64_t r0 = 0; r0 < n; r0 += 1000) {
    chunked.Transform(x.data() + r0 * 4, std::min<int64_t>(1000, n - r0), 4,
                      small.data() + r0 * chunked.f_out(), true, 1);
  }
  CHECK(SameBits(out1, small));
  CHECK(SameSnapshot(one.Snapshot(false), chunked.Snapshot(false)));
  const HistogramSnapshot s1 = one.Snapshot(false), s2 = two.Snapshot(false);
  CHECK_EQ(s1.rows, n);
  CHECK(SameSnapshot(s1, s2));
  // Two threads on the same plan at once: counters of both calls add up exactly.
  std::thread t([&] { two.Transform(x.data(), n, 4, out2.data(), true, 2); });
  std::vector<float> out3(out1.size());
  two.Transform(x.data(), n, 4, out3.data(), true, 1);
  t.join();
  CHECK(SameBits(out1, out3));
  const HistogramSnapshot s3 = two.Snapshot(true);
  CHECK_EQ(s3.rows, 3 * n);
  CHECK(s3.features.size() == 3 && s1.features.size() == 3 &&
        s3.features[0].missing == 3 * s1.features[0].missing &&
        s3.features[2].counts[0] == 3 * s1.features[2].counts[0]);
}

// ================================ LatencyHistogram ==============================================

TEST(LatencyHistogramBucketsAtBoundaries) {
  LatencyHistogram h;
  CHECK_EQ(h.Count(), 0);
  // Bounds are inclusive (Prometheus `le`): a value equal to a bound is in that bound's bucket.
  const std::vector<std::pair<int64_t, size_t>> cases = {
      {0, 0},
      {100'000, 0},               // exactly 100 µs
      {100'001, 1},
      {250'000, 1},
      {999'999, 3},
      {1'000'000, 3},             // exactly 1 ms
      {1'000'000'000, 12},        // exactly 1 s
      {10'000'000'000, 15},       // the last bound
      {10'000'000'001, 16},       // +Inf
      {std::numeric_limits<int64_t>::max() / 4, 16},
  };
  int64_t sum = 0;
  std::array<int64_t, LatencyHistogram::kBuckets> want{};
  for (const auto& [ns, bucket] : cases) {
    h.Record(ns);
    sum += ns;
    ++want[bucket];
    CHECK_EQ(h.counts[bucket], want[bucket]);
  }
  CHECK(h.counts == want);
  CHECK_EQ(h.sum_ns, sum);
  CHECK_EQ(h.Count(), static_cast<int64_t>(cases.size()));
  const auto cumulative = h.Cumulative();
  CHECK_EQ(cumulative[0], 2);
  CHECK_EQ(cumulative[3], 6);
  CHECK_EQ(cumulative[15], 8);
  CHECK_EQ(cumulative.back(), static_cast<int64_t>(cases.size()));
  CHECK(std::is_sorted(cumulative.begin(), cumulative.end()));
  CHECK(std::is_sorted(kLatencyBoundsNs.begin(), kLatencyBoundsNs.end()));
}

// ================================ DynamicBatcher ================================================

TEST(BatcherConfigAndSubmitErrors) {
  BatcherConfig bad;
  bad.preferred_batch_sizes = {65};
  CHECK_THROWS_CODE(MakeBatcher(bad), ErrorCode::kInvalidInput, {"preferred_batch_sizes", "65"});
  bad = BatcherConfig();
  bad.default_priority_level = 3;
  CHECK_THROWS_CODE(MakeBatcher(bad), ErrorCode::kInvalidInput, {"default_priority_level"});
  CHECK_THROWS_CODE(DynamicBatcher(BatcherPlan(), nullptr, BatcherConfig()), ErrorCode::kInvalidInput,
                    {"backend"});
  CHECK(mlserve::MakeBuiltinBackend("no-such-backend") == nullptr);

  BatcherConfig config;
  config.max_batch_size = 4;
  auto b = MakeBatcher(config);
  const std::vector<float> x = RequestRows(5, 1.0f);
  CHECK_THROWS_CODE(b->Submit(x.data(), 5, 0, 0, false), ErrorCode::kInvalidInput, {"5 rows", "1..4"});
  CHECK_THROWS_CODE(b->Submit(x.data(), 0, 0, 0, false), ErrorCode::kInvalidInput, {"0 rows"});
  CHECK_THROWS_CODE(b->Submit(x.data(), 1, 2, 0, false), ErrorCode::kInvalidInput, {"priority 2"});
}

TEST(BatcherScattersEachRequestsOwnRows) {
  BatcherConfig config;
  config.max_batch_size = 16;
  config.max_queue_delay_us = 0;
  auto b = MakeBatcher(config);
  const auto [r1, r2, r3] = RunThreeHeldRequests(*b);
  b->Shutdown(true);  // stats are updated after publishing: join the workers before reading them
  // All three went out as one batch and share its output.
  CHECK(r1.request->output == r3.request->output);
  CHECK_EQ(r2.request->row_offset, 2);
  CHECK((BatchSizes(*b) == std::map<int64_t, int64_t>{{9, 1}}));
  const auto stats = b->Stats();
  CHECK_EQ(stats.requests, 3);
  CHECK_EQ(stats.rows, 9);
  CHECK_EQ(stats.completed, 3);
  CHECK_EQ(b->plan().Snapshot(false).rows, 9);  // the batcher counted histograms
}

TEST(BatcherHoldMakesBatchSizesDeterministic) {
  BatcherConfig config;
  config.max_batch_size = 8;
  config.max_queue_delay_us = 0;
  config.instance_count = 2;
  auto b = MakeBatcher(config);
  b->HoldUntilQueued(5);
  std::vector<Submitted> reqs;
  for (int i = 0; i < 5; ++i) reqs.push_back(SubmitTagged(*b, 3, 100.0f * (i + 1)));
  for (const auto& r : reqs) CheckDone(r);
  b->Shutdown(true);
  // Never split, so 8 rows hold two 3-row requests: 6 + 6 + 3.
  CHECK((BatchSizes(*b) == std::map<int64_t, int64_t>{{3, 1}, {6, 2}}));
  CHECK_EQ(b->Stats().batches, 3);

  // A preferred size cuts at once when the whole queue makes it: the delay (1 h) is far longer
  // than any wait here.
  BatcherConfig pref;
  pref.max_batch_size = 16;
  pref.preferred_batch_sizes = {4};
  pref.max_queue_delay_us = int64_t{3600} * 1000 * 1000;
  auto p = MakeBatcher(pref);
  p->HoldUntilQueued(2);
  const Submitted a = SubmitTagged(*p, 1, 1.0f);
  const Submitted c = SubmitTagged(*p, 3, 2.0f);
  CheckDone(a);
  CheckDone(c);
  p->Shutdown(true);
  CHECK((BatchSizes(*p) == std::map<int64_t, int64_t>{{4, 1}}));
}

TEST(BatcherRecordsLatencyHistograms) {
  BatcherConfig config;
  config.max_batch_size = 16;
  config.max_queue_delay_us = 0;
  auto b = MakeBatcher(config);
  b->HoldUntilQueued(3);
  std::vector<Submitted> reqs;
  reqs.push_back(SubmitTagged(*b, 2, 1.0f));
  reqs.push_back(SubmitTagged(*b, 1, 2.0f));
  std::this_thread::sleep_for(std::chrono::milliseconds(3));  // the first two wait > 2.5 ms
  reqs.push_back(SubmitTagged(*b, 4, 3.0f));
  for (const auto& r : reqs) CheckDone(r);
  reqs.push_back(SubmitTagged(*b, 1, 4.0f));  // a second batch of one request
  CheckDone(reqs.back());
  b->Shutdown(true);
  const auto stats = b->Stats();
  CHECK_EQ(stats.batches, 2);
  // One observation per executed request (queue, request) and per batch (normalize, compute).
  CHECK_EQ(stats.queue.Count(), 4);
  CHECK_EQ(stats.request.Count(), 4);
  CHECK_EQ(stats.normalize.Count(), 2);
  CHECK_EQ(stats.compute.Count(), 2);
  // The queue histogram holds exactly the requests' own queue_ns values, in the right buckets.
  LatencyHistogram want;
  for (const auto& r : reqs) want.Record(r.request->queue_ns);
  CHECK(stats.queue.counts == want.counts);
  CHECK_EQ(stats.queue.sum_ns, want.sum_ns);
  CHECK(reqs[0].request->queue_ns >= 3'000'000 && reqs[1].request->queue_ns >= 3'000'000);
  CHECK(stats.queue.Cumulative()[4] <= 2);  // <= 2.5 ms: at most the last two requests
  // Submit -> completion includes the queue wait.
  CHECK(stats.request.sum_ns >= stats.queue.sum_ns);
  CHECK(stats.normalize.sum_ns >= 0 && stats.compute.sum_ns >= 0);
}

TEST(BatcherPriorityLevelsRunHighestFirst) {
  BatcherConfig config;
  config.max_batch_size = 4;
  config.max_queue_delay_us = 0;
  config.priority_levels = 2;
  auto b = MakeBatcher(config);
  b->HoldUntilQueued(2);
  const Submitted low = SubmitTagged(*b, 4, 1.0f, /*notify_queue=*/true, /*priority=*/2);
  const Submitted high = SubmitTagged(*b, 4, 2.0f, /*notify_queue=*/true, /*priority=*/1);
  b->Shutdown(true);
  const auto done = b->DrainCompleted();
  CHECK_EQ(done.size(), 2u);
  if (done.size() == 2) {
    CHECK(done[0] == high.request);
    CHECK(done[1] == low.request);
  }
  CheckDone(low);
  CheckDone(high);
}

TEST(BatcherQueueFull) {
  BatcherConfig config;
  config.max_queue_size = 2;
  auto b = MakeBatcher(config);
  b->HoldUntilQueued(100);
  const Submitted r1 = SubmitTagged(*b, 1, 1.0f);
  const Submitted r2 = SubmitTagged(*b, 1, 2.0f);
  const std::vector<float> x = RequestRows(1, 3.0f);
  CHECK_THROWS_CODE(b->Submit(x.data(), 1, 0, 0, false), ErrorCode::kQueueFull, {"queue is full"});
  CHECK_EQ(b->Stats().rejected, 1);
  CHECK_EQ(b->Stats().queued, 2);
  b->Shutdown(true);  // drains despite the hold
  CheckDone(r1);
  CheckDone(r2);
}

TEST(BatcherDeadlineExceededWhileQueued) {
  BatcherConfig config;
  config.default_timeout_us = 2000;
  auto b = MakeBatcher(config);
  b->HoldUntilQueued(100);
  const Submitted explicit_timeout = SubmitTagged(*b, 1, 1.0f, /*notify_queue=*/true, 0, 1000);
  const Submitted default_timeout = SubmitTagged(*b, 2, 2.0f, false, 0, /*timeout_us=*/-1);
  const Submitted no_timeout = SubmitTagged(*b, 1, 3.0f, false, 0, /*timeout_us=*/0);
  CheckFailed(*explicit_timeout.request, ErrorCode::kDeadlineExceeded, "timed out");
  CheckFailed(*default_timeout.request, ErrorCode::kDeadlineExceeded, "not executed");
  const auto drained = b->DrainCompleted();
  CHECK(drained.size() == 1 && drained[0] == explicit_timeout.request);
  const auto stats = b->Stats();
  CHECK_EQ(stats.timed_out, 2);
  CHECK_EQ(stats.queued, 1);
  CHECK_EQ(stats.batches, 0);
  CHECK(no_timeout.request->state == RequestState::kQueued);
  b->HoldUntilQueued(0);
  CheckDone(no_timeout);
  b->Shutdown(true);
  const auto after = b->Stats();
  CHECK_EQ(after.queue.Count(), 1);  // expired requests never reached a batch
  CHECK_EQ(after.request.Count(), 1);
}

TEST(BatcherHugeTimeoutAndDelayMeanNever) {
  // INT64_MAX microseconds overflow the clock's nanoseconds: they must saturate, not wrap.
  constexpr int64_t kForever = std::numeric_limits<int64_t>::max();
  BatcherConfig config;
  config.max_batch_size = 2;
  config.max_queue_delay_us = kForever;
  config.default_timeout_us = kForever;
  auto b = MakeBatcher(config);
  CheckDone(SubmitTagged(*b, 2, 1.0f, false, 0, kForever));  // full batch: cut at once
  CheckDone(SubmitTagged(*b, 2, 2.0f, false, 0, /*timeout_us=*/-1));
  const Submitted waiting = SubmitTagged(*b, 1, 3.0f);  // waits for the (endless) delay
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(waiting.request->state == RequestState::kQueued);
  b->Shutdown(true);
  CheckDone(waiting);
  CHECK_EQ(b->Stats().timed_out, 0);
}

TEST(BatcherCancel) {
  BatcherConfig config;
  config.max_queue_delay_us = 0;
  auto b = MakeBatcher(config);
  b->HoldUntilQueued(100);
  const Submitted gone = SubmitTagged(*b, 2, 1.0f, true, 0, /*timeout_us=*/100 * 1000);
  const Submitted kept = SubmitTagged(*b, 2, 2.0f);
  CHECK(b->Cancel(gone.request->id));
  CHECK(gone.request->state == RequestState::kCancelled);
  CHECK(!b->Cancel(gone.request->id));
  CHECK(!b->Cancel(987654321));
  // Its deadline passes while the batcher runs: it must have left the deadline index too.
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  CHECK(gone.request->state == RequestState::kCancelled);
  CHECK_EQ(b->Stats().timed_out, 0);
  CHECK_EQ(b->Stats().cancelled, 1);
  CHECK_EQ(b->Stats().queued, 1);
  b->HoldUntilQueued(0);
  CheckDone(kept);
  CHECK(!b->Cancel(kept.request->id));  // already ran
  b->Shutdown(true);
  CHECK(b->DrainCompleted().empty());  // nothing is published for a cancelled request
  CHECK((BatchSizes(*b) == std::map<int64_t, int64_t>{{2, 1}}));
}

namespace {

// Sums rows like rowsum, records the calling thread, optionally sleeping per batch.
class ThreadRecordingBackend final : public mlserve::Backend {
 public:
  explicit ThreadRecordingBackend(std::chrono::microseconds sleep) : sleep_(sleep) {}
  void Execute(const float* x, int64_t n, int64_t d, BatchOutput* out) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      threads_.push_back(std::this_thread::get_id());
    }
    if (sleep_.count() > 0) std::this_thread::sleep_for(sleep_);
    rowsum_->Execute(x, n, d, out);
  }
  std::string Name() const override { return "thread-recording"; }
  std::vector<std::thread::id> threads() {
    std::lock_guard<std::mutex> lock(mu_);
    return threads_;
  }

 private:
  std::chrono::microseconds sleep_;
  std::mutex mu_;
  std::vector<std::thread::id> threads_;
  std::unique_ptr<mlserve::Backend> rowsum_ = mlserve::MakeBuiltinBackend("rowsum");
};

// A request for RunReady: no worker is woken for it.
Submitted SubmitQuiet(DynamicBatcher& b, int64_t rows, float tag) {
  return SubmitTagged(b, rows, tag, true, 0, 0, /*wake_workers=*/false);
}

}  // namespace

TEST(BatcherRunReadyRunsBatchesOnTheCallingThread) {
  BatcherConfig config;
  config.max_batch_size = 4;
  config.max_queue_delay_us = 0;
  auto backend = std::make_unique<ThreadRecordingBackend>(std::chrono::microseconds(0));
  ThreadRecordingBackend* rec = backend.get();
  auto b = MakeBatcher(config, std::move(backend));
  // Let the worker reach its wait (it is never woken for quiet submits).
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::vector<Submitted> reqs;
  for (int i = 0; i < 3; ++i) reqs.push_back(SubmitQuiet(*b, 4, 10.0f * (i + 1)));
  // At most two batches now: the caller comes back for the third, no worker takes it.
  CHECK_EQ(b->RunReady(2, int64_t{1} << 40), 2);
  CHECK(reqs[0].request->state == RequestState::kDone);
  CHECK(reqs[1].request->state == RequestState::kDone);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  {
    std::lock_guard<std::mutex> g(reqs[2].request->mu);
    CHECK(reqs[2].request->state == RequestState::kQueued);
  }
  CHECK_EQ(b->RunReady(2, int64_t{1} << 40), 1);
  for (const auto& r : reqs) CheckDone(r);
  CHECK_EQ(b->RunReady(2, int64_t{1} << 40), -1);  // nothing queued
  for (std::thread::id t : rec->threads()) CHECK(t == std::this_thread::get_id());
  CHECK_EQ(static_cast<int64_t>(b->DrainCompleted().size()), 3);  // published as usual
  b->Shutdown(true);
  CHECK_EQ(b->Stats().batches, 3);
}

TEST(BatcherRunReadyLeavesSlowModelsAndDelayedBatchesToTheWorkers) {
  BatcherConfig config;
  config.max_queue_delay_us = 0;
  auto backend = std::make_unique<ThreadRecordingBackend>(std::chrono::microseconds(2000));
  ThreadRecordingBackend* rec = backend.get();
  auto b = MakeBatcher(config, std::move(backend));
  // No estimate yet: the first batch runs here; it takes >= 2 ms, over the 100 µs bound.
  const Submitted first = SubmitQuiet(*b, 1, 1.0f);
  CHECK_EQ(b->RunReady(4, 100 * 1000), 1);
  CheckDone(first);
  // Now refused: the worker is woken and runs it.
  const Submitted second = SubmitQuiet(*b, 1, 2.0f);
  CHECK_EQ(b->RunReady(4, 100 * 1000), -1);
  CheckDone(second);
  const auto threads = rec->threads();
  CHECK_EQ(threads.size(), 2u);
  CHECK(threads[0] == std::this_thread::get_id());
  CHECK(threads[1] != std::this_thread::get_id());
  // The refused estimate decays by 1/8 per refusal: inline again after a few (2 ms -> 100 µs
  // needs about 23 refusals; each refusal hands one request to the worker).
  int refused = 0;
  for (int64_t ran = -1; ran == -1 && refused < 100; ++refused) {
    const Submitted s = SubmitQuiet(*b, 1, 3.0f);
    ran = b->RunReady(4, 100 * 1000);
    CheckDone(s);
  }
  CHECK(refused > 5 && refused < 60);
  b->Shutdown(true);

  // A batch that may not be cut yet (the delay) is the workers': they cut it on time.
  BatcherConfig delayed;
  delayed.max_queue_delay_us = 2000;
  delayed.max_batch_size = 64;
  auto d = MakeBatcher(delayed);
  const Submitted late = SubmitQuiet(*d, 1, 4.0f);
  CHECK_EQ(d->RunReady(4, int64_t{1} << 40), -1);
  CheckDone(late);
  d->Shutdown(true);

  // preserve_ordering batchers never run inline.
  BatcherConfig ordered;
  ordered.max_queue_delay_us = 0;
  ordered.preserve_ordering = true;
  auto o = MakeBatcher(ordered);
  const Submitted kept = SubmitQuiet(*o, 1, 5.0f);
  CHECK_EQ(o->RunReady(4, int64_t{1} << 40), -1);
  CheckDone(kept);
  o->Shutdown(true);
}

TEST(BatcherShutdownDrainRunsQueuedRequests) {
  BatcherConfig config;
  config.max_queue_delay_us = 1000 * 1000;
  auto b = MakeBatcher(config);
  b->HoldUntilQueued(100);
  std::vector<Submitted> reqs;
  for (int i = 0; i < 3; ++i) reqs.push_back(SubmitTagged(*b, 2 + i, 10.0f * i));
  b->Shutdown(true);
  for (const auto& r : reqs) CheckDone(r);
  const std::vector<float> x = RequestRows(1, 1.0f);
  CHECK_THROWS_CODE(b->Submit(x.data(), 1, 0, 0, false), ErrorCode::kUnavailable, {"shutting down"});
  b->Shutdown(false);  // idempotent
  CHECK_EQ(b->Stats().completed, 3);
  CHECK_EQ(b->Stats().rejected, 1);
}

TEST(BatcherShutdownWithoutDrainFailsQueuedRequests) {
  auto b = MakeBatcher(BatcherConfig());
  b->HoldUntilQueued(100);
  const Submitted r1 = SubmitTagged(*b, 1, 1.0f, /*notify_queue=*/true);
  const Submitted r2 = SubmitTagged(*b, 3, 2.0f);
  b->Shutdown(false);
  CheckFailed(*r1.request, ErrorCode::kUnavailable, "unloaded");
  CheckFailed(*r2.request, ErrorCode::kUnavailable, "unloaded");
  const auto drained = b->DrainCompleted();
  CHECK(drained.size() == 1 && drained[0] == r1.request);
  CHECK_EQ(b->Stats().batches, 0);
}

TEST(BatcherCompletionQueueAndEventFd) {
  BatcherConfig config;
  config.max_batch_size = 8;
  config.max_queue_delay_us = 0;
  config.instance_count = 2;
  auto b = MakeBatcher(config);
  // One batch of three notify_queue requests signals the eventfd, and one drain returns all three.
  b->HoldUntilQueued(3);
  std::vector<Submitted> first;
  for (int i = 0; i < 3; ++i) first.push_back(SubmitTagged(*b, 2, 1000.0f + i, true));
  for (const auto& s : first) CheckDone(s);
  {
    pollfd pfd{b->completion_fd(), POLLIN, 0};
    CHECK_EQ(poll(&pfd, 1, 30 * 1000), 1);
    const auto drained = b->DrainCompleted();
    CHECK_EQ(drained.size(), 3u);
    for (size_t i = 0; i < drained.size() && i < 3; ++i) CHECK(drained[i] == first[i].request);
  }
  std::map<uint64_t, Submitted> pending;  // notify_queue requests not yet drained
  std::vector<Submitted> waited;
  for (int i = 0; i < 40; ++i) {
    Submitted s = SubmitTagged(*b, 1 + i % 8, static_cast<float>(i), /*notify_queue=*/i % 4 != 0);
    if (s.request->notify_queue) {
      pending.emplace(s.request->id, std::move(s));
    } else {
      waited.push_back(std::move(s));
    }
  }
  std::set<uint64_t> seen;
  int64_t duplicates = 0, unexpected = 0;
  const auto give_up = std::chrono::steady_clock::now() + kWaitLimit;
  while (!pending.empty() && std::chrono::steady_clock::now() < give_up) {
    pollfd pfd{b->completion_fd(), POLLIN, 0};
    const int ready = poll(&pfd, 1, 1000);
    if (ready <= 0) continue;
    CHECK(pfd.revents & POLLIN);
    for (const auto& r : b->DrainCompleted()) {
      if (!seen.insert(r->id).second) ++duplicates;
      auto it = pending.find(r->id);
      if (it == pending.end()) {
        ++unexpected;
        continue;
      }
      CHECK(r->Finished());
      CHECK_EQ(WrongRows(*r, it->second.want), 0);
      pending.erase(it);
    }
  }
  CHECK(pending.empty());
  CHECK_EQ(duplicates, 0);
  CHECK_EQ(unexpected, 0);
  for (const auto& s : waited) CheckDone(s);
  b->Shutdown(true);
  // Every publish happened before the join: one more drain empties the queue and the eventfd.
  for (const auto& r : b->DrainCompleted()) {
    if (!seen.insert(r->id).second) ++duplicates;
  }
  CHECK_EQ(duplicates, 0);
  CHECK_EQ(seen.size(), 30u);
  pollfd pfd{b->completion_fd(), POLLIN, 0};
  CHECK_EQ(poll(&pfd, 1, 0), 0);
}

namespace {

// Throws for the batches listed in `fail_calls` (0-based call index), else sums rows.
class FlakyBackend final : public mlserve::Backend {
 public:
  explicit FlakyBackend(std::set<int> fail_calls) : fail_calls_(std::move(fail_calls)) {}
  void Execute(const float* x, int64_t n, int64_t d, BatchOutput* out) override {
    const int call = calls_++;
    if (fail_calls_.count(call)) {
      if (call % 3 == 0) throw std::runtime_error("boom in call " + std::to_string(call));
      if (call % 3 == 1) throw mlserve::Error(ErrorCode::kInvalidInput, "bad tensor in call " + std::to_string(call));
      out->rows = n + 1;  // a wrong answer, not an exception
      out->data.assign(static_cast<size_t>(n + 1), 0.0f);
      return;
    }
    rowsum_->Execute(x, n, d, out);
  }
  std::string Name() const override { return "flaky"; }

 private:
  std::set<int> fail_calls_;
  std::atomic<int> calls_{0};
  std::unique_ptr<mlserve::Backend> rowsum_ = mlserve::MakeBuiltinBackend("rowsum");
};

}  // namespace

TEST(BatcherBackendFailureFailsOnlyThatBatch) {
  BatcherConfig config;
  config.max_queue_delay_us = 0;
  auto b = MakeBatcher(config, std::make_unique<FlakyBackend>(std::set<int>{0, 2, 4, 5}));
  // Call 0 throws std::runtime_error: both requests of that batch fail with kInternal.
  b->HoldUntilQueued(2);
  const Submitted f1 = SubmitTagged(*b, 2, 1.0f);
  const Submitted f2 = SubmitTagged(*b, 3, 2.0f);
  CheckFailed(*f1.request, ErrorCode::kInternal, "boom in call 0");
  CheckFailed(*f2.request, ErrorCode::kInternal, "flaky");
  CheckDone(SubmitTagged(*b, 2, 3.0f));  // call 1 succeeds
  // Call 2 returns the wrong row count; call 3 succeeds.
  CheckFailed(*SubmitTagged(*b, 1, 4.0f).request, ErrorCode::kInternal, "one row per input row");
  CheckDone(SubmitTagged(*b, 1, 5.0f));
  // Call 4 throws mlserve::Error: its code is kept. Call 5 fails too, call 6 succeeds.
  CheckFailed(*SubmitTagged(*b, 1, 6.0f).request, ErrorCode::kInvalidInput, "bad tensor in call 4");
  CheckFailed(*SubmitTagged(*b, 1, 7.0f).request, ErrorCode::kInternal, "one row per input row");
  CheckDone(SubmitTagged(*b, 4, 8.0f));
  b->Shutdown(true);
  const auto stats = b->Stats();
  CHECK_EQ(stats.failed, 5);
  CHECK_EQ(stats.completed, 3);
  CHECK_EQ(stats.batches, 7);
  CHECK_EQ(stats.queue.Count(), 8);  // failed batches are timed too
  CHECK_EQ(stats.request.Count(), 8);
  CHECK_EQ(stats.compute.Count(), 7);
}

TEST(BatcherConcurrentClientsGetTheirOwnResults) {
  BatcherConfig config;
  config.max_batch_size = 32;
  config.max_queue_delay_us = 50;
  config.instance_count = 2;
  auto b = MakeBatcher(config);
  constexpr int kThreads = 4, kPerThread = 2000, kWindow = 16;
  std::atomic<int64_t> wrong{0}, unfinished{0}, rows_total{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < kThreads; ++t) {
    clients.emplace_back([&, t] {
      std::mt19937 rng(static_cast<uint32_t>(1000 + t));
      std::uniform_int_distribution<int64_t> size(1, 32);
      for (int done = 0; done < kPerThread;) {
        std::vector<Submitted> window;
        for (int k = 0; k < kWindow && done < kPerThread; ++k, ++done) {
          const int64_t rows = size(rng);
          rows_total += rows;
          window.push_back(SubmitTagged(*b, rows, static_cast<float>(t * 100000 + done) * 0.01f,
                                        /*notify_queue=*/false));
        }
        for (const auto& s : window) {
          if (!DynamicBatcher::Wait(*s.request, kWaitLimit)) {
            ++unfinished;
            continue;
          }
          wrong += WrongRows(*s.request, s.want);
        }
      }
    });
  }
  for (auto& c : clients) c.join();
  b->Shutdown(true);
  CHECK_EQ(unfinished.load(), 0);
  CHECK_EQ(wrong.load(), 0);
  const auto stats = b->Stats();
  CHECK_EQ(stats.requests, kThreads * kPerThread);
  CHECK_EQ(stats.completed, kThreads * kPerThread);
  CHECK_EQ(stats.failed + stats.timed_out + stats.cancelled + stats.rejected, 0);
  CHECK_EQ(stats.queued, 0);
  int64_t batched_rows = 0, batches = 0;
  for (size_t k = 0; k < stats.batch_sizes.size(); ++k) {
    batched_rows += static_cast<int64_t>(k) * stats.batch_sizes[k];
    batches += stats.batch_sizes[k];
  }
  CHECK_EQ(batched_rows, rows_total.load());
  CHECK_EQ(batches, stats.batches);
  CHECK_EQ(b->plan().Snapshot(false).rows, rows_total.load());
}

// ================================ monitoring recorders ==========================================

namespace {

// A finished batch of single-row requests whose one input column holds first..first+n-1, and
// the output 10x the input; `tag` prefixes each request's tag when not empty.
struct FakeBatch {
  std::vector<std::shared_ptr<Request>> requests;
  BatchOutput out;
};

FakeBatch MakeFakeBatch(int64_t first, int64_t n, const std::string& tag = "") {
  FakeBatch b;
  b.out.rows = n;
  b.out.width = 1;
  for (int64_t i = 0; i < n; ++i) {
    auto r = std::make_shared<Request>();
    r->rows = 1;
    r->input = {static_cast<float>(first + i)};
    if (!tag.empty()) r->tag = tag + std::to_string(first + i);
    b.requests.push_back(r);
    b.out.data.push_back(10.0f * static_cast<float>(first + i));
  }
  return b;
}

}  // namespace

TEST(RowSamplerIsUniformAndKeepsRowsWhole) {
  // 1000 rows in batches of 1..37 rows, reservoir of 100: over 2000 seeds each row must be kept
  // about 200 times (binomial sd ~13.4; the bounds are 5 sd away).
  constexpr int64_t kRows = 1000, kCapacity = 100, kTrials = 2000;
  std::vector<int64_t> kept(kRows, 0);
  std::mt19937 sizes(5);
  for (int64_t trial = 0; trial < kTrials; ++trial) {
    RowSampler sampler(1);
    SamplerConfig config;
    config.capacity = kCapacity;
    config.seed = static_cast<uint64_t>(trial);
    sampler.Configure(config);
    for (int64_t first = 0; first < kRows;) {
      const int64_t n = std::min<int64_t>(kRows - first, 1 + static_cast<int64_t>(sizes() % 37));
      FakeBatch batch = MakeFakeBatch(first, n);
      sampler.Record(batch.requests, batch.out);
      first += n;
    }
    const mlserve::RowSample s = sampler.Snapshot(true);
    CHECK_EQ(s.seen, kRows);
    CHECK_EQ(static_cast<int64_t>(s.inputs.size()), kCapacity);
    std::set<float> distinct(s.inputs.begin(), s.inputs.end());
    CHECK_EQ(static_cast<int64_t>(distinct.size()), kCapacity);
    for (size_t i = 0; i < s.inputs.size(); ++i) {
      CHECK_EQ(s.outputs[i], 10.0f * s.inputs[i]);  // the input row's own output
      ++kept[static_cast<size_t>(s.inputs[i])];
    }
    CHECK_EQ(sampler.Snapshot(false).seen, 0);  // the reset started a new sample
  }
  const auto [lo, hi] = std::minmax_element(kept.begin(), kept.end());
  CHECK(*lo >= 130);
  CHECK(*hi <= 270);
}

TEST(RowSamplerPredictionHistogram) {
  RowSampler sampler(1);
  SamplerConfig config;
  config.capacity = 1000;  // more than the rows: every row is kept
  config.prediction_edges = {0.0f, 25.0f, 50.0f};
  sampler.Configure(config);
  FakeBatch batch = MakeFakeBatch(0, 8);  // outputs 0, 10, ..., 70
  batch.out.data[3] = std::numeric_limits<float>::quiet_NaN();
  sampler.Record(batch.requests, batch.out);
  const mlserve::RowSample s = sampler.Snapshot(false);
  CHECK_EQ(s.seen, 8);
  CHECK_EQ(static_cast<int64_t>(s.inputs.size()), 8);
  // clamped into [0, 50]: 0, 10, 20 | 30, 40, 50 (right edge into the last bin), 60, 70; 30 NaN
  CHECK((s.prediction_counts == std::vector<int64_t>{3, 4}));
  CHECK_EQ(s.prediction_missing, 1);

  SamplerConfig argmax;
  argmax.prediction_argmax = true;
  sampler.Configure(argmax);
  FakeBatch two = MakeFakeBatch(0, 2);
  two.out.width = 3;
  two.out.data = {0.1f, 0.7f, 0.2f, 0.5f, 0.2f, 0.3f};
  sampler.Record(two.requests, two.out);
  const mlserve::RowSample a = sampler.Snapshot(true);
  CHECK((a.prediction_counts == std::vector<int64_t>{1, 1, 0}));
  CHECK(a.inputs.empty());  // capacity 0: histogram only

  SamplerConfig bad;
  bad.prediction_edges = {1.0f, 1.0f};
  CHECK_THROWS_CODE(sampler.Configure(bad), ErrorCode::kInvalidInput, {"strictly increasing"});
  bad.prediction_edges = {0.0f, 1.0f};
  bad.prediction_argmax = true;
  CHECK_THROWS_CODE(sampler.Configure(bad), ErrorCode::kInvalidInput, {"not both"});
}

TEST(PredictionLogFindsTaggedRequestsWithinRetention) {
  PredictionLog log;
  FakeBatch batch = MakeFakeBatch(0, 5, "req-");
  log.Record(batch.requests, batch.out);  // off: nothing logged
  CHECK_EQ(log.size(), 0);
  log.Configure(3, 0);
  log.Record(batch.requests, batch.out);
  CHECK_EQ(log.size(), 3);  // only the newest 3 of 5
  auto found = log.Find({"req-0", "req-2", "req-4", "nope"});
  CHECK(!found[0].has_value());
  CHECK(found[1].has_value() && found[1]->outputs == std::vector<float>{20.0f});
  CHECK(found[2].has_value() && found[2]->rows == 1 && found[2]->width == 1);
  CHECK(!found[3].has_value());
  FakeBatch again = MakeFakeBatch(4, 1, "req-");  // the same tag again: the newer entry wins
  again.out.data[0] = -1.0f;
  log.Record(again.requests, again.out);
  CHECK(log.Find({"req-4"})[0]->outputs == std::vector<float>{-1.0f});
  FakeBatch untagged = MakeFakeBatch(9, 2);
  log.Record(untagged.requests, untagged.out);
  CHECK_EQ(log.size(), 3);

  log.Configure(10, 1000000);  // 1 ms
  log.Record(batch.requests, batch.out);
  CHECK_EQ(log.size(), 5);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK_EQ(log.size(), 0);
  CHECK(!log.Find({"req-1"})[0].has_value());
  CHECK_THROWS_CODE(log.Configure(-1, 0), ErrorCode::kInvalidInput, {"max_entries"});
}

TEST(PredictionExportBuffersTaggedRowsBoundedAndDrains) {
  PredictionExport ex;
  FakeBatch batch = MakeFakeBatch(0, 5, "req-");
  ex.Record(batch.requests, batch.out, 1);  // off: nothing buffered
  CHECK(ex.Drain().tags.empty());
  ex.Configure(3);
  ex.Record(batch.requests, batch.out, 1);
  FakeBatch untagged = MakeFakeBatch(7, 2);
  ex.Record(untagged.requests, untagged.out, 1);
  mlserve::ExportedPredictions got = ex.Drain();
  CHECK((got.tags == std::vector<std::string>{"req-0", "req-1", "req-2"}));
  CHECK((got.inputs == std::vector<float>{0.0f, 1.0f, 2.0f}));
  CHECK((got.outputs == std::vector<float>{0.0f, 10.0f, 20.0f}));
  CHECK((got.rows == std::vector<int64_t>{1, 1, 1}));
  CHECK_EQ(got.dropped_requests, 2);  // req-3 and req-4 did not fit; untagged ones never count
  CHECK_EQ(got.width, 1);
  CHECK(ex.Drain().tags.empty());  // drained: empty again, the drop counts reset
  ex.Record(batch.requests, batch.out, 1);
  CHECK_EQ(static_cast<int64_t>(ex.Drain().tags.size()), 3);  // room again after the drain
  // Sampling keeps a fixed subset of tags: the same on a second export (another replica).
  PredictionExport a, b;
  a.Configure(100000, 0.25);
  b.Configure(100000, 0.25);
  FakeBatch many = MakeFakeBatch(0, 4000, "id-");
  a.Record(many.requests, many.out, 1);
  b.Record(many.requests, many.out, 1);
  const std::vector<std::string> kept = a.Drain().tags;
  CHECK(kept == b.Drain().tags);
  CHECK(kept.size() > 800 && kept.size() < 1200);  // 1000 expected, sd ~27
  CHECK_THROWS_CODE(ex.Configure(-1), ErrorCode::kInvalidInput, {"max_rows"});
  CHECK_THROWS_CODE(ex.Configure(10, 0.0), ErrorCode::kInvalidInput, {"sample"});
  CHECK_THROWS_CODE(ex.Configure(10, 1.5), ErrorCode::kInvalidInput, {"sample"});
}

// Against a reference model (the newest max_entries requests, a tag logged again answering
// with its newest entry): tags re-logged many times, so the flat index overwrites, skips stale
// removals and shifts probe runs back on removal; several capacities, batches of 1..7.
TEST(PredictionLogIndexMatchesAReferenceUnderChurn) {
  std::mt19937 rng(11);
  for (int64_t capacity : {1, 2, 7, 37, 200}) {
    PredictionLog log;
    log.Configure(capacity, 0);
    std::vector<std::pair<std::string, float>> logged;  // every (tag, output), in order
    std::vector<std::string> pool;
    for (int t = 0; t < 3 * capacity + 5; ++t) pool.push_back("t" + std::to_string(t * 7919));
    for (int round = 0; round < 400; ++round) {
      FakeBatch batch = MakeFakeBatch(round * 10, 1 + static_cast<int64_t>(rng() % 7));
      for (size_t i = 0; i < batch.requests.size(); ++i) {
        batch.requests[i]->tag = pool[rng() % pool.size()];
        batch.out.data[i] = static_cast<float>(logged.size());
        logged.emplace_back(batch.requests[i]->tag, batch.out.data[i]);
      }
      log.Record(batch.requests, batch.out);
      const size_t kept = std::min(logged.size(), static_cast<size_t>(capacity));
      CHECK_EQ(log.size(), static_cast<int64_t>(kept));
      const auto found = log.Find(pool);
      for (size_t t = 0; t < pool.size(); ++t) {
        std::optional<float> want;  // the newest retained entry of the tag
        for (size_t k = logged.size() - kept; k < logged.size(); ++k) {
          if (logged[k].first == pool[t]) want = logged[k].second;
        }
        CHECK_EQ(found[t].has_value(), want.has_value());
        if (found[t].has_value() && want.has_value()) {
          CHECK(found[t]->outputs == std::vector<float>{*want});
        }
      }
    }
  }
}

TEST(BatcherLogsPredictionsBeforePublishing) {
  BatcherConfig config;
  config.max_batch_size = 16;
  config.max_queue_delay_us = 0;
  auto b = MakeBatcher(config);
  SamplerConfig sample;
  sample.capacity = 4;
  b->sampler().Configure(sample);
  b->prediction_log().Configure(100, 0);
  b->HoldUntilQueued(3);
  std::vector<float> x1 = RequestRows(2, 1.0f), x2 = RequestRows(1, 2.0f), x3 = RequestRows(3, 3.0f);
  auto r1 = b->Submit(x1.data(), 2, 0, 0, false, "one");
  auto r2 = b->Submit(x2.data(), 1, 0, 0, false);
  auto r3 = b->Submit(x3.data(), 3, 0, 0, false, "three");
  CHECK(DynamicBatcher::Wait(*r3, kWaitLimit));
  // Logged before publishing: whoever sees the result finds the entry.
  auto found = b->prediction_log().Find({"one", "three"});
  CHECK(found[0].has_value() && found[0]->rows == 2);
  CHECK(found[1].has_value() && found[1]->rows == 3);
  if (found[1].has_value()) {
    const std::vector<float> want = ExpectedRowSums(b->plan(), x3);
    CHECK(found[1]->outputs == want);
  }
  CHECK(DynamicBatcher::Wait(*r1, kWaitLimit));
  CHECK(DynamicBatcher::Wait(*r2, kWaitLimit));
  const mlserve::RowSample s = b->sampler().Snapshot(true);
  CHECK_EQ(s.seen, 6);
  CHECK_EQ(s.f_in, 3);
  CHECK_EQ(static_cast<int64_t>(s.inputs.size()), 4 * 3);
  CHECK_EQ(b->prediction_log().size(), 2);
  b->Shutdown(true);
}

// ================================ backends that normalize themselves (GPU path) ==================

namespace {

// A host stand-in for the GPU executor: normalizes the staged raw rows itself, then sums them.
// Fails the batches listed in `fail_calls` (0-based, counted over all instances).
class StagingBackend final : public mlserve::Backend {
 public:
  explicit StagingBackend(std::set<int> fail_calls = {}) : fail_calls_(std::move(fail_calls)) {}
  void Execute(const float*, int64_t, int64_t, BatchOutput*) override {
    host_calls_.fetch_add(1);  // must never happen: the batcher uses the executors
  }
  std::string Name() const override { return "staging"; }
  std::unique_ptr<mlserve::RawBatchExecutor> NewExecutor(const FeaturePlan& plan, int32_t instance,
                                                         int64_t max_rows) override;
  std::atomic<int> executors_made_{0};
  std::atomic<int> host_calls_{0};
  std::atomic<int> calls_{0};
  std::set<int> fail_calls_;
};

class StagingExecutor final : public mlserve::RawBatchExecutor {
 public:
  StagingExecutor(const FeaturePlan& plan, StagingBackend& backend, int64_t max_rows)
      : plan_(plan), backend_(backend), staging_(static_cast<size_t>(max_rows * plan.f_in())) {}
  float* Staging(int64_t) override { return staging_.data(); }
  void Run(int64_t n, bool histograms, BatchOutput* out) override {
    const int call = backend_.calls_.fetch_add(1);
    if (backend_.fail_calls_.count(call)) {
      throw mlserve::Error(ErrorCode::kUnavailable, "device lost in call " + std::to_string(call));
    }
    std::vector<float> norm(static_cast<size_t>(n * plan_.f_out()));
    plan_.Transform(staging_.data(), n, plan_.f_in(), norm.data(), histograms);
    rowsum_->Execute(norm.data(), n, plan_.f_out(), out);
    runs_.fetch_add(1);
  }
  void AddStats(mlserve::ExecutorStats* stats) const override {
    stats->normalize_kernel = "host";
    stats->batches += runs_.load();
  }

 private:
  const FeaturePlan& plan_;
  StagingBackend& backend_;
  std::atomic<int64_t> runs_{0};
  std::vector<float> staging_;
  std::unique_ptr<mlserve::Backend> rowsum_ = mlserve::MakeBuiltinBackend("rowsum");
};

std::unique_ptr<mlserve::RawBatchExecutor> StagingBackend::NewExecutor(const FeaturePlan& plan,
                                                                        int32_t /*instance*/,
                                                                        int64_t max_rows) {
  executors_made_.fetch_add(1);
  return std::make_unique<StagingExecutor>(plan, *this, max_rows);
}

class NoExecutorBackend final : public mlserve::Backend {
 public:
  void Execute(const float*, int64_t, int64_t, BatchOutput*) override {}
  std::string Name() const override { return "no-gpu"; }
  std::unique_ptr<mlserve::RawBatchExecutor> NewExecutor(const FeaturePlan&, int32_t instance,
                                                         int64_t) override {
    if (instance == 1) throw mlserve::Error(ErrorCode::kUnavailable, "no usable GPU in test");
    return std::make_unique<StagingExecutor>(*plan_, backend_, 4);
  }

 private:
  std::shared_ptr<const FeaturePlan> plan_ = BatcherPlan();
  StagingBackend backend_;
};

}  // namespace

TEST(BatcherExecutorPathGathersRawRowsPerInstance) {
  BatcherConfig config;
  config.max_batch_size = 16;
  config.max_queue_delay_us = 0;
  config.instance_count = 2;
  auto backend = std::make_unique<StagingBackend>(std::set<int>{1});
  StagingBackend* raw = backend.get();
  auto b = MakeBatcher(config, std::move(backend));
  CHECK_EQ(raw->executors_made_.load(), 2);
  RunThreeHeldRequests(*b);
  // Call 1 fails: only that batch, with the executor's code; the next one succeeds.
  CheckFailed(*SubmitTagged(*b, 1, 40.0f).request, ErrorCode::kUnavailable, "device lost in call 1");
  CheckDone(SubmitTagged(*b, 5, 50.0f));
  b->Shutdown(true);
  CHECK_EQ(raw->host_calls_.load(), 0);
  CHECK_EQ(b->Stats().completed, 4);
  CHECK_EQ(b->Stats().failed, 1);
  CHECK_EQ(b->plan().Snapshot(false).rows, 9 + 5);  // the executor counted the histograms
  // The executors' own counters, summed over both instances: the batches that ran to the end.
  const mlserve::BatcherStats stats = b->Stats();
  CHECK_EQ(stats.executors, 2);
  CHECK(stats.executor.normalize_kernel == "host");
  CHECK_EQ(stats.executor.batches, stats.batches - 1);
}

TEST(BatcherExecutorCreationFailureReachesTheCaller) {
  BatcherConfig config;
  config.instance_count = 3;
  CHECK_THROWS_CODE(MakeBatcher(config, std::make_unique<NoExecutorBackend>()),
                    ErrorCode::kUnavailable, {"no usable GPU in test"});
}

TEST(CudaBackendWithoutAGpuIsUnavailable) {
  // The sanitizer build has no CUDA; a CUDA build on a machine without a GPU answers the same.
  auto model = mlserve::MakeBuiltinDeviceModel("normalize-cuda");
  CHECK(model != nullptr);
  CHECK(mlserve::MakeBuiltinDeviceModel("no-such-model") == nullptr);
  BatcherConfig config;
  CHECK_THROWS_CODE(
      MakeBatcher(config, std::make_unique<mlserve::CudaBackend>(std::move(model),
                                                                 mlserve::CudaBackendOptions{})),
      ErrorCode::kUnavailable, {"CUDA"});
}

// ---- feature store: the LMDB layer and the batched record reads/writes --------------------------

namespace lmdb_tests {

using mlserve::features::KeyBatch;
using mlserve::features::LmdbCursor;
using mlserve::features::LmdbEnv;
using mlserve::features::LmdbOptions;
using mlserve::features::LmdbTxn;
using mlserve::features::RecordBytes;
using mlserve::features::RecordOutputs;
using mlserve::features::RowStatus;

// A fresh directory for one environment, removed (with data.mdb and lock.mdb) at the end.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/mlserve-lmdb-test-XXXXXX";
    const char* made = mkdtemp(tmpl);
    if (made == nullptr) throw std::runtime_error("mkdtemp failed");
    path = made;
  }
  ~TempDir() {
    std::remove((path + "/data.mdb").c_str());
    std::remove((path + "/lock.mdb").c_str());
    rmdir(path.c_str());
  }
};

// A 2-column record: event_ts, created_ts, values, null bitmap, padding (records.py).
std::string Record(int64_t event_ts, int64_t created_ts, float a, float b, uint8_t nulls = 0) {
  std::string rec(RecordBytes(2), '\0');
  std::memcpy(&rec[0], &event_ts, 8);
  std::memcpy(&rec[8], &created_ts, 8);
  std::memcpy(&rec[16], &a, 4);
  std::memcpy(&rec[20], &b, 4);
  rec[24] = static_cast<char>(nulls);
  return rec;
}

std::string Key(int64_t v) {
  std::string key(mlserve::features::kInt64KeyBytes, '\0');
  mlserve::features::EncodeInt64Key(v, &key[0]);
  return key;
}

LmdbOptions Options(size_t map_size_bytes) {
  LmdbOptions options;
  options.map_size_bytes = map_size_bytes;
  return options;
}

// A fresh environment in a directory of its own, removed after the environment closes.
struct TestEnv {
  TempDir dir;
  LmdbEnv env;
  explicit TestEnv(size_t map_size_bytes = size_t{16} << 20)
      : env(dir.path, Options(map_size_bytes)) {}
};

struct Outputs {
  std::vector<float> values;
  std::vector<int8_t> status;
  std::vector<int64_t> event_ts;
  explicit Outputs(size_t n) : values(2 * n), status(n), event_ts(n) {}
  RecordOutputs View() { return {values.data(), status.data(), event_ts.data()}; }
};

}  // namespace lmdb_tests

TEST(LmdbKeyEncodingRecordSizeAndCutoff) {
  using namespace lmdb_tests;
  const std::string k = Key(42);
  const unsigned char want[9] = {0x01, 0x80, 0, 0, 0, 0, 0, 0, 0x2a};
  CHECK(std::memcmp(k.data(), want, 9) == 0);
  const unsigned char minus_one[9] = {0x01, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  CHECK(std::memcmp(Key(-1).data(), minus_one, 9) == 0);
  CHECK(Key(-5) < Key(3) && Key(INT64_MIN) < Key(INT64_MAX));  // byte order = numeric order
  CHECK_EQ(RecordBytes(2), size_t{32});
  CHECK_EQ(RecordBytes(3), size_t{32});
  CHECK_EQ(RecordBytes(9), size_t{56});
  CHECK_EQ(RecordBytes(0), size_t{16});
  CHECK_EQ(mlserve::features::ExpiryCutoffNs(100, 30), int64_t{70});
  CHECK_EQ(mlserve::features::ExpiryCutoffNs(INT64_MIN + 5, 10), INT64_MIN);
  CHECK_EQ(mlserve::features::ExpiryCutoffNs(INT64_MAX - 5, -10), INT64_MAX);
}

TEST(LmdbEnvTransactionsCursorAndErrors) {
  using namespace lmdb_tests;
  TestEnv test;
  LmdbEnv& env = test.env;
  CHECK(!env.OpenDb("absent", /*create=*/false).has_value());
  const auto dbi = env.OpenDb("view/t/v1", /*create=*/true);
  CHECK(dbi.has_value());
  CHECK(env.OpenDb("view/t/v1", false) == dbi);  // the lasting handle, cached
  {
    LmdbTxn txn(env, /*write=*/true);
    txn.Put(*dbi, "b", "2");
    txn.Put(*dbi, "a", "1");
    txn.Put(*dbi, "c", "3");
    CHECK(txn.Delete(*dbi, "c"));
    CHECK(!txn.Delete(*dbi, "zz"));
    // Close refuses while a transaction is open.
    CHECK_THROWS_CODE(env.Close(), ErrorCode::kInvalidInput, {"transaction"});
    txn.Commit();
    CHECK(!txn.open());
    CHECK_THROWS_CODE(txn.Get(*dbi, "a"), ErrorCode::kInvalidInput, {"ended"});
  }
  {
    LmdbTxn aborted(env, true);
    aborted.Put(*dbi, "x", "never");
  }  // aborted by the destructor
  LmdbTxn read(env, /*write=*/false);
  CHECK(read.Get(*dbi, "a") == std::optional<std::string_view>("1"));
  CHECK(!read.Get(*dbi, "x").has_value());
  CHECK_THROWS_CODE(read.Put(*dbi, "y", "1"), ErrorCode::kInvalidInput, {"mdb_put"});
  std::vector<std::string> seen;
  {
    LmdbCursor cursor(read, *dbi);
    std::string_view k, v;
    while (cursor.Next(&k, &v)) seen.push_back(std::string(k) + "=" + std::string(v));
  }
  CHECK(seen == (std::vector<std::string>{"a=1", "b=2"}));
  read.Abort();  // kept for reuse: the next read transaction renews it, on a fresh snapshot
  {
    LmdbTxn txn(env, true);
    txn.Put(*dbi, "d", "4");
    txn.Commit();
  }
  for (int i = 0; i < 40; ++i) {  // more than are kept
    std::vector<std::unique_ptr<LmdbTxn>> readers;
    for (int j = 0; j < i % 20; ++j) readers.push_back(std::make_unique<LmdbTxn>(env, false));
    for (const auto& r : readers) CHECK(r->Get(*dbi, "d") == std::optional<std::string_view>("4"));
  }
  CHECK_EQ(env.ReaderCheck(), 0);
  env.Close();
  CHECK(env.closed());
  CHECK_THROWS_CODE(LmdbTxn(env, false), ErrorCode::kInvalidInput, {"closed"});

  LmdbOptions read_only = Options(size_t{16} << 20);
  read_only.read_only = true;
  LmdbEnv ro(test.dir.path, read_only);
  CHECK_THROWS_CODE(LmdbTxn(ro, true), ErrorCode::kInvalidInput, {"read-only"});
  CHECK(ro.OpenDb("view/t/v1", false).has_value());
  CHECK_THROWS_CODE(LmdbEnv("/nonexistent/mlserve/dir", read_only), ErrorCode::kInvalidInput,
                    {"mdb_env_open", "/nonexistent/mlserve/dir"});
}

TEST(LmdbMapFullIsUnavailable) {
  using namespace lmdb_tests;
  TestEnv test(size_t{256} << 10);  // 64 pages
  LmdbEnv& env = test.env;
  const auto dbi = env.OpenDb("big", true);
  LmdbTxn txn(env, true);
  const std::string value(1000, 'v');
  auto fill = [&] {
    for (int i = 0; i < 10000; ++i) txn.Put(*dbi, Key(i), value);
  };
  CHECK_THROWS_CODE(fill(), ErrorCode::kUnavailable, {"MDB_MAP_FULL"});
}

// mdb_get_batch (third_party/lmdb/mdb_batch.c) answers exactly what mdb_get answers per key:
// present, absent and empty keys, duplicates, overflow values, a 3-level tree, an empty and a
// one-page database, batch sizes around its group of 16, and the per-key fallbacks (write
// transaction, integer keys).
TEST(LmdbGetBatchEqualsGetPerKey) {
  using namespace lmdb_tests;
  TestEnv test(size_t{256} << 20);
  LmdbEnv& env = test.env;
  std::mt19937_64 rng(7);
  auto random_key = [&rng]() {
    std::string key(1 + rng() % 40, '\0');
    for (char& c : key) c = static_cast<char>(rng() % 4 == 0 ? 0 : rng() % 256);  // many ties
    return key;
  };
  const auto big = env.OpenDb("big", true), one = env.OpenDb("one", true),
             empty = env.OpenDb("empty", true);
  std::vector<std::string> stored;
  MDB_dbi ints = 0;
  {
    LmdbTxn txn(env, true);
    for (int i = 0; i < 60000; ++i) {
      std::string key = random_key();
      // mostly small values; every 500th is larger than half a page (an overflow page)
      std::string value(i % 500 == 0 ? 5000 + rng() % 3000 : rng() % 40, '\0');
      for (char& c : value) c = static_cast<char>(rng());
      txn.Put(*big, key, value);
      stored.push_back(key);
    }
    txn.Put(*one, "a", "1");
    txn.Put(*one, "c", "3");
    CHECK_EQ(mdb_dbi_open(txn.get(), "ints", MDB_CREATE | MDB_INTEGERKEY, &ints), 0);
    for (size_t v = 0; v < 5000; v += 3) {
      MDB_val k{sizeof v, &v}, d{sizeof v, &v};
      CHECK_EQ(mdb_put(txn.get(), ints, &k, &d, 0), 0);
    }
    txn.Commit();
  }
  {
    LmdbTxn read(env, false);
    MDB_stat stat;
    CHECK_EQ(mdb_stat(read.get(), *big, &stat), 0);
    CHECK(stat.ms_depth >= 3);
    CHECK(stat.ms_overflow_pages > 0);
  }
  // Compares one batch with mdb_get per key, in transaction `txn`.
  auto check_batch = [](MDB_txn* txn, MDB_dbi dbi, std::vector<std::string> keys) {
    const size_t n = keys.size();
    std::vector<MDB_val> mkeys(n), got(n, MDB_val{0, nullptr});
    std::vector<int> rcs(n, -12345);
    for (size_t j = 0; j < n; ++j) mkeys[j] = {keys[j].size(), keys[j].data()};
    CHECK_EQ(mdb_get_batch(txn, dbi, n, mkeys.data(), got.data(), rcs.data()), 0);
    for (size_t j = 0; j < n; ++j) {
      MDB_val k{keys[j].size(), keys[j].data()}, want{0, nullptr};
      const int rc = mdb_get(txn, dbi, &k, &want);
      CHECK_EQ(rcs[j], rc);
      if (rc == 0) {
        CHECK_EQ(got[j].mv_size, want.mv_size);
        CHECK(got[j].mv_data == want.mv_data);  // the same bytes in the map, not a copy
      }
    }
  };
  LmdbTxn read(env, false);
  for (size_t n : {size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{17}, size_t{64},
                   size_t{1000}}) {
    std::vector<std::string> keys;
    for (size_t j = 0; j < n; ++j) {
      const uint64_t pick = rng() % 10;
      if (pick < 6) {
        keys.push_back(stored[rng() % stored.size()]);
      } else if (pick < 8) {
        keys.push_back(random_key());  // mostly absent
      } else if (pick == 8 && !keys.empty()) {
        keys.push_back(keys[rng() % keys.size()]);  // a duplicate in the batch
      } else {
        keys.push_back(rng() % 2 ? std::string() : stored[rng() % stored.size()] + "x");
      }
    }
    check_batch(read.get(), *big, keys);
    check_batch(read.get(), *one, keys);
    check_batch(read.get(), *one, {"a", "b", "c", "", "d", "A"});
    check_batch(read.get(), *empty, keys);
  }
  // integer keys: the per-key fallback
  std::vector<std::string> int_keys;
  for (size_t v : {size_t{0}, size_t{3}, size_t{4}, size_t{4998}, size_t{4999}}) {
    int_keys.emplace_back(reinterpret_cast<const char*>(&v), sizeof v);
  }
  check_batch(read.get(), ints, int_keys);
  read.Abort();
  {  // a write transaction sees its own uncommitted puts (the per-key fallback)
    LmdbTxn txn(env, true);
    txn.Put(*big, "fresh-key", "v");
    check_batch(txn.get(), *big, {"fresh-key", stored[0], "absent-key"});
    txn.Abort();
  }
  MDB_val k{1, const_cast<char*>("a")}, d;
  int rc = 0;
  LmdbTxn again(env, false);
  CHECK_EQ(mdb_get_batch(again.get(), 9999, 1, &k, &d, &rc), EINVAL);  // no such database
  CHECK_EQ(mdb_get_batch(again.get(), *one, 1, nullptr, &d, &rc), EINVAL);
}

TEST(LmdbReadRecordsMissingExpiredNullAndWrongSize) {
  using namespace lmdb_tests;
  TestEnv test;
  LmdbEnv& env = test.env;
  const auto dbi = env.OpenDb("view/t/v1", true);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Keys 1, 2, 3 by int64 value; key 2's second column is null; key 7 is stored as bytes.
  const std::vector<int64_t> ids = {1, 2, 3};
  const std::string records = Record(100, 1, 1.5f, 2.5f) + Record(70, 1, 3.0f, nan, 0b10) +
                              Record(69, 1, 4.0f, 5.0f);
  {
    LmdbTxn txn(env, true);
    KeyBatch keys{ids.size(), ids.data(), nullptr, nullptr};
    const auto done = mlserve::features::PutNewerRecords(txn, *dbi, keys, records.data(),
                                                         RecordBytes(2), 0, ids.size());
    CHECK_EQ(done.first, size_t{3});
    txn.Commit();
  }
  // now 100, ttl 30: cutoff 70 is inclusive (PRESENT), 69 is EXPIRED; 5 is MISSING.
  const std::vector<int64_t> ask = {3, 5, 1, 2};
  Outputs out(ask.size());
  mlserve::features::ReadRecords(env, *dbi, KeyBatch{ask.size(), ask.data(), nullptr, nullptr}, 2,
                                 mlserve::features::ExpiryCutoffNs(100, 30), out.View(), "db");
  CHECK(out.status == (std::vector<int8_t>{2, 1, 0, 0}));
  CHECK(out.event_ts == (std::vector<int64_t>{69, 0, 100, 70}));
  CHECK(std::isnan(out.values[0]) && std::isnan(out.values[1]));  // expired
  CHECK(std::isnan(out.values[2]) && std::isnan(out.values[3]));  // missing
  CHECK_EQ(out.values[4], 1.5f);
  CHECK_EQ(out.values[5], 2.5f);
  CHECK_EQ(out.values[6], 3.0f);
  CHECK(std::isnan(out.values[7]));  // null
  // Without a cutoff nothing expires; encoded keys read the same records.
  const std::string blob = Key(3) + Key(1);
  const std::vector<size_t> offsets = {0, 9, 18};
  Outputs by_bytes(2);
  mlserve::features::ReadRecords(env, *dbi, KeyBatch{2, nullptr, blob.data(), offsets.data()}, 2,
                                 std::nullopt, by_bytes.View(), "db");
  CHECK(by_bytes.status == (std::vector<int8_t>{0, 0}));
  CHECK_EQ(by_bytes.values[0], 4.0f);
  CHECK_EQ(by_bytes.values[2], 1.5f);

  // An older record never replaces a newer one; ties on (event_ts, created_ts) replace.
  {
    LmdbTxn txn(env, true);
    const std::vector<int64_t> again = {1, 2, 3};
    const std::string older = Record(99, 9, 0, 0) + Record(70, 1, 8.0f, 8.0f) +
                              Record(69, 2, 9.0f, 9.0f);
    const auto done = mlserve::features::PutNewerRecords(
        txn, *dbi, KeyBatch{3, again.data(), nullptr, nullptr}, older.data(), RecordBytes(2), 0, 3);
    CHECK_EQ(done.first, size_t{2});
    CHECK_EQ(done.second, size_t{1});
    txn.Put(*dbi, Key(9), "short");
    txn.Commit();
  }
  Outputs after(3);
  const std::vector<int64_t> check = {1, 2, 3};
  mlserve::features::ReadRecords(env, *dbi, KeyBatch{3, check.data(), nullptr, nullptr}, 2,
                                 std::nullopt, after.View(), "db");
  CHECK_EQ(after.values[0], 1.5f);  // kept
  CHECK_EQ(after.values[2], 8.0f);  // tie: replaced
  CHECK_EQ(after.values[4], 9.0f);  // newer created_ts
  const std::vector<int64_t> bad = {1, 9};
  Outputs wrong(2);
  CHECK_THROWS_CODE(
      mlserve::features::ReadRecords(env, *dbi, KeyBatch{2, bad.data(), nullptr, nullptr}, 2,
                                     std::nullopt, wrong.View(), "online database of 't/1'"),
      ErrorCode::kInternal, {"online database of 't/1'", "wrong size", "32", "row 1", "5"});
  // A record written for another column count is the wrong size too.
  Outputs three(1);
  CHECK_THROWS_CODE(
      mlserve::features::ReadRecords(env, *dbi, KeyBatch{1, bad.data(), nullptr, nullptr}, 9,
                                     std::nullopt, three.View(), "db"),
      ErrorCode::kInternal, {"expected 56 bytes"});
  CHECK_EQ(static_cast<int>(RowStatus::kExpired), 2);
}

// ---- the server's msgpack lane --------------------------------------------------------------

namespace lane_tests {

// {"id": "r1", "parameters": {"priority": 2, "timeout": null}, "inputs": [{"name": "input",
// "datatype": "FP32", "shape": [2, 3], "data": <24 bytes>}]}, packed by hand.
std::string LaneBody(const float* x) {
  std::string b;
  auto str = [&b](const std::string& s) {
    b.push_back(static_cast<char>(0xa0 | s.size()));
    b += s;
  };
  b.push_back(static_cast<char>(0x83));
  str("id");
  str("r1");
  str("parameters");
  b.push_back(static_cast<char>(0x82));
  str("priority");
  b.push_back(2);
  str("timeout");
  b.push_back(static_cast<char>(0xc0));
  str("inputs");
  b.push_back(static_cast<char>(0x91));
  b.push_back(static_cast<char>(0x84));
  str("name");
  str("input");
  str("datatype");
  str("FP32");
  str("shape");
  b.push_back(static_cast<char>(0x92));
  b.push_back(2);
  b.push_back(3);
  str("data");
  b.push_back(static_cast<char>(0xc4));
  b.push_back(24);
  b.append(reinterpret_cast<const char*>(x), 24);
  return b;
}

}  // namespace lane_tests

// The lane parses its request and declines every truncation and (under ASan) never reads out
// of bounds, whatever byte is changed. Its agreement with the Python lane is tested in
// tests/unit/test_codecs.py.
TEST(MsgpackLaneParsesItsRequestAndSurvivesDamage) {
  using mlserve::server::FastRequest;
  using mlserve::server::MsgpackLane;
  const float x[6] = {1.5f, -2.0f, 0.0f, 3.25f, 1e30f, -7.0f};
  const std::string body = lane_tests::LaneBody(x);
  const MsgpackLane lane(3, {false, false, false}, "H", "I", "O", "D");
  FastRequest req;
  std::vector<float> rows;
  CHECK(lane.Parse(body, &req, &rows));
  CHECK_EQ(req.rows, int64_t{2});
  CHECK(req.has_id && req.id == "r1");
  CHECK(req.has_priority && req.priority == 2);
  CHECK(!req.has_timeout);
  CHECK(rows.size() == 6 && std::memcmp(rows.data(), x, sizeof x) == 0);
  CHECK(!MsgpackLane(4, {false, false, false, false}, "", "", "", "").Parse(body, &req, &rows));
  const float with_nan[6] = {1.0f, NAN, 2.0f, 3.0f, 4.0f, 5.0f};
  const std::string nan_body = lane_tests::LaneBody(with_nan);
  CHECK(lane.Parse(nan_body, &req, &rows));  // column 1 nullable
  CHECK(!MsgpackLane(3, {false, true, false}, "", "", "", "").Parse(nan_body, &req, &rows));
  for (size_t cut = 0; cut < body.size(); ++cut) {
    // copied: ASan sees a read past the end of the smaller buffer
    const std::vector<char> prefix(body.begin(), body.begin() + static_cast<long>(cut));
    CHECK(!lane.Parse(std::string_view(prefix.data(), prefix.size()), &req, &rows));
  }
  std::mt19937 rng(3);
  for (size_t at = 0; at < body.size(); ++at) {
    for (int v = 0; v < 256; v += 1 + static_cast<int>(rng() % 7)) {
      std::vector<char> damaged(body.begin(), body.end());
      damaged[at] = static_cast<char>(v);
      (void)lane.Parse(std::string_view(damaged.data(), damaged.size()), &req, &rows);
    }
  }
  // The response: head_with_id + fixstr id + output + [2, 1] + data key + bin8 + 8 bytes.
  const std::string out = lane.Encode(x, 2, 1, true, "r1");
  CHECK(out.substr(0, 6) == std::string("I\xa2r1O\x92", 6));
  CHECK(out.substr(6, 5) == std::string("\x02\x01" "D\xc4\x08", 5));
  CHECK(out.size() == 11 + 8 && std::memcmp(out.data() + 11, x, 8) == 0);
  CHECK(lane.Encode(x, 1, 3, false, "").substr(0, 2) == "HO");
}

int main(int argc, char** argv) { return test_harness::RunAllTests(argc > 1 ? argv[1] : nullptr); }
