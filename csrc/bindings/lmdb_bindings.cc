// Python bindings of the online store's LMDB layer (features/lmdb_env.h, online_records.h):
// LmdbEnv (open, named databases, reader check, close, the batched record read) and LmdbTxn
// (get/put/delete/items, the newer-wins record put, commit/abort, a context manager).
//
// The GIL is released around every LMDB call that can wait (a write transaction's begin waits
// for the writer mutex of every process; commits fsync) and around batched reads and writes;
// single gets and puts keep it (they take well under a microsecond). Ownership: a transaction
// object keeps its environment object alive; the environment refuses to close while a
// transaction is open. A transaction object is for one thread at a time, and a write
// transaction for the thread that began it.
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "features/lmdb_env.h"
#include "features/online_records.h"

namespace mlserve::bindings {
namespace {

using features::KeyBatch;
using features::LmdbEnv;
using features::LmdbTxn;

// The keys of a batch, owned: a 1-d int64 array of entity values, or a sequence of encoded
// bytes keys (copied, so that the GIL can be released while LMDB reads them).
struct OwnedKeys {
  py::array_t<int64_t> ints;
  std::vector<int64_t> list_ints;  // a list of Python ints, converted
  std::string bytes;
  std::vector<size_t> offsets;
  KeyBatch batch;
};

OwnedKeys Keys(const py::handle& keys) {
  OwnedKeys out;
  if (py::isinstance<py::array>(keys)) {
    const auto a = py::reinterpret_borrow<py::array>(keys);
    if (a.ndim() != 1 || a.dtype().kind() != 'i' || a.itemsize() != 8) {
      ThrowInvalid("keys: expected a 1-d int64 array of entity key values or a list of encoded "
                   "bytes keys, got an array of dtype " +
                   py::str(a.dtype()).cast<std::string>() + " and " + std::to_string(a.ndim()) +
                   " dimension(s)");
    }
    out.ints = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
    out.batch.n = static_cast<size_t>(out.ints.size());
    out.batch.int64_values = out.ints.data();
    return out;
  }
  if (!py::isinstance<py::sequence>(keys) || py::isinstance<py::bytes>(keys) ||
      py::isinstance<py::str>(keys)) {
    ThrowInvalid("keys: expected a 1-d int64 array of entity key values or a list of encoded "
                 "bytes keys");
  }
  const auto seq = py::reinterpret_borrow<py::sequence>(keys);
  const size_t n = py::len(seq);
  if (PyList_CheckExact(keys.ptr()) && n > 0 && PyLong_CheckExact(PyList_GET_ITEM(keys.ptr(), 0))) {
    // Entity values as a list of Python ints (the lookup hot path: no numpy conversion). Any
    // other item -- a bool, a float, a numpy int, None -- or a value beyond int64 raises
    // TypeError, so that the caller converts the list with its checks and precise errors.
    out.list_ints.resize(n);
    for (size_t i = 0; i < n; ++i) {
      PyObject* item = PyList_GET_ITEM(keys.ptr(), static_cast<Py_ssize_t>(i));
      int overflow = 0;
      const long long v = PyLong_CheckExact(item) ? PyLong_AsLongLongAndOverflow(item, &overflow)
                                                  : (overflow = 1, 0);
      if (overflow != 0) {
        throw py::type_error("keys: row " + std::to_string(i) + " is not an int64 key");
      }
      out.list_ints[i] = static_cast<int64_t>(v);
    }
    out.batch.n = n;
    out.batch.int64_values = out.list_ints.data();
    return out;
  }
  out.offsets.reserve(n + 1);
  out.offsets.push_back(0);
  for (size_t i = 0; i < n; ++i) {
    const py::object item = seq[i];
    char* data = nullptr;
    Py_ssize_t size = 0;
    if (!PyBytes_Check(item.ptr()) || PyBytes_AsStringAndSize(item.ptr(), &data, &size) != 0) {
      ThrowInvalid("keys: row " + std::to_string(i) + " is not bytes (an encoded key)");
    }
    if (size == 0 || size > 511) {
      ThrowInvalid("keys: row " + std::to_string(i) + " is " + std::to_string(size) +
                   " bytes; LMDB keys are 1 to 511 bytes");
    }
    out.bytes.append(data, static_cast<size_t>(size));
    out.offsets.push_back(out.bytes.size());
  }
  out.batch.n = n;
  out.batch.bytes = out.bytes.data();
  out.batch.offsets = out.offsets.data();
  return out;
}

py::bytes Bytes(std::string_view s) { return py::bytes(s.data(), s.size()); }

class PyTxn {
 public:
  PyTxn(std::shared_ptr<LmdbEnv> env, bool write) : env_(std::move(env)) {
    py::gil_scoped_release release;  // a write transaction waits for the writer mutex
    txn_ = std::make_unique<LmdbTxn>(*env_, write);
  }

