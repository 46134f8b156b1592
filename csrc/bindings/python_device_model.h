// PythonDeviceModel: a DeviceModel (backends/cuda_backend.h) that calls a Python callable
// fn(batch) once per batch, where `batch` is an mlserve._core.DeviceBatch: the normalized rows
// on the GPU as a DLPack array (torch.from_dlpack(batch) shares the memory, no copy), with the
// instance's CUDA stream (batch.stream), its index (batch.instance) and a device buffer for the
// result (batch.output(rows, width)). fn enqueues the model on batch.stream and returns its
// float32 [rows] or [rows, width] result as any DLPack array on the same device (a torch
// tensor, or batch.output(...)); the core then copies it to the host on the same stream.
//
// The GIL is taken only for the call and the DLPack exchange. The result is kept (a reference)
// until the worker's next batch, by which time the batch's stream was synchronized, so the
// producer's memory cannot be reused while the copy still reads it; the batch objects handed to
// fn are invalidated when fn returns. Thread-safety: all instances call Enqueue concurrently;
// they serialize on the GIL only while in Python.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "backends/cuda_backend.h"
#include "bindings/common.h"

namespace mlserve::bindings {

class PythonDeviceModel final : public DeviceModel {
 public:
  PythonDeviceModel(py::object fn, std::string name);
  ~PythonDeviceModel() override;  // releases fn with the GIL held
  DeviceResult Enqueue(const DeviceBatch& batch) override;
  std::string Name() const override { return name_; }
  void ThreadExit() override;  // drops the kept result, frees the thread state

 private:
  py::object fn_;
  std::string name_;
};

// The mlserve._core.DeviceBatch object handed to fn (device_bindings.cc); it raises once
// `alive` is false.
py::object WrapDeviceBatch(const DeviceBatch& batch, std::shared_ptr<std::atomic<bool>> alive);

}  // namespace mlserve::bindings
