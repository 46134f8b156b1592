// The staged normalize kernel, specialized for one plan: included by the source that
// plan/plan_codegen.cc generates for a plan and compiled at run time by NVRTC (never by nvcc at
// build time; the build embeds this file as text). The generated code defines, before including
// it, MLS_JIT_F_IN, MLS_JIT_F_OUT, MLS_JIT_TILE_ROWS (a multiple of 32), MLS_JIT_N_COUNTERS,
// MLS_JIT_TMA (bulk-copy variant) and MLS_JIT_MIN_BLOCKS (launch bounds, 0: none),
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
#if MLS_JIT_MIN_BLOCKS > 0
#define MLS_JIT_BOUNDS __launch_bounds__(MLS_JIT_THREADS, MLS_JIT_MIN_BLOCKS)
#else
#define MLS_JIT_BOUNDS __launch_bounds__(MLS_JIT_THREADS)
#endif

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

// One tile's element work: every warp takes tasks (feature c, 32 rows), lane = row; rows >= m
// (a partial tile) only join the warp-wide histogram collectives.
template <bool kCount>
__device__ __forceinline__ void mls_jit_tile(const float* s_in, float* s_out, unsigned* s_counts,
                                             int m) {
  constexpr int kGroups = MLS_JIT_TILE_ROWS / 32;  // 32-row groups per tile
  constexpr int kTasks = MLS_JIT_F_IN * kGroups;
  constexpr int kWarps = MLS_JIT_THREADS / 32;
  const int lane = threadIdx.x & 31;
  for (int task = threadIdx.x >> 5; task < kTasks; task += kWarps) {
    const int c = task / kGroups;
    const int r = (task - c * kGroups) * 32 + lane;
    const bool valid = r < m;
    const float raw = valid ? s_in[r * MLS_JIT_F_IN + c] : 0.0f;
    mls_jit_task<kCount>(c, raw, valid, s_out + r * MLS_JIT_F_OUT, s_counts, lane);
  }
}

