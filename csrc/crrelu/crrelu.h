// CRReLU (Correction-Regularized ReLU, EAFO): the maths shared by the CPU and CUDA kernels (torch-free).
//
//   e(x)      = exp(-x^2 / 2)
//   forward   y      = max(0, x) + eps * x * e(x)
//   backward  dL/dx  = g * (1[x > 0] + eps * (1 - x^2) * e(x))
//             dL/deps = sum over the elements that share eps of g * x * e(x)
//
// eps is one learnable scalar or one per channel. x is viewed as [outer, C, inner] around the channel axis with
// C = eps.numel() (C = 1: [1, 1, numel]); element i uses eps[(i / inner) % C]. Arithmetic type A: float for
// float/half/bfloat16 storage, double for double; eps arrives in A. The gradient of eps is accumulated in double.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifndef PYFAST_HD
#if defined(__CUDACC__)
#define PYFAST_HD __host__ __device__ __forceinline__
#else
#define PYFAST_HD inline
#endif
#endif

namespace pyfast {
namespace crrelu {

enum class DType : int { Float32, Float64, Float16, BFloat16 };

struct Layout {
  int64_t outer, C, inner;  // x as [outer, C, inner]; C = eps.numel()
};

struct FwdArgs {
  const void* x;
  void* y;
  const void* eps;  // [C] in A
  Layout l;
};

struct BwdArgs {
  const void* grad;  // dL/dy, x's shape
  const void* x;
  const void* eps;   // [C] in A
  void* grad_x;      // x's shape, or nullptr when not requested
  void* grad_eps;    // [C] double, zeroed, or nullptr when not requested
  Layout l;
};

#if defined(__CUDACC__)
PYFAST_HD float gauss(float x) { return expf(-0.5f * x * x); }
#else
// e(x) = exp(-x^2/2) for the CPU loops, written so gcc vectorises the loop that calls it (libm's expf is an opaque
// scalar call, and a float -> int conversion would also stop the vectoriser): with t = -x^2/2 <= 0,
// exp(t) = 2^n exp(r), n = round(t / ln 2) from the 1.5 * 2^23 rounding trick, r = t - n ln 2 (ln 2 split in two,
// |r| <= ln(2)/2), exp(r) by the Cephes expf minimax polynomial (about 1 ulp), 2^n written into the exponent bits.
// Below t = -87.33 (2^-126) the result is flushed to 0, where libm returns subnormals under 1.2e-38.
inline float gauss(float x) {
  const float t = -0.5f * x * x;
  const float lo = -87.33654475f;
  const float tc = t < lo ? lo : t;  // NaN stays NaN (the comparison is false)
  const float round_magic = 12582912.0f;
  const float shifted = tc * 1.44269504088896341f + round_magic;
  const float n = shifted - round_magic;
  const float r = (tc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  uint32_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  bits = (bits + 127u) << 23;  // low bits of `shifted` hold n + 2^22: the shift drops the offset, keeps n + 127
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return t < lo ? 0.0f : p * scale;
}
#endif
PYFAST_HD double gauss(double x) { return exp(-0.5 * x * x); }

template <class A>
PYFAST_HD A forward(A x, A eps, A e) {
  return (x > A(0) ? x : A(0)) + eps * x * e;
}

template <class A>
PYFAST_HD A grad_x(A g, A x, A eps, A e) {
  return g * ((x > A(0) ? A(1) : A(0)) + eps * (A(1) - x * x) * e);
}

template <class A>
PYFAST_HD A grad_eps_term(A g, A x, A e) {
  return g * x * e;
}

}  // namespace crrelu
}  // namespace pyfast
