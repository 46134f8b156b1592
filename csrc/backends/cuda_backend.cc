// CudaBackend and its per-instance executor (cuda_backend.h). Compiled in every build: without
// CUDA the pipeline's constructor throws Error(kUnavailable) saying how to get CUDA.
#include "backends/cuda_backend.h"

#include <utility>

#include "common/error.h"
#include "cuda/cuda_pipeline.h"

namespace mlserve {
namespace {

class CudaExecutor final : public RawBatchExecutor {
 public:
  CudaExecutor(const FeaturePlan& plan, DeviceModel& model, int32_t instance,
               const CudaPipelineOptions& options)
      : plan_(plan), model_(model), instance_(instance), pipeline_(plan, options) {}

  float* Staging(int64_t /*rows*/) override { return pipeline_.staging(); }

  void Run(int64_t n, bool histograms, BatchOutput* out) override {
    try {
      DeviceBatch batch;
      batch.instance = instance_;
      batch.device = pipeline_.device();
      batch.stream = pipeline_.stream();
      batch.x = pipeline_.Normalize(n, histograms);
      batch.rows = n;
      batch.cols = plan_.f_out();
      batch.capacity_rows = pipeline_.max_rows();
      batch.pipeline = &pipeline_;
      const DeviceResult result = model_.Enqueue(batch);
      if (result.rows != n || result.width < 0 || (result.rows > 0 && result.data == nullptr)) {
        throw Error(ErrorCode::kInternal,
                    "backend '" + model_.Name() + "' returned " + std::to_string(result.rows) +
                        " rows for a batch of " + std::to_string(n) +
                        "; it must return one row per input row");
      }
      out->rows = result.rows;
      out->width = result.width;
      out->ndim = result.ndim;
      out->data.resize(static_cast<size_t>(result.rows * result.width));
      pipeline_.Finish(result.data, result.rows * result.width, out->data.data());
    } catch (...) {
      pipeline_.Abort();  // the next batch may reuse the buffers once the stream is idle
      throw;
    }
  }

  void AddStats(ExecutorStats* stats) const override {
    const CudaPipelineStats s = pipeline_.stats();
    stats->normalize_kernel = s.normalize_kernel;
    stats->batches += s.batches;
    stats->graph_launches += s.graph_launches;
    stats->graphs += s.graphs;
    stats->graphs_disabled += s.graphs_disabled ? 1 : 0;
  }

 private:
  const FeaturePlan& plan_;
  DeviceModel& model_;
  const int32_t instance_;
  CudaBatchPipeline pipeline_;
};

// "normalize-cuda": the normalized rows themselves are the result (no model, no copy).
class NormalizedRowsModel final : public DeviceModel {
 public:
  DeviceResult Enqueue(const DeviceBatch& batch) override {
    DeviceResult result;
    result.data = batch.x;
    result.rows = batch.rows;
    result.width = batch.cols;
    result.ndim = 2;
    return result;
  }
  std::string Name() const override { return "normalize-cuda"; }
};

}  // namespace

float* DeviceBatch::Output(int64_t count) const {
  if (pipeline == nullptr) throw Error(ErrorCode::kInternal, "device batch has no pipeline");
  return pipeline->OutputBuffer(count);
}

CudaBackend::CudaBackend(std::unique_ptr<DeviceModel> model, CudaBackendOptions options)
    : model_(std::move(model)), options_(options) {
  if (!model_) ThrowInvalid("CUDA backend: no device model");
  if (options_.device < 0) ThrowInvalid("CUDA backend: device must be >= 0");
}

void CudaBackend::Execute(const float* /*x*/, int64_t /*n*/, int64_t /*d*/, BatchOutput* /*out*/) {
  throw Error(ErrorCode::kInternal, "backend '" + model_->Name() +
                                        "' runs on the GPU pipeline; it cannot execute host rows");
}

std::unique_ptr<RawBatchExecutor> CudaBackend::NewExecutor(const FeaturePlan& plan,
                                                           int32_t instance, int64_t max_rows) {
  CudaPipelineOptions options;
  options.device = options_.device;
  options.max_rows = max_rows;
  options.cuda_graphs = options_.cuda_graphs;
  options.max_graphs = options_.max_graphs;
  options.normalize_kernel = options_.normalize_kernel;
  return std::make_unique<CudaExecutor>(plan, *model_, instance, options);
}

std::unique_ptr<DeviceModel> MakeBuiltinDeviceModel(const std::string& name) {
  if (name == "normalize-cuda") return std::make_unique<NormalizedRowsModel>();
  return nullptr;
}

}  // namespace mlserve
