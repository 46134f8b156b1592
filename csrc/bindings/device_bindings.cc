// Python bindings of the GPU path: DeviceArray / DeviceBatch (DLPack producers), the DLPack
// consumer used for device model results, and test hooks that run the same DLPack code on host
// arrays (so that it is tested on machines without a GPU).
#include <cstring>
#include <memory>
#include <string>

#include "backends/cuda_backend.h"
#include "bindings/dlpack.h"
#include "bindings/python_device_model.h"
#include "cuda/cuda_runtime.h"
#include "cuda/nvrtc.h"

namespace mlserve::bindings {
namespace {

constexpr const char* kCapsuleName = "dltensor";
constexpr const char* kUsedCapsuleName = "used_dltensor";

// A DLManagedTensor the core produced, with the storage its shape points to.
struct ExportedTensor {
  DLManagedTensor managed{};
  int64_t shape[2] = {0, 0};
  PyObject* owner = nullptr;  // strong reference (host test arrays), else null
};

void DeleteExported(DLManagedTensor* self) {
  auto* t = static_cast<ExportedTensor*>(self->manager_ctx);
  // Consumers may call the deleter from any thread, with or without the GIL.
  if (t->owner != nullptr && Py_IsInitialized()) {
    const PyGILState_STATE state = PyGILState_Ensure();
    Py_DECREF(t->owner);
    PyGILState_Release(state);
  }
  delete t;
}

// Frees an exported tensor nobody consumed (a consumer renames the capsule first).
void DestroyCapsule(PyObject* capsule) {
  if (!PyCapsule_IsValid(capsule, kCapsuleName)) return;
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, kCapsuleName));
  if (m != nullptr && m->deleter != nullptr) m->deleter(m);
}

std::string DeviceName(int32_t type, int32_t id) {
  if (type == kDLCPU) return "cpu";
  if (type == kDLCUDA) return "cuda:" + std::to_string(id);
  return "DLPack device type " + std::to_string(type) + ":" + std::to_string(id);
}

[[noreturn]] void ImportFailed(const std::string& who, const std::string& problem) {
  throw Error(ErrorCode::kInternal, who + " " + problem);
}

bool Compact(const DLTensor& t) {
  if (t.strides == nullptr) return true;
  if (t.ndim == 1) return t.shape[0] <= 1 || t.strides[0] == 1;
  const bool inner = t.shape[1] <= 1 || t.strides[1] == 1;
  const bool outer = t.shape[0] <= 1 || t.strides[0] == t.shape[1];
  return inner && outer;
}

struct PyDeviceBatch : DeviceArray {
  DeviceBatch batch;
};

DeviceArray View(const DeviceArray& a, const float* data, int64_t rows, int64_t cols) {
  DeviceArray v = a;
  v.data = data;
  v.rows = rows;
  v.cols = cols;
  return v;
}

}  // namespace

void DeviceArray::CheckAlive() const {
  if (alive && !alive->load()) {
    throw Error(ErrorCode::kInternal,
                "a device batch (or its output buffer) was used after the backend call that "
                "received it returned; copy what you need inside the call");
  }
}

py::capsule DeviceArray::ToDlpack(const py::object& consumer_stream) const {
  CheckAlive();
  if (device_type == kDLCUDA && !consumer_stream.is_none()) {
    const auto s = consumer_stream.cast<int64_t>();
    if (s != -1) {
      CudaStreamWaitStream(reinterpret_cast<void*>(static_cast<intptr_t>(s)), stream, device_id);
    }
  }
  auto* t = new ExportedTensor();
  t->shape[0] = rows;
  t->shape[1] = cols;
  DLTensor& d = t->managed.dl_tensor;
  d.data = const_cast<float*>(data);
  d.device = DLDevice{device_type, device_id};
  d.ndim = 2;
  d.dtype = DLDataType{kDLFloat, 32, 1};
  d.shape = t->shape;
  d.strides = nullptr;
  d.byte_offset = 0;
  t->managed.manager_ctx = t;
  t->managed.deleter = &DeleteExported;
  if (owner) t->owner = owner.inc_ref().ptr();
  PyObject* capsule = PyCapsule_New(&t->managed, kCapsuleName, &DestroyCapsule);
  if (capsule == nullptr) {
    DeleteExported(&t->managed);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(capsule);
}

ImportedArray ImportDlpack(const py::handle& obj, int32_t device_type, int32_t device_id,
                           void* stream, const std::string& who) {
  auto fail = [&who](const std::string& problem) { ImportFailed(who, problem); };
  py::object capsule;
  if (PyCapsule_CheckExact(obj.ptr())) {
    capsule = py::reinterpret_borrow<py::object>(obj);
  } else {
    if (!py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__")) {
      fail("returned " + py::str(py::type::of(obj).attr("__name__")).cast<std::string>() +
           ", not an array with DLPack support (return a torch tensor, a CuPy array or "
           "batch.output(...))");
    }
    const py::tuple device = obj.attr("__dlpack_device__")();
    const int32_t type = py::int_(device[0]).cast<int32_t>();
    py::dict kwargs;
    if (type == kDLCUDA && stream != nullptr) {
      kwargs["stream"] = py::int_(reinterpret_cast<intptr_t>(stream));
    }
    capsule = obj.attr("__dlpack__")(**kwargs);
  }
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), kCapsuleName));
  if (managed == nullptr) {
    PyErr_Clear();
    fail("returned an object whose __dlpack__() is not an unused 'dltensor' capsule");
  }
  if (PyCapsule_SetName(capsule.ptr(), kUsedCapsuleName) != 0) throw py::error_already_set();
  ImportedArray a;
  // From here the producer's tensor is ours: the holder runs its deleter (with the GIL).
  a.holder = py::capsule(managed, [](void* p) {
    auto* m = static_cast<DLManagedTensor*>(p);
    if (m->deleter != nullptr) m->deleter(m);
  });
  const DLTensor& t = managed->dl_tensor;
  a.device_type = t.device.device_type;
  a.device_id = t.device.device_id;
  if (t.device.device_type != device_type ||
      (device_type != kDLCPU && t.device.device_id != device_id)) {
    fail("returned an array on " + DeviceName(t.device.device_type, t.device.device_id) +
         "; return it on " + DeviceName(device_type, device_id) + ", the batch's device");
  }
  if (t.dtype.code != kDLFloat || t.dtype.bits != 32 || t.dtype.lanes != 1) {
    fail("returned an array of DLPack dtype (code " + std::to_string(t.dtype.code) + ", " +
         std::to_string(t.dtype.bits) + " bits); return float32 (e.g. y.float())");
  }
  if (t.ndim != 1 && t.ndim != 2) {
    fail("returned a " + std::to_string(t.ndim) + "-d array; return [n] or [n, k]");
  }
  if (t.shape[0] < 0 || (t.ndim == 2 && t.shape[1] < 0)) fail("returned a negative shape");
  if (!Compact(t)) fail("returned a non-contiguous array; return y.contiguous()");
  a.data = reinterpret_cast<const float*>(static_cast<const char*>(t.data) + t.byte_offset);
  a.ndim = t.ndim;
  a.rows = t.shape[0];
  a.width = t.ndim == 2 ? t.shape[1] : 1;
  return a;
}

py::object WrapDeviceBatch(const DeviceBatch& batch, std::shared_ptr<std::atomic<bool>> alive) {
  PyDeviceBatch b;
  b.data = batch.x;
  b.rows = batch.rows;
  b.cols = batch.cols;
  b.device_type = kDLCUDA;
  b.device_id = batch.device;
  b.stream = batch.stream;
  b.alive = std::move(alive);
  b.batch = batch;
  return py::cast(std::move(b));
}

