// PythonDeviceModel implementation (see python_device_model.h).
#include "bindings/python_device_model.h"

#include "bindings/dlpack.h"
#include "bindings/python_backend.h"

namespace mlserve::bindings {

namespace {
// The previous batch's result on this worker thread (a strong reference; GIL to touch).
thread_local PyObject* t_kept_result = nullptr;
}  // namespace

PythonDeviceModel::PythonDeviceModel(py::object fn, std::string name)
    : fn_(std::move(fn)), name_(std::move(name)) {}

PythonDeviceModel::~PythonDeviceModel() {
  if (Py_IsInitialized()) {
    py::gil_scoped_acquire gil;
    fn_ = py::object();
  } else {
    fn_.release();  // interpreter gone: leak rather than touch it
  }
}

DeviceResult PythonDeviceModel::Enqueue(const DeviceBatch& batch) {
  py::gil_scoped_acquire gil;
  PinThreadState(gil);
  // The stream was synchronized at the end of the previous batch: its result may go now.
  Py_CLEAR(t_kept_result);
  auto alive = std::make_shared<std::atomic<bool>>(true);
  struct Invalidate {
    std::atomic<bool>& flag;
    ~Invalidate() { flag.store(false); }
  } invalidate{*alive};
  try {
    py::object result = fn_(WrapDeviceBatch(batch, alive));
    ImportedArray a = ImportDlpack(result, kDLCUDA, batch.device, batch.stream,
                                   "backend '" + name_ + "'");
    DeviceResult out;
    out.data = a.data;
    out.rows = a.rows;
    out.width = a.width;
    out.ndim = a.ndim;
    t_kept_result = a.holder.release().ptr();
    return out;
  } catch (py::error_already_set& e) {
    throw ToCoreError(e, "backend '" + name_ + "' failed");
  }
}

void PythonDeviceModel::ThreadExit() {
  if (t_kept_result != nullptr && Py_IsInitialized()) {
    py::gil_scoped_acquire gil;
    Py_CLEAR(t_kept_result);
  }
  UnpinThreadState();
}

}  // namespace mlserve::bindings
