// Fourier-KArAt: the basis contraction z = Phi(A) . coef, shared by the CPU and CUDA kernels (torch-free).
//
// Per batch element and head (q, k: [N, D], coefficients a, b: [r, N, G] for harmonics m = 1..G):
//   A[k, q]   = scale * <Q[k], K[q]>
//   z[k, p]   = sum_q sum_{m=1..G} a[p, q, m] cos(m A[k, q]) + b[p, q, m] sin(m A[k, q])
// The K-dimension (t in {cos, sin}, m, q) of this GEMM, 2 G N long, is generated on the fly from one sincos per score:
//   cos((m+1) x) = cos(m x) cos x - sin(m x) sin x,   sin((m+1) x) = sin(m x) cos x + cos(m x) sin x.
// The CPU kernels and the CUDA tiled path work on row tiles: a basis tile Bas[k, j], j = (t * G + m - 1) * N + q, and
// the packed coefficients C[p, j] (a for t = 0, b for t = 1), so z_tile = Bas C^T, a plain GEMM. Nothing of size
// N * N * G outlives a tile. The fused CUDA kernels (karat_fused.h) form each basis value where it is used instead.
// Backward, from g_z [N, r]:
//   E       = g_z C                                   [N, 2GN]    (E_c, E_s: the cos / sin halves)
//   g_C    += g_z^T Bas                               [r, 2GN]    (g_a, g_b summed over batch and rows)
//   g_A[k,q] = sum_m m (E_s[k,m,q] cos(m A) - E_c[k,m,q] sin(m A))
//   g_Q = scale g_A K,  g_K = scale g_A^T Q
// Arithmetic type A: float (float/half/bfloat16 inputs) or double.
#pragma once

#include "common/dtype.h"

#include <cmath>
#include <cstdint>

namespace pyfast {
namespace karat {

using DType = ::pyfast::DType;

// sin and cos from the remainder r = x - n pi/2, |r| <= pi/4, and the quadrant n: the Cephes minimax polynomials in
// float (about 1 ulp), then the quadrant's swap / signs as selects (branch-free, so the CPU loops vectorise).
PYFAST_HD void sincos_quadrant(float r, int quadrant, float& s, float& c) {
  const float z = r * r;
  const float sp = r + r * z * ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f);
  const float cp = 1.0f - 0.5f * z + z * z * ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z +
                                              4.166664568298827e-2f);
  const bool swap = (quadrant & 1) != 0;
  const float s0 = swap ? cp : sp;
  const float c0 = swap ? sp : cp;
  s = (quadrant & 2) ? -s0 : s0;
  c = ((quadrant + 1) & 2) ? -c0 : c0;
}

// sin and cos of a float score: the quadrant n = round(x 2/pi) and the remainder in double (exact enough for
// |x| < 2^30).
PYFAST_HD void sincos_fast(float x, float& s, float& c) {
  const double xd = static_cast<double>(x);
  const double t = xd * 0.63661977236758134308 + 6755399441055744.0;  // + 1.5 * 2^52 rounds to an integer
  const double n = t - 6755399441055744.0;
  sincos_quadrant(static_cast<float>(xd - n * 1.57079632679489661923), static_cast<int>(n), s, c);
}

// The same in float alone, for |x| <= kSmallAngleLimit: the remainder by Cody-Waite with pi/2 split into three float
// parts (the first exact in 8 bits, so n * part is exact), about twice as fast on the CPU as the double reduction.
// Callers check the limit and use sincos_fast above it.
constexpr float kSmallAngleLimit = 8192.0f;

PYFAST_HD void sincos_small(float x, float& s, float& c) {
  const float t = x * 0.636619772367581343f + 12582912.0f;  // + 1.5 * 2^23 rounds to an integer in the low bits
  const float n = t - 12582912.0f;
  int quadrant;
  __builtin_memcpy(&quadrant, &t, sizeof quadrant);
  sincos_quadrant(((x - n * 1.5703125f) - n * 4.837512969970703125e-4f) - n * 7.54978995489188216e-8f, quadrant, s,
                  c);
}

PYFAST_HD void sincos_fast(double x, double& s, double& c) {
  s = sin(x);
  c = cos(x);
}

// One step of the harmonic recurrence: (cos m x, sin m x) -> (cos (m+1) x, sin (m+1) x).
template <class A>
PYFAST_HD void next_harmonic(A c1, A s1, A cm, A sm, A& c_next, A& s_next) {
  c_next = cm * c1 - sm * s1;
  s_next = sm * c1 + cm * s1;
}

}  // namespace karat
}  // namespace pyfast
