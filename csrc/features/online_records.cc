#include "features/online_records.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "common/error.h"
#include "mdb_batch.h"

namespace mlserve::features {
namespace {

constexpr size_t kHeaderBytes = 16;  // event_ts, created_ts

int64_t LoadI64(const char* p) {
  int64_t v;
  std::memcpy(&v, p, sizeof v);  // LMDB values are only 2-byte aligned
  return v;
}

// The key of row i as a view; int64 keys are encoded into `scratch` (kInt64KeyBytes).
std::string_view KeyAt(const KeyBatch& keys, size_t i, char* scratch) {
  if (keys.int64_values != nullptr) {
    EncodeInt64Key(keys.int64_values[i], scratch);
    return std::string_view(scratch, kInt64KeyBytes);
  }
  return std::string_view(keys.bytes + keys.offsets[i], keys.offsets[i + 1] - keys.offsets[i]);
}

std::string KeyHex(std::string_view key) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : key) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

}  // namespace

size_t RecordBytes(int n_columns) {
  const size_t end = kHeaderBytes + 4 * static_cast<size_t>(n_columns) + (n_columns + 7) / 8;
  return (end + 7) / 8 * 8;
}

void EncodeInt64Key(int64_t value, char* out) {
  uint64_t u = static_cast<uint64_t>(value) ^ (uint64_t{1} << 63);
  out[0] = static_cast<char>(kInt64KeyTag);
  for (int b = 8; b >= 1; --b) {
    out[b] = static_cast<char>(u & 0xff);
    u >>= 8;
  }
}

int64_t ExpiryCutoffNs(int64_t now_ns, int64_t ttl_ns) {
  int64_t cutoff;
  if (__builtin_sub_overflow(now_ns, ttl_ns, &cutoff)) {
    return ttl_ns > 0 ? std::numeric_limits<int64_t>::min() : std::numeric_limits<int64_t>::max();
  }
  return cutoff;
}

void ReadRecords(LmdbEnv& env, MDB_dbi dbi, const KeyBatch& keys, int n_columns,
                 std::optional<int64_t> expire_before_ns, const RecordOutputs& out,
                 const std::string& what) {
  const size_t f = static_cast<size_t>(n_columns);
  const size_t record_bytes = RecordBytes(n_columns);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Keys go to mdb_get_batch in chunks, so its interleaved descents overlap their cache misses
  // (third_party/lmdb/mdb_batch.c); the chunk's buffers live on the stack.
  constexpr size_t kChunk = 64;
  char scratch[kChunk * kInt64KeyBytes];
  MDB_val mkeys[kChunk], mvals[kChunk];
  int rcs[kChunk];
  LmdbTxn txn(env, /*write=*/false);
  for (size_t lo = 0; lo < keys.n; lo += kChunk) {
    const size_t m = std::min(kChunk, keys.n - lo);
    for (size_t c = 0; c < m; ++c) mkeys[c] = ToVal(KeyAt(keys, lo + c, scratch + c * kInt64KeyBytes));
    const int batch_rc = mdb_get_batch(txn.get(), dbi, m, mkeys, mvals, rcs);
    if (batch_rc != 0) ThrowLmdb(batch_rc, "mdb_get_batch", env.path());
    for (size_t c = 0; c < m; ++c) {
      const size_t i = lo + c;
      float* row = out.values + i * f;
      const int rc = rcs[c];
      if (rc == MDB_NOTFOUND) {
        for (size_t j = 0; j < f; ++j) row[j] = nan;
        out.status[i] = static_cast<int8_t>(RowStatus::kMissing);
        out.event_ts[i] = 0;
        continue;
      }
      if (rc != 0) ThrowLmdb(rc, "mdb_get", env.path());
      const MDB_val& v = mvals[c];
      if (v.mv_size != record_bytes) {
        const std::string_view key(static_cast<const char*>(mkeys[c].mv_data), mkeys[c].mv_size);
        throw Error(ErrorCode::kInternal,
                    what + " holds records of the wrong size; expected " +
                        std::to_string(record_bytes) + " bytes each, row " + std::to_string(i) +
                        " (key " + KeyHex(key) + ") has " + std::to_string(v.mv_size));
      }
      const char* rec = static_cast<const char*>(v.mv_data);
      const int64_t event_ts = LoadI64(rec);
      out.event_ts[i] = event_ts;
      if (expire_before_ns && event_ts < *expire_before_ns) {
        for (size_t j = 0; j < f; ++j) row[j] = nan;
        out.status[i] = static_cast<int8_t>(RowStatus::kExpired);
        continue;
      }
      std::memcpy(row, rec + kHeaderBytes, 4 * f);
      const unsigned char* nulls =
          reinterpret_cast<const unsigned char*>(rec + kHeaderBytes + 4 * f);
      for (size_t j = 0; j < f; ++j) {
        if (nulls[j >> 3] >> (j & 7) & 1) row[j] = nan;  // stored as NaN too; the bitmap decides
      }
      out.status[i] = static_cast<int8_t>(RowStatus::kPresent);
    }
  }
  txn.Abort();  // a read transaction has nothing to commit
}

std::pair<size_t, size_t> PutNewerRecords(LmdbTxn& txn, MDB_dbi dbi, const KeyBatch& keys,
                                          const char* records, size_t record_bytes, size_t lo,
                                          size_t hi) {
  size_t written = 0, kept = 0;
  char scratch[kInt64KeyBytes];
  for (size_t i = lo; i < hi; ++i) {
    const std::string_view key = KeyAt(keys, i, scratch);
    const char* rec = records + i * record_bytes;
    if (const auto old = txn.Get(dbi, key)) {
      if (old->size() < kHeaderBytes) {
        throw Error(ErrorCode::kInternal, "online database record of key " + KeyHex(key) +
                                              " has " + std::to_string(old->size()) +
                                              " bytes, shorter than its timestamps");
      }
      const int64_t old_event = LoadI64(old->data()), new_event = LoadI64(rec);
      const int64_t old_created = LoadI64(old->data() + 8), new_created = LoadI64(rec + 8);
      if (old_event > new_event || (old_event == new_event && old_created > new_created)) {
        ++kept;
        continue;
      }
    }
    txn.Put(dbi, key, std::string_view(rec, record_bytes));
    ++written;
  }
  return {written, kept};
}

}  // namespace mlserve::features
