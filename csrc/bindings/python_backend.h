// PythonBackend: a Backend that calls a Python callable fn(batch) -> array once per batch.
//
// The GIL is taken only for the call (and the conversion of its result); the batch array handed
// to fn is a view of the worker's buffer, valid only during the call. Thread-safety: several
// instances may call it concurrently; they serialize on the GIL only while in Python.
#pragma once

#include <memory>
#include <string>

#include "backends/backend.h"
#include "bindings/common.h"

namespace mlserve::bindings {

// Keeps the calling worker thread's Python thread state alive between batches (released by
// UnpinThreadState at the worker's exit). Without it, every gil_scoped_acquire on a non-Python
// thread creates and destroys one (~10 us a batch, measured). Call with `gil` just acquired.
void PinThreadState(py::gil_scoped_acquire& gil);
// Releases the thread state pinned by this thread, if any. Call without the GIL.
void UnpinThreadState();

class PythonBackend final : public Backend {
 public:
  PythonBackend(py::object fn, std::string name);
  ~PythonBackend() override;  // releases fn with the GIL held
  void Execute(const float* x, int64_t n, int64_t d, BatchOutput* out) override;
  std::string Name() const override { return name_; }
  void ThreadExit() override;  // frees this worker's Python thread state

 private:
  // Calls fn_ on the batch and copies its result into out. GIL held.
  void Call(const float* x, int64_t n, int64_t d, BatchOutput* out);

  py::object fn_;
  std::string name_;
};

// The backend a batcher created from Python runs: "python" (fn(batch) on normalized host rows),
// the core's "noop" / "rowsum", or on a GPU "python-cuda" (fn(DeviceBatch), see
// python_device_model.h) and "normalize-cuda" (the normalized rows themselves). `label` names
// the backend in errors (e.g. "torch-cuda"); empty: the backend's own name. Throws InvalidInput
// for an unknown name or a missing fn; a GPU backend's device is checked when the batcher makes
// its executors.
std::unique_ptr<Backend> MakeBackend(const std::string& backend, const py::object& fn,
                                     const std::string& label, int device, bool cuda_graphs,
                                     const std::string& normalize_kernel = "");

}  // namespace mlserve::bindings
