// Batched reads and writes of the online store's fixed-width feature records.
//
// Record layout (python/mlserve/features/records.py, little-endian, f columns): int64 event_ts,
// int64 created_ts, float32 values[f] (NaN where null), uint8 nulls[ceil(f / 8)] (bit j, LSB
// first, set = column j null), zero padding to a multiple of 8 bytes. Keys
// (python/mlserve/features/keys.py): an int64 entity key is the tag 0x01 then the 8 bytes of
// value XOR 2^63 big-endian; other keys arrive encoded.
//
// ReadRecords is the lookup hot path: the gets of a batch in one read transaction, 64 at a time
// through mdb_get_batch (interleaved descents, third_party/lmdb/mdb_batch.c), the outputs filled
// in place, no allocation per key. Thread-safe as LmdbEnv is (each call has its
// own transaction); callers own the key and output buffers, which must outlive the call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "features/lmdb_env.h"

namespace mlserve::features {

enum class RowStatus : int8_t { kPresent = 0, kMissing = 1, kExpired = 2 };

// Bytes of one record of a view with `n_columns` columns.
size_t RecordBytes(int n_columns);

constexpr size_t kInt64KeyBytes = 9;
constexpr unsigned char kInt64KeyTag = 0x01;
// Writes the 9-byte key of int64 entity value `value` to `out`.
void EncodeInt64Key(int64_t value, char* out);

// The keys of a batch: either int64 entity values (encoded here) or encoded keys.
struct KeyBatch {
  size_t n = 0;
  const int64_t* int64_values = nullptr;  // n values, or null when `bytes` is used
  const char* bytes = nullptr;            // the n encoded keys, concatenated
  const size_t* offsets = nullptr;        // n + 1 offsets into `bytes`
};

struct RecordOutputs {
  float* values = nullptr;      // n * n_columns, row-major; NaN where null, missing or expired
  int8_t* status = nullptr;     // n, RowStatus
  int64_t* event_ts = nullptr;  // n, UTC ns of the stored event (0 when missing)
};

// now - ttl, saturated to the int64 range: records with event_ts below it are expired.
int64_t ExpiryCutoffNs(int64_t now_ns, int64_t ttl_ns);

// Reads the record of every key of `keys` from database `dbi` in one read transaction and
// fills `out`. A record whose event_ts < `expire_before_ns` (when given) is EXPIRED: values
// NaN, event_ts kept. Throws kInternal when a record's size is not RecordBytes(n_columns),
// the message starting with `what` (e.g. "online database of 'user_stats/1'").
void ReadRecords(LmdbEnv& env, MDB_dbi dbi, const KeyBatch& keys, int n_columns,
                 std::optional<int64_t> expire_before_ns, const RecordOutputs& out,
                 const std::string& what);

// Puts records [lo, hi) of `records` (hi * record_bytes bytes at least) under keys [lo, hi) in
// write transaction `txn`, keeping a stored record whose (event_ts, created_ts) is greater than
// the new one's (ties are replaced). Returns (written, kept). Throws kInternal when a stored
// record is shorter than 16 bytes.
std::pair<size_t, size_t> PutNewerRecords(LmdbTxn& txn, MDB_dbi dbi, const KeyBatch& keys,
                                          const char* records, size_t record_bytes, size_t lo,
                                          size_t hi);

}  // namespace mlserve::features