  LmdbTxn& txn() const { return *txn_; }

  void Commit() {
    py::gil_scoped_release release;  // a write commit fsyncs
    txn_->Commit();
  }

 private:
  std::shared_ptr<LmdbEnv> env_;  // declared first: outlives txn_
  std::unique_ptr<LmdbTxn> txn_;
};

std::string_view View(const py::bytes& b) {
  char* data = nullptr;
  Py_ssize_t size = 0;
  PyBytes_AsStringAndSize(b.ptr(), &data, &size);
  return std::string_view(data, static_cast<size_t>(size));
}

py::tuple ReadRecords(LmdbEnv& env, MDB_dbi dbi, const py::handle& keys, int n_columns,
                      std::optional<int64_t> now_ns, std::optional<int64_t> ttl_ns,
                      const std::string& what) {
  if (n_columns < 0) ThrowInvalid("n_columns must be >= 0, got " + std::to_string(n_columns));
  OwnedKeys owned = Keys(keys);
  const auto n = static_cast<py::ssize_t>(owned.batch.n);
  py::array_t<float> values({n, static_cast<py::ssize_t>(n_columns)});
  py::array_t<int8_t> status(n);
  py::array_t<int64_t> event_ts(n);
  std::optional<int64_t> cutoff;
  if (now_ns && ttl_ns) cutoff = features::ExpiryCutoffNs(*now_ns, *ttl_ns);
  const features::RecordOutputs out{values.mutable_data(), status.mutable_data(),
                                    event_ts.mutable_data()};
  {
    py::gil_scoped_release release;  // n gets, page faults included
    features::ReadRecords(env, dbi, owned.batch, n_columns, cutoff, out, what);
  }
  return py::make_tuple(values, status, event_ts);
}

}  // namespace

void BindLmdb(py::module_& m) {
  py::class_<LmdbEnv, std::shared_ptr<LmdbEnv>>(
      m, "LmdbEnv",
      "An LMDB environment (a directory). Open one per path and process: LMDB forbids a second "
      "open of the same environment in a process.")
      .def(py::init([](const std::string& path, size_t map_size, unsigned max_dbs,
                       unsigned max_readers, bool readahead, bool read_only) {
             features::LmdbOptions options;
             options.map_size_bytes = map_size;
             options.max_dbs = max_dbs;
             options.max_readers = max_readers;
             options.no_readahead = !readahead;
             options.read_only = read_only;
             py::gil_scoped_release release;  // file locks and I/O
             return std::make_shared<LmdbEnv>(path, options);
           }),
           py::arg("path"), py::arg("map_size"), py::arg("max_dbs") = 4096,
           py::arg("max_readers") = 1024, py::arg("readahead") = false,
           py::arg("read_only") = false)
      .def_property_readonly("path", &LmdbEnv::path)
      .def_property_readonly("closed", &LmdbEnv::closed)
      .def("close", &LmdbEnv::Close, "Closes the environment; refused while a transaction is open.")
      .def(
          "open_db",
          [](LmdbEnv& env, const std::string& name, bool create) {
            py::gil_scoped_release release;  // with create: a write transaction, may wait
            return env.OpenDb(name, create);
          },
          py::arg("name"), py::arg("create"),
          "The lasting handle (int) of named database `name`, or None when it does not exist and "
          "not `create`. Without `create` it never waits for a writer.")
      .def(
          "reader_check",
          [](LmdbEnv& env) {
            py::gil_scoped_release release;  // takes the reader table lock
            return env.ReaderCheck();
          },
          "Frees the reader slots of dead processes; returns how many.")
      .def(
          "begin",
          [](const std::shared_ptr<LmdbEnv>& env, bool write) {
            return std::make_unique<PyTxn>(env, write);
          },
          py::arg("write") = false,
          "A transaction; a write transaction waits for the writer mutex (GIL released).")
      .def("read_records", &ReadRecords, py::arg("dbi"), py::arg("keys"), py::arg("n_columns"),
           py::arg("now_ns"), py::arg("ttl_ns"), py::arg("what"),
           "(values float32 [n, n_columns], status int8 [n], event_ts int64 [n]) of the "
           "fixed-width records (mlserve.features.records) under `keys` (an int64 array or a list "
           "of Python ints of entity values, encoded here, or a list of encoded bytes keys; "
           "TypeError for a list of ints holding anything else), read in one read "
           "transaction with the GIL released. With now_ns and ttl_ns, event_ts < now - ttl is "
           "EXPIRED. InternalError (starting with `what`) on a record of the wrong size.");

  py::class_<PyTxn>(m, "LmdbTxn", "An LMDB transaction; a context manager (commit on success).")
      .def_property_readonly("write", [](const PyTxn& t) { return t.txn().write(); })
      .def_property_readonly("open", [](const PyTxn& t) { return t.txn().open(); })
      .def(
          "get",
          [](const PyTxn& t, MDB_dbi dbi, const py::bytes& key) -> py::object {
            const auto v = t.txn().Get(dbi, View(key));
            if (!v) return py::none();
            return Bytes(*v);
          },
          py::arg("dbi"), py::arg("key"), "The value (bytes, a copy) or None.")
      .def(
          "put",
          [](const PyTxn& t, MDB_dbi dbi, const py::bytes& key, const py::bytes& value) {
            t.txn().Put(dbi, View(key), View(value));
          },
          py::arg("dbi"), py::arg("key"), py::arg("value"))
      .def(
          "delete",
          [](const PyTxn& t, MDB_dbi dbi, const py::bytes& key) {
            return t.txn().Delete(dbi, View(key));
          },
          py::arg("dbi"), py::arg("key"), "Whether the key was there.")
      .def(
          "items",
          [](const PyTxn& t, MDB_dbi dbi) {
            py::list out;
            features::LmdbCursor cursor(t.txn(), dbi);
            std::string_view k, v;
            while (cursor.Next(&k, &v)) out.append(py::make_tuple(Bytes(k), Bytes(v)));
            return out;
          },
          py::arg("dbi"), "Every (key, value) of the database in key order, copied.")
      .def(
          "put_newer_records",
          [](const PyTxn& t, MDB_dbi dbi, const py::handle& keys,
             const py::array_t<uint8_t, py::array::c_style>& records, size_t record_bytes) {
            OwnedKeys owned = Keys(keys);
            const size_t n = owned.batch.n;
            if (record_bytes < 16) ThrowInvalid("record_bytes must be >= 16");
            if (static_cast<size_t>(records.size()) != n * record_bytes) {
              ThrowInvalid("put_newer_records: " + std::to_string(records.size()) +
                           " bytes of records for " + std::to_string(n) + " keys of " +
                           std::to_string(record_bytes) + "-byte records");
            }
            const char* data = reinterpret_cast<const char*>(records.data());
            py::gil_scoped_release release;  // n gets and puts
            return features::PutNewerRecords(t.txn(), dbi, owned.batch, data, record_bytes, 0, n);
          },
          py::arg("dbi"), py::arg("keys"), py::arg("records"), py::arg("record_bytes"),
          "Puts the records (a uint8 buffer of record_bytes per key) under `keys`, keeping a "
          "stored record whose (event_ts, created_ts) is greater. Returns (written, kept).")
      .def("commit", &PyTxn::Commit)
      .def("abort", [](const PyTxn& t) { t.txn().Abort(); })
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyTxn& t, const py::object& type, const py::object&, const py::object&) {
        if (type.is_none() && t.txn().open()) {
          t.Commit();
        } else {
          t.txn().Abort();
        }
        return false;
      });
}

}  // namespace mlserve::bindings
