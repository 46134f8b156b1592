// The staged normalize kernel, specialized for one plan: included by the source that
// plan/plan_codegen.cc generates for a plan and compiled at run time by NVRTC (never by nvcc at
// build time; the build embeds this file as text). The generated code defines, before including
// it, MLS_JIT_F_IN, MLS_JIT_F_OUT, MLS_JIT_TILE_ROWS (a multiple of 32) and MLS_JIT_N_COUNTERS,
// and, after it, mls_jit_task<kCount>(): one feature's ops, output block and histogram count for
// the 32 rows of a warp.
//
// Same structure as the generic staged kernel (kernels/normalize.cu), with everything the plan
// fixes known at compile time:
//   - a persistent grid of 256-thread blocks walks tiles of MLS_JIT_TILE_ROWS rows;
//   - per tile: the input rows (contiguous) are copied into shared memory with 16-byte loads,
//     the output tile is zeroed, then every warp takes tasks (feature c, 32 rows): lane = row,
//     so the feature, its ops and its constants are the same for the whole warp and the
//     histogram counts aggregate across the warp (one ballot per edge for numeric features);
//   - the output rows are written back with 16-byte stores.
// Full tiles run with compile-time trip counts; the last, partial tile masks rows >= m.
// Histograms: private 32-bit counters in shared memory, merged into the int64 device counters
// once per block (the launcher uses this kernel only where they fit, i.e. the generic kernel's
// shared-counter mode). Buffers must be 16-byte aligned (the launcher checks; otherwise the
// generic kernel runs).
#pragma once

#define MLS_JIT_THREADS 256
#define MLS_JIT_FULL_MASK 0xffffffffu

// Counts one value per lane (counter -1: none); lanes that hit the same counter add together,
// one shared atomic per distinct counter. Called by all 32 lanes of the warp.
__device__ __forceinline__ void mls_jit_count_aggregated(int counter, unsigned* counts, int lane) {
  const unsigned same = __match_any_sync(MLS_JIT_FULL_MASK, counter);
  if (counter >= 0 && lane == __ffs(same) - 1) atomicAdd(counts + counter, (unsigned)__popc(same));
}

// Copies `count` floats between 16-byte aligned buffers: 16-byte accesses, then the tail.
template <int kMaxCount>
__device__ __forceinline__ void mls_jit_copy(float* __restrict__ dst, const float* __restrict__ src,
                                             int count) {
  const int vectors = count >> 2;
  const float4* __restrict__ s4 = reinterpret_cast<const float4*>(src);
  float4* __restrict__ d4 = reinterpret_cast<float4*>(dst);
  if (count == kMaxCount) {
    // Full tile: compile-time trip count, unrolled.
#pragma unroll
    for (int i = threadIdx.x; i < (kMaxCount >> 2); i += MLS_JIT_THREADS) d4[i] = s4[i];
#pragma unroll
    for (int i = ((kMaxCount >> 2) << 2) + threadIdx.x; i < kMaxCount; i += MLS_JIT_THREADS) {
      dst[i] = src[i];
    }
    return;
  }
  for (int i = threadIdx.x; i < vectors; i += MLS_JIT_THREADS) d4[i] = s4[i];
  for (int i = (vectors << 2) + threadIdx.x; i < count; i += MLS_JIT_THREADS) dst[i] = src[i];
}

// Defined by the generated code (after this file).
template <bool kCount>
__device__ __forceinline__ void mls_jit_task(int c, float raw, bool valid, float* o,
                                             unsigned* counts, int lane);

template <bool kCount>
__device__ __forceinline__ void mls_jit_staged(const float* __restrict__ in, long long n,
                                               float* __restrict__ out,
                                               unsigned long long* __restrict__ counters) {
  constexpr int kFIn = MLS_JIT_F_IN;
  constexpr int kFOut = MLS_JIT_F_OUT;
  constexpr int kRows = MLS_JIT_TILE_ROWS;
  constexpr int kGroups = kRows / 32;  // 32-row groups per tile
  constexpr int kTasks = kFIn * kGroups;
  constexpr int kWarps = MLS_JIT_THREADS / 32;
  extern __shared__ float4 mls_jit_shared4[];
  float* s_in = reinterpret_cast<float*>(mls_jit_shared4);
  float* s_out = s_in + kRows * kFIn;  // kRows * kFIn is a multiple of 32: 16-byte aligned
  unsigned* s_counts = reinterpret_cast<unsigned*>(s_out + kRows * kFOut);
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  if (kCount) {
    for (int i = tid; i < MLS_JIT_N_COUNTERS; i += MLS_JIT_THREADS) s_counts[i] = 0u;
  }

  const long long tiles = (n + kRows - 1) / kRows;
  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const long long row0 = tile * kRows;
    const int m = n - row0 < kRows ? (int)(n - row0) : kRows;
    // row0 * kFIn and row0 * kFOut are multiples of 32 floats: tile bases stay 16-byte aligned.
    mls_jit_copy<kRows * kFIn>(s_in, in + row0 * kFIn, m * kFIn);
    float4* s_out4 = reinterpret_cast<float4*>(s_out);
#pragma unroll
    for (int i = tid; i < (kRows * kFOut) / 4; i += MLS_JIT_THREADS) {
      s_out4[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    __syncthreads();

    for (int task = warp; task < kTasks; task += kWarps) {
      const int c = task / kGroups;
      const int r = (task - c * kGroups) * 32 + lane;
      const bool valid = r < m;
      const float raw = valid ? s_in[r * kFIn + c] : 0.0f;
      mls_jit_task<kCount>(c, raw, valid, s_out + r * kFOut, s_counts, lane);
    }
    __syncthreads();
    mls_jit_copy<kRows * kFOut>(out + row0 * kFOut, s_out, m * kFOut);
    __syncthreads();  // the next tile overwrites s_in and s_out
  }

  if (kCount) {
    __syncthreads();
    for (int i = tid; i < MLS_JIT_N_COUNTERS; i += MLS_JIT_THREADS) {
      const unsigned count = s_counts[i];
      if (count != 0u) atomicAdd(counters + i, (unsigned long long)count);
    }
  }
}

// Shared memory per block: the input and output tiles, plus the counters when counting.
extern "C" __global__ void __launch_bounds__(MLS_JIT_THREADS)
    mls_jit_normalize(const float* __restrict__ in, long long n, float* __restrict__ out,
                      unsigned long long* __restrict__ counters) {
  mls_jit_staged<false>(in, n, out, counters);
}

extern "C" __global__ void __launch_bounds__(MLS_JIT_THREADS)
    mls_jit_normalize_counted(const float* __restrict__ in, long long n, float* __restrict__ out,
                              unsigned long long* __restrict__ counters) {
  mls_jit_staged<true>(in, n, out, counters);
}
