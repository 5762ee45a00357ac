// Host-side argument checking and output allocation shared by the CPU and CUDA registrations of crrelu_fwd /
// crrelu_bwd. pyfast/ops/crrelu.py validates first with friendlier messages; these checks guard direct
// torch.ops.pyfast.* callers.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <tuple>

#include "common/host.h"
#include "crrelu/crrelu.h"

namespace pyfast {
namespace crrelu {

// [outer, C, inner] of x around axis `dim` for an eps of C values (C = 1: the whole tensor is one run).
inline Layout layout_of(const at::Tensor& x, const at::Tensor& eps, int64_t dim) {
  check_floating(x, "crrelu", "x");
  TORCH_CHECK_TYPE(at::isFloatingType(eps.scalar_type()), "crrelu: eps must be a floating dtype, got ",
                   eps.scalar_type());
  TORCH_CHECK_VALUE(eps.device() == x.device(), "crrelu: eps is on ", eps.device(), " but x is on ", x.device());
  TORCH_CHECK_VALUE(eps.dim() <= 1, "crrelu: eps must be a scalar or 1-D, got shape ", eps.sizes());
  const int64_t C = eps.numel();
  if (C == 1) return Layout{1, 1, x.numel()};
  TORCH_CHECK_VALUE(x.dim() >= 1, "crrelu: a per-channel eps needs x with a channel axis, got a 0-d x");
  const int64_t d = dim < 0 ? dim + x.dim() : dim;
  TORCH_CHECK_VALUE(d >= 0 && d < x.dim(), "crrelu: dim ", dim, " is out of range for x of shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(d) == C, "crrelu: eps must have 1 or x.size(dim) = ", x.size(d), " values, got ", C);
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < d; ++i) outer *= x.size(i);
  for (int64_t i = d + 1; i < x.dim(); ++i) inner *= x.size(i);
  return Layout{outer, C, inner};
}

template <class Launch>
at::Tensor crrelu_fwd_host(const at::Tensor& x_in, const at::Tensor& eps_in, int64_t dim, Launch&& launch) {
  const Layout l = layout_of(x_in, eps_in, dim);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor eps = eps_in.to(acc_type(x.scalar_type())).contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() > 0) launch(FwdArgs{x.const_data_ptr(), y.mutable_data_ptr(), eps.const_data_ptr(), l}, dtype_of(x));
  return y;
}

// grad_x / grad_eps have shape [0] when not requested; grad_eps comes back in eps's dtype and shape.
template <class Launch>
std::tuple<at::Tensor, at::Tensor> crrelu_bwd_host(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                   const at::Tensor& eps_in, int64_t dim, bool need_grad_x,
                                                   bool need_grad_eps, Launch&& launch) {
  const Layout l = layout_of(x_in, eps_in, dim);
  TORCH_CHECK_VALUE(grad_in.sizes() == x_in.sizes(), "crrelu_bwd: grad must have x's shape ", x_in.sizes(),
                    ", got ", grad_in.sizes());
  TORCH_CHECK_TYPE(grad_in.scalar_type() == x_in.scalar_type(), "crrelu_bwd: grad must have dtype ",
                   x_in.scalar_type(), ", got ", grad_in.scalar_type());
  TORCH_CHECK_VALUE(grad_in.device() == x_in.device(), "crrelu_bwd: grad is on ", grad_in.device(), " but x is on ",
                    x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor eps = eps_in.to(acc_type(x.scalar_type())).contiguous();
  at::Tensor grad_x = need_grad_x ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  at::Tensor grad_eps = need_grad_eps ? at::zeros({l.C}, eps.options().dtype(at::kDouble))
                                      : at::empty({0}, eps_in.options());
  if ((need_grad_x || need_grad_eps) && x.numel() > 0)
    launch(BwdArgs{grad.const_data_ptr(), x.const_data_ptr(), eps.const_data_ptr(),
                   need_grad_x ? grad_x.mutable_data_ptr() : nullptr,
                   need_grad_eps ? grad_eps.mutable_data_ptr() : nullptr, l},
           dtype_of(x));
  if (need_grad_eps) grad_eps = grad_eps.to(eps_in.scalar_type()).reshape(eps_in.sizes());
  return {grad_x, grad_eps};
}

}  // namespace crrelu
}  // namespace pyfast
