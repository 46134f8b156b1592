// C launch API of the fused feature-plan normalizer kernel (normalize.cu).
//
// One launch runs the whole compiled plan (plan/compiled_plan.h) over n rows in a single pass:
// the numeric ops, the numeric/onehot/hash encodings, and, when counters are given, the drift
// histograms of the raw input values. The semantics are exactly those of the CPU normalizer
// (mlserve::FeaturePlan::Transform); only log1p may differ by an ulp (CUDA log1pf vs libm).
//
// Ownership: the caller owns every buffer; nothing is allocated or freed here. Launches are
// asynchronous on `stream`. Thread-safety: the function keeps no state; concurrent launches that
// share a counters array are correct (counters are updated with atomics).
#pragma once

#include <stdint.h>

#include <cuda_runtime_api.h>

#include "plan/compiled_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

// Runs the plan over n rows.
//
// @param plan        host struct whose `features`, `ops` and `edges` point to DEVICE copies of
//                    the plan's arrays (n_features, n_ops and n_edges_total entries); the struct
//                    itself is read on the host and may be freed when the call returns.
// @param d_in        device input rows, n * plan->f_in float32, row-major, contiguous.
// @param n           number of rows (>= 0; 0 launches nothing).
// @param d_out       device output rows, n * plan->f_out float32, row-major; every element is
//                    written. May be null when plan->f_out == 0.
// @param d_counters  device histogram counters, plan->n_counters int64, added to (not reset);
//                    null: histograms are not computed.
// @param stream      CUDA stream of the launch.
// @return            a cudaError_t as int: cudaSuccess (0) when the launch was queued, else the
//                    launch error (kernel execution errors surface at the next synchronization).
int mls_cuda_normalize(const MlsPlanView* plan, const float* d_in, int64_t n, float* d_out,
                       int64_t* d_counters, cudaStream_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif
