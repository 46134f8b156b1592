// Float32 math shared by the CPU normalizer (feature_plan.cc) and the CUDA kernel
// (kernels/normalize.cu), so that both compute log1p with the same operations in the same order
// and therefore the same bits.
//
// Every operation below is a single IEEE-754 round-to-nearest float32 operation, provided the
// translation unit is compiled without floating-point contraction: -ffp-contract=off for the
// host compiler (CMakeLists.txt sets it on feature_plan.cc) and --fmad=false for nvcc (set on
// the kernels). Division is IEEE division on both (nvcc's default -prec-div=true). Stateless.
#pragma once

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define MLS_HOST_DEVICE __host__ __device__
#else
#define MLS_HOST_DEVICE
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Bit casts (memcpy is what host compilers turn into a register move; in device code it would
// go through a stack slot).
MLS_HOST_DEVICE static inline uint32_t mls_float_bits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  uint32_t bits;
  memcpy(&bits, &x, sizeof(bits));
  return bits;
#endif
}

MLS_HOST_DEVICE static inline float mls_bits_float(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float x;
  memcpy(&x, &bits, sizeof(x));
  return x;
#endif
}

// log1p(x) for float32, branch-free so the CPU op loop vectorises (libm's log1pf is a scalar
// call, ~25 ns a value). fdlibm's reduction: u = 1 + x = 2^k * m with m in [sqrt(1/2), sqrt(2)),
// log(m) from an odd polynomial in s = f / (2 + f) (f = m - 1), plus c / u, which restores the
// bits 1 + x rounded away. Within 1 ulp of the true value; IEEE specials are selected last.
MLS_HOST_DEVICE static inline float mls_log1pf(float x) {
  const float kLn2Hi = 6.9313812256e-01f, kLn2Lo = 9.0580006145e-06f;
  const float kLg1 = 0.66666662693f, kLg2 = 0.40000972152f, kLg3 = 0.28498786688f,
              kLg4 = 0.24279078841f;
  // Bit patterns, not __builtin_huge_valf/__builtin_nanf: NVRTC (which compiles this file into
  // the JIT kernels, plan/plan_codegen.h) has no GCC builtins. Same constants.
  const float kInf = mls_bits_float(0x7f800000u);
  const float u = 1.0f + x;
  uint32_t iu = mls_float_bits(u);
  iu += 0x3f800000u - 0x3f3504f3u;
  const int32_t k = (int32_t)(iu >> 23) - 0x7f;
  const float c_hi = 1.0f - (u - x), c_lo = x - (u - 1.0f);
  float c = (k >= 2 ? c_hi : c_lo) / u;  // unconditional divide: keeps the loop branch-free
  c = k < 25 ? c : 0.0f;
  const uint32_t im = (iu & 0x007fffffu) + 0x3f3504f3u;
  const float m = mls_bits_float(im);
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s, w = z * z;
  const float r = z * (kLg1 + w * kLg3) + w * (kLg2 + w * kLg4);
  const float hfsq = 0.5f * f * f;
  const float dk = (float)k;
  float y = s * (hfsq + r) + (dk * kLn2Lo + c) - hfsq + f + dk * kLn2Hi;
  // Bitwise | (not ||): no short-circuit branches, so the selects become blends.
  y = ((x == kInf) | (x == 0.0f)) ? x : y;  // keeps -0.0
  y = x == -1.0f ? -kInf : y;
  y = ((x < -1.0f) | (x != x)) ? mls_bits_float(0x7fc00000u) : y;  // quiet NaN
  return y;
}

#ifdef __cplusplus
}  // extern "C"
#endif