void BindDevice(py::module_& m) {
  m.def("cuda_driver_version", &CudaDriverVersion,
        "Newest CUDA version the installed NVIDIA driver supports (e.g. 13000); 0 without one.");
  m.def("set_nvrtc_candidates", &SetNvrtcCandidates, py::arg("paths"),
        "Library paths tried for NVRTC before the loader's search path (cuda/nvrtc.h).");
  m.def(
      "nvrtc_status",
      []() {
        std::string where;
        py::dict d;
        bool ok = false;
        {
          py::gil_scoped_release release;  // dlopen
          ok = NvrtcAvailable(&where);
        }
        d["available"] = ok;
        d["detail"] = where;  // the library loaded, or why none did
        d["version"] = ok ? py::object(py::str(NvrtcVersion())) : py::object(py::none());
        return d;
      },
      "Whether NVRTC (for the JIT normalize kernels) loads: {'available', 'detail', 'version'}.");

  py::class_<DeviceArray>(m, "DeviceArray", R"doc(
A float32 [rows, cols] array the core lends to a backend call (DLPack producer: torch.from_dlpack,
cupy.from_dlpack, ... share its memory). Valid only during that call.)doc")
      .def_property_readonly("shape", [](const DeviceArray& a) { return py::make_tuple(a.rows, a.cols); })
      .def_property_readonly("data_ptr", [](const DeviceArray& a) {
        a.CheckAlive();
        return reinterpret_cast<uintptr_t>(a.data);
      })
      .def_property_readonly("device", [](const DeviceArray& a) { return a.device_id; })
      .def_property_readonly("stream", [](const DeviceArray& a) { return reinterpret_cast<uintptr_t>(a.stream); },
                             "The cudaStream_t (as an int) the data is produced on; enqueue work on it.")
      .def("__dlpack_device__", [](const DeviceArray& a) { return py::make_tuple(a.device_type, a.device_id); })
      .def(
          "__dlpack__",
          [](const DeviceArray& a, const py::object& stream, const py::object& /*max_version*/,
             const py::object& dl_device, const py::object& copy) {
            if (!copy.is_none() && copy.cast<bool>()) {
              throw py::buffer_error("this array can only be shared, not copied (copy=True)");
            }
            if (!dl_device.is_none()) {
              const py::tuple want = dl_device;
              if (py::int_(want[0]).cast<int32_t>() != a.device_type ||
                  py::int_(want[1]).cast<int32_t>() != a.device_id) {
                throw py::buffer_error("this array cannot be moved to another device");
              }
            }
            return a.ToDlpack(stream);  // a legacy capsule whatever max_version asks (allowed)
          },
          py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
          py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def(
          "head",
          [](const DeviceArray& a, int64_t rows) {
            a.CheckAlive();
            if (rows < 0 || rows > a.rows) {
              ThrowInvalid("head(" + std::to_string(rows) + ") of an array of " +
                           std::to_string(a.rows) + " rows");
            }
            return View(a, a.data, rows, a.cols);
          },
          py::arg("rows"), "The first `rows` rows (a view).")
      .def("__repr__", [](const DeviceArray& a) {
        return "DeviceArray(shape=(" + std::to_string(a.rows) + ", " + std::to_string(a.cols) +
               "), device=" + DeviceName(a.device_type, a.device_id) + ")";
      });

  py::class_<PyDeviceBatch, DeviceArray>(m, "DeviceBatch", R"doc(
One batch handed to a GPU backend callable: the normalized rows on the device (a DeviceArray),
the instance's stream and index, and a device buffer for the result. Valid only during the call.)doc")
      .def_property_readonly("instance", [](const PyDeviceBatch& b) { return b.batch.instance; })
      .def_property_readonly("capacity_rows", [](const PyDeviceBatch& b) { return b.batch.capacity_rows; },
                             "Rows the batch buffer holds (padded() may read up to this many).")
      .def(
          "padded",
          [](const PyDeviceBatch& b, int64_t rows) {
            b.CheckAlive();
            if (rows < b.rows || rows > b.batch.capacity_rows) {
              ThrowInvalid("padded(" + std::to_string(rows) + "): rows must be in " +
                           std::to_string(b.rows) + ".." + std::to_string(b.batch.capacity_rows));
            }
            return View(b, b.data, rows, b.cols);
          },
          py::arg("rows"),
          "The batch as `rows` >= len(batch) rows (rows past the batch hold stale values), for "
          "engines whose smallest profile is larger than the batch.")
      .def(
          "output",
          [](const PyDeviceBatch& b, int64_t rows, int64_t width) {
            b.CheckAlive();
            if (rows < 0 || width < 1) ThrowInvalid("output(rows, width) needs rows >= 0, width >= 1");
            float* data = b.batch.Output(rows * width);
            DeviceArray out = View(b, data, rows, width);
            return out;
          },
          py::arg("rows"), py::arg("width") = 1,
          "A device buffer of the instance for the result, float32 [rows, width], valid until the "
          "batch ends; return it (or .head(n)) from the callable.");

  m.def(
      "_dlpack_host_array",
      [](const py::array_t<float, py::array::c_style | py::array::forcecast>& x) {
        if (x.ndim() != 2) ThrowInvalid("_dlpack_host_array takes a 2-d array");
        DeviceArray a;
        a.data = x.data();
        a.rows = x.shape(0);
        a.cols = x.shape(1);
        a.device_type = kDLCPU;
        a.device_id = 0;
        a.alive = std::make_shared<std::atomic<bool>>(true);
        a.owner = x;
        return a;
      },
      py::arg("x"), "Test hook: a DeviceArray over a host float32 [n, k] array (device cpu).");
  m.def(
      "_dlpack_import",
      [](const py::object& obj) {
        ImportedArray a = ImportDlpack(obj, kDLCPU, 0, nullptr, "test object");
        py::dict d;
        d["ndim"] = a.ndim;
        d["rows"] = a.rows;
        d["width"] = a.width;
        py::array_t<float> values(static_cast<py::ssize_t>(a.rows * a.width));
        if (a.rows * a.width > 0) {
          std::memcpy(values.mutable_data(), a.data, sizeof(float) * static_cast<size_t>(a.rows * a.width));
        }
        d["values"] = values;
        return d;
      },
      py::arg("obj"),
      "Test hook: reads a host DLPack array (e.g. a CPU torch tensor) with the consumer the GPU "
      "backends use; returns its shape and a copy of its values.");
}

}  // namespace mlserve::bindings
