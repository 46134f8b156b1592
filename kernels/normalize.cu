// The fused feature-plan normalizer kernels (launch API in normalize.h).
//
// Staged kernel (every plan whose row fits the tile budget, i.e. f_in + f_out <= 1024 floats):
// a persistent grid of 256-thread blocks walks tiles of `tile_rows` consecutive rows. Per tile a
// block (1) copies the tile's input rows, which are contiguous in memory, into shared memory
// with coalesced 16-byte loads, (2) zeroes the tile's output rows in shared memory, (3) runs one
// thread per (row, feature) element: the feature's ops, its output block (numeric value, or the
// 1.0 of its onehot/hash slot) written into the shared output tile, and the raw value counted
// into the feature's histogram, and (4) writes the output rows, again contiguous, with coalesced
// 16-byte stores. Device memory is thus read once and written once, whole, in 16-byte accesses
// whatever the plan's column layout; the scattered accesses of onehot blocks stay in shared
// memory. Tiles whose base pointer is not 16-byte aligned use 4-byte accesses (same pattern).
//
// Per-element kernel (rows wider than the tile budget, e.g. a 5000-way onehot): one thread per
// (row, feature) element, grid-stride, reading the input coalesced and writing its output block
// directly to device memory.
//
// Histograms: when the plan's counters fit in shared memory (kMaxSharedCounters), each block
// counts privately in shared memory (32-bit counters, 32-bit shared atomics) and adds its
// non-zero counters to the int64 device counters once, at its end: one global merge per block.
// Otherwise every count is a 64-bit global atomicAdd.
//
// Float semantics match the CPU normalizer bit for bit: comparisons written so that NaN passes
// through clip, (x - a) * b as two separately rounded operations, no FMA contraction (the file
// is compiled with --fmad=false as well), IEEE division and denormals (no fast-math), and
// log1p from plan/plan_math.h, the code the CPU runs.
#include "normalize.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "plan/plan_math.h"

