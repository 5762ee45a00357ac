// Fourier-KArAt, the fused CUDA path's per-thread work (torch-free; host and device code): the harmonics cos(m A),
// sin(m A) of every score are computed where they are used and never stored (maths in karat.h).
//
// The raw scores S = Q K^T of each (batch x head), [N, N] (one number per pair, no harmonics), come from cuBLAS
// (karat_cuda.cpp), in the orientation that makes a warp's reads coalesced: a warp's 32 threads own consecutive score
// rows (or columns) and each reads one score per step, so the scores they read side by side must be neighbours in
// memory. A thread walks column c of a row-major [N, N] block, entry j at scores[j N]:
//   fwd_row           a thread per score row (bh, k), column k of S^T:
//                     z[k, p] = sum_{q, m} a[p, q, m] cos(m A[k, q]) + b[p, q, m] sin(m A[k, q]),   A = scale S
//   grad_scores_row   a thread per score row (bh, k), column k of S^T, writing column k of gS^T:
//                     gS[k, q] = scale sum_m m (e_s[m, q] cos(m A[k, q]) - e_c[m, q] sin(m A[k, q])),
//                     e_t[m, q] = sum_p g_z[k, p] C[p, (t G + m - 1) N + q]; and z[k] again when asked
//   coef_grad_column  a thread per score column (bh, q), column q of S:
//                     g_C[bh, p, (t G + m - 1) N + q] = sum_k g_z[k, p] (cos | sin)(m A[k, q]), this (batch x head)'s
//                     share (the caller sums over the batch)
// g_q = gS K and g_k = gS^T Q are then two batched GEMMs. The coefficients a thread reads (and its g_z row in the
// column kernel) are the same address for every thread of a warp (one broadcast load). The rank and harmonics live
// in registers: r <= kMaxR, G <= kMaxG (karat_cuda.cpp takes the tiled cuBLAS path beyond them). karat_kernel.cu
// launches these; tests/ops/test_karat_fused_emulation.py runs the same functions on the CPU, thread after thread,
// against the reference.
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

// cos(m x) and sin(m x) for m = 1..G in cm[m - 1], sm[m - 1]: one sincos and the angle-addition recurrence.
template <class A>
PYFAST_HD void harmonics(A x, int G, A (&cm)[kMaxG], A (&sm)[kMaxG]) {
  score_sincos(x, sm[0], cm[0]);
  PYFAST_UNROLL
  for (int m = 1; m < kMaxG; ++m)
    if (m < G) next_harmonic(cm[0], sm[0], cm[m - 1], sm[m - 1], cm[m], sm[m]);
}

// Shapes: S, S^T, gS^T [BH, N, N]; C [H, r, 2 G N] packed (karat_host.h pack_coef); g_z, z [BH, N, r];
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

template <class A>
PYFAST_HD void fwd_row(int64_t row, int64_t j0, int64_t j1, const A* ST, const A* C, int64_t N, int64_t r, int G,
                       int64_t H, A scale, A* z) {
  const int64_t bh = row / N, L = 2 * G * N;
  const A* scores = ST + bh * N * N + (row - bh * N);  // S[k, j] at scores[j N]
  const A* C_h = C + (bh % H) * r * L;
  A acc[kMaxR];
  PYFAST_UNROLL
  for (int p = 0; p < kMaxR; ++p) acc[p] = A(0);
  for (int64_t j = j0; j < j1; ++j) {
    A cm[kMaxG], sm[kMaxG];
    harmonics(scale * scores[j * N], G, cm, sm);
    PYFAST_UNROLL
    for (int m = 0; m < kMaxG; ++m) {
      if (m >= G) continue;
      const A* ca = C_h + m * N + j;  // a[p, j, m] at ca[p L], b at cb[p L]
      const A* cb = ca + G * N;
      PYFAST_UNROLL
      for (int p = 0; p < kMaxR; ++p)
        if (p < r) acc[p] += cm[m] * ca[p * L] + sm[m] * cb[p * L];
    }
  }
  PYFAST_UNROLL
  for (int p = 0; p < kMaxR; ++p)
    if (p < r) z[row * r + p] = acc[p];
}

template <class A>
PYFAST_HD void grad_scores_row(int64_t row, int64_t j0, int64_t j1, const A* gz, const A* ST, const A* C, int64_t N,
                               int64_t r, int G, int64_t H, A scale, A* gST, A* z) {
  const int64_t bh = row / N, L = 2 * G * N, block = bh * N * N + (row - bh * N);
  const A* scores = ST + block;  // S[k, j] at scores[j N]; gS[k, j] goes to grad[j N]
  A* grad = gST + block;
  const A* C_h = C + (bh % H) * r * L;
  A g[kMaxR], acc[kMaxR];
  PYFAST_UNROLL
  for (int p = 0; p < kMaxR; ++p) {
    g[p] = p < r ? gz[row * r + p] : A(0);
    acc[p] = A(0);
  }
  for (int64_t j = j0; j < j1; ++j) {
    A cm[kMaxG], sm[kMaxG];
    harmonics(scale * scores[j * N], G, cm, sm);
    A g_score = A(0);
    PYFAST_UNROLL
    for (int m = 0; m < kMaxG; ++m) {
      if (m >= G) continue;
      const A* ca = C_h + m * N + j;
      const A* cb = ca + G * N;
      A e_c = A(0), e_s = A(0);
      PYFAST_UNROLL
      for (int p = 0; p < kMaxR; ++p) {
        if (p < r) {
          e_c += g[p] * ca[p * L];
          e_s += g[p] * cb[p * L];
          if (z != nullptr) acc[p] += cm[m] * ca[p * L] + sm[m] * cb[p * L];
        }
      }
      g_score += static_cast<A>(m + 1) * (e_s * cm[m] - e_c * sm[m]);
    }
    grad[j * N] = scale * g_score;
  }
  if (z != nullptr) {
    PYFAST_UNROLL
    for (int p = 0; p < kMaxR; ++p)
      if (p < r) z[row * r + p] = acc[p];
  }
}

template <class A>
PYFAST_HD void coef_grad_column(int64_t col, int64_t i0, int64_t i1, const A* gz, const A* S, int64_t N, int64_t r,
                                int G, A scale, A* gC_part) {
  const int64_t bh = col / N, j = col - bh * N, L = 2 * G * N;
  const A* scores = S + bh * N * N + j;  // S[i, j] at scores[i N]
  const A* g = gz + bh * N * r;
  A gc[2][kMaxG][kMaxR];
  PYFAST_UNROLL
  for (int m = 0; m < kMaxG; ++m) {
    PYFAST_UNROLL
    for (int p = 0; p < kMaxR; ++p) gc[0][m][p] = gc[1][m][p] = A(0);
  }
  for (int64_t i = i0; i < i1; ++i) {
    A cm[kMaxG], sm[kMaxG];
    harmonics(scale * scores[i * N], G, cm, sm);
    PYFAST_UNROLL
    for (int p = 0; p < kMaxR; ++p) {
      if (p >= r) continue;
      const A w = g[i * r + p];
      PYFAST_UNROLL
      for (int m = 0; m < kMaxG; ++m) {
        if (m < G) {
          gc[0][m][p] += w * cm[m];
          gc[1][m][p] += w * sm[m];
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