// Zeroes an output tile (encoded blocks then only set their 1.0).
__device__ __forceinline__ void mls_jit_zero_tile(float* s_out) {
  float4* s_out4 = reinterpret_cast<float4*>(s_out);
#pragma unroll
  for (int i = threadIdx.x; i < (MLS_JIT_TILE_ROWS * MLS_JIT_F_OUT) / 4; i += MLS_JIT_THREADS) {
    s_out4[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
}

// The block's private counters: zeroed at its start, added to the device counters once at its
// end (non-zero ones only).
__device__ __forceinline__ void mls_jit_zero_counts(unsigned* s_counts) {
  for (int i = threadIdx.x; i < MLS_JIT_N_COUNTERS; i += MLS_JIT_THREADS) s_counts[i] = 0u;
}

__device__ __forceinline__ void mls_jit_merge_counts(const unsigned* s_counts,
                                                     unsigned long long* counters) {
  __syncthreads();
  for (int i = threadIdx.x; i < MLS_JIT_N_COUNTERS; i += MLS_JIT_THREADS) {
    const unsigned count = s_counts[i];
    if (count != 0u) atomicAdd(counters + i, (unsigned long long)count);
  }
}

template <bool kCount>
__device__ __forceinline__ void mls_jit_staged(const float* __restrict__ in, long long n,
                                               float* __restrict__ out,
                                               unsigned long long* __restrict__ counters) {
  constexpr int kFIn = MLS_JIT_F_IN;
  constexpr int kFOut = MLS_JIT_F_OUT;
  constexpr int kRows = MLS_JIT_TILE_ROWS;
  extern __shared__ float4 mls_jit_shared4[];
  float* s_in = reinterpret_cast<float*>(mls_jit_shared4);
  float* s_out = s_in + kRows * kFIn;  // kRows * kFIn is a multiple of 32: 16-byte aligned
  unsigned* s_counts = reinterpret_cast<unsigned*>(s_out + kRows * kFOut);
  if (kCount) mls_jit_zero_counts(s_counts);

  const long long tiles = (n + kRows - 1) / kRows;
  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const long long row0 = tile * kRows;
    const int m = n - row0 < kRows ? (int)(n - row0) : kRows;
    // row0 * kFIn and row0 * kFOut are multiples of 32 floats: tile bases stay 16-byte aligned.
    mls_jit_copy<kRows * kFIn>(s_in, in + row0 * kFIn, m * kFIn);
    mls_jit_zero_tile(s_out);
    __syncthreads();
    mls_jit_tile<kCount>(s_in, s_out, s_counts, m);
    __syncthreads();
    mls_jit_copy<kRows * kFOut>(out + row0 * kFOut, s_out, m * kFOut);
    __syncthreads();  // the next tile overwrites s_in and s_out
  }
  if (kCount) mls_jit_merge_counts(s_counts, counters);
}

#if MLS_JIT_TMA
// ---- the same kernel with Hopper's bulk copies (MLS_JIT_TMA, sm_90+) ------------------------------
//
// The tile copies above cost every thread a loop of 16-byte loads/stores per tile, and the loads
// of a tile wait for nothing else to overlap with but the other resident blocks. Here one thread
// moves whole tiles with the copy engine (cp.async.bulk, the non-tensor TMA): the next tile's
// input is loaded into the other half of a double buffer while this tile is computed (completion
// on an mbarrier), and the output tile is stored asynchronously from a double-buffered output
// tile (a bulk_group per tile; a buffer is zeroed again only after its previous store has read
// it). A partial last tile (whose byte counts need not be multiples of 16) uses the threads'
// copies. Shared layout: 2 mbarriers (16 B) | 2 input tiles | 2 output tiles | counters.

// The bulk-copy primitives. With MLS_JIT_HOST_EMU (tests/emu/cuda_host_emu.h, the host
// emulation the tests run without a GPU) they are the emulator's synchronous equivalents, so the
// pipeline's buffer and barrier-phase logic runs there too.
#ifdef MLS_JIT_HOST_EMU
#define mls_jit_bar_init mls_emu_bar_init
#define mls_jit_bulk_load mls_emu_bulk_load
#define mls_jit_bulk_wait mls_emu_bulk_wait
#define mls_jit_bulk_store mls_emu_bulk_store
#define mls_jit_bulk_wait_read1() ((void)0)
#define mls_jit_bulk_wait_all() ((void)0)
#define mls_jit_fence_proxy_async() ((void)0)
#else
__device__ __forceinline__ unsigned mls_jit_smem(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// One thread, before the block's first __syncthreads: a barrier completing on one arrival. The
// fences make the initialized barrier visible to the other threads (as CUTLASS does) and to the
// copy engine (the async proxy; as the CUDA programming guide's bulk-copy example does).
__device__ __forceinline__ void mls_jit_bar_init(unsigned long long* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(mls_jit_smem(bar)) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// One thread: expects `bytes` on the barrier and starts the bulk load of them into shared memory.
__device__ __forceinline__ void mls_jit_bulk_load(void* dst, const void* src, unsigned bytes,
                                                  unsigned long long* bar) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;"
               :: "r"(mls_jit_smem(bar)), "r"(bytes) : "memory");
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
      :: "r"(mls_jit_smem(dst)), "l"(src), "r"(bytes), "r"(mls_jit_smem(bar)) : "memory");
}

// Every thread: waits until the barrier's phase `parity` completed (the load landed).
__device__ __forceinline__ void mls_jit_bulk_wait(unsigned long long* bar, unsigned parity) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "MLS_JIT_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@p bra MLS_JIT_DONE;\n"
      "bra MLS_JIT_WAIT;\n"
      "MLS_JIT_DONE:\n"
      "}\n" :: "r"(mls_jit_smem(bar)), "r"(parity) : "memory");
}

// One thread: starts the bulk store of `bytes` of shared memory, as one bulk_group.
__device__ __forceinline__ void mls_jit_bulk_store(void* dst, const void* src, unsigned bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;"
               :: "l"(dst), "r"(mls_jit_smem(src)), "r"(bytes) : "memory");
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}

// The storing thread: waits until all but its newest bulk_group have read their shared memory.
__device__ __forceinline__ void mls_jit_bulk_wait_read1() {
  asm volatile("cp.async.bulk.wait_group.read 1;" ::: "memory");
}

// The storing thread: waits until all its bulk_groups completed.
__device__ __forceinline__ void mls_jit_bulk_wait_all() {
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}

// Every thread that wrote shared memory the copy engine will read (the async proxy).
__device__ __forceinline__ void mls_jit_fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}
#endif

