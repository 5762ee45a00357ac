// Mesa quantize / dequantize, CPU kernels (the maths is in mesa.h). Quantize is two passes over x: per-chunk min/max
// of every group (parallel over chunks of the outer axis), the float32 estimates per group, then the codes
// (parallel over [outer, G] rows; each row of `inner` elements has one group's constants, so the loop vectorises).
// The row loops live in mesa_cpu_kernels.inc, one call per parallel task into the baseline or AVX2 build.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <vector>

#include "common/cpu.h"
#include "mesa/mesa_host.h"

namespace pyfast {
namespace {

using mesa::Config;
using mesa::DequantArgs;
using mesa::QuantArgs;

constexpr int64_t kGrainElems = 32768;  // elements per task: enough work to amortise a parallel_for chunk

#define PYFAST_CLONE_LOOPS "mesa/mesa_cpu_kernels.inc"
#include "common/isa_clones.inc"

template <typename scalar_t>
void minmax_group(const scalar_t* x, int64_t o_begin, int64_t o_end, int64_t G, int64_t g, int64_t inner, float& mn,
                  float& mx) {
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() != cpu::Isa::Baseline) {
    return avx2::minmax_group(x, o_begin, o_end, G, g, inner, mn, mx);
  }
#endif
  baseline::minmax_group(x, o_begin, o_end, G, g, inner, mn, mx);
}

template <typename scalar_t, bool kStochastic>
void quantize_rows(const scalar_t* x, uint8_t* q, int64_t r_begin, int64_t r_end, int64_t G, int64_t inner,
                   const float* beta, const float* scale, float lm1, uint32_t key) {
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() != cpu::Isa::Baseline) {
    return avx2::quantize_rows<scalar_t, kStochastic>(x, q, r_begin, r_end, G, inner, beta, scale, lm1, key);
  }
#endif
  baseline::quantize_rows<scalar_t, kStochastic>(x, q, r_begin, r_end, G, inner, beta, scale, lm1, key);
}

template <typename scalar_t>
void quantize_cpu_kernel(const QuantArgs& a) {
  const auto* x = static_cast<const scalar_t*>(a.x);
  const int64_t G = a.groups, inner = a.inner, outer = a.outer;
  const int64_t numel = outer * G * inner;
  // Pass 1: min / max per (chunk of outer, group). Chunks are fixed by the sizes, not the thread count, and min /
  // max are exact in any order: the result never depends on the parallelism.
  const int64_t rows_per_chunk = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(G * inner, 1));
  const int64_t chunks = outer == 0 ? 0 : (outer + rows_per_chunk - 1) / rows_per_chunk;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  std::vector<float> mins(chunks * G, kInf), maxs(chunks * G, -kInf);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t o_end = std::min(outer, (c + 1) * rows_per_chunk);
      for (int64_t g = 0; g < G; ++g) {
        minmax_group(x, c * rows_per_chunk, o_end, G, g, inner, mins[c * G + g], maxs[c * G + g]);
      }
    }
  });
  const bool initialized = *a.initialized;
  std::vector<float> beta(G), scale(G);
  for (int64_t g = 0; g < G; ++g) {
    float mn = kInf, mx = -kInf;
    for (int64_t c = 0; c < chunks; ++c) {
      mn = std::min(mn, mins[c * G + g]);
      mx = std::max(mx, maxs[c * G + g]);
    }
    mesa::finalize(mn, mx, a.clip[g], a.shift[g], initialized, a.cfg, a.clip_out + g, a.shift_out + g);
    beta[g] = a.shift_out[g];
    scale[g] = mesa::scale_of(a.clip_out[g], a.cfg.lm1);
  }
  if (numel == 0) return;
  // Pass 2: the codes, row by row.
  const uint32_t key = mesa::seed_key(*a.seed);
  const int64_t rows = outer * G;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(inner, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    if (a.cfg.stochastic) {
      quantize_rows<scalar_t, true>(x, a.q, begin, end, G, inner, beta.data(), scale.data(), a.cfg.lm1, key);
    } else {
      quantize_rows<scalar_t, false>(x, a.q, begin, end, G, inner, beta.data(), scale.data(), a.cfg.lm1, key);
    }
  });
}

// Raises a ValueError naming q and levels when a code exceeds L - 1: the loop keeps the largest code it reads (a
// vectorised max beside the decode, not a second pass over q), checked once all rows are done.
template <typename scalar_t>
void dequantize_cpu_kernel(const DequantArgs& a, int64_t levels) {
  auto* out = static_cast<scalar_t*>(a.out);
  const int64_t G = a.groups, inner = a.inner;
  std::vector<float> beta(G), scale(G);
  for (int64_t g = 0; g < G; ++g) {
    beta[g] = a.shift[g];
    scale[g] = mesa::scale_of(a.clip[g], a.lm1);
  }
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(inner, 1));
  std::atomic<int> largest{0};
  at::parallel_for(0, a.outer * G, grain, [&](int64_t begin, int64_t end) {
    uint8_t hi = 0;
    for (int64_t r = begin; r < end; ++r) {
      const float s = scale[r % G], b = beta[r % G];
      const uint8_t* q = a.q + r * inner;
      scalar_t* o = out + r * inner;
      for (int64_t j = 0; j < inner; ++j) {
        hi = q[j] > hi ? q[j] : hi;
        o[j] = static_cast<scalar_t>(mesa::dequantize_one(q[j], s, b));
      }
    }
    if (hi > a.max_code) largest.store(hi, std::memory_order_relaxed);
  });
  TORCH_CHECK_VALUE(largest.load() == 0, "mesa_dequantize: q holds code ", largest.load(),
                    ", but codes of levels = ", levels, " are 0..", levels - 1,
                    " (was q quantized with more levels?)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mesa_quantize_cpu(const at::Tensor& x, const at::Tensor& clip_val,
                                                                 const at::Tensor& shift,
                                                                 const at::Tensor& initialized, const at::Tensor& seed,
                                                                 int64_t dim, int64_t levels, double ema_decay,
                                                                 bool update, bool stochastic) {
  return mesa::quantize_host(x, clip_val, shift, initialized, seed, dim, levels, ema_decay, update, stochastic,
                             [&](const QuantArgs& a, mesa::DType) {
                               AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                                               "mesa_quantize_cpu",
                                                               [&] { quantize_cpu_kernel<scalar_t>(a); });
                             });
}

at::Tensor mesa_dequantize_cpu(const at::Tensor& q, const at::Tensor& clip_val, const at::Tensor& shift, int64_t dim,
                               int64_t levels, c10::ScalarType dtype) {
  return mesa::dequantize_host(q, clip_val, shift, dim, levels, dtype, [&](const DequantArgs& a, mesa::DType) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mesa_dequantize_cpu",
                                    [&] { dequantize_cpu_kernel<scalar_t>(a, levels); });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CPU, m) {
  m.impl("mesa_quantize", &mesa_quantize_cpu);
  m.impl("mesa_dequantize", &mesa_dequantize_cpu);
}

}  // namespace pyfast
