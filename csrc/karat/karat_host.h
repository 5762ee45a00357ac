// Host-side argument checking and coefficient packing shared by the CPU and CUDA registrations of karat_fwd /
// karat_bwd. pyfast/ops/karat.py validates first with friendlier messages; these checks guard direct
// torch.ops.pyfast.* callers.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>

#include <tuple>

#include "common/host.h"
#include "karat/karat.h"

namespace pyfast {
namespace karat {

struct Shape {
  int64_t B, H, N, D, r;
  int G;
  int64_t L() const { return 2 * G * N; }  // length of a basis row
};

inline void check_float(const at::Tensor& x, const char* name) {
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, "karat: ", name,
                   " must be float32, float64, float16 or bfloat16, got ", t);
}

// q, k: [B, H, N, D]; a, b: [H, r, N, G] (harmonics 1..G).
inline Shape check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& a, const at::Tensor& b) {
  check_float(q, "q");
  TORCH_CHECK_VALUE(q.dim() == 4, "karat: q must be [B, H, N, D], got shape ", q.sizes());
  TORCH_CHECK_VALUE(q.size(2) > 0 && q.size(3) > 0, "karat: q must have N > 0 tokens and D > 0 channels, got shape ",
                    q.sizes());
  TORCH_CHECK_VALUE(k.sizes() == q.sizes(), "karat: k must have q's shape ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type(), "karat: k must have q's dtype ", q.scalar_type(), ", got ",
                   k.scalar_type());
  check_float(a, "a");
  check_float(b, "b");
  TORCH_CHECK_VALUE(a.dim() == 4 && a.size(0) == q.size(1) && a.size(2) == q.size(2) && a.size(1) >= 1 &&
                        a.size(3) >= 1,
                    "karat: a must be [H, r, N, G] with H = ", q.size(1), ", N = ", q.size(2),
                    ", r >= 1 and G >= 1, got shape ", a.sizes());
  TORCH_CHECK_VALUE(b.sizes() == a.sizes(), "karat: b must have a's shape ", a.sizes(), ", got ", b.sizes());
  for (const at::Tensor* t : {&k, &a, &b})
    TORCH_CHECK_VALUE(t->device() == q.device(), "karat: every input must be on q's device ", q.device(), ", got ",
                      t->device());
  return Shape{q.size(0), q.size(1), q.size(2), q.size(3), a.size(1), static_cast<int>(a.size(3))};
}

// C [H, r, 2 G N] in the arithmetic type: C[h, p, (t * G + m - 1) * N + q] = (t ? b : a)[h, p, q, m - 1].
inline at::Tensor pack_coef(const at::Tensor& a, const at::Tensor& b, at::ScalarType acc) {
  const Shape dummy{0, a.size(0), a.size(2), 0, a.size(1), static_cast<int>(a.size(3))};
  return at::stack({a, b}, 2).permute({0, 1, 2, 4, 3}).to(acc).contiguous().view({dummy.H, dummy.r, dummy.L()});
}

// The inverse layout of pack_coef: g_C [H, r, 2 G N] -> (g_a, g_b) [H, r, N, G] in a's and b's dtypes.
inline std::tuple<at::Tensor, at::Tensor> unpack_coef(const at::Tensor& gC, const Shape& s, const at::Tensor& a,
                                                      const at::Tensor& b) {
  const at::Tensor g = gC.view({s.H, s.r, 2, s.G, s.N}).permute({0, 1, 2, 4, 3});
  return {g.select(2, 0).to(a.scalar_type()).contiguous(), g.select(2, 1).to(b.scalar_type()).contiguous()};
}

inline void check_grad_z(const at::Tensor& grad_z, const at::Tensor& q, const Shape& s) {
  TORCH_CHECK_VALUE(grad_z.dim() == 4 && grad_z.size(0) == s.B && grad_z.size(1) == s.H && grad_z.size(2) == s.N &&
                        grad_z.size(3) == s.r,
                    "karat_bwd: grad_z must be [B, H, N, r] = [", s.B, ", ", s.H, ", ", s.N, ", ", s.r, "], got ",
                    grad_z.sizes());
  TORCH_CHECK_VALUE(grad_z.device() == q.device(), "karat_bwd: grad_z is on ", grad_z.device(), " but q is on ",
                    q.device());
}

}  // namespace karat
}  // namespace pyfast
