// CRReLU (Correction-Regularized ReLU, EAFO): the maths shared by the CPU and CUDA kernels (torch-free).
//
//   e(x)      = exp(-x^2 / 2)
//   forward   y      = max(0, x) + eps * x * e(x)
//   backward  dL/dx  = g * (1[x > 0] + eps * (1 - x^2) * e(x))      (evaluated as e - x (x e): see grad_x)
//             dL/deps = sum over the elements that share eps of g * x * e(x)
//
// eps is one learnable scalar or one per channel. x is viewed as [outer, C, inner] around the channel axis with
// C = eps.numel() (C = 1: [1, 1, numel]); element i uses eps[(i / inner) % C]. Arithmetic type A: float for
// float/half/bfloat16 storage, double for double; eps arrives in A. The gradient of eps is accumulated in double.
#pragma once

#include "common/dtype.h"

#include <cmath>
#include <cstdint>

#if !defined(__CUDACC__)
#include "common/exp.h"
#endif

namespace pyfast {
namespace crrelu {

using DType = ::pyfast::DType;

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
// e(x) = exp(-x^2/2) for the CPU loops: the vectorisable polynomial exp of common/exp.h (about 1 ulp; flushes to 0
// below 1.2e-38, where libm returns subnormals).
inline float gauss(float x) { return cpu::exp_nonpositive(-0.5f * x * x); }
#endif
PYFAST_HD double gauss(double x) { return exp(-0.5 * x * x); }

template <class A>
PYFAST_HD A forward(A x, A eps, A e) {
  return (x > A(0) ? x : A(0)) + eps * x * e;
}

// (1 - x^2) e(x) as e - x (x e): where x^2 overflows (|x| > 1.8e19 in float32, 1.3e154 in float64) e = 0 and x e = 0,
// so the correction takes its limit 0 (grad 1 for x > 0, 0 for x < 0) instead of (1 - inf) * 0 = NaN. These are the
// products autograd of the reference forms; at x = +-inf both give NaN (inf * 0), as in the forward.
template <class A>
PYFAST_HD A grad_x(A g, A x, A eps, A e) {
  return g * ((x > A(0) ? A(1) : A(0)) + eps * (e - x * (x * e)));
}

template <class A>
PYFAST_HD A grad_eps_term(A g, A x, A e) {
  return g * x * e;
}

}  // namespace crrelu
}  // namespace pyfast
