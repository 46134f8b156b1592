// Source code of a normalizer specialized for one compiled FeaturePlan (the "JIT" kernel).
//
// The generic CUDA kernel (kernels/normalize.cu) interprets the plan: per element it reads the
// feature's descriptor, loops over its ops with a branch per op code, binary-searches the
// histogram edges in global memory and branches on the encoding. On the realistic plan that
// interpretation, not memory, bounds the kernel (docs/gpu.md). The generated source instead
// spells the plan out: per feature one straight-line function with its ops, constants, output
// column and edges as literals (floats as exact hex literals), so nvcc/NVRTC fold everything and
// the kernel only runs arithmetic. NVRTC compiles it at model load (csrc/cuda/jit_normalizer.h).
//
// Semantics are the CPU normalizer's, bit for bit: the same float32 operations in the same
// order with no contraction (MLS_JIT_MUL/MLS_JIT_SUB are __fmul_rn/__fsub_rn on the device; the
// host harness compiles with -ffp-contract=off), log1p from plan/plan_math.h, the same onehot and
// hash slots, and the histogram counter = number of edges <= raw (edges are strictly increasing,
// so this equals the CPU's upper_bound), NaN last.
//
// The output is self-contained C++ (host) / CUDA (device) source:
//   - for every feature c: mls_jit_feature_c(raw, out_row) writes its output block into a zeroed
//     output row, and mls_jit_counter_c(raw) returns its histogram counter (absolute index);
//   - mls_jit_row(in_row, out_row, counters): one row on the host (tests compile the source with
//     the host compiler and compare it with FeaturePlan::Transform);
//   - with `kernel`: the device dispatcher and the staged kernels of kernels/normalize_jit.cuh,
//     extern "C" mls_jit_normalize (no histograms) and mls_jit_normalize_counted.
// It #includes "plan/plan_math.h" and, with `kernel`, "normalize_jit.cuh": NVRTC gets both (and
// minimal stdint.h/string.h) as in-memory headers (JitHeaders()).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "plan/feature_plan.h"

namespace mlserve {

// Default minimum blocks per SM for the JIT kernels' launch bounds. Unbounded, ptxas gives the
// realistic plan's kernel about 60 registers a thread: 4 blocks of 256 threads per SM. Measured
// on an H100 at 4M rows (bench/gpu_check.sh, docs/gpu.md): jit 67% of a D2D copy unbounded, 73%
// at 5 blocks (48 registers), 81% at 6 (40 registers, 24 B of spills), 82% at 8; jit-tma 78% at
// 5 and 80% at 6 (40 registers, no spills). 6 is the default: the best jit-tma figure, and 8's
// extra percent for jit is within the run-to-run spread.
inline constexpr int kJitDefaultMinBlocks = 6;

// Tile shape the generated kernel is built for. tile_rows: rows per block tile, a multiple of
// 32 (each warp task is one feature on 32 rows of the tile).
struct JitKernelShape {
  int tile_rows = 32;
  // Tiles moved by Hopper's bulk copies (cp.async.bulk, sm_90+), double-buffered, instead of by
  // every thread (kernels/normalize_jit.cuh, MLS_JIT_TMA).
  bool tma = false;
  // __launch_bounds__'s minimum resident blocks per SM (0: none): caps registers per thread so
  // that many blocks fit, at the price of spills. A tuning knob (MLSERVE_CUDA_JIT_MIN_BLOCKS).
  int min_blocks = kJitDefaultMinBlocks;
};

// Numeric histograms with at most this many edges are counted warp-wide by one ballot per edge
// (n_edges + 2 counters, one per lane); wider ones per value, with warp-aggregated atomics.
inline constexpr int kJitBallotMaxEdges = 30;

// Rows per tile the JIT kernel uses for a plan: the largest multiple of 32 whose input and
// output rows fit `tile_bytes` of shared memory (at most 256), or 0 when not even 32 rows fit
// (the generic kernel then runs).
int JitTileRows(const MlsPlanView& plan, int tile_bytes);

// The specialized source for `plan` (see the file comment). Deterministic: the same plan and
// shape give the same text (it keys the compiled-kernel cache).
std::string GenerateNormalizeSource(const FeaturePlan& plan, const JitKernelShape& shape,
                                    bool kernel);

// In-memory headers for NVRTC, as (include name, contents): plan/plan_math.h and
// normalize_jit.cuh (embedded from the source tree at build time), stdint.h and string.h.
const std::vector<std::pair<std::string, std::string>>& JitHeaders();

}  // namespace mlserve
