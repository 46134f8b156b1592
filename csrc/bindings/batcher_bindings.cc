// Python bindings of DynamicBatcher: submit/wait (GIL released while waiting), the eventfd
// completion queue for asyncio, cancel, stats (with the latency histograms), the monitoring
// sample and prediction log, the test hold hook and shutdown; and LATENCY_BUCKETS_S, the latency
// histograms' bucket bounds in seconds.
#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "batcher/dynamic_batcher.h"
#include "bindings/common.h"
#include "bindings/python_backend.h"
#include "server/msgpack_lane.h"

namespace mlserve::bindings {

py::dict HistogramsToDict(const FeaturePlan& plan, bool reset);

namespace {

// Owns the C++ batcher. Every binding that releases the GIL first copies the shared_ptr, so a
// concurrent release() (Engine.close on another thread) cannot free the batcher under it: the
// last copy frees it. release() always shuts down (joins the workers) first, so that final
// destruction never waits for a worker that wants the GIL.
class PyBatcher {
 public:
  PyBatcher(std::shared_ptr<FeaturePlan> plan, std::unique_ptr<Backend> backend, BatcherConfig cfg)
      : batcher_(std::make_shared<DynamicBatcher>(std::move(plan), std::move(backend), std::move(cfg))) {}
  ~PyBatcher() { Release(); }

  std::shared_ptr<DynamicBatcher> get() const {
    if (!batcher_) throw Error(ErrorCode::kUnavailable, "engine is closed; create a new one");
    return batcher_;
  }
  bool closed() const { return batcher_ == nullptr; }
  void Shutdown(bool drain) {
    if (!batcher_) return;
    std::shared_ptr<DynamicBatcher> b = batcher_;
    py::gil_scoped_release release;  // workers may be waiting for the GIL to finish a batch
    b->Shutdown(drain);
  }
  void Release() {
    Shutdown(false);
    std::shared_ptr<DynamicBatcher> gone;
    gone.swap(batcher_);
    py::gil_scoped_release release;  // destroying the backend takes the GIL itself
    gone.reset();
  }

  // The futures of requests submitted with submit_future, by request id, with the event loop
  // each belongs to (None: a concurrent.futures.Future). Touched only with the GIL held, and a
  // future is registered in the same GIL-holding call that submits its request, so the drain
  // (also under the GIL) always finds it.
  struct Pending {
    py::object future;
    py::object loop;
    // Set for submit_msgpack: the result is the lane's encoded response, not an array.
    std::shared_ptr<const server::MsgpackLane> lane;
    bool has_id = false;
    std::string id;
  };
  std::unordered_map<uint64_t, Pending>& futures() { return futures_; }

