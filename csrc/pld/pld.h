// Plackett-Luce distillation (PLD): the maths shared by the CPU and CUDA kernels (torch-free).
//
// One row of C classes: student logits s, teacher logits t, label y, teacher temperature tau > 0.
//   alpha      alpha_c = exp(t_c / tau - teacher_lse),  teacher_lse = log sum_c exp(t_c / tau)   (softmax(t / tau))
//   ranking    pi = y first, then the other classes by descending t; equal teacher logits by ascending class index
//              (-0 equals +0; every NaN ranks above +inf, as in torch.sort)
//   with       z_k = s[pi_k], a_k = alpha[pi_k], Z_k = sum_{j >= k} exp(z_j), l_k = log Z_k - z_k
//   forward    L = sum_k a_k l_k
//   backward   dL/dz_j = exp(z_j) sum_{k <= j} a_k / Z_k - a_j          (written to grad_student[pi_j])
//              dL/dt_c = alpha_c (l(c) - L) / tau, l(c) = l_k at the position k of class c  (the ranking is
//              piecewise constant in t: only alpha carries a gradient)
//
// Saved for backward (pld_fwd's extra outputs): the ranking pi as int32 [B, C] and teacher_lse [B]. The sort is the
// one step that is more than a pass over the row (up to 4 radix passes on CPU, 8 for float64; O(log^2 C) bitonic
// stages on CUDA), so it is done once; everything else is recomputed from s and t in single passes (alpha from t and
// teacher_lse, the suffix sums from s along pi), which keeps the saved state at 4 bytes per logit plus one per row.
//
// Stability (no exp of a positive number anywhere). Along pi, with m_k = max_{j >= k} z_j (the running suffix max):
//   Z_k = exp(m_k) S_k,  S_k = S_{k+1} r_k + e_k,  e_k = exp(z_k - m_k),  r_k = exp(m_{k+1} - m_k),  S_k >= 1
//   l_k = (m_k - z_k) + log S_k
//   CPU backward:  P_j = sum_{k <= j} (a_k / S_k) exp(m_j - m_k) = P_{j-1} r_{j-1} + a_j / S_j  (P_j <= 1),
//                  dL/dz_j = P_j e_j - a_j
//   CUDA backward: the same sum in the log domain, log P'_j = logsumexp_{k <= j} (log a_k - log Z_k) by a block scan,
//                  dL/dz_j = exp(z_j + log P'_j) - a_j
// Arithmetic in float32 for float32/float16/bfloat16 inputs (float64 for float64); the loss sum in double on CPU.
#pragma once

#include "common/dtype.h"

#include <cstdint>
#include <cstring>

namespace pyfast {
namespace pld {

using DType = ::pyfast::DType;

// The largest C the CUDA kernel sorts in shared memory (one block per row, bitonic sort).
constexpr int64_t kCudaMaxClasses = 1024;

struct FwdArgs {
  const void* student;    // [B, C], contiguous
  const void* teacher;    // [B, C], student's dtype, contiguous
  const int64_t* labels;  // [B]
  void* loss;             // [B] in A
  int32_t* perm;          // [B, C]: the ranking pi of every row
  void* teacher_lse;      // [B] in A
  int64_t B, C;
  double tau;
};

struct BwdArgs {
  const void* grad_loss;    // [B] in A
  const void* student;      // [B, C]
  const void* teacher;      // [B, C]
  const int32_t* perm;      // [B, C]
  const void* teacher_lse;  // [B] in A
  void* grad_student;       // [B, C] in student's dtype, or nullptr when not requested
  void* grad_teacher;       // [B, C] in teacher's dtype, or nullptr when not requested
  int64_t B, C;
  double tau;
};

// Order keys: unsigned integers that sort like the floating values (a < b => key(a) < key(b)), with -0 mapped to +0
// and every NaN to one value above +inf. The ranking sorts ~key(t_c) ascending (descending t), ties by class index;
// the label gets key 0, below every ~key(t) (~key is 0 only for the NaN payload that the canonical NaN replaces).
PYFAST_HD uint32_t order_key(float v) {
  uint32_t u;
  const float w = v == 0.0f ? 0.0f : v;
  std::memcpy(&u, &w, sizeof(u));
  u = v != v ? 0x7FC00000u : u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

PYFAST_HD uint64_t order_key(double v) {
  uint64_t u;
  const double w = v == 0.0 ? 0.0 : v;
  std::memcpy(&u, &w, sizeof(u));
  u = v != v ? 0x7FF8000000000000ull : u;
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

}  // namespace pld
}  // namespace pyfast
