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
//                     e_c[m, q] = sum_p g_z[k, p] a[p, q, m], e_s the same with b; and z[k] again when asked
//   coef_grad_column  a thread per score column (bh, q), column q of S, bh = b H + h:
//                     g_C[b, t, h, p, q, m - 1] = sum_k g_z[k, p] (cos | sin)(m A[k, q]) (t = 0 | 1), this (batch x
//                     head)'s share, in [B, 2, H, r, N, G]: the caller sums over the batch (and the parts), and each
//                     half t is then g_a or g_b [H, r, N, G] as they are laid out
// g_q = gS K and g_k = gS^T Q are then two batched GEMMs.
//
// Memory layouts, chosen so that a thread's reads of one step are few and wide: the coefficients are key-major,
// Ck [H, N, 2 G, R4], Ck[h, q, t G + m - 1, p] = (t ? b : a)[h, p, q, m - 1], and g_z is [BH, N, R4], both with the
// rank padded with zeros to R4 = padded_rank(r), a multiple of 4, so one key's 2 G r coefficients (a g_z row) are
// 16-byte vectors: 18 vector loads per score at G = 3, r = 12, where the rank-major layout took 72 scalar ones. Every
// thread of a warp reads the same coefficient address (one broadcast load). Each loop loads the next score before it
// works on the current one, so a score's latency overlaps a step of arithmetic. The rank and harmonics live in
// registers, their counts template arguments (kG = G <= kMaxG, kRV = R4 / 4 vectors, r <= kMaxR; with_fused_shape
// picks them): the loops over them unroll exactly, and a thread holds only the sums and loads of its shape (at G = 3,
// r = 12 the three kernels need 52, 76 and 114 registers on sm_90, against 128, 128 and 168 with the loops sized for
// kMaxG and kMaxR and guarded).
// karat_cuda.cpp takes the tiled cuBLAS path beyond kMaxG and kMaxR. karat_kernel.cu launches these;
// tests/ops/test_karat_fused_emulation.py runs the same functions on the CPU, thread after thread, against the
// reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

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
constexpr int kMaxG = 4;   // harmonics G held in registers (coefficient gradient: 2 G R4 sums)
constexpr int kVec = 4;    // floats per vector load

// The rank rounded up to a whole number of vectors: the row length of Ck's and g_z's rank dimension.
PYFAST_HD constexpr int64_t padded_rank(int64_t r) { return (r + kVec - 1) / kVec * kVec; }

// Parts of the key (row) range per score row (column) in the fused kernels, for `rows` = B H N score rows (columns):
// about kFusedTargetThreads threads in all, one to two waves of a large GPU, each thread still covering at least 4
// keys. The threads are latency-bound, so the more in flight the better (the measurements: bench/RESULTS.md, "Launch
// choices"; bench/kernel_sweep.cu times other part counts beside this one). The partial sums cost a [parts, ...]
// buffer (the coefficient gradient's, [parts * B, 2, H, r, N, G], is most of the fused path's peak memory) and one
// sum.
constexpr int64_t kFusedTargetThreads = int64_t{1} << 17;

inline int64_t parts_for(int64_t rows, int64_t N) {
  return std::clamp<int64_t>(kFusedTargetThreads / std::max<int64_t>(rows, 1), 1, std::max<int64_t>(N / 4, 1));
}

// f(std::integral_constant<int, G>{}, std::integral_constant<int, R4 / 4>{}) for 1 <= G <= kMaxG, 1 <= r <= kMaxR
// (the caller checks the ranges): the template arguments of the functions below.
template <class F>
void with_fused_shape(int G, int64_t r, F&& f) {
  const auto rank = [&](auto g) {
    switch (padded_rank(r) / kVec) {
      case 1: f(g, std::integral_constant<int, 1>{}); return;
      case 2: f(g, std::integral_constant<int, 2>{}); return;
      case 3: f(g, std::integral_constant<int, 3>{}); return;
      default: f(g, std::integral_constant<int, 4>{}); return;
    }
  };
  static_assert(kMaxR == 4 * kVec && kMaxG == 4, "with_fused_shape enumerates G = 1..4 and R4 / 4 = 1..4");
  switch (G) {
    case 1: rank(std::integral_constant<int, 1>{}); return;
    case 2: rank(std::integral_constant<int, 2>{}); return;
    case 3: rank(std::integral_constant<int, 3>{}); return;
    default: rank(std::integral_constant<int, 4>{}); return;
  }
}

