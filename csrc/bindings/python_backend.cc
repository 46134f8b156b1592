// PythonBackend implementation (see python_backend.h).
#include "bindings/python_backend.h"

#include <cstring>

#include "backends/cuda_backend.h"
#include "bindings/python_device_model.h"

namespace mlserve::bindings {

PythonBackend::PythonBackend(py::object fn, std::string name)
    : fn_(std::move(fn)), name_(std::move(name)) {}

PythonBackend::~PythonBackend() {
  // The batcher may be destroyed from a thread that does not hold the GIL.
  if (Py_IsInitialized()) {
    py::gil_scoped_acquire gil;
    fn_ = py::object();
  } else {
    fn_.release();  // interpreter gone: leak rather than touch it
  }
}

namespace {
// Whether this worker thread keeps a Python thread state between batches.
thread_local bool tstate_pinned = false;
}  // namespace

void PinThreadState(py::gil_scoped_acquire& gil) {
  if (tstate_pinned) return;
  gil.inc_ref();  // released in UnpinThreadState
  tstate_pinned = true;
}

void UnpinThreadState() {
  if (!tstate_pinned) return;
  tstate_pinned = false;
  if (!Py_IsInitialized()) return;  // interpreter gone: the thread state goes with it
  py::gil_scoped_acquire gil;
  gil.dec_ref();  // the destructor's own dec_ref then deletes the thread state
}

void PythonBackend::Execute(const float* x, int64_t n, int64_t d, BatchOutput* out) {
  if (PyGILState_Check() == 1) {  // inline (DynamicBatcher::RunReady) on a thread holding the GIL
    Call(x, n, d, out);
    return;
  }
  py::gil_scoped_acquire gil;
  PinThreadState(gil);
  Call(x, n, d, out);
}

void PythonBackend::Call(const float* x, int64_t n, int64_t d, BatchOutput* out) {
  try {
    // A view, no copy: the capsule owns nothing, the buffer outlives the call.
    py::capsule base(x, [](void*) {});
    py::array_t<float> batch({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(d)},
                             const_cast<float*>(x), base);
    py::object result = fn_(batch);
    FloatArray a = FloatArray::ensure(result);
    if (!a) {
      PyErr_Clear();
      throw Error(ErrorCode::kInternal, "backend '" + name_ + "' returned " +
                                            py::str(py::type::of(result).attr("__name__")).cast<std::string>() +
                                            ", not a numeric array");
    }
    if (a.ndim() != 1 && a.ndim() != 2) {
      throw Error(ErrorCode::kInternal, "backend '" + name_ + "' returned a " +
                                            std::to_string(a.ndim()) + "-d array; return [n] or [n, k]");
    }
    out->rows = a.shape(0);
    out->width = a.ndim() == 2 ? a.shape(1) : 1;
    out->ndim = static_cast<int32_t>(a.ndim());
    out->data.resize(static_cast<size_t>(a.size()));
    if (a.size() > 0) std::memcpy(out->data.data(), a.data(), sizeof(float) * static_cast<size_t>(a.size()));
  } catch (py::error_already_set& e) {
    throw ToCoreError(e, "backend '" + name_ + "' failed");
  }
}

void PythonBackend::ThreadExit() { UnpinThreadState(); }

std::unique_ptr<Backend> MakeBackend(const std::string& backend, const py::object& fn,
                                     const std::string& label, int device, bool cuda_graphs,
                                     const std::string& normalize_kernel) {
  const std::string name = label.empty() ? backend : label;
  auto need_fn = [&] {
    if (fn.is_none() || !PyCallable_Check(fn.ptr())) {
      ThrowInvalid("backend '" + backend + "' needs a callable fn(batch) -> array");
    }
  };
  if (backend == "python") {
    need_fn();
    return std::make_unique<PythonBackend>(fn, name);
  }
  CudaBackendOptions options;
  options.device = device;
  options.cuda_graphs = cuda_graphs;
  options.normalize_kernel = normalize_kernel;
  if (backend == "python-cuda") {
    need_fn();
    return std::make_unique<CudaBackend>(std::make_unique<PythonDeviceModel>(fn, name), options);
  }
  if (std::unique_ptr<DeviceModel> model = MakeBuiltinDeviceModel(backend)) {
    return std::make_unique<CudaBackend>(std::move(model), options);
  }
  if (std::unique_ptr<Backend> builtin = MakeBuiltinBackend(backend)) return builtin;
  ThrowInvalid("unknown core backend '" + backend +
               "' (python, noop, rowsum, python-cuda, normalize-cuda)");
}

}  // namespace mlserve::bindings