 private:
  std::shared_ptr<DynamicBatcher> batcher_;
  std::unordered_map<uint64_t, Pending> futures_;
};

// The finished request's result as a new array, or raises its error. GIL held.
py::object Result(const Request& r) {
  switch (r.state) {
    case RequestState::kDone: {
      const BatchOutput& o = *r.output;
      py::array_t<float> a = o.ndim == 1 ? py::array_t<float>(static_cast<py::ssize_t>(r.rows))
                                         : py::array_t<float>({static_cast<py::ssize_t>(r.rows),
                                                               static_cast<py::ssize_t>(o.width)});
      std::memcpy(a.mutable_data(), o.data.data() + r.row_offset * o.width,
                  sizeof(float) * static_cast<size_t>(r.rows * o.width));
      return std::move(a);
    }
    case RequestState::kFailed:
    case RequestState::kCancelled:
      throw Error(r.error_code, r.error_message);
    default:
      throw Error(ErrorCode::kInternal, "request is not finished");
  }
}

// Waits with the GIL released, waking every 50 ms to let Python handle signals (Ctrl-C).
void WaitInterruptibly(DynamicBatcher& b, const std::shared_ptr<Request>& r) {
  for (;;) {
    bool done;
    {
      py::gil_scoped_release release;
      done = DynamicBatcher::Wait(*r, std::chrono::milliseconds(50));
    }
    if (done) return;
    if (PyErr_CheckSignals() != 0) {
      b.Cancel(r->id);
      throw py::error_already_set();
    }
  }
}

std::shared_ptr<Request> SubmitRows(const std::shared_ptr<DynamicBatcher>& b, const py::object& x,
                                    int32_t priority, int64_t timeout_us, bool notify_queue,
                                    std::string tag = {}, bool wake_workers = true) {
  FloatArray a = InputRows(x, b->plan());
  const float* data = a.data();
  const int64_t rows = a.shape(0);
  // The GIL stays held: Submit is a short copy plus a queue push (the queue lock is only ever
  // held for bookkeeping, never while waiting for Python), and releasing it here made the event
  // loop re-compete for the GIL with the worker threads on every request (measured under load:
  // 16% of the server's time in this call).
  return b->Submit(data, rows, priority, timeout_us, notify_queue, std::move(tag), wake_workers);
}

// A float32 array of `rows` x `cols` copied from v.
py::array_t<float> Matrix(const std::vector<float>& v, int64_t rows, int64_t cols) {
  py::array_t<float> a({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

py::dict SampleToDict(const RowSample& s) {
  const int64_t kept = s.f_in > 0 ? static_cast<int64_t>(s.inputs.size()) / s.f_in : 0;
  py::array_t<int64_t> counts(static_cast<py::ssize_t>(s.prediction_counts.size()));
  std::copy(s.prediction_counts.begin(), s.prediction_counts.end(), counts.mutable_data());
  py::dict d;
  d["seen"] = s.seen;
  d["inputs"] = Matrix(s.inputs, kept, s.f_in);
  d["outputs"] = Matrix(s.outputs, kept, s.width);
  d["prediction_counts"] = counts;
  d["prediction_missing"] = s.prediction_missing;
  return d;
}

// {"buckets": cumulative counts per LATENCY_BUCKETS_S bound then +Inf, "sum": seconds}.
py::dict HistogramToDict(const LatencyHistogram& h) {
  py::list buckets;
  for (int64_t c : h.Cumulative()) buckets.append(c);
  py::dict out;
  out["buckets"] = buckets;
  out["sum"] = static_cast<double>(h.sum_ns) / 1e9;
  return out;
}

// The exception a failed request's future gets: its mlserve.errors class called with the message.
py::object ErrorOf(const Request& r) {
  return py::reinterpret_borrow<py::object>(ErrorClass(r.error_code))(r.error_message);
}

// Completes the futures of finished requests: those of `loop` (the running event loop calling
// this) get their result or exception here, without a Python-level dispatch per request; the
// rest (concurrent futures, futures of other loops) come back as (future, loop, result,
// error class, message) for the caller to complete thread-safely. Futures already done
// (cancelled while queued) and requests without a registered future are skipped. GIL held.
// The finished request's result: its rows as an array, or for a msgpack-lane request the
// encoded response body (bytes). Raises the request's error when it failed. GIL held.
py::object PendingResult(const Request& r, const PyBatcher::Pending& p) {
  if (!p.lane || r.state != RequestState::kDone) return Result(r);
  const BatchOutput& o = *r.output;
  const std::string body = p.lane->Encode(o.data.data() + r.row_offset * o.width, r.rows,
                                          o.width, p.has_id, p.id);
  return py::bytes(body);
}

py::list CompleteFutures(PyBatcher& self, const py::object& loop) {
  std::vector<std::shared_ptr<Request>> done = self.get()->DrainCompleted();
  static PyObject* const done_name = PyUnicode_InternFromString("done");
  static PyObject* const set_result_name = PyUnicode_InternFromString("set_result");
  static PyObject* const set_exception_name = PyUnicode_InternFromString("set_exception");
  auto& futures = self.futures();
  py::list rest;
  for (const auto& r : done) {
    auto it = futures.find(r->id);
    if (it == futures.end()) continue;  // cancelled and forgotten meanwhile
    PyBatcher::Pending p = std::move(it->second);
    futures.erase(it);
    const bool ok = r->state == RequestState::kDone;
    if (loop.is_none() || !p.loop.is(loop)) {
      if (ok) {
        rest.append(py::make_tuple(p.future, p.loop, PendingResult(*r, p), py::none(), py::none()));
      } else {
        rest.append(py::make_tuple(p.future, p.loop, py::none(), py::handle(ErrorClass(r->error_code)),
                                   r->error_message));
      }
      continue;
    }
    py::object is_done = py::reinterpret_steal<py::object>(PyObject_CallMethodNoArgs(p.future.ptr(), done_name));
    if (!is_done) throw py::error_already_set();
    if (PyObject_IsTrue(is_done.ptr()) == 1) continue;
    py::object value = ok ? PendingResult(*r, p) : ErrorOf(*r);
    py::object set = py::reinterpret_steal<py::object>(
        PyObject_CallMethodOneArg(p.future.ptr(), ok ? set_result_name : set_exception_name, value.ptr()));
    if (!set) throw py::error_already_set();
  }
  return rest;
}

}  // namespace

void BindMsgpackLane(py::module_& m) {
  py::class_<server::MsgpackLane, std::shared_ptr<server::MsgpackLane>>(
      m, "MsgpackLane",
      "The msgpack fast lane of one served model version (csrc/server/msgpack_lane.h): parses "
      "the common one-matrix request and encodes its response from the cached pieces.")
      .def(py::init([](int64_t f_in, std::vector<bool> non_nullable, const py::bytes& head,
                       const py::bytes& head_with_id, const py::bytes& output,
                       const py::bytes& data_key) {
             if (f_in < 1) ThrowInvalid("f_in must be >= 1");
             if (static_cast<int64_t>(non_nullable.size()) != f_in) {
               ThrowInvalid("non_nullable needs one flag per input column");
             }
             return std::make_shared<server::MsgpackLane>(
                 f_in, std::move(non_nullable), std::string(head), std::string(head_with_id),
                 std::string(output), std::string(data_key));
           }),
           py::arg("f_in"), py::arg("non_nullable"), py::arg("head"), py::arg("head_with_id"),
           py::arg("output"), py::arg("data_key"))
      .def_property_readonly("f_in", &server::MsgpackLane::f_in)
      .def(
          "parse",
          [](const server::MsgpackLane& lane, const py::bytes& body) -> py::object {
            const std::string_view view(body);
            server::FastRequest req;
            std::vector<float> rows;
            if (!lane.Parse(view, &req, &rows)) return py::none();
            py::array_t<float> x({static_cast<py::ssize_t>(req.rows),
                                  static_cast<py::ssize_t>(lane.f_in())});
            std::copy(rows.begin(), rows.end(), x.mutable_data());
            py::dict params;
            if (req.has_priority) params["priority"] = req.priority;
            if (req.has_timeout) params["timeout"] = req.timeout_us;
            py::object id = req.has_id ? py::object(py::str(std::string(req.id))) : py::none();
            return py::make_tuple(x, id, params);
          },
          py::arg("body"),
          "(rows float32 [n, f_in], id | None, {priority, timeout present}) of a lane request, "
          "or None when the lane declines it (tests; serving uses DynamicBatcher.submit_msgpack).")
      .def(
          "encode",
          [](const server::MsgpackLane& lane, const FloatArray& y, const py::object& id) {
            if (y.ndim() != 2) ThrowInvalid("encode takes a [rows, width] array");
            std::string id_s;
            if (!id.is_none()) id_s = id.cast<std::string>();
            return py::bytes(lane.Encode(y.data(), y.shape(0), y.shape(1), !id.is_none(), id_s));
          },
          py::arg("y"), py::arg("id"), "The response body for outputs y and request id (tests).");
}

void BindBatcher(py::module_& m) {
  BindMsgpackLane(m);
  py::tuple bounds(kLatencyBoundsNs.size());
  for (size_t k = 0; k < kLatencyBoundsNs.size(); ++k) {
    bounds[k] = static_cast<double>(kLatencyBoundsNs[k]) / 1e9;
  }
  m.attr("LATENCY_BUCKETS_S") = bounds;

  py::class_<Request, std::shared_ptr<Request>>(m, "Request", "Handle of a submitted request.")
      .def_property_readonly("id", [](const Request& r) { return r.id; })
      .def_property_readonly("rows", [](const Request& r) { return r.rows; })
      .def_property_readonly("queue_ns", [](const Request& r) { return r.queue_ns; });

  py::class_<PyBatcher>(m, "DynamicBatcher", "Dynamic batcher + backend for one model version.")
      .def(py::init([](std::shared_ptr<FeaturePlan> plan, const std::string& backend, py::object fn,
                       int64_t max_batch_size, std::vector<int64_t> preferred_batch_sizes,
                       int64_t max_queue_delay_us, int64_t max_queue_size, int64_t default_timeout_us,
                       int32_t priority_levels, int32_t default_priority_level, bool preserve_ordering,
                       int32_t instance_count, int32_t normalize_threads, bool histograms,
                       int device, bool cuda_graphs, const std::string& name,
                       const std::string& normalize_kernel) {
             if (!plan) ThrowInvalid("batcher needs a FeaturePlan");
             BatcherConfig cfg;
             cfg.max_batch_size = max_batch_size;
             cfg.preferred_batch_sizes = std::move(preferred_batch_sizes);
             cfg.max_queue_delay_us = max_queue_delay_us;
             cfg.max_queue_size = max_queue_size;
             cfg.default_timeout_us = default_timeout_us;
             cfg.priority_levels = priority_levels;
             cfg.default_priority_level = default_priority_level;
             cfg.preserve_ordering = preserve_ordering;
             cfg.instance_count = instance_count;
             cfg.normalize_threads = normalize_threads;
             cfg.histograms = histograms;
             std::unique_ptr<Backend> be =
                 MakeBackend(backend, fn, name, device, cuda_graphs, normalize_kernel);
             // A GPU backend makes its per-instance pipelines (device buffers, streams) here.
             py::gil_scoped_release release;
             return std::make_unique<PyBatcher>(std::move(plan), std::move(be), std::move(cfg));
           }),
           py::arg("plan"), py::arg("backend"), py::arg("fn") = py::none(), py::arg("max_batch_size") = 64,
           py::arg("preferred_batch_sizes") = std::vector<int64_t>{}, py::arg("max_queue_delay_us") = 100,
           py::arg("max_queue_size") = 0, py::arg("default_timeout_us") = 0, py::arg("priority_levels") = 1,
           py::arg("default_priority_level") = 0, py::arg("preserve_ordering") = false,
           py::arg("instance_count") = 1, py::arg("normalize_threads") = 1, py::arg("histograms") = true,
           py::arg("device") = 0, py::arg("cuda_graphs") = true, py::arg("name") = "",
           py::arg("normalize_kernel") = "")
      .def(
          "predict",
          [](PyBatcher& self, const py::object& x, int32_t priority, int64_t timeout_us) {
            std::shared_ptr<DynamicBatcher> b = self.get();
            std::shared_ptr<Request> r = SubmitRows(b, x, priority, timeout_us, false);
            WaitInterruptibly(*b, r);
            return Result(*r);
          },
          py::arg("x"), py::arg("priority") = 0, py::arg("timeout_us") = -1,
          "Submit and wait (GIL released while waiting); returns the rows' outputs.")
      .def(
          "predict_many",
          [](PyBatcher& self, const py::list& xs, int32_t priority, int64_t timeout_us) {
            std::shared_ptr<DynamicBatcher> b = self.get();
            std::vector<FloatArray> arrays;
            arrays.reserve(xs.size());
            for (const auto& x : xs) arrays.push_back(InputRows(py::reinterpret_borrow<py::object>(x), b->plan()));
            std::vector<std::shared_ptr<Request>> requests;
            requests.reserve(arrays.size());
            bool submit_failed = false;
            ErrorCode submit_code = ErrorCode::kInternal;
            std::string submit_message;
            {
              // One GIL release for the whole list: submit everything, then wait for all of it
              // (every submitted request is awaited, even after a refused submit).
              py::gil_scoped_release release;
              for (const auto& a : arrays) {
                try {
                  requests.push_back(b->Submit(a.data(), a.shape(0), priority, timeout_us, false));
                } catch (const Error& e) {
                  submit_failed = true;
                  submit_code = e.code();
                  submit_message = e.what();
                  break;
                }
              }
              // Last first: usually it finishes last, so the worker publishes the others with
              // nobody blocked on them (no futex wake on its path) and we sleep once.
              for (auto it = requests.rbegin(); it != requests.rend(); ++it) {
                while (!DynamicBatcher::Wait(**it, std::chrono::milliseconds(50))) {
                }
              }
            }
            if (submit_failed) throw Error(submit_code, submit_message);
            py::list out(requests.size());
            for (size_t i = 0; i < requests.size(); ++i) out[i] = Result(*requests[i]);
            return out;
          },
          py::arg("xs"), py::arg("priority") = 0, py::arg("timeout_us") = -1,
          "Submit every array of xs, wait for all (GIL released throughout), return the outputs "
          "in order; raises the first error after all submitted requests finished.")
      .def(
          "submit",
          [](PyBatcher& self, const py::object& x, int32_t priority, int64_t timeout_us) {
            return SubmitRows(self.get(), x, priority, timeout_us, false);
          },
          py::arg("x"), py::arg("priority") = 0, py::arg("timeout_us") = -1,
          "Submit for a later wait(request).")
      .def(
          "wait",
          [](PyBatcher& self, const std::shared_ptr<Request>& r) {
            WaitInterruptibly(*self.get(), r);
            return Result(*r);
          },
          py::arg("request"))
      .def(
          "submit_async",
          [](PyBatcher& self, const py::object& x, int32_t priority, int64_t timeout_us, std::string tag) {
            return SubmitRows(self.get(), x, priority, timeout_us, true, std::move(tag))->id;
          },
          py::arg("x"), py::arg("priority") = 0, py::arg("timeout_us") = -1, py::arg("tag") = std::string(),
          "Submit; the result arrives through completion_fd()/drain_completions(). Returns the id. "
          "tag (str or bytes): the caller's request id, the key of the prediction log.")
      .def(
          "submit_future",
          [](PyBatcher& self, const py::object& x, int32_t priority, int64_t timeout_us, std::string tag,
             py::object future, py::object loop, bool run_inline) {
            const uint64_t id =
                SubmitRows(self.get(), x, priority, timeout_us, true, std::move(tag), !run_inline)->id;
            self.futures()[id] = PyBatcher::Pending{std::move(future), std::move(loop)};
            return id;
          },
          py::arg("x"), py::arg("priority"), py::arg("timeout_us"), py::arg("tag"), py::arg("future"),
          py::arg("loop"), py::arg("run_inline") = false,
          "Submit; complete_futures() completes `future` (of asyncio `loop`, or None for a "
          "concurrent.futures.Future) when the request finishes. Returns the id. run_inline: the "
          "caller will call run_ready() soon, so no worker is woken for this request.")
      .def(
          "submit_msgpack",
          [](PyBatcher& self, const py::handle& body, std::shared_ptr<const server::MsgpackLane> lane,
             std::string tag, py::object future, py::object loop, bool run_inline) -> py::object {
            char* data = nullptr;
            Py_ssize_t size = 0;
            if (!lane || !PyBytes_Check(body.ptr()) ||
                PyBytes_AsStringAndSize(body.ptr(), &data, &size) != 0) {
              return py::none();
            }
            if (lane->f_in() != self.get()->plan().f_in()) {
              ThrowInvalid("msgpack lane of " + std::to_string(lane->f_in()) +
                           " columns for a model of " + std::to_string(self.get()->plan().f_in()));
            }
            thread_local std::vector<float> rows;  // reused: Submit copies the rows
            server::FastRequest req;
            if (!lane->Parse(std::string_view(data, static_cast<size_t>(size)), &req, &rows)) {
              return py::none();
            }
            if ((req.has_priority && (req.priority < INT32_MIN || req.priority > INT32_MAX)) ||
                (req.has_timeout && req.timeout_us < 0)) {
              return py::none();  // the Python path says what is wrong with it
            }
            const int32_t priority = static_cast<int32_t>(req.priority);
            const int64_t timeout_us = req.has_timeout ? req.timeout_us : -1;
            const uint64_t id = self.get()
                                    ->Submit(rows.data(), req.rows, priority, timeout_us, true,
                                             std::move(tag), !run_inline)
                                    ->id;
            PyBatcher::Pending pending{std::move(future), std::move(loop), std::move(lane),
                                       req.has_id, std::string(req.id)};
            self.futures()[id] = std::move(pending);
            return py::int_(id);
          },
          py::arg("body"), py::arg("lane"), py::arg("tag"), py::arg("future"), py::arg("loop"),
          py::arg("run_inline") = false,
          "The msgpack fast lane: parses `body` (bytes) with `lane` and submits its rows as "
          "submit_future does; complete_futures() then completes `future` with the encoded "
          "response body (bytes). Returns the id, or None when the body is not the lane's "
          "request (nothing was submitted: take the general path). Raises as submit_future.")
      .def(
          "run_ready",
          [](PyBatcher& self, int64_t max_batches, int64_t max_compute_ns) {
            return self.get()->RunReady(max_batches, max_compute_ns);  // GIL held: the backend's
          },
          py::arg("max_batches"), py::arg("max_compute_ns"),
          "Run the batches a worker would cut now on this thread (GIL held); returns how many, "
          "or -1 when none ran and the workers took the queue (see DynamicBatcher::RunReady).")
      .def("complete_futures", &CompleteFutures, py::arg("loop"),
           "Drain the completions: futures of `loop` are completed here; returns [(future, loop, "
           "result | None, error_class | None, message | None)] of the others.")
      .def(
          "forget_future",
          [](PyBatcher& self, uint64_t id) { return self.futures().erase(id) > 0; }, py::arg("id"),
          "Drop the future of request id (cancelled by its caller); False if unknown.")
      .def(
          "take_futures",
          [](PyBatcher& self) {
            py::list out;
            for (auto& [id, p] : self.futures()) out.append(py::make_tuple(p.future, p.loop));
            self.futures().clear();
            return out;
          },
          "Remove and return [(future, loop)] of every request still registered (at close).")
      .def("completion_fd", [](PyBatcher& self) { return self.get()->completion_fd(); })
      .def(
          "drain_completions",
          [](PyBatcher& self) {
            std::vector<std::shared_ptr<Request>> done = self.get()->DrainCompleted();
            py::list out(done.size());
            size_t i = 0;
            for (const auto& r : done) {
              if (r->state == RequestState::kDone) {
                out[i++] = py::make_tuple(r->id, Result(*r), py::none(), py::none());
              } else {
                out[i++] = py::make_tuple(r->id, py::none(), py::handle(ErrorClass(r->error_code)),
                                          r->error_message);
              }
            }
            return out;
          },
          "[(id, result | None, error_class | None, message | None)] of finished async requests.")
      .def(
          "cancel",
          [](PyBatcher& self, uint64_t id) {
            std::shared_ptr<DynamicBatcher> b = self.get();
            py::gil_scoped_release release;
            return b->Cancel(id);
          },
          py::arg("id"), "Remove a still-queued request; False when it already left the queue.")
      .def(
          "hold_until_queued",
          [](PyBatcher& self, int64_t n) { self.get()->HoldUntilQueued(n); }, py::arg("n"),
          "Test hook: form no batch until n requests are queued (one-shot; 0 releases).")
      .def(
          "stats",
          [](PyBatcher& self) {
            BatcherStats s = self.get()->Stats();
            py::dict d;
            d["requests"] = s.requests;
            d["rows"] = s.rows;
            d["batches"] = s.batches;
            d["completed"] = s.completed;
            d["rejected"] = s.rejected;
            d["timed_out"] = s.timed_out;
            d["failed"] = s.failed;
            d["cancelled"] = s.cancelled;
            d["queued"] = s.queued;
            py::dict sizes;
            for (size_t k = 0; k < s.batch_sizes.size(); ++k) {
              if (s.batch_sizes[k] > 0) sizes[py::int_(k)] = s.batch_sizes[k];
            }
            d["batch_sizes"] = sizes;
            d["queue_us_total"] = static_cast<double>(s.queue.sum_ns) / 1e3;
            d["normalize_us_total"] = static_cast<double>(s.normalize.sum_ns) / 1e3;
            d["compute_us_total"] = static_cast<double>(s.compute.sum_ns) / 1e3;
            d["queue_seconds"] = HistogramToDict(s.queue);
            d["request_seconds"] = HistogramToDict(s.request);
            d["normalize_seconds"] = HistogramToDict(s.normalize);
            d["compute_seconds"] = HistogramToDict(s.compute);
            if (s.executors > 0) {
              py::dict gpu;
              gpu["instances"] = s.executors;
              gpu["normalize_kernel"] = s.executor.normalize_kernel;
              gpu["batches"] = s.executor.batches;
              gpu["graph_launches"] = s.executor.graph_launches;
              gpu["graphs"] = s.executor.graphs;
              gpu["graphs_disabled"] = s.executor.graphs_disabled;
              d["gpu"] = gpu;
            }
            return d;
          })
      .def(
          "configure_monitor",
          [](PyBatcher& self, int64_t sample_rows, std::vector<float> prediction_edges, bool prediction_argmax,
             uint64_t seed, int64_t log_entries, double log_max_age_s) {
            std::shared_ptr<DynamicBatcher> b = self.get();
            SamplerConfig cfg;
            cfg.capacity = sample_rows;
            cfg.prediction_edges = std::move(prediction_edges);
            cfg.prediction_argmax = prediction_argmax;
            cfg.seed = seed;
            if (!(log_max_age_s >= 0.0) || log_max_age_s > 1e9) {
              ThrowInvalid("log_max_age_s must be in 0..1e9 seconds (0 = no age bound)");
            }
            py::gil_scoped_release release;  // workers may hold the monitor locks
            b->sampler().Configure(cfg);
            b->prediction_log().Configure(log_entries, static_cast<int64_t>(log_max_age_s * 1e9));
          },
          py::arg("sample_rows") = 0, py::arg("prediction_edges") = std::vector<float>{},
          py::arg("prediction_argmax") = false, py::arg("seed") = 0, py::arg("log_entries") = 0,
          py::arg("log_max_age_s") = 0.0,
          "Monitoring (off until configured): a reservoir of sample_rows rows (raw input and output), "
          "the prediction histogram (output column 0 in prediction_edges, or the argmax column), "
          "and the log of tagged requests' outputs (log_entries requests, none older than "
          "log_max_age_s; 0 entries = off). Clears what was recorded.")
      .def(
          "sample",
          [](PyBatcher& self, bool reset) {
            std::shared_ptr<DynamicBatcher> b = self.get();
            RowSample s;
            {
              py::gil_scoped_release release;
              s = b->sampler().Snapshot(reset);
            }
            return SampleToDict(s);
          },
          py::arg("reset") = true,
          "{seen, inputs [m, f_in], outputs [m, width], prediction_counts, prediction_missing} of the "
          "rows recorded since the last reset (m <= sample_rows; a uniform sample of the seen rows).")
      .def(
          "find_predictions",
          [](PyBatcher& self, const std::vector<std::string>& tags) {
            std::shared_ptr<DynamicBatcher> b = self.get();
            std::vector<std::optional<LoggedPrediction>> found;
            {
              py::gil_scoped_release release;
              found = b->prediction_log().Find(tags);
            }
            py::list out(found.size());
            for (size_t i = 0; i < found.size(); ++i) {
              if (!found[i]) {
                out[i] = py::none();
              } else {
                const LoggedPrediction& e = *found[i];
                out[i] = py::make_tuple(static_cast<double>(e.unix_ns) / 1e9, Matrix(e.outputs, e.rows, e.width));
              }
            }
            return out;
          },
          py::arg("tags"), "For each tag: (unix_seconds, outputs [rows, width]) from the prediction log, or None.")
      .def("prediction_log_size", [](PyBatcher& self) { return self.get()->prediction_log().size(); })
      .def(
          "configure_prediction_export",
          [](PyBatcher& self, int64_t max_rows, double sample) {
            std::shared_ptr<DynamicBatcher> b = self.get();
            py::gil_scoped_release release;
            b->prediction_export().Configure(max_rows, sample);
          },
          py::arg("max_rows"), py::arg("sample") = 1.0,
          "Buffer the raw inputs and outputs of tagged requests (at most max_rows rows; 0 = off; "
          "sample: the share of requests kept, by a hash of the tag) for "
          "drain_prediction_export. Clears the buffer.")
      .def(
          "drain_prediction_export",
          [](PyBatcher& self) {
            std::shared_ptr<DynamicBatcher> b = self.get();
            ExportedPredictions e;
            {
              py::gil_scoped_release release;
              e = b->prediction_export().Drain();
            }
            int64_t n = 0;
            for (int64_t r : e.rows) n += r;
            py::list tags(e.tags.size());
            for (size_t i = 0; i < e.tags.size(); ++i) tags[i] = py::bytes(e.tags[i]);
            py::dict d;
            d["tags"] = tags;
            d["unix_ns"] = py::array_t<int64_t>(static_cast<py::ssize_t>(e.unix_ns.size()), e.unix_ns.data());
            d["rows"] = py::array_t<int64_t>(static_cast<py::ssize_t>(e.rows.size()), e.rows.data());
            d["inputs"] = Matrix(e.inputs, n, e.f_in);
            d["outputs"] = Matrix(e.outputs, n, e.width);
            d["dropped_requests"] = e.dropped_requests;
            d["dropped_rows"] = e.dropped_rows;
            return d;
          },
          "{tags (bytes), unix_ns, rows, inputs [n, f_in], outputs [n, width], dropped_requests, "
          "dropped_rows} of the tagged requests run since the last drain, in order.")
      .def("histograms", [](PyBatcher& self, bool reset) { return HistogramsToDict(self.get()->plan(), reset); },
           py::arg("reset") = false)
      .def_property_readonly("backend_name", [](PyBatcher& self) { return self.get()->backend().Name(); })
      .def_property_readonly("closed", [](PyBatcher& self) { return self.closed(); })
      .def("shutdown", [](PyBatcher& self, bool drain) { self.Shutdown(drain); }, py::arg("drain") = true,
           "Stop accepting; drain=True runs queued requests first, else fails them with Unavailable. "
           "Joins the workers; completions stay readable. Idempotent.")
      .def("release", &PyBatcher::Release,
           "Shut down (failing queued requests) and free the batcher, its backend and eventfd once "
           "no call is using it.");
}

}  // namespace mlserve::bindings
