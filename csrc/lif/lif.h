// LIF / IF spiking neuron: per-neuron math shared by the CPU and CUDA kernels (torch-free).
//
// Multi-step, SpikingJelly semantics. Per neuron, t = 0 .. T-1, k = 1/tau in [0, 1], V_{-1} = v0:
//   charge  decay_input:  H_t = V_{t-1} + k (X_t - (V_{t-1} - V_r)) = (1-k) V_{t-1} + k X_t + k V_r
//           otherwise:    H_t = V_{t-1} - k (V_{t-1} - V_r) + X_t   = (1-k) V_{t-1} + X_t + k V_r
//           (soft reset: V_r = 0 in the charge)
//   fire    S_t = [H_t >= V_th]
//   reset   hard: V_t = H_t (1 - S_t) + V_r S_t        soft: V_t = H_t - V_th S_t
//
// Backward (BPTT, reverse t), with sh = dS/dH and sth = dS/dV_th from the surrogate, gV = dL/dV_t from step t+1
// (dL/dV_{T-1} = grad of the returned final membrane):
//   hard: dV/dH = 1 - S + (V_r - H) sh      dV/dV_th = (V_r - H) sth
//   soft: dV/dH = 1 - V_th sh               dV/dV_th = -S - V_th sth
//   (detach_reset drops the sh / sth terms above)
//   gH       = gS_t sh + gV dV/dH
//   gV_th   += gS_t sth + gV dV/dV_th
//   gX_t     = k gH  (decay_input)  or  gH
//   gk      += gH (X_t [decay_input] + V_r - V_{t-1})
//   gV      <- (1 - k) gH,  and finally  gv0 = gV.
//
// Storage: the forward writes H_t rounded to the input dtype and fires and resets on that rounded value, so the
// backward, which recomputes S_t and V_{t-1} from the saved H, sees exactly the forward's spikes (for fp32 the
// rounding is the identity). Only H is saved; S and V are recomputed.
#pragma once

#include "common/dtype.h"

#include <cmath>
#include <cstdint>
#include <bit>
#include <type_traits>

