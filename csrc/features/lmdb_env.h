// RAII layer over liblmdb (third_party/lmdb) for the feature store's online store.
//
// LmdbEnv owns one MDB_env (a directory holding data.mdb and lock.mdb) and the process's
// database handles; LmdbTxn is one read or write transaction, LmdbCursor one cursor in it.
// LMDB errors become mlserve::Error: a full map, full reader table or oversized transaction is
// kUnavailable (the operator must act), a missing or incompatible environment kInvalidInput,
// anything else kInternal; every message names the LMDB call and the path.
//
// Thread-safety: an LmdbEnv may be shared by threads. Read transactions are not tied to a
// thread (the env is opened with MDB_NOTLS) but one must not be used by two threads at once; a
// write transaction must begin, work and end on one thread, and a thread holding one must not
// begin another (LMDB's writer mutex is not recursive). Calls that can block (a write
// transaction's begin waits for the writer mutex, held across processes) are the caller's to
// run without other locks held. Ownership: a transaction must end before its env is closed
// (Close refuses while any is open); a cursor must be destroyed before its transaction ends.
// LMDB forbids opening one environment twice in a process: callers keep one LmdbEnv per path.
#pragma once

#include <lmdb.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace mlserve::features {

// Throws the mlserve::Error for LMDB return code `rc` (non-zero); `call` names the LMDB call.
[[noreturn]] void ThrowLmdb(int rc, const std::string& call, const std::string& path);

struct LmdbOptions {
  size_t map_size_bytes = size_t{64} << 30;  // address space reserved; the file grows as written
  unsigned max_dbs = 4096;                   // named databases
  unsigned max_readers = 1024;               // concurrent read transactions, all processes
  bool no_readahead = true;                  // random reads: no OS readahead
  bool read_only = false;                    // no write transactions; creates nothing
};

class LmdbEnv {
 public:
  // Opens (creating it unless read_only) the environment in directory `path`, which must exist.
  LmdbEnv(const std::string& path, const LmdbOptions& options);
  ~LmdbEnv();
  LmdbEnv(const LmdbEnv&) = delete;
  LmdbEnv& operator=(const LmdbEnv&) = delete;

  // Closes the environment; kInvalidInput while a transaction is open. Idempotent.
  void Close();
  bool closed() const;
  const std::string& path() const { return path_; }
  MDB_env* get() const { return env_; }

  // The handle of named database `name`, valid for the env's lifetime, or nullopt when it does
  // not exist and !create. A first open without `create` happens in a read transaction (never
  // waits for a writer); with `create` in a write transaction (waits for the writer mutex: call
  // it before beginning a write transaction on this thread). Serialized per env, as LMDB
  // requires of mdb_dbi_open.
  std::optional<MDB_dbi> OpenDb(const std::string& name, bool create);

  // Clears the reader slots of dead processes; returns how many.
  int ReaderCheck();

 private:
  friend class LmdbTxn;
  MDB_txn* BeginTxn(bool write);  // counts the transaction as open
  void EndTxn();
  // Ends read transaction `txn`: reset and kept for reuse (mdb_txn_renew), or aborted when
  // enough are kept. Beginning a transaction allocates room for max_dbs databases (200 kB at
  // 4096, an mmap and munmap per transaction); a renewed one allocates nothing.
  void EndReadTxn(MDB_txn* txn);
  void AbortIdleReaders();  // state_mutex_ held

  static constexpr size_t kMaxIdleReaders = 16;

  std::string path_;
  MDB_env* env_ = nullptr;
  bool read_only_ = false;
  mutable std::mutex state_mutex_;  // guards env_ against Close, and open_txns_ transitions
  int open_txns_ = 0;
  std::vector<MDB_txn*> idle_readers_;  // reset read transactions (each keeps a reader slot)
  std::mutex dbi_mutex_;  // serializes mdb_dbi_open; guards dbs_
  std::unordered_map<std::string, MDB_dbi> dbs_;
};

class LmdbTxn {
 public:
  // Begins a transaction; a write transaction waits for the writer mutex (all processes).
  LmdbTxn(LmdbEnv& env, bool write);
  ~LmdbTxn();  // aborts if still open
  LmdbTxn(const LmdbTxn&) = delete;
  LmdbTxn& operator=(const LmdbTxn&) = delete;

  void Commit();
  void Abort();  // no-op when already ended
  bool open() const { return txn_ != nullptr; }
  bool write() const { return write_; }
  MDB_txn* get() const { return txn_; }
  LmdbEnv& env() const { return env_; }

  // The value of `key`, a view into the map valid until the transaction ends (or, in a write
  // transaction, until the next write); nullopt when absent.
  std::optional<std::string_view> Get(MDB_dbi dbi, std::string_view key) const;
  void Put(MDB_dbi dbi, std::string_view key, std::string_view value);
  // Whether `key` was there.
  bool Delete(MDB_dbi dbi, std::string_view key);

 private:
  void RequireOpen(const char* what) const;

  LmdbEnv& env_;
  MDB_txn* txn_ = nullptr;
  bool write_ = false;
};

class LmdbCursor {
 public:
  LmdbCursor(const LmdbTxn& txn, MDB_dbi dbi);
  ~LmdbCursor();
  LmdbCursor(const LmdbCursor&) = delete;
  LmdbCursor& operator=(const LmdbCursor&) = delete;

  // The next (key, value) in key order (the first on the first call); false after the last.
  // The views are valid until the transaction ends.
  bool Next(std::string_view* key, std::string_view* value);

 private:
  const LmdbTxn& txn_;
  MDB_cursor* cursor_ = nullptr;
  bool started_ = false;
};

inline MDB_val ToVal(std::string_view s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}
inline std::string_view ToView(const MDB_val& v) {
  return std::string_view(static_cast<const char*>(v.mv_data), v.mv_size);
}

}  // namespace mlserve::features
