// mlserve._core: module definition, error translation and CUDA device queries.
#include <string>

#include "bindings/common.h"
#include "cuda/cuda_runtime.h"

namespace mlserve::bindings {

PyObject* ErrorClass(ErrorCode code) {
  // Leaked on purpose: module-level objects must not be released after interpreter shutdown.
  static PyObject* by_code = [] {
    py::object errors = py::module_::import("mlserve.errors");
    return py::object(errors.attr("BY_CODE")).release().ptr();
  }();
  const auto index = static_cast<Py_ssize_t>(code);
  if (index < 0 || index >= PyTuple_GET_SIZE(by_code)) return PyTuple_GET_ITEM(by_code, 5);
  return PyTuple_GET_ITEM(by_code, index);
}

Error ToCoreError(py::error_already_set& e, const std::string& context) {
  const py::object value = e.value();
  for (int c = 0; c <= static_cast<int>(ErrorCode::kInternal); ++c) {
    if (PyObject_IsInstance(value.ptr(), ErrorClass(static_cast<ErrorCode>(c))) == 1) {
      return Error(static_cast<ErrorCode>(c), py::str(value).cast<std::string>());
    }
  }
  const std::string type = py::str(e.type().attr("__name__")).cast<std::string>();
  return Error(ErrorCode::kInternal,
               context + ": " + type + ": " + py::str(value).cast<std::string>());
}

FloatArray InputRows(const py::object& x, const FeaturePlan& plan) {
  FloatArray a = FloatArray::ensure(x);
  if (!a) {
    PyErr_Clear();
    ThrowInvalid("input is not a numeric array; pass float32 [rows, " + std::to_string(plan.f_in()) + "]");
  }
  if (a.ndim() != 2 || a.shape(1) != plan.f_in()) {
    std::string shape = "(";
    for (py::ssize_t k = 0; k < a.ndim(); ++k) shape += (k ? ", " : "") + std::to_string(a.shape(k));
    shape += a.ndim() == 1 ? ",)" : ")";
    ThrowInvalid("input has shape " + shape + "; expected [rows, " + std::to_string(plan.f_in()) +
                 "] float32, one column per raw feature in plan order");
  }
  return a;
}

}  // namespace mlserve::bindings

namespace py = pybind11;
using namespace mlserve;
using namespace mlserve::bindings;

PYBIND11_MODULE(_core, m) {
  m.doc() = "mlserve native core: fused feature normalization, dynamic batching, CUDA kernels.";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetString(ErrorClass(e.code()), e.what());
    }
  });

  m.def("cuda_built", &CudaBuilt, "Whether this build of the core includes the CUDA kernels.");
  m.def("cuda_runtime_version", &CudaRuntimeVersion,
        "CUDA runtime version compiled against (e.g. 13000); 0 in CPU-only builds.");
  m.def(
      "cuda_devices",
      [] {
        std::vector<CudaDeviceInfo> devices;
        {
          py::gil_scoped_release release;  // the first CUDA call may take a while
          devices = CudaDevices();
        }
        py::list out;
        for (const auto& d : devices) {
          py::dict item;
          item["index"] = d.index;
          item["name"] = d.name;
          item["compute_capability"] = py::make_tuple(d.compute_major, d.compute_minor);
          item["total_memory_bytes"] = d.total_memory_bytes;
          item["multiprocessors"] = d.multiprocessors;
          out.append(item);
        }
        return out;
      },
      "GPUs this build can use: [] without a CUDA build, a driver or a device.");

  BindPlan(m);
  BindBatcher(m);
  BindDevice(m);
  BindLmdb(m);
}
