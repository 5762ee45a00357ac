// Host-side argument checking and output allocation shared by the CPU and CUDA registrations of ghost_bn_fwd /
// ghost_bn_bwd. pyfast/ops/ghost_bn.py validates first with friendlier messages and applies the closed-form
// running-statistics update to the [G, C] statistics returned here; these checks guard direct torch.ops callers.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "common/host.h"
#include "ghost_bn/ghost_bn.h"

namespace pyfast {
namespace ghost_bn {

inline Layout layout_of(const at::Tensor& x, int64_t ghost_batch_size) {
  check_floating(x, "ghost_bn", "x");
  TORCH_CHECK_VALUE(x.dim() >= 2, "ghost_bn: x must be [N, C, *], got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.numel() > 0, "ghost_bn: x must not be empty, got shape ", x.sizes());
  TORCH_CHECK_VALUE(ghost_batch_size >= 1, "ghost_bn: ghost_batch_size must be >= 1, got ", ghost_batch_size);
  Layout l{};
  l.N = x.size(0);
  l.C = x.size(1);
  l.S = x.numel() / (l.N * l.C);
  l.B = ghost_batch_size;
  l.G = (l.N + l.B - 1) / l.B;
  return l;
}

// weight / bias: [C], any floating dtype, on x's device; returned in the arithmetic type (undefined if absent).
inline at::Tensor affine_param(const std::optional<at::Tensor>& p, const char* name, const at::Tensor& x, int64_t C) {
  if (!p.has_value()) return at::Tensor();
  TORCH_CHECK_TYPE(at::isFloatingType(p->scalar_type()), "ghost_bn: ", name, " must be floating, got ",
                   p->scalar_type());
  TORCH_CHECK_VALUE(p->dim() == 1 && p->size(0) == C, "ghost_bn: ", name, " must have shape [C] = [", C, "], got ",
                    p->sizes());
  TORCH_CHECK_VALUE(p->device() == x.device(), "ghost_bn: ", name, " is on ", p->device(), " but x is on ",
                    x.device());
  return p->to(acc_type(x.scalar_type())).contiguous();
}

// Returns y, and the per-ghost mean, biased variance and 1 / sqrt(var + eps), each [G, C] in the arithmetic type.
template <class Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ghost_bn_fwd_host(
    const at::Tensor& x_in, const std::optional<at::Tensor>& weight_in, const std::optional<at::Tensor>& bias_in,
    int64_t ghost_batch_size, double eps, Launch&& launch) {
  const Layout l = layout_of(x_in, ghost_batch_size);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "ghost_bn: eps must be finite and >= 0, got ", eps);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor w = affine_param(weight_in, "weight", x, l.C);
  const at::Tensor b = affine_param(bias_in, "bias", x, l.C);
  const auto stats = x.options().dtype(acc_type(x.scalar_type()));
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor mean = at::empty({l.G, l.C}, stats), var = at::empty({l.G, l.C}, stats);
  at::Tensor invstd = at::empty({l.G, l.C}, stats);
  launch(FwdArgs{x.const_data_ptr(), y.mutable_data_ptr(), w.defined() ? w.const_data_ptr() : nullptr,
                 b.defined() ? b.const_data_ptr() : nullptr, mean.mutable_data_ptr(), var.mutable_data_ptr(),
                 invstd.mutable_data_ptr(), eps, l},
         dtype_of(x));
  return {y, mean, var, invstd};
}

// grad_x (x's dtype), grad_weight and grad_bias ([C] in the arithmetic type); shape [0] when not requested.
template <class Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> ghost_bn_bwd_host(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& mean_in, const at::Tensor& invstd_in,
    const std::optional<at::Tensor>& weight_in, int64_t ghost_batch_size, bool need_grad_x, bool need_grad_weight,
    bool need_grad_bias, Launch&& launch) {
  const Layout l = layout_of(x_in, ghost_batch_size);
  TORCH_CHECK_VALUE(grad_in.sizes() == x_in.sizes(), "ghost_bn_bwd: grad must have x's shape ", x_in.sizes(),
                    ", got ", grad_in.sizes());
  TORCH_CHECK_TYPE(grad_in.scalar_type() == x_in.scalar_type(), "ghost_bn_bwd: grad must have dtype ",
                   x_in.scalar_type(), ", got ", grad_in.scalar_type());
  TORCH_CHECK_VALUE(grad_in.device() == x_in.device(), "ghost_bn_bwd: grad is on ", grad_in.device(),
                    " but x is on ", x_in.device());
  const auto acc = acc_type(x_in.scalar_type());
  for (const at::Tensor* t : {&mean_in, &invstd_in}) {
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == l.G && t->size(1) == l.C,
                      "ghost_bn_bwd: mean and invstd must have shape [G, C] = [", l.G, ", ", l.C, "], got ",
                      t->sizes());
    TORCH_CHECK_VALUE(t->device() == x_in.device(), "ghost_bn_bwd: mean and invstd must be on x's device");
  }
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor mean = mean_in.to(acc).contiguous();
  const at::Tensor invstd = invstd_in.to(acc).contiguous();
  const at::Tensor w = affine_param(weight_in, "weight", x, l.C);
  const auto stats = x.options().dtype(acc);
  at::Tensor grad_x = need_grad_x ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  at::Tensor sdy = at::empty({l.G, l.C}, stats), sdyxmu = at::empty({l.G, l.C}, stats);
  launch(BwdArgs{grad.const_data_ptr(), x.const_data_ptr(), mean.const_data_ptr(), invstd.const_data_ptr(),
                 w.defined() ? w.const_data_ptr() : nullptr, need_grad_x ? grad_x.mutable_data_ptr() : nullptr,
                 sdy.mutable_data_ptr(), sdyxmu.mutable_data_ptr(), l},
         dtype_of(x));
  // dw = sum_g sdyxmu inv, db = sum_g sdy (ghost order, double).
  at::Tensor grad_w = need_grad_weight ? sdyxmu.to(at::kDouble).mul(invstd.to(at::kDouble)).sum(0).to(acc)
                                       : at::empty({0}, stats);
  at::Tensor grad_b = need_grad_bias ? sdy.to(at::kDouble).sum(0).to(acc) : at::empty({0}, stats);
  return {grad_x, grad_w, grad_b};
}

}  // namespace ghost_bn
}  // namespace pyfast
