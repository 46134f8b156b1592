// C launch API of the fused feature-plan normalizer kernels (normalize.cu).
//
// One launch runs the whole compiled plan (plan/compiled_plan.h) over n rows in a single pass:
// the numeric ops, the numeric/onehot/hash encodings, and, when counters are given, the drift
// histograms of the raw input values. The results are bit-identical to the CPU normalizer
// (mlserve::FeaturePlan::Transform): the same float32 operations in the same order, no FMA
// contraction, and the same log1p code (plan/plan_math.h).
//
// Two steps: mls_cuda_normalize_config() picks the kernel variant and grid for a plan's shape on
// a device (it queries the device: call it once, outside stream capture); mls_cuda_normalize()
// only launches, so it may be captured into a CUDA graph.
//
// Ownership: the caller owns every buffer; nothing is allocated or freed here. Launches are
// asynchronous on `stream`. Thread-safety: no state is kept; concurrent launches that share a
// counters array are correct (counters are updated with atomics).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "plan/compiled_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

// Which kernel a plan runs with, and its grid (filled by mls_cuda_normalize_config).
typedef struct MlsCudaLaunch {
  // Rows per block tile of the staged kernel (a multiple of 4); 0: rows are too wide to stage
  // in shared memory and the per-element kernel runs instead.
  int32_t tile_rows;
  // Whether the histogram counters fit in shared memory (one private copy per block).
  int32_t shared_counters;
  size_t shared_bytes;      // dynamic shared memory per block
  int32_t max_blocks;       // persistent grid: resident blocks per SM * SMs
  int32_t blocks_per_sm;    // occupancy the grid was sized for (reported by benchmarks)
} MlsCudaLaunch;

// Chooses the kernel and grid for the plan's f_in, f_out and n_counters on `device`.
// @return  a cudaError_t as int (cudaSuccess when `launch` was filled).
int mls_cuda_normalize_config(const MlsPlanView* plan, int device, MlsCudaLaunch* launch);

// Runs the plan over n rows.
//
// @param plan        host struct whose `features`, `ops` and `edges` point to DEVICE copies of
//                    the plan's arrays (n_features, n_ops and n_edges_total entries); the struct
//                    itself is passed by value to the kernel and may be freed on return.
// @param launch      from mls_cuda_normalize_config for this plan and the current device.
// @param d_in        device input rows, n * plan->f_in float32, row-major, contiguous.
//                    16-byte aligned rows are read with 16-byte loads, others with 4-byte ones.
// @param n           number of rows (>= 0; 0 launches nothing).
// @param d_out       device output rows, n * plan->f_out float32, row-major; every element is
//                    written. May be null when plan->f_out == 0.
// @param d_counters  device histogram counters, plan->n_counters int64, added to (not reset);
//                    null: histograms are not computed.
// @param stream      CUDA stream of the launch.
// @return            a cudaError_t as int: cudaSuccess (0) when the launch was queued, else the
//                    launch error (kernel execution errors surface at the next synchronization).
int mls_cuda_normalize(const MlsPlanView* plan, const MlsCudaLaunch* launch, const float* d_in,
                       int64_t n, float* d_out, int64_t* d_counters, cudaStream_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif
