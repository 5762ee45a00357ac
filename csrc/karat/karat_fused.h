// Fourier-KArAt, the fused CUDA path's per-thread work (torch-free; host and device code): every score, its sincos
// and its harmonics are computed where they are used and never stored (maths in karat.h).
//   fwd_row           a thread per score row (bh, k):   z[k, p] = sum_{q, m} a cos(m A[k, q]) + b sin(m A[k, q])
//   grad_scores_row   a thread per score row (bh, k):   gS[k, q] = scale sum_m m (e_s cos(m A) - e_c sin(m A)),
//                     e_t[m, q] = sum_p g_z[k, p] C[p, (t G + m - 1) N + q]; and z[k] again when asked
//   coef_grad_column  a thread per score column (bh, q): g_C[bh, p, (t G + m - 1) N + q] = sum_k g_z[k, p] x
//                     (cos | sin)(m A[k, q]), this (batch x head)'s share (the caller sums over the batch)
// g_q = gS K and g_k = gS^T Q are then two batched GEMMs. A thread keeps its own row of q (or k) in registers, kD wide
// (D rounded up, zero-padded); the key rows and coefficients it streams are the same address for every thread of a
// warp (one broadcast load). The rank and harmonics live in registers too: r <= kMaxR, G <= kMaxG (karat_cuda.cpp
// takes the tiled cuBLAS path beyond them). karat_kernel.cu launches these; tests/ops/test_karat_fused_emulation.py
// runs the same functions on the CPU, thread after thread, against the reference.
#pragma once

#include <cmath>
#include <cstdint>

#include "karat/karat.h"

#if defined(__CUDACC__)
#define PYFAST_UNROLL _Pragma("unroll")
#else
#define PYFAST_UNROLL
#endif

