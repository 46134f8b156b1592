#include "server/msgpack_lane.h"

#include <cmath>
#include <cstring>
#include <utility>

namespace mlserve::server {
namespace {

// A bounds-checked reader of the msgpack subset the lane accepts. Every Read* returns false on
// anything else (the caller declines), never reads past the end.
class Reader {
 public:
  explicit Reader(std::string_view s)
      : p_(reinterpret_cast<const uint8_t*>(s.data())), end_(p_ + s.size()) {}

  bool done() const { return p_ == end_; }

  bool Peek(uint8_t* b) const {
    if (p_ == end_) return false;
    *b = *p_;
    return true;
  }

  // A map header: its entry count.
  bool ReadMap(uint32_t* n) { return ReadHeader(0x80, 0xde, n); }
  // An array header: its length.
  bool ReadArray(uint32_t* n) { return ReadHeader(0x90, 0xdc, n); }

  // A str (not bin): its bytes.
  bool ReadStr(std::string_view* s) { return ReadSized(true, 0xd9, s); }
  // A bin (not str): its bytes.
  bool ReadBin(std::string_view* s) { return ReadSized(false, 0xc4, s); }

  // An integer of any msgpack int format that fits int64 (not a bool, not a float).
  bool ReadInt(int64_t* v) {
    uint8_t b;
    if (!Take(&b)) return false;
    if (b <= 0x7f) {
      *v = b;
      return true;
    }
    if (b >= 0xe0) {
      *v = static_cast<int8_t>(b);
      return true;
    }
    uint64_t u;
    switch (b) {
      case 0xcc: case 0xcd: case 0xce: case 0xcf: {  // uint 8/16/32/64
        if (!BigEndian64(1u << (b - 0xcc), &u)) return false;
        if (u > static_cast<uint64_t>(INT64_MAX)) return false;
        *v = static_cast<int64_t>(u);
        return true;
      }
      case 0xd0: case 0xd1: case 0xd2: case 0xd3: {  // int 8/16/32/64, two's complement
        const unsigned size = 1u << (b - 0xd0);
        if (!BigEndian64(size, &u)) return false;
        if (size < 8 && (u >> (8 * size - 1)) & 1) u |= ~uint64_t{0} << (8 * size);  // sign
        *v = static_cast<int64_t>(u);
        return true;
      }
      default:
        return false;
    }
  }

  bool ReadNil() {
    if (p_ == end_ || *p_ != 0xc0) return false;
    ++p_;
    return true;
  }

