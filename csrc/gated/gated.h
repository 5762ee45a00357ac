// Gated attention: the maths shared by the CPU and CUDA kernels (torch-free).
//
// Gated class-attention (GCAB). x [B, N1, C] (N1 = N + 1, the task token at n = 0), gate m [C], H heads of D = C/H:
//   q = (W_q (x_0 . m) + b_q) . m          k = (W_k (x . m) + b_k) . m          v = W_v (x . m) + b_v
//   A[b,h,:] = softmax_n(q_h . k_h[n] / sqrt(D)),   o_h = sum_n A[h,n] v_h[n],   y = (W_p (o . m) + b_p) . m
// A single query per head means K and V never need to exist. With r = (q0 . m . m) / sqrt(D), q0 = W_q(x_0 . m) + b_q:
//   score[b,h,n] = sum_{d in h} r[d] (W_k (x[n] . m) + b_k)[d] = x[n] . w[b,h] + const_h,
//   w[b,h,c]     = m[c] sum_{d in h} r[b,d] W_k[d,c]                        (b_k only adds const_h: softmax drops it)
//   o[b,d]       = W_v[d,:] . (m . zp[b,h(d)]) + b_v[d],   zp[b,h,c] = sum_n A[b,h,n] x[b,n,c]   (sum_n A = 1)
// so the work on x is O(B N1 H C) (the "core" below) instead of the O(B N1 C^2) of the K and V projections; the
// O(B C^2) rest (q0, w, o, y and their gradients) is a handful of [B, C]-row GEMMs done by the host with ATen.
//
// The core, per (b, h), with w and zp in the arithmetic type A (float for float/half/bfloat16 x, double for double):
//   forward   attn[n] = softmax_n(x[n] . w),                 zp = sum_n attn[n] x[n]
//   backward  given gzp = dL/dzp:
//     (1)     gA[n] = x[n] . gzp,   gs[n] = attn[n] (gA[n] - sum_n' attn[n'] gA[n']),   gw = sum_n gs[n] x[n],
//             zp recomputed in the same pass over x
//     (2)     gx[b,n] = [n == 0] gx0[b] + sum_h (attn[h,n] gzp[h] + gs[h,n] w[h])      (gx0: the query path's
//             gradient, which needs gw first, hence two passes)
//
// Gradient routing (HAT), in place on the gradients, arithmetic in A:
//   weight [O, I]:  g[o,i] *= 1 - m_out[o] m_in[i]        bias [O]:  g[o] *= 1 - m_out[o]
//   embedding:      g *= (s_max / s) (cosh(clamp(s e, -c, c)) + 1) / (cosh(e) + 1)
#pragma once

#include "common/dtype.h"

#include <cmath>
#include <cstdint>

namespace pyfast {
namespace gated {

using DType = ::pyfast::DType;

// Pointers of the core ops. x is in x's dtype; every other tensor in the arithmetic type, all contiguous.
struct CoreArgs {
  const void* x;      // [B, N1, C]
  const void* w;      // [B, H, C]  (forward, backward (2))
  void* attn;         // [B, H, N1] (written by the forward, read by the backward)
  void* zp;           // [B, H, C]  (written by the forward and backward (1))
  const void* gzp;    // [B, H, C]  (backward)
  void* gs;           // [B, H, N1] (written by backward (1), read by (2))
  void* gw;           // [B, H, C]  (written by backward (1))
  const void* gx0;    // [B, C]     (backward (2))
  void* gx;           // [B, N1, C] in x's dtype (written by backward (2))
  int64_t B, N1, C, H;
};

struct RouteArgs {
  void* g;            // the gradient, rows x cols (cols = 1 for a bias), modified in place
  const void* m_out;  // [rows] in A
  const void* m_in;   // [cols] in A, or nullptr for a bias
  int64_t rows, cols;
};

struct CompArgs {
  void* g;            // the embedding gradient [n], modified in place
  const void* e;      // the embedding [n] (its dtype is g's)
  int64_t n;
  double s, s_max, clamp;
};

template <class A>
PYFAST_HD A compensation(A e, A s, A s_max, A clamp) {
  A se = s * e;
  se = se < -clamp ? -clamp : (se > clamp ? clamp : se);
  return (s_max / s) * (cosh(se) + A(1)) / (cosh(e) + A(1));
}

}  // namespace gated
}  // namespace pyfast
