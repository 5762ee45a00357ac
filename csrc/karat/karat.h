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

// sin and cos of a float x in two parts: a reduction x = n pi/2 + r with |r| <= pi/4 (three of them below, each exact
// over its range of |x|), then sincos_quadrant, the same polynomials for all. The fused CUDA kernels branch between
// the reductions per score (sincos_any) and evaluate the polynomials once after the branches; the CPU loops pick one
// reduction for a whole row so that they vectorise. (CUDA's own sincosf keeps a local array for its huge-angle path,
// which gave every fused kernel a stack frame; these use registers only: ptxas reports no stack for the fused
// kernels at G = 3, r = 12.)
struct Reduced {
  float r;       // remainder, |r| <= pi/4
  int quadrant;  // n mod 4 (any integer: only its two low bits are read)
};

// sin and cos from the remainder and the quadrant: the Cephes minimax polynomials in float (about 1 ulp), then the
// quadrant's swap / signs as selects (branch-free, so the CPU loops vectorise).
PYFAST_HD void sincos_quadrant(Reduced x, float& s, float& c) {
  const float r = x.r, z = r * r;
  const float sp = r + r * z * ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f);
  const float cp = 1.0f - 0.5f * z + z * z * ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z +
                                              4.166664568298827e-2f);
  const bool swap = (x.quadrant & 1) != 0;
  const float s0 = swap ? cp : sp;
  const float c0 = swap ? sp : cp;
  s = (x.quadrant & 2) ? -s0 : s0;
  c = ((x.quadrant + 1) & 2) ? -c0 : c0;
}

// |x| <= kSmallAngleLimit: n = round(x 2/pi) and the remainder by Cody-Waite in float, pi/2 split into three float
// parts (the first exact in 8 bits, so n * part is exact); about twice as fast on the CPU as the double reduction.
constexpr float kSmallAngleLimit = 8192.0f;

PYFAST_HD Reduced reduce_small(float x) {
  const float t = x * 0.636619772367581343f + 12582912.0f;  // + 1.5 * 2^23 rounds to an integer in the low bits
  const float n = t - 12582912.0f;
  int quadrant;
  __builtin_memcpy(&quadrant, &t, sizeof quadrant);
  return {((x - n * 1.5703125f) - n * 4.837512969970703125e-4f) - n * 7.54978995489188216e-8f, quadrant};
}

// |x| < kMediumAngleLimit: the remainder in double (its error, about |x| 2^-53, stays within float rounding below
// 2^30; above, n soon overflows an int and the quadrant is lost).
constexpr float kMediumAngleLimit = 1073741824.0f;  // 2^30

PYFAST_HD Reduced reduce_medium(float x) {
  const double xd = static_cast<double>(x);
  const double t = xd * 0.63661977236758134308 + 6755399441055744.0;  // + 1.5 * 2^52 rounds to an integer
  const double n = t - 6755399441055744.0;
  return {static_cast<float>(xd - n * 1.57079632679489661923), static_cast<int>(n)};
}

// Any float, by its exact multiple of pi/2 (Payne-Hanek), for the huge angles no score of a working model reaches but
// a diverging one may: before it, cos came out with the wrong sign above 2^31 and as 6e28 at 1e20.
// |x| = M 2^e with a 24-bit integer M, and x 2/pi mod 4 (quadrant and remainder) depends only on the bits of 2/pi
// from 2^(1-e) on: for bit i (weight 2^-i) the term M 2^(e-i) is a multiple of 4 when i <= e - 2. With the 64 bits
// W = bits e-1 .. e+62 as an integer, |x| 2/pi mod 4 = (M W mod 2^64) 2^-62 (64-bit wrapping arithmetic): the
// quadrant is in the top two bits, the remainder below them. The bits of 2/pi past the window add under M 2^-64
// quadrants, so the remainder is within 2^-38 quadrants (6e-12) of exact. -x reduces to (-n, -r). Non-finite x gives a NaN remainder.
PYFAST_HD Reduced reduce_huge(float x) {
  uint32_t bits;
  __builtin_memcpy(&bits, &x, sizeof bits);
  const int biased_exponent = static_cast<int>((bits >> 23) & 0xffu);
  if (biased_exponent == 0xff) return {x - x, 0};  // inf or NaN
  if (biased_exponent < 152) return reduce_medium(x);  // |x| < 2^25: the window would start before 2/pi's first bit
  // 2/pi = 0.a2f9836e... in hexadecimal: its first 192 bits, most significant first.
  constexpr uint64_t kTwoOverPi0 = 0xa2f9836e4e441529ull, kTwoOverPi1 = 0xfc2757d1f534ddc0ull,
                     kTwoOverPi2 = 0xdb6295993c439041ull;
  const uint64_t M = (bits & 0x7fffffu) | 0x800000u;
  const int first = biased_exponent - 152;  // 0-based index of the window's first bit: e - 2, e = biased - 150
  const int shift = first & 63;
  const bool second_word = first >= 64;  // biased exponent <= 254: first <= 102
  const uint64_t w0 = second_word ? kTwoOverPi1 : kTwoOverPi0, w1 = second_word ? kTwoOverPi2 : kTwoOverPi1;
  const uint64_t window = shift ? (w0 << shift) | (w1 >> (64 - shift)) : w0;
  const uint64_t fraction = M * window;                              // |x| 2/pi mod 4, in units of 2^-62
  const uint64_t quadrant = (fraction + (uint64_t{1} << 61)) >> 62;  // round(|x| 2/pi) mod 4
  const auto remainder = static_cast<int64_t>(fraction - (quadrant << 62));
  const float r = static_cast<float>(static_cast<double>(remainder) * (1.57079632679489661923 / 4611686018427387904.0));
  const int n = static_cast<int>(quadrant);
  return (bits >> 31) ? Reduced{-r, -n} : Reduced{r, n};
}

PYFAST_HD void sincos_small(float x, float& s, float& c) { sincos_quadrant(reduce_small(x), s, c); }
PYFAST_HD void sincos_medium(float x, float& s, float& c) { sincos_quadrant(reduce_medium(x), s, c); }

// Any float score: the cheapest reduction that is exact for it, then one evaluation of the polynomials.
PYFAST_HD void sincos_any(float x, float& s, float& c) {
  const float magnitude = fabsf(x);
  Reduced reduced;
  if (magnitude <= kSmallAngleLimit)
    reduced = reduce_small(x);
  else if (magnitude < kMediumAngleLimit)
    reduced = reduce_medium(x);
  else
    reduced = reduce_huge(x);  // also inf and NaN
  sincos_quadrant(reduced, s, c);
}

PYFAST_HD void sincos_any(double x, double& s, double& c) {
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
