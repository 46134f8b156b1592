// CudaBackend: a Backend for a model placed on a GPU. It gives every batcher instance its own
// CudaBatchPipeline (stream, page-locked staging, reused device buffers, CUDA graphs; see
// cuda/cuda_pipeline.h) and runs a DeviceModel on the normalized rows where they are, on the
// device and on the instance's stream:
//
//     gather raw rows (batcher) -> H2D -> fused normalize kernel -> DeviceModel -> D2H -> publish
//
// DeviceModels: the built-in "normalize-cuda" (its output is the normalized rows: measures and
// tests the pipeline itself) and, through the Python bindings, callables that hand the device
// batch to torch (DLPack, same stream, no copy) or TensorRT (bindings/python_device_model.h).
//
// Ownership: the batcher owns the backend; the backend owns its DeviceModel; each executor
// (one per instance) owns its pipeline and is owned by the batcher. Thread-safety: an executor
// is used by one worker thread; a DeviceModel's Enqueue is called concurrently by all of them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "backends/backend.h"

namespace mlserve {

class CudaBatchPipeline;

// One batch as a DeviceModel sees it. Valid during DeviceModel::Enqueue only.
struct DeviceBatch {
  int32_t instance = 0;
  int device = 0;
  void* stream = nullptr;       // cudaStream_t of the instance: enqueue everything on it
  const float* x = nullptr;     // normalized rows on the device, rows * cols floats, row-major
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t capacity_rows = 0;    // rows the buffer at x holds (a model may read padding rows)
  CudaBatchPipeline* pipeline = nullptr;  // OutputBuffer(): a device buffer for the result

  // The instance's device buffer for a result of `count` floats (valid until the batch ends).
  float* Output(int64_t count) const;
};

// Where a DeviceModel left its float32 result on the device: rows * width floats, row-major.
// It must stay valid until the batch's stream is synchronized (the end of the batch).
struct DeviceResult {
  const float* data = nullptr;
  int64_t rows = 0;
  int64_t width = 1;
  int32_t ndim = 2;  // 1: [rows]; 2: [rows, width]
};

class DeviceModel {
 public:
  virtual ~DeviceModel() = default;
  // Enqueues the model on batch.stream. Throws mlserve::Error (code kept) or std::exception.
  virtual DeviceResult Enqueue(const DeviceBatch& batch) = 0;
  virtual std::string Name() const = 0;
  // Called by each worker thread once, after its last Enqueue.
  virtual void ThreadExit() {}
};

struct CudaBackendOptions {
  int device = 0;
  bool cuda_graphs = true;
  int32_t max_graphs = 64;  // per instance
  // "generic" | "jit" | "jit-tma" | "auto"; "": $MLSERVE_CUDA_KERNEL, else generic.
  std::string normalize_kernel;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(std::unique_ptr<DeviceModel> model, CudaBackendOptions options);
  // Never called: the batcher runs this backend through its executors.
  void Execute(const float* x, int64_t n, int64_t d, BatchOutput* out) override;
  std::string Name() const override { return model_->Name(); }
  void ThreadExit() override { model_->ThreadExit(); }
  // Throws Error(kUnavailable) without a CUDA build or a usable device.
  std::unique_ptr<RawBatchExecutor> NewExecutor(const FeaturePlan& plan, int32_t instance,
                                                int64_t max_rows) override;

 private:
  const std::unique_ptr<DeviceModel> model_;
  const CudaBackendOptions options_;
};

// Built-in device models: "normalize-cuda". Returns nullptr for an unknown name.
std::unique_ptr<DeviceModel> MakeBuiltinDeviceModel(const std::string& name);

}  // namespace mlserve
