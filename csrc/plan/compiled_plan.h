// The compiled feature plan as plain C data, shared by the CPU normalizer (csrc/plan) and the
// CUDA kernels (kernels/). No STL, no pointers owned here: a PlanView points into storage owned
// by mlserve::FeaturePlan, which outlives every use of the view.
//
// Layout of one input row: f_in float32 columns, one per feature (feature i reads column i).
// Layout of one output row: f_out float32 columns; feature i writes [dst_col, dst_col + width).
// Histogram counters of all features live in one int64 array of n_counters entries.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Numeric instructions, applied in order to one float value.
enum MlsOpCode {
  MLS_OP_IMPUTE = 0,  // if (x != x) x = a
  MLS_OP_CLIP = 1,    // x = min(max(x, a), b)   (NaN stays NaN)
  MLS_OP_LOG1P = 2,   // x = log1p(x)
  MLS_OP_AFFINE = 3,  // x = (x - a) * b         (standardize: a=mean, b=1/std;
                      //                          minmax: a=lo, b=1/(hi-lo))
};

// How a feature's final value becomes output columns.
enum MlsEncoding {
  MLS_ENC_NUMERIC = 0,  // width 1: the value after the ops
  MLS_ENC_ONEHOT = 1,   // width size+1: slot = code if integral and 0 <= code < size, else size
                        // (out-of-vocabulary, NaN included)
  MLS_ENC_HASH = 2,     // width size: slot = splitmix64((uint64)(int64)code) % size when code is
                        // finite, integral and |code| < 2^63; else no slot (all zeros)
};

typedef struct MlsOp {
  int32_t code;  // MlsOpCode
  float a;
  float b;
} MlsOp;

typedef struct MlsFeature {
  int32_t src_col;   // input column
  int32_t dst_col;   // first output column; -1 when the feature is not in the output
  int32_t width;     // output columns (0 when not in the output)
  int32_t encoding;  // MlsEncoding
  int32_t size;      // onehot vocabulary size / hash bucket count; 0 for numeric
  int32_t op_begin;  // instructions [op_begin, op_end) of PlanView.ops, applied before encoding
  int32_t op_end;
  // Histogram of the RAW input value (before any op). hist_begin = -1: no histogram.
  // numeric:     counters [underflow, bin_0 .. bin_{n_edges-2}, overflow, nan]  (n_edges + 2)
  //              bin_j counts edges[j] <= x < edges[j+1]; x < edges[0] underflow;
  //              x >= edges[n_edges-1] overflow.
  // onehot:      counters [slot_0 .. slot_size (OOV), missing]                  (size + 2)
  // hash:        counters [bucket_0 .. bucket_{size-1}, missing]                (size + 1)
  //              (missing = raw NaN; for hash also non-finite or non-integral codes)
  int32_t hist_begin;
  int32_t edge_begin;  // numeric histogram: edges [edge_begin, edge_begin + n_edges) of .edges
  int32_t n_edges;
} MlsFeature;

typedef struct MlsPlanView {
  const MlsFeature* features;
  int32_t n_features;  // == f_in
  const MlsOp* ops;
  int32_t n_ops;
  const float* edges;  // float32: bins are decided on float32 values, exactly as the input
  int32_t n_edges_total;
  int32_t f_in;
  int32_t f_out;
  int32_t n_counters;
} MlsPlanView;

// splitmix64 finalizer: the hash of hash_bucket (documented in docs/feature_plan.md so that
// other implementations, e.g. numpy references, reproduce it bit for bit).
#ifdef __CUDACC__
__host__ __device__
#endif
static inline uint64_t mls_splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

#ifdef __cplusplus
}  // extern "C"
#endif