namespace pyfast {
namespace karat {
namespace fused {

constexpr int kMaxR = 16;  // rank r held in registers
constexpr int kMaxG = 4;   // harmonics G held in registers (coefficient gradient: 2 kMaxG kMaxR sums)

PYFAST_HD void score_sincos(float x, float& s, float& c) {
#if defined(__CUDA_ARCH__)
  sincosf(x, &s, &c);
#else
  sincos_fast(x, s, c);
#endif
}

PYFAST_HD void score_sincos(double x, double& s, double& c) { sincos_fast(x, s, c); }

template <class A, int kD>
PYFAST_HD void load_row(const A* src, int64_t D, A (&row)[kD]) {
  PYFAST_UNROLL
  for (int d = 0; d < kD; ++d) row[d] = d < D ? src[d] : A(0);
}

// <row, other[0:D)> in four partial sums (shorter dependency chains); the same products in the same order whichever
// of the two is the register row, so row and column threads see bit-identical scores.
template <class A, int kD>
PYFAST_HD A dot_row(const A (&row)[kD], const A* other, int64_t D) {
  A part[4] = {A(0), A(0), A(0), A(0)};
  PYFAST_UNROLL
  for (int d = 0; d < kD; ++d) part[d % 4] += row[d] * (d < D ? other[d] : A(0));
  return (part[0] + part[1]) + (part[2] + part[3]);
}

// Shapes: q, k [BH, N, D]; C [H, r, 2 G N] packed (karat_host.h pack_coef); g_z, z [BH, N, r]; gS [BH, N, N];
// gC_part [BH, r, 2 G N]. A score row or column index is bh * N + (k or q). Each thread covers a range of the other
// index, [j0, j1) keys of its row or [i0, i1) rows of its column, and writes partial sums (z, g_C) that the caller
// adds over the ranges: at ViT shapes B H N is a few thousand rows, too few threads to keep a GPU busy alone.

// Thread idx of a fused launch over parts x n threads (n score rows or columns): its row / column idx % n, its part
// p = idx / n and, of that part, the range [begin, end) of the N keys (rows) it covers (contiguous, near-equal parts).
// False for the threads past the end of the launch.
struct Task {
  int64_t item, part, begin, end;
};

PYFAST_HD bool task_of(int64_t idx, int64_t n, int64_t parts, int64_t N, Task& task) {
  if (idx >= n * parts) return false;
  task.part = idx / n;
  task.item = idx - task.part * n;
  task.begin = task.part * N / parts;
  task.end = (task.part + 1) * N / parts;
  return true;
}

template <class A, int kD>
PYFAST_HD void fwd_row(int64_t row, int64_t j0, int64_t j1, const A* q, const A* k, const A* C, int64_t N, int64_t D,
                       int64_t r, int G, int64_t H, A scale, A* z) {
  const int64_t bh = row / N, L = 2 * G * N;
  const A* K = k + bh * N * D;
  const A* C_h = C + (bh % H) * r * L;
  A q_row[kD];
  load_row(q + row * D, D, q_row);
  A acc[kMaxR];
  PYFAST_UNROLL
  for (int p = 0; p < kMaxR; ++p) acc[p] = A(0);
  for (int64_t j = j0; j < j1; ++j) {
    A s1, c1;
    score_sincos(scale * dot_row(q_row, K + j * D, D), s1, c1);
    A cm = c1, sm = s1;
    for (int m = 0; m < G; ++m) {
      if (m > 0) next_harmonic(c1, s1, cm, sm, cm, sm);
      const A* ca = C_h + m * N + j;  // a[p, j, m] at ca[p L], b at cb[p L]
      const A* cb = ca + G * N;
      PYFAST_UNROLL
      for (int p = 0; p < kMaxR; ++p)
        if (p < r) acc[p] += cm * ca[p * L] + sm * cb[p * L];
    }
  }
  PYFAST_UNROLL
  for (int p = 0; p < kMaxR; ++p)
    if (p < r) z[row * r + p] = acc[p];
}

template <class A, int kD>
PYFAST_HD void grad_scores_row(int64_t row, int64_t j0, int64_t j1, const A* gz, const A* q, const A* k, const A* C,
                               int64_t N, int64_t D, int64_t r, int G, int64_t H, A scale, A* gS, A* z) {
  const int64_t bh = row / N, L = 2 * G * N;
  const A* K = k + bh * N * D;
  const A* C_h = C + (bh % H) * r * L;
  A q_row[kD];
  load_row(q + row * D, D, q_row);
  A g[kMaxR], acc[kMaxR];
  PYFAST_UNROLL
  for (int p = 0; p < kMaxR; ++p) {
    g[p] = p < r ? gz[row * r + p] : A(0);
    acc[p] = A(0);
  }
  for (int64_t j = j0; j < j1; ++j) {
    A s1, c1;
    score_sincos(scale * dot_row(q_row, K + j * D, D), s1, c1);
    A cm = c1, sm = s1, g_score = A(0);
    for (int m = 0; m < G; ++m) {
      if (m > 0) next_harmonic(c1, s1, cm, sm, cm, sm);
      const A* ca = C_h + m * N + j;
      const A* cb = ca + G * N;
      A e_c = A(0), e_s = A(0);
      PYFAST_UNROLL
      for (int p = 0; p < kMaxR; ++p) {
        if (p < r) {
          e_c += g[p] * ca[p * L];
          e_s += g[p] * cb[p * L];
          if (z != nullptr) acc[p] += cm * ca[p * L] + sm * cb[p * L];
        }
      }
      g_score += static_cast<A>(m + 1) * (e_s * cm - e_c * sm);
    }
    gS[row * N + j] = scale * g_score;
  }
  if (z != nullptr) {
    PYFAST_UNROLL
    for (int p = 0; p < kMaxR; ++p)
      if (p < r) z[row * r + p] = acc[p];
  }
}

template <class A, int kD>
PYFAST_HD void coef_grad_column(int64_t col, int64_t i0, int64_t i1, const A* gz, const A* q, const A* k, int64_t N,
                                int64_t D, int64_t r, int G, A scale, A* gC_part) {
  const int64_t bh = col / N, j = col - bh * N, L = 2 * G * N;
  const A* Q = q + bh * N * D;
  const A* g = gz + bh * N * r;
  A k_row[kD];
  load_row(k + col * D, D, k_row);
  A gc[2][kMaxG][kMaxR];
  PYFAST_UNROLL
  for (int m = 0; m < kMaxG; ++m) {
    PYFAST_UNROLL
    for (int p = 0; p < kMaxR; ++p) gc[0][m][p] = gc[1][m][p] = A(0);
  }
  for (int64_t i = i0; i < i1; ++i) {
    A s1, c1;
    score_sincos(scale * dot_row(k_row, Q + i * D, D), s1, c1);
    A cm = c1, sm = s1;
    PYFAST_UNROLL
    for (int m = 0; m < kMaxG; ++m) {
      if (m < G) {
        if (m > 0) next_harmonic(c1, s1, cm, sm, cm, sm);
        PYFAST_UNROLL
        for (int p = 0; p < kMaxR; ++p) {
          if (p < r) {
            const A w = g[i * r + p];
            gc[0][m][p] += w * cm;
            gc[1][m][p] += w * sm;
          }
        }
      }
    }
  }
  A* out = gC_part + bh * r * L + j;
  PYFAST_UNROLL
  for (int m = 0; m < kMaxG; ++m) {
    PYFAST_UNROLL
    for (int p = 0; p < kMaxR; ++p) {
      if (m < G && p < r) {
        out[p * L + m * N] = gc[0][m][p];
        out[p * L + (G + m) * N] = gc[1][m][p];
      }
    }
  }
}

}  // namespace fused
}  // namespace karat
}  // namespace pyfast
