// The msgpack fast lane of the inference server, in the core: the common one-row-matrix request
// is parsed, checked and submitted in one call, and its response is encoded when the request
// completes, with no Python object per field on the way in or out.
//
// The lane's request (docs/server_contract.md, "msgpack"): a map with the keys "inputs" and
// optionally "id" (a string or nil) and "parameters" (nil, or a map with optional integer
// "priority" and integer-or-nil "timeout"); "inputs" is an array of one map with exactly the keys
// "name" (a non-empty string), "datatype" ("FP32"), "shape" ([n, f_in] with n >= 1) and "data"
// (bin of 4 * n * f_in bytes: the rows, little-endian float32).
//
// Contract with the Python server (python/mlserve/server/codecs.py, fast_msgpack_rows): the
// lane accepts a subset of what the Python fast lane accepts, and for those bodies finds the same
// rows, id and parameters. Whatever it does not accept -- other shapes, duplicate keys, non-ASCII
// strings, float parameters, trailing bytes, invalid msgpack, NaN in a non-nullable column -- it
// declines, never raises: the Python path then serves the body or raises the precise error.
// The response is byte-identical to ServedVersion.msgpack_response (tested).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mlserve::server {

struct FastRequest {
  const char* data = nullptr;  // rows * f_in little-endian float32 inside the body (unaligned)
  int64_t rows = 0;
  bool has_id = false;
  std::string_view id;  // ASCII, inside the body
  bool has_priority = false;
  int64_t priority = 0;
  bool has_timeout = false;
  int64_t timeout_us = 0;
};

// Parses `body` as the lane's request for a model of `f_in` input columns; false: decline.
bool ParseFastRequest(std::string_view body, int64_t f_in, FastRequest* out);

class MsgpackLane {
 public:
  // non_nullable[j]: column j must not hold NaN (the lane declines such rows). The response
  // pieces are ServedVersion's cached ones: `head` (fixmap header and the name/version entries),
  // `head_with_id` (the same with one entry more, up to and including the packed "id" key),
  // `output` (the outputs entry up to its shape value) and `data_key` (packed "data").
  MsgpackLane(int64_t f_in, std::vector<bool> non_nullable, std::string head,
              std::string head_with_id, std::string output, std::string data_key);

  int64_t f_in() const { return f_in_; }

  // Parses `body` and copies its rows into `rows` (resized to rows * f_in); false: decline.
  bool Parse(std::string_view body, FastRequest* req, std::vector<float>* rows) const;

  // The response body for `rows` x `width` outputs `y` (row-major) and the request's id.
  std::string Encode(const float* y, int64_t rows, int64_t width, bool has_id,
                     std::string_view id) const;

 private:
  int64_t f_in_;
  std::vector<bool> non_nullable_;
  bool any_non_nullable_;
  std::string head_, head_with_id_, output_, data_key_;
};

}  // namespace mlserve::server