namespace pyfast {
namespace lif {

enum class Surrogate : int { Sigmoid = 0, ATan = 1, Triangle = 2 };

// f(std::integral_constant<Surrogate, S>{}) for the run-time surrogate s. The kernels take the surrogate as a template
// argument, so a time step's body has no branch on it: the CPU loops vectorise, and a CUDA thread's surrogates of
// several steps (independent of each other) interleave instead of waiting on a branch per step.
template <typename F>
void with_surrogate(Surrogate s, F&& f) {
  switch (s) {
    case Surrogate::Sigmoid: f(std::integral_constant<Surrogate, Surrogate::Sigmoid>{}); return;
    case Surrogate::ATan: f(std::integral_constant<Surrogate, Surrogate::ATan>{}); return;
    default: f(std::integral_constant<Surrogate, Surrogate::Triangle>{}); return;
  }
}

// Hyperparameters that are the same for every neuron. k and v_th may also vary per neuron (passed separately).
struct Config {
  float v_reset;      // V_r; ignored (0 in the charge) for soft reset
  bool hard_reset;    // v_reset given (hard) or None (soft)
  bool decay_input;
  bool detach_reset;
  Surrogate surrogate;
  float alpha;
  // v_reset and alpha unrounded, for the float64 kernels. The float32 ones keep reading the float fields: converting
  // a double in them instead cost the CUDA backward up to 53 more registers in some instantiations (nvcc 13, sm_90).
  double v_reset_f64;
  double alpha_f64;
};

// v_reset and alpha in the arithmetic type A.
template <typename A>
PYFAST_HD A v_reset_of(const Config& c) {
  if constexpr (std::is_same_v<A, double>) return c.v_reset_f64;
  else return c.v_reset;
}
template <typename A>
PYFAST_HD A alpha_of(const Config& c) {
  if constexpr (std::is_same_v<A, double>) return c.alpha_f64;
  else return c.alpha;
}

// Arithmetic runs in A: float for float/half/bfloat16 storage, double for double.
#if defined(__CUDACC__)
PYFAST_HD float math_exp(float v) { return expf(v); }
#else
// exp for the CPU kernels, written so the compiler can vectorise the loop that calls it (libm's expf is an opaque
// scalar call): exp(v) = 2^n * exp(r), n = round(v / ln 2), |r| <= ln(2)/2, exp(r) by its degree-6 Taylor
// polynomial (truncation error < 2e-7 relative), 2^n assembled in the exponent bits. Input clamped to the finite
// float range.
inline float math_exp(float v) {
  v = v < -87.0f ? -87.0f : (v > 88.0f ? 88.0f : v);
  // Adding 1.5 * 2^23 rounds v / ln 2 to the integer n and leaves n + 2^22 in the low mantissa bits of `shifted`.
  const float round_magic = 12582912.0f;
  const float shifted = v * 1.44269504088896341f + round_magic;
  const float n = shifted - round_magic;
  const float r = (v - n * 0.693145751953125f) - n * 1.428606765330187e-06f;  // ln 2 split in two for accuracy
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n: shifting left by 23 drops the exponent and the 2^22 offset, leaving (n + 127) << 23 (unsigned arithmetic
  // throughout: a float->int conversion here stops gcc from vectorising).
  const uint32_t scale_bits = (std::bit_cast<uint32_t>(shifted) + 127u) << 23;
  return p * std::bit_cast<float>(scale_bits);
}
#endif
PYFAST_HD double math_exp(double v) { return exp(v); }

template <typename A>
PYFAST_HD A charge(A v_prev, A x, A k, const Config& c) {
  const A v_r = c.hard_reset ? v_reset_of<A>(c) : A(0);
  return c.decay_input ? v_prev + k * (x - (v_prev - v_r)) : v_prev - k * (v_prev - v_r) + x;
}

template <typename A>
PYFAST_HD A fire(A h, A v_th) {
  return h >= v_th ? A(1) : A(0);
}

template <typename A>
PYFAST_HD A reset(A h, A s, A v_th, const Config& c) {
  return c.hard_reset ? h * (A(1) - s) + v_reset_of<A>(c) * s : h - v_th * s;
}

// Surrogate partial derivatives of S = Heaviside(H - V_th): *d_h = dS/dH, *d_vth = dS/dV_th (S: see with_surrogate).
template <Surrogate S, typename A>
PYFAST_HD void surrogate_grad(A h, A v_th, const Config& c, A* d_h, A* d_vth) {
  const A a = alpha_of<A>(c);
  if constexpr (S == Surrogate::Sigmoid) {
    const A sg = A(1) / (A(1) + math_exp(-a * (h - v_th)));
    *d_h = a * sg * (A(1) - sg);
    *d_vth = -*d_h;
  } else if constexpr (S == Surrogate::ATan) {
    const A w = A(1.5707963267948966) * a * (h - v_th);
    *d_h = A(0.5) * a / (A(1) + w * w);
    *d_vth = -*d_h;
  } else {
    static_assert(S == Surrogate::Triangle);
    // IIR-SNN: z = H / V_th - 1, dS/dz = alpha max(0, 1 - |z|); chain rule through z for H and V_th.
    const A inv_th = A(1) / v_th;
    const A z = h * inv_th - A(1);
    const A one_minus = A(1) - (z < A(0) ? -z : z);
    const A d_z = one_minus > A(0) ? a * one_minus : A(0);
    *d_h = d_z * inv_th;
    *d_vth = -d_z * h * inv_th * inv_th;
  }
}

// Gradients flowing out of one backward step (see the header comment). The caller carries grad_v across steps.
template <typename A>
struct StepGrad {
  A grad_h;    // dL/dH_t
  A grad_vth;  // contribution of step t to dL/dV_th
};

template <Surrogate S, typename A>
PYFAST_HD StepGrad<A> backward_step(A grad_s, A grad_v, A h, A v_th, const Config& c) {
  const A s = fire(h, v_th);
  A sh, sth;
  surrogate_grad<S>(h, v_th, c, &sh, &sth);
  const A keep = c.detach_reset ? A(0) : A(1);
  // Both reset modes computed and blended with a 0/1 weight: gcc cannot vectorise a select of vectors on a scalar
  // condition, and the extra multiply-adds are free in a memory-bound loop.
  const A hard = c.hard_reset ? A(1) : A(0);
  const A hard_dv_dh = A(1) - s + keep * (v_reset_of<A>(c) - h) * sh;
  const A hard_dv_dth = keep * (v_reset_of<A>(c) - h) * sth;
  const A soft_dv_dh = A(1) - keep * v_th * sh;
  const A soft_dv_dth = -s - keep * v_th * sth;
  const A dv_dh = hard * hard_dv_dh + (A(1) - hard) * soft_dv_dh;
  const A dv_dth = hard * hard_dv_dth + (A(1) - hard) * soft_dv_dth;
  StepGrad<A> g;
  g.grad_h = grad_s * sh + grad_v * dv_dh;
  g.grad_vth = grad_s * sth + grad_v * dv_dth;
  return g;
}

// dH_t/dX_t: k with decay_input, else 1 (per neuron; hoisted out of the time loop by the CPU kernel).
template <typename A>
PYFAST_HD A charge_grad_x(A k, const Config& c) {
  return c.decay_input ? k : A(1);
}

// dH_t/dk given the input X_t and the previous membrane V_{t-1}.
template <typename A>
PYFAST_HD A charge_grad_k(A x, A v_prev, const Config& c) {
  const A v_r = c.hard_reset ? v_reset_of<A>(c) : A(0);
  return (c.decay_input ? A(1) : A(0)) * x + v_r - v_prev;
}

// Element types the kernels are instantiated for; passed as a plain enum so the .cu stays torch-free.
using DType = ::pyfast::DType;

// Raw pointers of one lif_fwd call. Tensors are contiguous [T, N] (x, spikes, h_seq) or [N] (v0, v_last).
// k / v_th hold one value of the arithmetic type A per neuron (stride 1) or one for all (stride 0). v0 may be null
// (start from the reset value); h_seq may be null (inference: nothing saved for backward).
struct FwdArgs {
  const void* x;
  const void* v0;
  const void* k;  // A
  int64_t k_stride;
  const void* v_th;  // A
  int64_t v_th_stride;
  void* spikes;
  void* h_seq;
  void* v_last;
  int64_t T;
  int64_t N;
  Config cfg;
};

// Raw pointers of one lif_bwd call. grad_v_last may be null (zero); x is needed only for grad_k with
// decay_input; v0 may be null (the reset value). k / v_th as in FwdArgs; grad_k / grad_v_th are per-neuron [N]
// buffers of A, null when that gradient is not wanted.
struct BwdArgs {
  const void* grad_spikes;
  const void* grad_v_last;
  const void* h_seq;
  const void* x;
  const void* v0;
  const void* k;  // A
  int64_t k_stride;
  const void* v_th;  // A
  int64_t v_th_stride;
  void* grad_x;
  void* grad_v0;
  void* grad_k;      // A
  void* grad_v_th;   // A
  int64_t T;
  int64_t N;
  Config cfg;
};

template <typename A>
PYFAST_HD A initial_membrane(const Config& c) {
  return c.hard_reset ? v_reset_of<A>(c) : A(0);
}

}  // namespace lif
}  // namespace pyfast
