// PythonBackend: a Backend that calls a Python callable fn(batch) -> array once per batch.
//
// The GIL is taken only for the call (and the conversion of its result); the batch array handed
// to fn is a view of the worker's buffer, valid only during the call. Thread-safety: several
// instances may call it concurrently; they serialize on the GIL only while in Python.
#pragma once

#include <string>

#include "backends/backend.h"
#include "bindings/common.h"

namespace mlserve::bindings {

class PythonBackend final : public Backend {
 public:
  PythonBackend(py::object fn, std::string name);
  ~PythonBackend() override;  // releases fn with the GIL held
  void Execute(const float* x, int64_t n, int64_t d, BatchOutput* out) override;
  std::string Name() const override { return name_; }
  void ThreadExit() override;  // frees this worker's Python thread state

 private:
  py::object fn_;
  std::string name_;
};

}  // namespace mlserve::bindings