 private:
  // A map or array header: fix (4-bit count under `fix`), 16- or 32-bit (`tag16`, tag16 + 1).
  bool ReadHeader(uint8_t fix, uint8_t tag16, uint32_t* n) {
    uint8_t b;
    if (!Take(&b)) return false;
    if ((b & 0xf0) == fix) {
      *n = b & 0x0f;
      return true;
    }
    if (b == tag16) return BigEndian(2, n);
    if (b == tag16 + 1) return BigEndian(4, n);
    return false;
  }
  // A str or bin: fixstr (when `fixstr`), or 8/16/32-bit length (`tag8` .. tag8 + 2).
  bool ReadSized(bool fixstr, uint8_t tag8, std::string_view* s) {
    uint8_t b;
    if (!Take(&b)) return false;
    uint32_t n;
    if (fixstr && (b & 0xe0) == 0xa0) {
      n = b & 0x1f;
    } else if (b >= tag8 && b <= tag8 + 2) {
      if (!BigEndian(1u << (b - tag8), &n)) return false;
    } else {
      return false;
    }
    return Bytes(n, s);
  }
  bool Take(uint8_t* b) {
    if (p_ == end_) return false;
    *b = *p_++;
    return true;
  }
  bool BigEndian(unsigned size, uint32_t* n) {
    uint64_t u;
    if (!BigEndian64(size, &u)) return false;
    *n = static_cast<uint32_t>(u);
    return true;
  }
  bool BigEndian64(unsigned size, uint64_t* u) {
    if (static_cast<size_t>(end_ - p_) < size) return false;
    uint64_t v = 0;
    for (unsigned i = 0; i < size; ++i) v = v << 8 | p_[i];
    p_ += size;
    *u = v;
    return true;
  }
  bool Bytes(uint32_t n, std::string_view* s) {
    if (static_cast<size_t>(end_ - p_) < n) return false;
    *s = std::string_view(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return true;
  }

  const uint8_t* p_;
  const uint8_t* end_;
};

bool Ascii(std::string_view s) {
  for (unsigned char c : s) {
    if (c >= 0x80) return false;
  }
  return true;
}

// Reads the map key `key` of a map whose keys must be distinct members of `allowed` (a bit per
// member, in order); `seen` collects the bits. Returns the member's index, or -1 (decline).
int ReadKey(Reader& r, std::initializer_list<std::string_view> allowed, unsigned* seen) {
  std::string_view key;
  if (!r.ReadStr(&key)) return -1;
  int i = 0;
  for (std::string_view a : allowed) {
    if (key == a) {
      if (*seen & (1u << i)) return -1;  // a duplicate key: Python keeps the last; decline
      *seen |= 1u << i;
      return i;
    }
    ++i;
  }
  return -1;
}

bool ReadInput(Reader& r, int64_t f_in, FastRequest* out) {
  uint32_t n_inputs, n_fields;
  if (!r.ReadArray(&n_inputs) || n_inputs != 1 || !r.ReadMap(&n_fields) || n_fields != 4) {
    return false;
  }
  unsigned seen = 0;
  std::string_view data;
  for (uint32_t k = 0; k < 4; ++k) {
    switch (ReadKey(r, {"name", "datatype", "shape", "data"}, &seen)) {
      case 0: {
        std::string_view name;
        if (!r.ReadStr(&name) || name.empty() || !Ascii(name)) return false;
        break;
      }
      case 1: {
        std::string_view datatype;
        if (!r.ReadStr(&datatype) || datatype != "FP32") return false;
        break;
      }
      case 2: {
        uint32_t dims;
        int64_t n, width;
        if (!r.ReadArray(&dims) || dims != 2 || !r.ReadInt(&n) || !r.ReadInt(&width)) return false;
        if (n <= 0 || width != f_in) return false;
        out->rows = n;
        break;
      }
      case 3:
        if (!r.ReadBin(&data)) return false;
        break;
      default:
        return false;
    }
  }
  // 4 distinct keys of 4 allowed: all present. n * f_in * 4 cannot overflow: data is < 4 GiB.
  if (f_in <= 0 || out->rows > static_cast<int64_t>(data.size()) ||
      static_cast<uint64_t>(data.size()) != 4 * static_cast<uint64_t>(out->rows) *
                                                static_cast<uint64_t>(f_in)) {
    return false;
  }
  out->data = data.data();
  return true;
}

bool ReadParameters(Reader& r, FastRequest* out) {
  if (r.ReadNil()) return true;
  uint32_t n;
  if (!r.ReadMap(&n) || n > 2) return false;
  unsigned seen = 0;
  for (uint32_t k = 0; k < n; ++k) {
    switch (ReadKey(r, {"priority", "timeout"}, &seen)) {
      case 0:
        if (!r.ReadInt(&out->priority)) return false;  // nil or a float: the Python path
        out->has_priority = true;
        break;
      case 1:
        if (r.ReadNil()) break;  // "timeout": None is the default timeout
        if (!r.ReadInt(&out->timeout_us)) return false;
        out->has_timeout = true;
        break;
      default:
        return false;
    }
  }
  return true;
}

void PackUint(uint64_t v, std::string* out) {
  if (v <= 0x7f) {
    out->push_back(static_cast<char>(v));
    return;
  }
  unsigned size;
  if (v <= 0xff) {
    out->push_back(static_cast<char>(0xcc));
    size = 1;
  } else if (v <= 0xffff) {
    out->push_back(static_cast<char>(0xcd));
    size = 2;
  } else if (v <= 0xffffffffu) {
    out->push_back(static_cast<char>(0xce));
    size = 4;
  } else {
    out->push_back(static_cast<char>(0xcf));
    size = 8;
  }
  for (unsigned i = size; i-- > 0;) out->push_back(static_cast<char>(v >> (8 * i)));
}

void PackLength(uint8_t tag8, uint64_t n, std::string* out) {  // tag8: str8 or bin8
  unsigned size;
  if (n <= 0xff) {
    out->push_back(static_cast<char>(tag8));
    size = 1;
  } else if (n <= 0xffff) {
    out->push_back(static_cast<char>(tag8 + 1));
    size = 2;
  } else {
    out->push_back(static_cast<char>(tag8 + 2));
    size = 4;
  }
  for (unsigned i = size; i-- > 0;) out->push_back(static_cast<char>(n >> (8 * i)));
}

}  // namespace

bool ParseFastRequest(std::string_view body, int64_t f_in, FastRequest* out) {
  *out = FastRequest{};
  Reader r(body);
  uint32_t n;
  if (!r.ReadMap(&n) || n < 1 || n > 3) return false;
  unsigned seen = 0;
  bool has_inputs = false;
  for (uint32_t k = 0; k < n; ++k) {
    switch (ReadKey(r, {"inputs", "id", "parameters"}, &seen)) {
      case 0:
        if (!ReadInput(r, f_in, out)) return false;
        has_inputs = true;
        break;
      case 1:
        if (r.ReadNil()) break;  // "id": None is no id
        if (!r.ReadStr(&out->id) || !Ascii(out->id)) return false;
        out->has_id = true;
        break;
      case 2:
        if (!ReadParameters(r, out)) return false;
        break;
      default:
        return false;
    }
  }
  return has_inputs && r.done();  // trailing bytes: msgpack's ExtraData, the Python path's error
}

MsgpackLane::MsgpackLane(int64_t f_in, std::vector<bool> non_nullable, std::string head,
                         std::string head_with_id, std::string output, std::string data_key)
    : f_in_(f_in),
      non_nullable_(std::move(non_nullable)),
      any_non_nullable_(false),
      head_(std::move(head)),
      head_with_id_(std::move(head_with_id)),
      output_(std::move(output)),
      data_key_(std::move(data_key)) {
  for (bool b : non_nullable_) any_non_nullable_ = any_non_nullable_ || b;
  non_nullable_.resize(static_cast<size_t>(f_in_ > 0 ? f_in_ : 0), false);
}

bool MsgpackLane::Parse(std::string_view body, FastRequest* req, std::vector<float>* rows) const {
  if (!ParseFastRequest(body, f_in_, req)) return false;
  const size_t count = static_cast<size_t>(req->rows) * static_cast<size_t>(f_in_);
  rows->resize(count);
  std::memcpy(rows->data(), req->data, 4 * count);  // the body's bytes are not float-aligned
  if (any_non_nullable_) {
    const float* x = rows->data();
    for (size_t i = 0; i < count; ++i) {
      if (std::isnan(x[i]) && non_nullable_[i % static_cast<size_t>(f_in_)]) return false;
    }
  }
  return true;
}

std::string MsgpackLane::Encode(const float* y, int64_t rows, int64_t width, bool has_id,
                                std::string_view id) const {
  const size_t bytes = 4 * static_cast<size_t>(rows) * static_cast<size_t>(width);
  std::string out;
  out.reserve(head_with_id_.size() + id.size() + output_.size() + data_key_.size() + bytes + 32);
  if (has_id) {
    out += head_with_id_;
    if (id.size() <= 31) {
      out.push_back(static_cast<char>(0xa0 | id.size()));
    } else {
      PackLength(0xd9, id.size(), &out);  // str8/16/32, as msgpack-python packs a str
    }
    out += id;
  } else {
    out += head_;
  }
  out += output_;
  out.push_back(static_cast<char>(0x92));  // the shape [rows, width]
  PackUint(static_cast<uint64_t>(rows), &out);
  PackUint(static_cast<uint64_t>(width), &out);
  out += data_key_;
  PackLength(0xc4, bytes, &out);  // bin8/16/32
  out.append(reinterpret_cast<const char*>(y), bytes);  // little-endian float32 (x86, ARM)
  return out;
}

}  // namespace mlserve::server