// v = p[0..3], one 16-byte load (p 16-byte aligned) on the GPU.
PYFAST_HD void load_vec(const float* p, float (&v)[kVec]) {
#if defined(__CUDA_ARCH__)
  const float4 f = __ldg(reinterpret_cast<const float4*>(p));
  v[0] = f.x;
  v[1] = f.y;
  v[2] = f.z;
  v[3] = f.w;
#else
  for (int e = 0; e < kVec; ++e) v[e] = p[e];
#endif
}

// cos(m x) and sin(m x) for m = 1..kG in cm[m - 1], sm[m - 1]: one sincos and the angle-addition recurrence.
template <int kG>
PYFAST_HD void harmonics(float x, float (&cm)[kG], float (&sm)[kG]) {
  sincos_any(x, sm[0], cm[0]);  // the CPU kernels' sincos, so both devices round alike
  PYFAST_UNROLL
  for (int m = 1; m < kG; ++m) next_harmonic(cm[0], sm[0], cm[m - 1], sm[m - 1], cm[m], sm[m]);
}

// Shapes: S, S^T, gS^T [BH, N, N]; Ck [H, N, 2 G, R4]; g_z [BH, N, R4]; z [BH, N, r]; gC_part [B, 2, H, r, N, G]. A
// score row or column index is bh * N + (k or q). Each thread covers a range of the other index, [j0, j1) keys of
// its row or [i0, i1) rows of its column, and writes partial sums (z, g_C) that the caller adds over the ranges: at
// ViT shapes B H N is a few thousand rows, too few threads to keep a GPU busy alone.

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

// The scores a thread walks, entry j at at[j * N], read one step ahead: next() returns entry j and starts the load
// of entry j + 1 (when there is one), so that load is in flight during step j's arithmetic.
struct ScoreStream {
  const float* at;
  int64_t N, end;
  float ahead;

  PYFAST_HD ScoreStream(const float* scores, int64_t N_, int64_t begin, int64_t end_)
      : at(scores), N(N_), end(end_), ahead(begin < end_ ? scores[begin * N_] : 0.0f) {}

  PYFAST_HD float next(int64_t j) {
    const float current = ahead;
    if (j + 1 < end) ahead = at[(j + 1) * N];
    return current;
  }
};

// z[row, p] for p < r (the padded lanes' sums are zeros and are not written).
template <int kRV>
PYFAST_HD void write_rank(const float (&acc)[kRV * kVec], int64_t r, float* z_row) {
  PYFAST_UNROLL
  for (int p = 0; p < kRV * kVec; ++p)
    if (p < r) z_row[p] = acc[p];
}

template <int kG, int kRV>
PYFAST_HD void fwd_row(int64_t row, int64_t j0, int64_t j1, const float* ST, const float* Ck, int64_t N, int64_t r,
                       int64_t H, float scale, float* z) {
  constexpr int R4 = kRV * kVec, kPerKey = 2 * kG * R4;
  const int64_t bh = row / N;
  ScoreStream scores(ST + bh * N * N + (row - bh * N), N, j0, j1);  // S[k, j] at scores.at[j N]
  const float* C_h = Ck + (bh % H) * N * kPerKey;
  float acc[R4] = {};
  for (int64_t j = j0; j < j1; ++j) {
    float cm[kG], sm[kG];
    harmonics<kG>(scale * scores.next(j), cm, sm);
    const float* cj = C_h + j * kPerKey;
    PYFAST_UNROLL
    for (int m = 0; m < kG; ++m) {
      PYFAST_UNROLL
      for (int p0 = 0; p0 < R4; p0 += kVec) {
        float ca[kVec], cb[kVec];  // a[p0 .. p0 + 3, j, m], b the same
        load_vec(cj + m * R4 + p0, ca);
        load_vec(cj + (kG + m) * R4 + p0, cb);
        PYFAST_UNROLL
        for (int e = 0; e < kVec; ++e) acc[p0 + e] += cm[m] * ca[e] + sm[m] * cb[e];
      }
    }
  }
  write_rank<kRV>(acc, r, z + row * r);
}

template <int kG, int kRV>
PYFAST_HD void grad_scores_row(int64_t row, int64_t j0, int64_t j1, const float* gz, const float* ST, const float* Ck,
                               int64_t N, int64_t r, int64_t H, float scale, float* gST, float* z) {
  constexpr int R4 = kRV * kVec, kPerKey = 2 * kG * R4;
  const int64_t bh = row / N, block = bh * N * N + (row - bh * N);
  ScoreStream scores(ST + block, N, j0, j1);  // S[k, j] at scores.at[j N]; gS[k, j] goes to grad[j N]
  float* grad = gST + block;
  const float* C_h = Ck + (bh % H) * N * kPerKey;
  float g[R4], acc[R4] = {};
  PYFAST_UNROLL
  for (int p0 = 0; p0 < R4; p0 += kVec) {
    float v[kVec];
    load_vec(gz + row * R4 + p0, v);
    PYFAST_UNROLL
    for (int e = 0; e < kVec; ++e) g[p0 + e] = v[e];
  }
  for (int64_t j = j0; j < j1; ++j) {
    float cm[kG], sm[kG];
    harmonics<kG>(scale * scores.next(j), cm, sm);
    const float* cj = C_h + j * kPerKey;
    float g_score = 0.0f;
    PYFAST_UNROLL
    for (int m = 0; m < kG; ++m) {
      float e_c = 0.0f, e_s = 0.0f;
      PYFAST_UNROLL
      for (int p0 = 0; p0 < R4; p0 += kVec) {
        float ca[kVec], cb[kVec];
        load_vec(cj + m * R4 + p0, ca);
        load_vec(cj + (kG + m) * R4 + p0, cb);
        PYFAST_UNROLL
        for (int e = 0; e < kVec; ++e) {  // the padding's g and coefficients are zeros
          e_c += g[p0 + e] * ca[e];
          e_s += g[p0 + e] * cb[e];
          if (z != nullptr) acc[p0 + e] += cm[m] * ca[e] + sm[m] * cb[e];
        }
      }
      g_score += static_cast<float>(m + 1) * (e_s * cm[m] - e_c * sm[m]);
    }
    grad[j * N] = scale * g_score;
  }
  if (z != nullptr) write_rank<kRV>(acc, r, z + row * r);
}

template <int kG, int kRV>
PYFAST_HD void coef_grad_column(int64_t col, int64_t i0, int64_t i1, const float* gz, const float* S, int64_t N,
                                int64_t r, int64_t H, float scale, float* gC_part) {
  constexpr int R4 = kRV * kVec;
  const int64_t bh = col / N, j = col - bh * N, b = bh / H, h = bh - b * H;
  ScoreStream scores(S + bh * N * N + j, N, i0, i1);  // S[i, j] at scores.at[i N]
  const float* g_bh = gz + bh * N * R4;
  float gc[2][kG][R4] = {};
  for (int64_t i = i0; i < i1; ++i) {
    float cm[kG], sm[kG];
    harmonics<kG>(scale * scores.next(i), cm, sm);
    PYFAST_UNROLL
    for (int p0 = 0; p0 < R4; p0 += kVec) {
      float w[kVec];  // g_z[i, p0 .. p0 + 3]
      load_vec(g_bh + i * R4 + p0, w);
      PYFAST_UNROLL
      for (int e = 0; e < kVec; ++e) {
        PYFAST_UNROLL
        for (int m = 0; m < kG; ++m) {
          gc[0][m][p0 + e] += w[e] * cm[m];
          gc[1][m][p0 + e] += w[e] * sm[m];
        }
      }
    }
  }
  const int64_t half = H * r * N * kG;                            // one (b, t) block [H, r, N, G]
  float* out = gC_part + (2 * b * H + h) * r * N * kG + j * kG;  // g_C[b, 0, h, 0, j, 0]
  PYFAST_UNROLL
  for (int m = 0; m < kG; ++m) {
    PYFAST_UNROLL
    for (int p = 0; p < R4; ++p) {
      if (p < r) {
        out[p * N * kG + m] = gc[0][m][p];
        out[half + p * N * kG + m] = gc[1][m][p];
      }
    }
  }
}

}  // namespace fused
}  // namespace karat
}  // namespace pyfast