template <bool kCount>
__device__ __forceinline__ void mls_jit_staged_tma(const float* __restrict__ in, long long n,
                                                   float* __restrict__ out,
                                                   unsigned long long* __restrict__ counters) {
  constexpr int kFIn = MLS_JIT_F_IN;
  constexpr int kFOut = MLS_JIT_F_OUT;
  constexpr int kRows = MLS_JIT_TILE_ROWS;
  constexpr unsigned kInBytes = kRows * kFIn * 4u;    // multiples of 128: kRows is of 32
  constexpr unsigned kOutBytes = kRows * kFOut * 4u;
  extern __shared__ float4 mls_jit_shared4[];
  unsigned long long* bars = reinterpret_cast<unsigned long long*>(mls_jit_shared4);
  float* s_in0 = reinterpret_cast<float*>(mls_jit_shared4 + 1);
  float* s_out0 = s_in0 + 2 * kRows * kFIn;
  unsigned* s_counts = reinterpret_cast<unsigned*>(s_out0 + 2 * kRows * kFOut);
  const int tid = threadIdx.x;
  if (kCount) mls_jit_zero_counts(s_counts);
  const long long tiles = (n + kRows - 1) / kRows;
  const long long full_tiles = n / kRows;
  if (tid == 0) {
    mls_jit_bar_init(bars);
    mls_jit_bar_init(bars + 1);
    if (blockIdx.x < full_tiles) {
      mls_jit_bulk_load(s_in0, in + (long long)blockIdx.x * kRows * kFIn, kInBytes, bars);
    }
  }
  __syncthreads();

  int i = 0;
  for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++i) {
    const int b = i & 1;
    float* s_in = s_in0 + b * kRows * kFIn;
    float* s_out = s_out0 + b * kRows * kFOut;
    const long long row0 = tile * kRows;
    const bool full = tile < full_tiles;
    const int m = full ? kRows : (int)(n - row0);
    if (tid == 0) {
      // Prefetch the next tile into the other input buffer: its last readers (the previous
      // iteration) are past that iteration's closing barrier.
      const long long next = tile + gridDim.x;
      if (next < full_tiles) {
        mls_jit_bulk_load(s_in0 + (b ^ 1) * kRows * kFIn, in + next * kRows * kFIn, kInBytes,
                          bars + (b ^ 1));
      }
      // This output buffer's last store (two tiles ago) must have read it before it is zeroed.
      mls_jit_bulk_wait_read1();
    }
    __syncthreads();
    mls_jit_zero_tile(s_out);
    if (full) {
      mls_jit_bulk_wait(bars + b, (unsigned)(i >> 1) & 1u);
    } else {
      mls_jit_copy<kRows * kFIn>(s_in, in + row0 * kFIn, m * kFIn);
    }
    __syncthreads();
    mls_jit_tile<kCount>(s_in, s_out, s_counts, m);
    if (full) {
      // The threads' shared writes become visible to the copy engine (async proxy), then one
      // thread stores the tile.
      mls_jit_fence_proxy_async();
      __syncthreads();
      if (tid == 0 && kOutBytes > 0) mls_jit_bulk_store(out + row0 * kFOut, s_out, kOutBytes);
    } else {
      __syncthreads();
      mls_jit_copy<kRows * kFOut>(out + row0 * kFOut, s_out, m * kFOut);
      __syncthreads();
    }
  }
  // Shared memory must outlive the stores that read it.
  if (tid == 0) mls_jit_bulk_wait_all();
  if (kCount) mls_jit_merge_counts(s_counts, counters);
}
#define MLS_JIT_STAGED mls_jit_staged_tma
#else
#define MLS_JIT_STAGED mls_jit_staged
#endif

// Shared memory per block: the input and output tiles (two of each with MLS_JIT_TMA, plus 16
// bytes of barriers), plus the counters when counting.
extern "C" __global__ void MLS_JIT_BOUNDS
    mls_jit_normalize(const float* __restrict__ in, long long n, float* __restrict__ out,
                      unsigned long long* __restrict__ counters) {
  MLS_JIT_STAGED<false>(in, n, out, counters);
}

extern "C" __global__ void MLS_JIT_BOUNDS
    mls_jit_normalize_counted(const float* __restrict__ in, long long n, float* __restrict__ out,
                              unsigned long long* __restrict__ counters) {
  MLS_JIT_STAGED<true>(in, n, out, counters);
}
