// A CUDA block emulated with host threads, for running the generated (JIT) normalize kernel's
// source on machines without a GPU (tests/unit/test_plan_codegen.py). Not a general CUDA
// emulator: just what kernels/normalize_jit.cuh and the code plan/plan_codegen.cc writes use.
//
// Every CUDA thread of a block is a std::thread; __syncthreads is a barrier of the block, and the
// warp collectives (__ballot_sync, __match_any_sync) are barriers of the warp's 32 threads that
// exchange one value per lane, so a collective that not every lane reaches deadlocks here as it
// would misbehave on a GPU (the driver runs with a time limit). Shared memory is one array per
// block (blocks run one after another); atomics are GCC __atomic builtins. Float intrinsics are
// the plain operations (the file is compiled with -ffp-contract=off, as the CPU plan).
// Force-included (-include) before the generated source, with __CUDACC__ and __CUDA_ARCH__
// defined so that it takes the device paths.
#pragma once

#include <math.h>
#include <string.h>

#include <barrier>
#include <cstdint>
#include <thread>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};
struct float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

// Per-block synchronisation state, set up by the driver before the block's threads start.
struct EmuBlock {
  std::barrier<>* block = nullptr;
  std::barrier<>* warps[32] = {};
  uint64_t lane_value[32][32] = {};  // [warp][lane]
};
inline EmuBlock g_emu;

// The kernel's `extern __shared__` array (one block at a time): 227 KiB, Hopper's most dynamic
// shared memory per block.
alignas(16) inline float4 mls_jit_shared4[227 * 1024 / 16];

inline void __syncthreads() { g_emu.block->arrive_and_wait(); }

// All 32 lanes publish a value, then each reads all of them; the second barrier keeps the slots
// until every lane has read them.
template <typename Fn>
inline unsigned int EmuWarpExchange(uint64_t mine, Fn&& reduce) {
  const unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  g_emu.lane_value[warp][lane] = mine;
  g_emu.warps[warp]->arrive_and_wait();
  const unsigned int result = reduce(g_emu.lane_value[warp], lane);
  g_emu.warps[warp]->arrive_and_wait();
  return result;
}

inline unsigned int __ballot_sync(unsigned int mask, int pred) {
  (void)mask;
  return EmuWarpExchange(pred ? 1 : 0, [](const uint64_t* v, unsigned int) {
    unsigned int bits = 0;
    for (int l = 0; l < 32; ++l) bits |= v[l] ? (1u << l) : 0u;
    return bits;
  });
}

inline unsigned int __match_any_sync(unsigned int mask, int value) {
  (void)mask;
  return EmuWarpExchange(static_cast<uint32_t>(value), [](const uint64_t* v, unsigned int lane) {
    unsigned int bits = 0;
    for (int l = 0; l < 32; ++l) bits |= v[l] == v[lane] ? (1u << l) : 0u;
    return bits;
  });
}

inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __ffs(unsigned int x) { return __builtin_ffs(static_cast<int>(x)); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline unsigned int __float_as_uint(float x) {
  unsigned int u;
  memcpy(&u, &x, sizeof(u));
  return u;
}
inline float __uint_as_float(unsigned int u) {
  float x;
  memcpy(&x, &u, sizeof(x));
  return x;
}

// Hopper bulk copies (kernels/normalize_jit.cuh with MLS_JIT_TMA), emulated synchronously: a copy
// completes when it is issued, which is one legal order of the real asynchronous ones. An
// mbarrier holds its number of completed phases; waiting for phase parity p returns once the
// phase with that parity completed, and spins (until the driver's time limit) while it has not.
#define MLS_JIT_HOST_EMU 1
inline void mls_emu_bar_init(unsigned long long* bar) { __atomic_store_n(bar, 0ull, __ATOMIC_SEQ_CST); }
inline void mls_emu_bulk_load(void* dst, const void* src, unsigned bytes, unsigned long long* bar) {
  if (bytes % 16 != 0 || reinterpret_cast<uintptr_t>(dst) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    __builtin_trap();  // cp.async.bulk needs 16-byte sizes and addresses
  }
  memcpy(dst, src, bytes);
  __atomic_fetch_add(bar, 1ull, __ATOMIC_SEQ_CST);
}
inline void mls_emu_bulk_wait(unsigned long long* bar, unsigned parity) {
  while ((__atomic_load_n(bar, __ATOMIC_SEQ_CST) & 1ull) == parity) std::this_thread::yield();
}
inline void mls_emu_bulk_store(void* dst, const void* src, unsigned bytes) {
  if (bytes % 16 != 0 || reinterpret_cast<uintptr_t>(dst) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    __builtin_trap();
  }
  memcpy(dst, src, bytes);
}
