// The fused feature-plan normalizer kernel (launch API in normalize.h).
//
// Work decomposition: one thread per (row, feature) element, grid-stride over the n * f_in
// elements of the row-major input, so that a warp reads consecutive input floats and writes
// (mostly) consecutive output columns. Each element applies its feature's ops, writes the
// feature's output block (zeroed, then the slot set, for onehot/hash) and counts the RAW value
// into the feature's histogram counters.
//
// Counters: when the plan's counters fit in shared memory (kMaxSharedCounters), each block
// counts privately in shared memory and adds its non-zero counters to global memory once at
// the end; otherwise every count is a global atomicAdd.
//
// Float semantics match the CPU normalizer bit for bit: comparisons written so that NaN passes
// through clip, (x - a) * b as two separately rounded operations (no FMA contraction), IEEE
// denormals (no fast-math). log1pf is CUDA's (max 1 ulp error), the one place results may differ.
#include "normalize.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

namespace {

constexpr int kThreadsPerBlock = 256;
// Blocks per multiprocessor of the grid-stride grid: enough to fill an SM, few enough that
// flushing privatized counters stays cheap.
constexpr int kBlocksPerSm = 8;
// 32 KiB of int64 counters per block: under the 48 KiB dynamic shared memory default.
constexpr int kMaxSharedCounters = 4096;

enum CounterMode { kNoCounters = 0, kSharedCounters = 1, kGlobalCounters = 2 };

__device__ __forceinline__ float ApplyOps(float x, const MlsOp* __restrict__ ops, int begin,
                                          int end) {
  for (int i = begin; i < end; ++i) {
    const int code = ops[i].code;
    const float a = ops[i].a;
    if (code == MLS_OP_IMPUTE) {
      x = isnan(x) ? a : x;
    } else if (code == MLS_OP_CLIP) {
      // Explicit comparisons: false for NaN, so NaN stays NaN (fminf/fmaxf would drop it).
      const float b = ops[i].b;
      x = x < a ? a : x;
      x = x > b ? b : x;
    } else if (code == MLS_OP_LOG1P) {
      x = log1pf(x);
    } else if (code == MLS_OP_AFFINE) {
      x = __fmul_rn(__fsub_rn(x, a), ops[i].b);
    }
  }
  return x;
}

// Onehot slot of a code: the code when integral and 0 <= code < size, else size (OOV; NaN and
// +-inf included, since every comparison with NaN is false).
__device__ __forceinline__ int OnehotSlot(float x, int size) {
  if (x >= 0.0f && x < 2147483648.0f && truncf(x) == x) {
    const int64_t code = static_cast<int64_t>(x);
    if (code < size) return static_cast<int>(code);
  }
  return size;
}

// Hash bucket of a code, or -1 when the code is not finite, not integral or |code| >= 2^63.
__device__ __forceinline__ int HashSlot(float x, int size) {
  if (fabsf(x) < 9223372036854775808.0f && truncf(x) == x) {
    const uint64_t h = mls_splitmix64(static_cast<uint64_t>(static_cast<int64_t>(x)));
    return static_cast<int>(h % static_cast<uint64_t>(size));
  }
  return -1;
}

// Counter index (relative to hist_begin) of a raw numeric value: the number of edges <= x, i.e.
// 0 = underflow, 1 + j = bin j, n_edges = overflow; NaN -> n_edges + 1.
__device__ __forceinline__ int NumericCounter(float x, const float* __restrict__ edges,
                                              int n_edges) {
  if (isnan(x)) return n_edges + 1;
  int lo = 0;
  int hi = n_edges;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (edges[mid] <= x) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

template <int kMode>
__device__ __forceinline__ void Count(unsigned long long* counters, int index) {
  if (kMode == kSharedCounters || kMode == kGlobalCounters) atomicAdd(counters + index, 1ull);
}

// One element: feature `col` of row `row`.
template <int kMode>
__device__ __forceinline__ void NormalizeElement(const MlsPlanView& plan,
                                                 const float* __restrict__ in, int64_t row,
                                                 int col, float* __restrict__ out,
                                                 unsigned long long* counters) {
  const MlsFeature& f = plan.features[col];
  const float raw = in[row * plan.f_in + f.src_col];
  const int encoding = f.encoding;

  if (f.width > 0) {
    const float x = ApplyOps(raw, plan.ops, f.op_begin, f.op_end);
    float* dst = out + row * plan.f_out + f.dst_col;
    if (encoding == MLS_ENC_NUMERIC) {
      dst[0] = x;
    } else {
      for (int k = 0; k < f.width; ++k) dst[k] = 0.0f;
      const int slot = encoding == MLS_ENC_ONEHOT ? OnehotSlot(x, f.size) : HashSlot(x, f.size);
      if (slot >= 0) dst[slot] = 1.0f;
    }
  }

  if (kMode != kNoCounters && f.hist_begin >= 0) {
    int index;
    if (encoding == MLS_ENC_NUMERIC) {
      index = NumericCounter(raw, plan.edges + f.edge_begin, f.n_edges);
    } else if (encoding == MLS_ENC_ONEHOT) {
      index = isnan(raw) ? f.size + 1 : OnehotSlot(raw, f.size);
    } else {
      const int slot = HashSlot(raw, f.size);
      index = slot >= 0 ? slot : f.size;
    }
    Count<kMode>(counters, f.hist_begin + index);
  }
}

template <int kMode>
__global__ void __launch_bounds__(kThreadsPerBlock)
    NormalizeKernel(const MlsPlanView plan, const float* __restrict__ in, int64_t n,
                    float* __restrict__ out, unsigned long long* __restrict__ global_counters) {
  extern __shared__ unsigned long long shared_counters[];
  unsigned long long* counters = global_counters;
  if (kMode == kSharedCounters) {
    for (int i = threadIdx.x; i < plan.n_counters; i += blockDim.x) shared_counters[i] = 0;
    __syncthreads();
    counters = shared_counters;
  }

  // Walk the elements e = row * f_in + col without a 64-bit division per element: divide once,
  // then advance (row, col) by the grid stride.
  const int f_in = plan.f_in;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t row = first / f_in;
  int col = static_cast<int>(first % f_in);
  const int64_t row_step = stride / f_in;
  const int col_step = static_cast<int>(stride % f_in);
  while (row < n) {
    NormalizeElement<kMode>(plan, in, row, col, out, counters);
    row += row_step;
    col += col_step;
    if (col >= f_in) {
      col -= f_in;
      ++row;
    }
  }

  if (kMode == kSharedCounters) {
    __syncthreads();
    for (int i = threadIdx.x; i < plan.n_counters; i += blockDim.x) {
      const unsigned long long c = shared_counters[i];
      if (c != 0) atomicAdd(global_counters + i, c);
    }
  }
}

}  // namespace

extern "C" int mls_cuda_normalize(const MlsPlanView* plan, const float* d_in, int64_t n,
                                  float* d_out, int64_t* d_counters, cudaStream_t stream) {
  if (plan == nullptr || n < 0) return static_cast<int>(cudaErrorInvalidValue);
  if (n == 0 || plan->f_in <= 0) return static_cast<int>(cudaSuccess);

  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return static_cast<int>(err);
  int multiprocessors = 0;
  err = cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return static_cast<int>(err);

  const int64_t elements = n * plan->f_in;
  const int64_t blocks_needed = (elements + kThreadsPerBlock - 1) / kThreadsPerBlock;
  const int64_t max_blocks = static_cast<int64_t>(multiprocessors) * kBlocksPerSm;
  const unsigned int blocks =
      static_cast<unsigned int>(blocks_needed < max_blocks ? blocks_needed : max_blocks);

  // Device counters are int64 in the API; the atomics work on the same bits as unsigned.
  unsigned long long* counters = reinterpret_cast<unsigned long long*>(d_counters);
  if (counters == nullptr || plan->n_counters <= 0) {
    NormalizeKernel<kNoCounters><<<blocks, kThreadsPerBlock, 0, stream>>>(*plan, d_in, n, d_out,
                                                                          nullptr);
  } else if (plan->n_counters <= kMaxSharedCounters) {
    const size_t shared_bytes = static_cast<size_t>(plan->n_counters) * sizeof(unsigned long long);
    NormalizeKernel<kSharedCounters>
        <<<blocks, kThreadsPerBlock, shared_bytes, stream>>>(*plan, d_in, n, d_out, counters);
  } else {
    NormalizeKernel<kGlobalCounters>
        <<<blocks, kThreadsPerBlock, 0, stream>>>(*plan, d_in, n, d_out, counters);
  }
  return static_cast<int>(cudaGetLastError());
}
