// DLPack for the bindings: the ABI structs (DLPack 0.8, the "dltensor" capsule every framework
// exchanges: torch, CuPy, JAX, numpy), the core's DeviceArray producer, and the consumer that
// reads a framework's array. Only float32 arrays of 1 or 2 dimensions, C-contiguous, are
// exchanged; everything else is refused with a message saying what was expected.
//
// Protocol (https://dmlc.github.io/dlpack/latest/python_spec.html): the consumer calls
// obj.__dlpack__(stream=S) with its own stream S; the producer makes the data ready for work
// queued on S afterwards, and returns a capsule named "dltensor"; the consumer renames it
// "used_dltensor" and calls the tensor's deleter once done with it. A producer whose stream is S
// (the core's batch stream, torch run on that stream) has nothing to synchronise.
//
// All functions need the GIL. Thread-safety: none beyond that.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "bindings/common.h"

namespace mlserve::bindings {

// ---- DLPack ABI (dlpack.h, v0.8; stable since 0.6) ----------------------------------------------
constexpr int32_t kDLCPU = 1;
constexpr int32_t kDLCUDA = 2;
constexpr uint8_t kDLFloat = 2;

struct DLDevice {
  int32_t device_type;  // DLDeviceType (a C enum: int-sized)
  int32_t device_id;
};

struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null: compact row-major
  uint64_t byte_offset;
};

struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

// ---- the core's arrays ----------------------------------------------------------------------------

// A float32 [rows, cols] view the core lends to Python (a batch's normalized rows on the GPU, a
// model output buffer). `alive` turns false when the lending call returns: every later use
// raises. `owner` keeps host memory alive for the CPU test hook.
struct DeviceArray {
  const float* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int32_t device_type = kDLCUDA;
  int32_t device_id = 0;
  void* stream = nullptr;  // the stream the data is (being) produced on
  std::shared_ptr<std::atomic<bool>> alive;
  py::object owner;

  // Raises InternalError when used after its call returned.
  void CheckAlive() const;
  // A DLPack capsule of the array, after making work on consumer_stream wait for `stream`
  // (CUDA only; none / -1: no synchronisation).
  py::capsule ToDlpack(const py::object& consumer_stream) const;
};

// An array read from a framework object: data pointer and shape, and `holder`, which owns the
// producer's tensor (its deleter runs when holder is released, with the GIL).
struct ImportedArray {
  const float* data = nullptr;
  int64_t rows = 0;
  int64_t width = 1;
  int32_t ndim = 2;
  int32_t device_type = 0;
  int32_t device_id = 0;
  py::object holder;
};

// Reads `obj` (anything with __dlpack__ / __dlpack_device__, e.g. a torch tensor) as a float32,
// C-contiguous [rows] or [rows, width] array on (device_type, device_id). For CUDA arrays the
// producer is asked to make the data ready on `stream`. `who` names the source in errors.
// Throws Error(kInternal) saying what was wrong.
ImportedArray ImportDlpack(const py::handle& obj, int32_t device_type, int32_t device_id,
                           void* stream, const std::string& who);

void BindDevice(py::module_& m);

}  // namespace mlserve::bindings
