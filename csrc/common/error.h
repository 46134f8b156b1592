// Error type of the native core.
//
// Caller mistakes (bad plan, wrong shape, full queue, expired deadline...) throw mlserve::Error
// carrying an ErrorCode and a message that says what was wrong and what to do. The pybind layer
// translates each code to exactly one class of python/mlserve/errors.py (same order as BY_CODE
// there). Broken internal invariants are bugs: MLSERVE_CHECK aborts in debug builds only.
#pragma once

#include <cassert>
#include <stdexcept>
#include <string>

namespace mlserve {

enum class ErrorCode : int {
  kInvalidInput = 0,      // 400
  kModelNotFound = 1,     // 404
  kQueueFull = 2,         // 429
  kDeadlineExceeded = 3,  // 504
  kUnavailable = 4,       // 503
  kInternal = 5,          // 500
};

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

[[noreturn]] inline void ThrowInvalid(const std::string& message) {
  throw Error(ErrorCode::kInvalidInput, message);
}

}  // namespace mlserve

// Internal invariant: a bug if false. Checked in debug (and sanitizer) builds.
#define MLSERVE_CHECK(cond) assert(cond)
