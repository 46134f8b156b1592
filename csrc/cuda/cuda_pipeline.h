// CudaBatchPipeline: the per-instance GPU path of a model placed on a GPU.
//
// One pipeline per batcher instance (worker thread): its own CUDA stream, a page-locked host
// staging buffer that the worker gathers the batch's raw rows into, device buffers for the raw
// and normalized rows, a device buffer for model outputs, and page-locked buffers for results
// and histogram counts, all sized once for max_rows and reused across batches. A batch is
//
//     gather (host) -> Normalize: H2D copy -> fused kernel [-> counters D2H, counters reset]
//                   -> the model, enqueued by the caller on stream()
//                   -> Finish: D2H copy of the result, the batch's only synchronisation
//
// all on the one stream. Normalize's sequence is the same for every batch of the same size, so
// it is captured once per (size, histograms) into a CUDA graph and replayed (one launch instead
// of four); when capture or instantiation fails the pipeline falls back to plain launches.
//
// Errors: every CUDA failure throws mlserve::Error (kUnavailable: no device / out of memory;
// kInternal otherwise) with CUDA's message; construction in a CPU-only build or without a
// usable device throws kUnavailable. After a throw, call Abort() before the next batch.
//
// Thread-safety: a pipeline belongs to one worker thread; stats() may be called from any thread.
// The FeaturePlan must outlive it.
// This header does not include CUDA's: streams are passed as void* (a cudaStream_t).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "plan/feature_plan.h"

namespace mlserve {

struct CudaPipelineOptions {
  int device = 0;              // CUDA device index
  int64_t max_rows = 1;        // largest batch (rows); buffers are sized for it
  bool cuda_graphs = true;     // capture the per-batch-size sequence into CUDA graphs
  int32_t max_graphs = 64;     // distinct (size, histograms) graphs kept; later sizes launch plainly
  // Normalize kernel: "generic" | "jit" | "auto" (cuda/jit_compile.h); "": $MLSERVE_CUDA_KERNEL,
  // else generic.
  std::string normalize_kernel;
};

struct CudaPipelineStats {
  const char* normalize_kernel = "";  // "generic" | "jit" | "jit-tma": what the plan got built
  int64_t batches = 0;
  int64_t graph_launches = 0;  // batches whose Normalize was one graph launch
  int64_t graphs = 0;          // graphs instantiated
  bool graphs_disabled = false;  // capture failed once: plain launches from then on
};

class CudaBatchPipeline {
 public:
  CudaBatchPipeline(const FeaturePlan& plan, const CudaPipelineOptions& options);
  ~CudaBatchPipeline();
  CudaBatchPipeline(const CudaBatchPipeline&) = delete;
  CudaBatchPipeline& operator=(const CudaBatchPipeline&) = delete;

  // Page-locked host buffer of max_rows() * f_in floats: the batch's raw rows, row-major.
  float* staging() const;
  int64_t max_rows() const;
  int device() const;
  void* stream() const;  // cudaStream_t

  // Enqueues the H2D copy of the first n staged rows and the fused kernel (counting the raw
  // values when `histograms`). Returns the device address of the normalized rows, n * f_out
  // floats, valid until the next Normalize. 1 <= n <= max_rows().
  const float* Normalize(int64_t n, bool histograms);

  // Device buffer for a model's output, at least `count` floats, valid until the next call
  // (grow-only; growing synchronizes the stream first, so it is safe at any point of a batch).
  float* OutputBuffer(int64_t count);

  // Ends the batch: enqueues the D2H copy of `count` floats at device address `d_result`,
  // synchronizes the stream, merges the batch's histogram counts into the plan and copies the
  // result to `host_out` (count floats).
  void Finish(const float* d_result, int64_t count, float* host_out);

  // After a failed batch: waits for the stream (errors ignored) so that the buffers may be
  // reused; the failed batch's counts are dropped. Never throws.
  void Abort() noexcept;

  CudaPipelineStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mlserve
