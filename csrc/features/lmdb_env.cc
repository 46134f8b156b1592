#include "features/lmdb_env.h"

#include <cerrno>

#include "common/error.h"

namespace mlserve::features {

void ThrowLmdb(int rc, const std::string& call, const std::string& path) {
  std::string message = "LMDB " + call + " on " + path + ": " + mdb_strerror(rc);
  ErrorCode code = ErrorCode::kInternal;
  switch (rc) {
    case MDB_MAP_FULL:
      message += " (MDB_MAP_FULL: the map size is too small for the data)";
      code = ErrorCode::kUnavailable;
      break;
    case MDB_READERS_FULL:
    case MDB_TXN_FULL:
    case MDB_DBS_FULL:
    case MDB_MAP_RESIZED:
    case ENOMEM:
      code = ErrorCode::kUnavailable;
      break;
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_BAD_VALSIZE:
    case ENOENT:
    case EACCES:
    case EROFS:
      code = ErrorCode::kInvalidInput;
      break;
    default:
      break;
  }
  throw Error(code, message);
}

// ---------------------------------------------------------------------------- LmdbEnv

LmdbEnv::LmdbEnv(const std::string& path, const LmdbOptions& options)
    : path_(path), read_only_(options.read_only) {
  int rc = mdb_env_create(&env_);
  if (rc != 0) ThrowLmdb(rc, "mdb_env_create", path_);
  auto fail = [&](int code, const char* call) {
    mdb_env_close(env_);  // also required after a failed mdb_env_open
    env_ = nullptr;
    ThrowLmdb(code, call, path_);
  };
  if ((rc = mdb_env_set_mapsize(env_, options.map_size_bytes)) != 0) fail(rc, "mdb_env_set_mapsize");
  if ((rc = mdb_env_set_maxdbs(env_, options.max_dbs)) != 0) fail(rc, "mdb_env_set_maxdbs");
  if ((rc = mdb_env_set_maxreaders(env_, options.max_readers)) != 0) fail(rc, "mdb_env_set_maxreaders");
  // NOTLS: read transactions are not tied to the thread that began them (Python threads hand
  // objects around; several may be open on one thread).
  unsigned flags = MDB_NOTLS;
  if (options.no_readahead) flags |= MDB_NORDAHEAD;
  if (options.read_only) flags |= MDB_RDONLY;
  if ((rc = mdb_env_open(env_, path_.c_str(), flags, 0644)) != 0) fail(rc, "mdb_env_open");
}

LmdbEnv::~LmdbEnv() {
  if (env_ == nullptr) return;
  AbortIdleReaders();
  mdb_env_close(env_);
}

void LmdbEnv::AbortIdleReaders() {
  for (MDB_txn* txn : idle_readers_) mdb_txn_abort(txn);
  idle_readers_.clear();
}

void LmdbEnv::Close() {
  std::lock_guard<std::mutex> lock(state_mutex_);
  if (env_ == nullptr) return;
  if (open_txns_ > 0) {
    throw Error(ErrorCode::kInvalidInput, "LMDB environment " + path_ + ": cannot close with " +
                                              std::to_string(open_txns_) +
                                              " transaction(s) open; end them first");
  }
  AbortIdleReaders();
  mdb_env_close(env_);
  env_ = nullptr;
}

bool LmdbEnv::closed() const {
  std::lock_guard<std::mutex> lock(state_mutex_);
  return env_ == nullptr;
}

MDB_txn* LmdbEnv::BeginTxn(bool write) {
  {
    std::lock_guard<std::mutex> lock(state_mutex_);
    if (env_ == nullptr) {
      throw Error(ErrorCode::kInvalidInput, "LMDB environment " + path_ + " is closed");
    }
    if (write && read_only_) {
      throw Error(ErrorCode::kInvalidInput,
                  "LMDB environment " + path_ + " is open read-only: no write transactions");
    }
    ++open_txns_;  // from here Close refuses, so env_ stays valid without the lock
    if (!write && !idle_readers_.empty()) {
      MDB_txn* txn = idle_readers_.back();
      idle_readers_.pop_back();
      if (mdb_txn_renew(txn) == 0) return txn;  // a fresh snapshot
      mdb_txn_abort(txn);  // and begin a new one below
    }
  }
  MDB_txn* txn = nullptr;
  const int rc = mdb_txn_begin(env_, nullptr, write ? 0 : MDB_RDONLY, &txn);
  if (rc != 0) {
    EndTxn();
    ThrowLmdb(rc, "mdb_txn_begin", path_);
  }
  return txn;
}

void LmdbEnv::EndTxn() {
  std::lock_guard<std::mutex> lock(state_mutex_);
  --open_txns_;
}

void LmdbEnv::EndReadTxn(MDB_txn* txn) {
  mdb_txn_reset(txn);  // releases the snapshot, keeps the reader slot and the allocation
  std::lock_guard<std::mutex> lock(state_mutex_);
  --open_txns_;
  if (idle_readers_.size() < kMaxIdleReaders) {
    idle_readers_.push_back(txn);
  } else {
    mdb_txn_abort(txn);
  }
}

std::optional<MDB_dbi> LmdbEnv::OpenDb(const std::string& name, bool create) {
  {
    std::lock_guard<std::mutex> lock(dbi_mutex_);
    const auto it = dbs_.find(name);
    if (it != dbs_.end()) return it->second;
  }
  // Begun before taking dbi_mutex_: a write transaction may wait for another process's writer,
  // and readers opening other databases must not wait behind it.
  LmdbTxn txn(*this, create);
  std::lock_guard<std::mutex> lock(dbi_mutex_);
  const auto it = dbs_.find(name);
  if (it != dbs_.end()) return it->second;
  MDB_dbi dbi;
  const int rc = mdb_dbi_open(txn.get(), name.c_str(), create ? MDB_CREATE : 0, &dbi);
  if (rc == MDB_NOTFOUND) return std::nullopt;  // the transaction aborts
  if (rc != 0) ThrowLmdb(rc, "mdb_dbi_open('" + name + "')", path_);
  // Committing (a read transaction too) keeps the handle for the env's lifetime; LMDB requires
  // that no other mdb_dbi_open runs in the process until then, hence the lock.
  txn.Commit();
  dbs_.emplace(name, dbi);
  return dbi;
}

int LmdbEnv::ReaderCheck() {
  std::lock_guard<std::mutex> lock(state_mutex_);
  if (env_ == nullptr) throw Error(ErrorCode::kInvalidInput, "LMDB environment " + path_ + " is closed");
  int dead = 0;
  const int rc = mdb_reader_check(env_, &dead);
  if (rc != 0) ThrowLmdb(rc, "mdb_reader_check", path_);
  return dead;
}

// ---------------------------------------------------------------------------- LmdbTxn

LmdbTxn::LmdbTxn(LmdbEnv& env, bool write) : env_(env), write_(write) {
  txn_ = env_.BeginTxn(write);
}

LmdbTxn::~LmdbTxn() { Abort(); }

void LmdbTxn::Commit() {
  RequireOpen("commit");
  MDB_txn* txn = txn_;
  txn_ = nullptr;  // freed by mdb_txn_commit, also when it fails
  const int rc = mdb_txn_commit(txn);
  env_.EndTxn();
  if (rc != 0) ThrowLmdb(rc, "mdb_txn_commit", env_.path());
}

void LmdbTxn::Abort() {
  if (txn_ == nullptr) return;
  MDB_txn* txn = txn_;
  txn_ = nullptr;
  if (write_) {
    mdb_txn_abort(txn);
    env_.EndTxn();
  } else {
    env_.EndReadTxn(txn);
  }
}

void LmdbTxn::RequireOpen(const char* what) const {
  if (txn_ == nullptr) {
    throw Error(ErrorCode::kInvalidInput,
                std::string("LMDB ") + what + " on " + env_.path() + ": the transaction has ended");
  }
}

std::optional<std::string_view> LmdbTxn::Get(MDB_dbi dbi, std::string_view key) const {
  RequireOpen("get");
  MDB_val k = ToVal(key);
  MDB_val v;
  const int rc = mdb_get(txn_, dbi, &k, &v);
  if (rc == MDB_NOTFOUND) return std::nullopt;
  if (rc != 0) ThrowLmdb(rc, "mdb_get", env_.path());
  return ToView(v);
}

void LmdbTxn::Put(MDB_dbi dbi, std::string_view key, std::string_view value) {
  RequireOpen("put");
  MDB_val k = ToVal(key);
  MDB_val v = ToVal(value);
  const int rc = mdb_put(txn_, dbi, &k, &v, 0);
  if (rc != 0) ThrowLmdb(rc, "mdb_put", env_.path());
}

bool LmdbTxn::Delete(MDB_dbi dbi, std::string_view key) {
  RequireOpen("delete");
  MDB_val k = ToVal(key);
  const int rc = mdb_del(txn_, dbi, &k, nullptr);
  if (rc == MDB_NOTFOUND) return false;
  if (rc != 0) ThrowLmdb(rc, "mdb_del", env_.path());
  return true;
}

// ---------------------------------------------------------------------------- LmdbCursor

LmdbCursor::LmdbCursor(const LmdbTxn& txn, MDB_dbi dbi) : txn_(txn) {
  if (!txn.open()) {
    throw Error(ErrorCode::kInvalidInput,
                "LMDB cursor on " + txn.env().path() + ": the transaction has ended");
  }
  const int rc = mdb_cursor_open(txn.get(), dbi, &cursor_);
  if (rc != 0) ThrowLmdb(rc, "mdb_cursor_open", txn.env().path());
}

LmdbCursor::~LmdbCursor() {
  // Valid while the transaction is open (its documented lifetime rule for cursors).
  if (cursor_ != nullptr) mdb_cursor_close(cursor_);
}

bool LmdbCursor::Next(std::string_view* key, std::string_view* value) {
  MDB_val k, v;
  const int rc = mdb_cursor_get(cursor_, &k, &v, started_ ? MDB_NEXT : MDB_FIRST);
  started_ = true;
  if (rc == MDB_NOTFOUND) return false;
  if (rc != 0) ThrowLmdb(rc, "mdb_cursor_get", txn_.env().path());
  *key = ToView(k);
  *value = ToView(v);
  return true;
}

}  // namespace mlserve::features
