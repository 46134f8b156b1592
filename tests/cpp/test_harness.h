// A minimal, self-contained unit-test harness for the C++ core tests (no framework download).
//
// TEST(Name) { ... } registers a test at static-initialization time; CHECK* macros record a
// failure (file:line and the expression) and let the test go on; an exception escaping a test
// fails it. RunAllTests() runs every test whose name contains the optional filter, logs each test
// (RUN / OK with its time / FAILED) to stderr, prints exactly one summary line `N passed, M failed`
// to stdout, and returns the process exit status (non-zero when anything failed or nothing ran).
//
// Thread-safety: CHECK* may be used from helper threads a test starts (failures are counted
// atomically and printed under a mutex); tests themselves run one after another.
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

namespace test_harness {

using TestFn = void (*)();

struct TestCase {
  const char* name;
  TestFn fn;
};

inline std::vector<TestCase>& Registry() {
  static std::vector<TestCase> tests;
  return tests;
}

struct Registrar {
  Registrar(const char* name, TestFn fn) { Registry().push_back({name, fn}); }
};

inline std::atomic<int>& FailedChecks() {
  static std::atomic<int> n{0};
  return n;
}

inline void ReportFailure(const char* file, int line, const std::string& what) {
  static std::mutex mu;
  FailedChecks().fetch_add(1);
  std::lock_guard<std::mutex> lock(mu);
  std::fprintf(stderr, "  %s:%d: CHECK failed: %s\n", file, line, what.c_str());
}

template <typename A, typename B>
std::string Describe(const char* a_expr, const char* b_expr, const A& a, const B& b) {
  std::ostringstream s;
  s << a_expr << " == " << b_expr << " (" << a << " vs " << b << ")";
  return s.str();
}

// Runs every registered test whose name contains `filter` (all when null). Returns the exit code.
inline int RunAllTests(const char* filter) {
  int passed = 0, failed = 0;
  for (const TestCase& t : Registry()) {
    if (filter != nullptr && std::strstr(t.name, filter) == nullptr) continue;
    std::fprintf(stderr, "[ RUN  ] %s\n", t.name);
    const auto t0 = std::chrono::steady_clock::now();
    const int before = FailedChecks().load();
    bool threw = false;
    std::string what;
    try {
      t.fn();
    } catch (const std::exception& e) {
      threw = true;
      what = e.what();
    } catch (...) {
      threw = true;
      what = "unknown exception";
    }
    if (threw) std::fprintf(stderr, "  uncaught exception: %s\n", what.c_str());
    if (threw || FailedChecks().load() != before) {
      ++failed;
      std::fprintf(stderr, "[FAILED] %s\n", t.name);
    } else {
      ++passed;
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "[  OK  ] %s (%lld ms)\n", t.name, static_cast<long long>(ms));
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  std::fflush(stdout);
  return (failed == 0 && passed > 0) ? 0 : 1;
}

}  // namespace test_harness

#define TEST(name)                                                              \
  static void name();                                                           \
  static const ::test_harness::Registrar name##_registrar(#name, &name);        \
  static void name()

#define CHECK(cond)                                                             \
  do {                                                                          \
    if (!(cond)) ::test_harness::ReportFailure(__FILE__, __LINE__, #cond);      \
  } while (0)

#define CHECK_EQ(a, b)                                                          \
  do {                                                                          \
    const auto& check_a_ = (a);                                                 \
    const auto& check_b_ = (b);                                                 \
    if (!(check_a_ == check_b_)) {                                              \
      ::test_harness::ReportFailure(                                            \
          __FILE__, __LINE__, ::test_harness::Describe(#a, #b, check_a_, check_b_)); \
    }                                                                           \
  } while (0)

// |a - b| <= tol, NaN equal to NaN (the core passes NaN through on purpose).
#define CHECK_NEAR(a, b, tol)                                                   \
  do {                                                                          \
    const double check_a_ = static_cast<double>(a);                             \
    const double check_b_ = static_cast<double>(b);                             \
    const bool check_ok_ = (std::isnan(check_a_) && std::isnan(check_b_)) ||    \
                           std::fabs(check_a_ - check_b_) <= (tol);             \
    if (!check_ok_) {                                                           \
      ::test_harness::ReportFailure(                                            \
          __FILE__, __LINE__, ::test_harness::Describe(#a, #b, check_a_, check_b_)); \
    }                                                                           \
  } while (0)

// `expr` must throw mlserve::Error with `want_code` and a message containing every string of
// the braced list `needles`, e.g. CHECK_THROWS_CODE(f(), ErrorCode::kInvalidInput, {"'amount'"}).
#define CHECK_THROWS_CODE(expr, want_code, ...)                                      \
  do {                                                                          \
    bool check_thrown_ = false;                                                 \
    try {                                                                       \
      (void)(expr);                                                             \
    } catch (const ::mlserve::Error& check_e_) {                                       \
      check_thrown_ = true;                                                     \
      if (check_e_.code() != (want_code)) {                                                 \
        ::test_harness::ReportFailure(__FILE__, __LINE__,                       \
            std::string(#expr " threw code ") +                                 \
            std::to_string(static_cast<int>(check_e_.code())) + ": " + check_e_.what());      \
      }                                                                         \
      for (const std::string& needle : std::vector<std::string> __VA_ARGS__) {  \
        if (std::string(check_e_.what()).find(needle) == std::string::npos) {          \
          ::test_harness::ReportFailure(__FILE__, __LINE__,                     \
              std::string(#expr " message lacks '") + needle + "': " + check_e_.what()); \
        }                                                                       \
      }                                                                         \
    } catch (const std::exception& check_e_) {                                         \
      check_thrown_ = true;                                                     \
      ::test_harness::ReportFailure(__FILE__, __LINE__,                         \
          std::string(#expr " threw a non-mlserve exception: ") + check_e_.what());    \
    }                                                                           \
    if (!check_thrown_) {                                                       \
      ::test_harness::ReportFailure(__FILE__, __LINE__, #expr " did not throw"); \
    }                                                                           \
  } while (0)