namespace {

constexpr int kThreads = 256;
// Shared memory of one tile (input + output rows). 16 KiB plus counters keeps 8 blocks (2048
// threads, the SM's limit) resident per SM, so while one block waits on its loads the others
// compute or store.
constexpr int kTileBytes = 16 * 1024;
constexpr int kMaxTileRows = 256;
// 16 KiB of uint32 counters per block: with the tile, under the 48 KiB default dynamic limit.
constexpr int kMaxSharedCounters = 4096;
// Grid of the per-element kernel: blocks per SM.
constexpr int kElementBlocksPerSm = 8;

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
      x = mls_log1pf(x);
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

// Counter index (relative to f.hist_begin) of the raw value of feature f.
__device__ __forceinline__ int CounterIndex(const MlsPlanView& plan, const MlsFeature& f,
                                            float raw) {
  if (f.encoding == MLS_ENC_NUMERIC) return NumericCounter(raw, plan.edges + f.edge_begin, f.n_edges);
  if (f.encoding == MLS_ENC_ONEHOT) return isnan(raw) ? f.size + 1 : OnehotSlot(raw, f.size);
  const int slot = HashSlot(raw, f.size);
  return slot >= 0 ? slot : f.size;
}

// Counts the raw value of feature f into its histogram (privately per block, or globally).
template <int kMode>
__device__ __forceinline__ void Count(const MlsPlanView& plan, const MlsFeature& f, float raw,
                                      unsigned int* shared_counters,
                                      unsigned long long* global_counters) {
  if (kMode == kNoCounters || f.hist_begin < 0) return;
  const int index = f.hist_begin + CounterIndex(plan, f, raw);
  if (kMode == kSharedCounters) {
    atomicAdd(shared_counters + index, 1u);
  } else {
    atomicAdd(global_counters + index, 1ull);
  }
}

// The counter (absolute index) the raw value of feature f goes to, or -1 for none.
template <int kMode>
__device__ __forceinline__ int CounterOf(const MlsPlanView& plan, const MlsFeature& f, float raw) {
  if (kMode == kNoCounters || f.hist_begin < 0) return -1;
  return f.hist_begin + CounterIndex(plan, f, raw);
}

// Counts one value per lane (index -1: none). Lanes of the warp that hit the same counter add
// together, one atomic per distinct counter: in the feature-major walk a warp counts 32 values
// of one feature, which mostly fall into a few bins and would otherwise serialize on them.
// Called by every lane of the warp (full mask).
template <int kMode>
__device__ __forceinline__ void CountAggregated(int index, unsigned int* shared_counters,
                                                unsigned long long* global_counters) {
  if (kMode == kNoCounters) return;
  const unsigned int same = __match_any_sync(0xffffffffu, index);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  if (index < 0 || lane != __ffs(same) - 1) return;
  const unsigned int count = static_cast<unsigned int>(__popc(same));
  if (kMode == kSharedCounters) {
    atomicAdd(shared_counters + index, count);
  } else {
    atomicAdd(global_counters + index, static_cast<unsigned long long>(count));
  }
}

// The block's one global merge of its private counters (non-zero ones only).
__device__ __forceinline__ void MergeCounters(const MlsPlanView& plan,
                                              const unsigned int* shared_counters,
                                              unsigned long long* global_counters) {
  __syncthreads();
  for (int i = threadIdx.x; i < plan.n_counters; i += blockDim.x) {
    const unsigned int count = shared_counters[i];
    if (count != 0) atomicAdd(global_counters + i, static_cast<unsigned long long>(count));
  }
}

// Advances an element position (row, col) of a row-major [*, f_in] walk by a stride that is
// row_step rows and col_step columns (col_step < f_in).
template <typename Row>
__device__ __forceinline__ void Advance(Row row_step, int col_step, int f_in, Row* row, int* col) {
  *row += row_step;
  *col += col_step;
  if (*col >= f_in) {
    *col -= f_in;
    ++*row;
  }
}

// One element's ops and output block. `dst` is the feature's first output column in the row;
// with `zeroed`, the row's output was zeroed before and encoded blocks only set their 1.0.
template <bool kZeroed>
__device__ __forceinline__ void WriteElement(const MlsPlanView& plan, const MlsFeature& f,
                                             float raw, float* dst) {
  const float x = ApplyOps(raw, plan.ops, f.op_begin, f.op_end);
  if (f.encoding == MLS_ENC_NUMERIC) {
    dst[0] = x;
    return;
  }
  if (!kZeroed) {
    for (int k = 0; k < f.width; ++k) dst[k] = 0.0f;
  }
  const int slot = f.encoding == MLS_ENC_ONEHOT ? OnehotSlot(x, f.size) : HashSlot(x, f.size);
  if (slot >= 0) dst[slot] = 1.0f;
}

// ---- staged kernel ------------------------------------------------------------------------------

// Copies `count` floats; with kVector both pointers are 16-byte aligned.
template <bool kVector>
__device__ __forceinline__ void CopyTile(float* __restrict__ dst, const float* __restrict__ src,
                                         int count) {
  int done = 0;
  if (kVector) {
    const int vectors = count >> 2;
    const float4* __restrict__ s4 = reinterpret_cast<const float4*>(src);
    float4* __restrict__ d4 = reinterpret_cast<float4*>(dst);
    for (int i = threadIdx.x; i < vectors; i += blockDim.x) d4[i] = s4[i];
    done = vectors << 2;
  }
  for (int i = done + threadIdx.x; i < count; i += blockDim.x) dst[i] = src[i];
}

template <int kMode, bool kVector>
__global__ void __launch_bounds__(kThreads)
    StagedKernel(const MlsPlanView plan, const float* __restrict__ in, int64_t n,
                 float* __restrict__ out, unsigned long long* __restrict__ global_counters,
                 int tile_rows) {
  // Layout: input tile (tile_rows * f_in) | output tile (tile_rows * f_out) | counters. Both
  // tiles hold a multiple of 4 floats (tile_rows is), so each part starts 16-byte aligned.
  extern __shared__ float4 shared4[];
  const int f_in = plan.f_in;
  const int f_out = plan.f_out;
  float* s_in = reinterpret_cast<float*>(shared4);
  float* s_out = s_in + tile_rows * f_in;
  unsigned int* s_counts = reinterpret_cast<unsigned int*>(s_out + tile_rows * f_out);
  if (kMode == kSharedCounters) {
    for (int i = threadIdx.x; i < plan.n_counters; i += blockDim.x) s_counts[i] = 0;
  }

  const int zero_vectors = (tile_rows * f_out) >> 2;
  const int64_t tiles = (n + tile_rows - 1) / tile_rows;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t row0 = tile * tile_rows;
    const int m = static_cast<int>(n - row0 < tile_rows ? n - row0 : tile_rows);
    const int in_count = m * f_in;
    CopyTile<kVector>(s_in, in + row0 * f_in, in_count);
    float4* s_out4 = reinterpret_cast<float4*>(s_out);
    for (int i = threadIdx.x; i < zero_vectors; i += blockDim.x) {
      s_out4[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    __syncthreads();

    // Feature-major walk: element i = c * m + r, so the 32 lanes of a warp take the same
    // feature on consecutive rows (tile_rows is a multiple of 32 where the row fits): the same
    // ops and encoding for the whole warp instead of up to 32 different code paths, and the
    // feature's descriptor read once per warp. Every lane runs the same number of iterations,
    // so the warp-wide histogram aggregation below sees full warps.
    const int c_step = static_cast<int>(blockDim.x) / m;
    const int r_step = static_cast<int>(blockDim.x) % m;
    int c = static_cast<int>(threadIdx.x) / m;
    int r = static_cast<int>(threadIdx.x) % m;
    for (int base = 0; base < in_count; base += blockDim.x) {
      const bool valid = base + static_cast<int>(threadIdx.x) < in_count;
      int index = -1;
      if (valid) {
        const MlsFeature& f = plan.features[c];
        const float raw = s_in[r * f_in + c];
        if (f.width > 0) WriteElement<true>(plan, f, raw, s_out + r * f_out + f.dst_col);
        index = CounterOf<kMode>(plan, f, raw);
      }
      CountAggregated<kMode>(index, s_counts, global_counters);
      Advance(c_step, r_step, m, &c, &r);
    }
    __syncthreads();
    CopyTile<kVector>(out + row0 * f_out, s_out, m * f_out);
    __syncthreads();  // the next tile overwrites s_in and s_out
  }

  if (kMode == kSharedCounters) MergeCounters(plan, s_counts, global_counters);
}

// ---- per-element kernel (rows too wide to stage) -------------------------------------------

template <int kMode>
__global__ void __launch_bounds__(kThreads)
    ElementKernel(const MlsPlanView plan, const float* __restrict__ in, int64_t n,
                  float* __restrict__ out, unsigned long long* __restrict__ global_counters) {
  extern __shared__ float4 shared4[];
  unsigned int* s_counts = reinterpret_cast<unsigned int*>(shared4);
  if (kMode == kSharedCounters) {
    for (int i = threadIdx.x; i < plan.n_counters; i += blockDim.x) s_counts[i] = 0;
    __syncthreads();
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
    const MlsFeature& f = plan.features[col];
    const float raw = in[row * f_in + col];
    if (f.width > 0) WriteElement<false>(plan, f, raw, out + row * plan.f_out + f.dst_col);
    Count<kMode>(plan, f, raw, s_counts, global_counters);
    Advance(row_step, col_step, f_in, &row, &col);
  }

  if (kMode == kSharedCounters) MergeCounters(plan, s_counts, global_counters);
}

int TileRows(const MlsPlanView& plan) {
  const int64_t row_bytes = static_cast<int64_t>(sizeof(float)) * (plan.f_in + plan.f_out);
  int64_t rows = kTileBytes / row_bytes;
  if (rows > kMaxTileRows) rows = kMaxTileRows;
  // A multiple of 32 where possible, so that each warp of the feature-major walk stays on one
  // feature; else of 4 (16-byte aligned tile parts).
  rows &= rows >= 32 ? ~int64_t{31} : ~int64_t{3};
  return rows >= 4 ? static_cast<int>(rows) : 0;
}

size_t CounterBytes(const MlsPlanView& plan) {
  return static_cast<size_t>(plan.n_counters) * sizeof(unsigned int);
}

size_t TileBytes(const MlsPlanView& plan, int tile_rows) {
  return static_cast<size_t>(tile_rows) * (plan.f_in + plan.f_out) * sizeof(float);
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <int kMode>
void LaunchStaged(const MlsPlanView& plan, const MlsCudaLaunch& launch, bool vector,
                  const float* in, int64_t n, float* out, unsigned long long* counters,
                  cudaStream_t stream) {
  const int64_t tiles = (n + launch.tile_rows - 1) / launch.tile_rows;
  const unsigned int blocks =
      static_cast<unsigned int>(tiles < launch.max_blocks ? tiles : launch.max_blocks);
  const size_t shared = TileBytes(plan, launch.tile_rows) +
                        (kMode == kSharedCounters ? CounterBytes(plan) : 0);
  if (vector) {
    StagedKernel<kMode, true>
        <<<blocks, kThreads, shared, stream>>>(plan, in, n, out, counters, launch.tile_rows);
  } else {
    StagedKernel<kMode, false>
        <<<blocks, kThreads, shared, stream>>>(plan, in, n, out, counters, launch.tile_rows);
  }
}

template <int kMode>
void LaunchElement(const MlsPlanView& plan, const MlsCudaLaunch& launch, const float* in,
                   int64_t n, float* out, unsigned long long* counters, cudaStream_t stream) {
  const int64_t needed = (n * plan.f_in + kThreads - 1) / kThreads;
  const unsigned int blocks =
      static_cast<unsigned int>(needed < launch.max_blocks ? needed : launch.max_blocks);
  const size_t shared = kMode == kSharedCounters ? CounterBytes(plan) : 0;
  ElementKernel<kMode><<<blocks, kThreads, shared, stream>>>(plan, in, n, out, counters);
}

}  // namespace

extern "C" int mls_cuda_normalize_config(const MlsPlanView* plan, int device,
                                         MlsCudaLaunch* launch) {
  if (plan == nullptr || launch == nullptr || plan->f_in < 0 || plan->f_out < 0 ||
      plan->n_counters < 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  int multiprocessors = 0;
  cudaError_t err =
      cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return static_cast<int>(err);

  MlsCudaLaunch out{};
  out.tile_rows = plan->f_in > 0 ? TileRows(*plan) : 0;
  out.shared_counters = plan->n_counters > 0 && plan->n_counters <= kMaxSharedCounters;
  const size_t counters = out.shared_counters ? CounterBytes(*plan) : 0;
  int per_sm = 0;
  if (out.tile_rows > 0) {
    out.shared_bytes = TileBytes(*plan, out.tile_rows) + counters;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, StagedKernel<kSharedCounters, true>, kThreads, out.shared_bytes);
  } else {
    out.shared_bytes = counters;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, ElementKernel<kSharedCounters>, kThreads, out.shared_bytes);
    if (per_sm > kElementBlocksPerSm) per_sm = kElementBlocksPerSm;
  }
  if (err != cudaSuccess) return static_cast<int>(err);
  out.blocks_per_sm = per_sm > 0 ? per_sm : 1;
  out.max_blocks = out.blocks_per_sm * (multiprocessors > 0 ? multiprocessors : 1);
  *launch = out;
  return static_cast<int>(cudaSuccess);
}

extern "C" int mls_cuda_normalize(const MlsPlanView* plan, const MlsCudaLaunch* launch,
                                  const float* d_in, int64_t n, float* d_out,
                                  int64_t* d_counters, cudaStream_t stream) {
  if (plan == nullptr || launch == nullptr || n < 0 || launch->max_blocks <= 0) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (n == 0 || plan->f_in <= 0) return static_cast<int>(cudaSuccess);

  // Device counters are int64 in the API; the atomics work on the same bits as unsigned.
  unsigned long long* counters = reinterpret_cast<unsigned long long*>(d_counters);
  int mode = kNoCounters;
  if (counters != nullptr && plan->n_counters > 0) {
    // Per-block 32-bit counts cannot overflow below 2^32 elements in the whole launch.
    const bool small = n * static_cast<int64_t>(plan->f_in) < (int64_t{1} << 32);
    mode = launch->shared_counters && small ? kSharedCounters : kGlobalCounters;
  }
  if (launch->tile_rows > 0) {
    const bool vector = Aligned16(d_in) && (d_out == nullptr || Aligned16(d_out));
    if (mode == kNoCounters) {
      LaunchStaged<kNoCounters>(*plan, *launch, vector, d_in, n, d_out, nullptr, stream);
    } else if (mode == kSharedCounters) {
      LaunchStaged<kSharedCounters>(*plan, *launch, vector, d_in, n, d_out, counters, stream);
    } else {
      LaunchStaged<kGlobalCounters>(*plan, *launch, vector, d_in, n, d_out, counters, stream);
    }
  } else if (mode == kNoCounters) {
    LaunchElement<kNoCounters>(*plan, *launch, d_in, n, d_out, nullptr, stream);
  } else if (mode == kSharedCounters) {
    LaunchElement<kSharedCounters>(*plan, *launch, d_in, n, d_out, counters, stream);
  } else {
    LaunchElement<kGlobalCounters>(*plan, *launch, d_in, n, d_out, counters, stream);
  }
  return static_cast<int>(cudaGetLastError());
}
