// Weighted convolution: the density-weight op shared by the CPU and CUDA kernels (torch-free).
//
// Weight W: [C_out, C_in/groups, K_0, .., K_{d-1}], d = 1..3, every K_a = 2 m_a + 1 odd; viewed as [rows, taps] with
// rows = C_out * C_in/groups and taps = prod K_a (row-major tap index). Per axis a:
//   alpha_a = [den_a[0] .. den_a[m_a-1], 1, den_a[m_a-1] .. den_a[0]]        (den_a[0] outermost, centre fixed at 1)
//   Phi[t]  = alpha_0[t_0] * alpha_1[t_1] * alpha_2[t_2]                     (left to right; missing axes have K = 1)
// forward   W~[r, t] = W[r, t] * Phi[t]
// backward  dW[r, t] = dW~[r, t] * Phi[t]
//           S[t] = sum_r dW~[r, t] W[r, t]
//           dalpha_a[k] = sum_{t : t_a = k} S[t] prod_{b != a} alpha_b[t_b]
//           dden[off_a + j] += dalpha_a[j] + dalpha_a[K_a - 1 - j]            (j < m_a; the centre gets nothing)
// den layout: per axis (packed, off_a = m_0 + .. + m_{a-1}) or shared by every axis (all K equal, off_a = 0, so the
// shared den's gradient is the sum over axes).
//
// Arithmetic type A: float for float/half/bfloat16 weights, double for double. den arrives in A.
#pragma once

#include "common/dtype.h"

#include <cstdint>

namespace pyfast {
namespace wconv {

constexpr int kMaxAxes = 3;

using DType = ::pyfast::DType;

struct Geometry {
  int axes;             // spatial dimensions d, 1..3
  int K[kMaxAxes];      // kernel size per axis; 1 for the axes past d
  int m[kMaxAxes];      // (K - 1) / 2
  int off[kMaxAxes];    // where axis a's den starts in the den array
  int den_numel;        // m_0 + .. + m_{d-1} (per axis) or m_0 (shared)
  int taps;             // K_0 K_1 K_2
  int64_t rows;         // C_out * C_in / groups
};

struct FwdArgs {
  const void* in;   // W (forward) or dW~ (backward without d(den)): [rows, taps]
  void* out;        // in * Phi
  const void* den;  // den in the arithmetic type
  Geometry g;
};

struct BwdArgs {
  const void* grad;  // dW~ [rows, taps]
  const void* w;     // W [rows, taps]
  const void* den;   // den in the arithmetic type
  void* grad_w;      // dW [rows, taps], or nullptr
  void* grad_den;    // d(den) [den_numel] in the arithmetic type, zeroed
  void* scratch;     // [taps] of the arithmetic type, zeroed (the per-tap sums S; used by the CUDA kernels)
  Geometry g;
};

// alpha_a[k] from den (already in the arithmetic type).
template <class A>
PYFAST_HD A alpha_at(const A* den, const Geometry& g, int a, int k) {
  const int c = g.m[a];
  if (k == c) return A(1);
  return den[g.off[a] + (k < c ? k : g.K[a] - 1 - k)];
}

PYFAST_HD void tap_coords(const Geometry& g, int t, int* c) {
  c[2] = t % g.K[2];
  c[1] = (t / g.K[2]) % g.K[1];
  c[0] = t / (g.K[2] * g.K[1]);
}

template <class A>
PYFAST_HD A phi_at(const A* den, const Geometry& g, int t) {
  int c[kMaxAxes];
  tap_coords(g, t, c);
  return alpha_at(den, g, 0, c[0]) * alpha_at(den, g, 1, c[1]) * alpha_at(den, g, 2, c[2]);
}

// dalpha_a[k] from the per-tap sums S (length taps).
template <class A>
PYFAST_HD A dalpha_at(const A* den, const A* S, const Geometry& g, int a, int k) {
  A sum = A(0);
  for (int t = 0; t < g.taps; ++t) {
    int c[kMaxAxes];
    tap_coords(g, t, c);
    if (c[a] != k) continue;
    A w = S[t];
    for (int b = 0; b < kMaxAxes; ++b)
      if (b != a) w *= alpha_at(den, g, b, c[b]);
    sum += w;
  }
  return sum;
}

// dden (length den_numel, zeroed by the caller) from dalpha (kMaxAxes x kmax, row a holds dalpha_a[0 .. K_a-1]).
template <class A>
PYFAST_HD void fold_den_grad(const A* dalpha, int kmax, const Geometry& g, A* dden) {
  for (int a = 0; a < g.axes; ++a)
    for (int j = 0; j < g.m[a]; ++j) dden[g.off[a] + j] += dalpha[a * kmax + j] + dalpha[a * kmax + g.K[a] - 1 - j];
}

}  // namespace wconv
}  // namespace pyfast
