// Ghost batch normalization (Hoffer, Hubara & Soudry, "Train longer, generalize better"): the maths shared by the
// CPU and CUDA kernels (torch-free).
//
// x: [N, C, S] (S = prod of the spatial sizes, 1 for [N, C]). The batch is cut into G = ceil(N / B) ghost batches of
// B samples, ghost g holding samples [g B, min(N, (g + 1) B)) (the last one may be smaller: the remainder). Per ghost
// g and channel c, over its m_g = n_g S values:
//   mu_gc  = mean x,   var_gc = mean (x - mu_gc)^2 (biased),   inv_gc = 1 / sqrt(var_gc + eps)
//   forward   y = (x - mu_gc) inv_gc w_c + b_c
//   backward  with  sdy_gc = sum dy,  sdyxmu_gc = sum dy (x - mu_gc)  over the ghost's values:
//             dx = w_c inv_gc (dy - sdy_gc / m_g - (x - mu_gc) inv_gc^2 sdyxmu_gc / m_g)
//                = a dy + b (x - mu_gc) + c   with a = w inv, b = -w inv^3 sdyxmu / m_g, c = -a sdy / m_g
//             dw_c = sum_g sdyxmu_gc inv_gc,   db_c = sum_g sdy_gc
// Running statistics (updated once per ghost batch, in order, as a loop of BatchNorm calls would): after G updates
//   r_G = (1 - m)^G r_0 + sum_{g=1..G} m (1 - m)^{G-g} s_g
// with s_g the ghost's mean (running_mean) or unbiased variance var_g m_g / (m_g - 1) (running_var). The host code
// applies this closed form to the [G, C] statistics the kernels return.
//
// Statistics are accumulated shifted by the ghost's first value of the channel (k): sums of (x - k) and (x - k)^2,
// which keeps the one-pass variance accurate when |mean| >> std. Arithmetic type A: float for float/half/bfloat16,
// double for double; per-channel sums are combined in double.
#pragma once

#include "common/dtype.h"

#include <cstdint>

namespace pyfast {
namespace ghost_bn {

using DType = ::pyfast::DType;

struct Layout {
  int64_t N, C, S, B;  // batch, channels, spatial size, ghost batch size
  int64_t G;           // ceil(N / B)
};

inline int64_t ghost_rows(const Layout& l, int64_t g) { return (g + 1) * l.B < l.N ? l.B : l.N - g * l.B; }

struct FwdArgs {
  const void* x;       // [N, C, S]
  void* y;             // [N, C, S]
  const void* weight;  // [C] in A, or nullptr (1)
  const void* bias;    // [C] in A, or nullptr (0)
  void* mean;          // [G, C] in A
  void* var;           // [G, C] in A (biased)
  void* invstd;        // [G, C] in A
  double eps;
  Layout l;
};

struct BwdArgs {
  const void* grad;    // dy [N, C, S]
  const void* x;       // [N, C, S]
  const void* mean;    // [G, C] in A
  const void* invstd;  // [G, C] in A
  const void* weight;  // [C] in A, or nullptr (1)
  void* grad_x;        // [N, C, S], or nullptr
  void* sdy;           // [G, C] in A: sum dy per ghost and channel
  void* sdyxmu;        // [G, C] in A: sum dy (x - mu) per ghost and channel
  Layout l;
};

}  // namespace ghost_bn
}  // namespace pyfast
