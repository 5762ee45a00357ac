// Host-side argument checking and output allocation shared by the CPU and CUDA registrations of wconv_weight_fwd /
// wconv_weight_bwd. pyfast/ops/wconv.py validates first with friendlier messages; these checks guard direct
// torch.ops.pyfast.* callers.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>
#include <tuple>

#include "common/host.h"
#include "wconv/wconv.h"

namespace pyfast {
namespace wconv {

// Kernel geometry of a [C_out, C_in/groups, K...] tensor and den's layout (per axis or shared).
inline Geometry geometry_of(const at::Tensor& w, const at::Tensor& den, const char* name) {
  TORCH_CHECK_VALUE(w.dim() >= 3 && w.dim() <= 5, "wconv: ", name,
                    " must be a conv weight [C_out, C_in/groups, K...] with 1 to 3 kernel axes, got shape ",
                    w.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()), "wconv: ", name, " must be a floating dtype, got ",
                   w.scalar_type());
  check_floating(w, "wconv", "w");
  TORCH_CHECK_TYPE(at::isFloatingType(den.scalar_type()), "wconv: den must be a floating dtype, got ",
                   den.scalar_type());
  TORCH_CHECK_VALUE(den.dim() == 1, "wconv: den must be 1-D, got shape ", den.sizes());
  TORCH_CHECK_VALUE(den.device() == w.device(), "wconv: den is on ", den.device(), " but ", name, " is on ",
                    w.device());
  Geometry g{};
  g.axes = static_cast<int>(w.dim()) - 2;
  g.taps = 1;
  int sum_m = 0;
  bool square = true;
  for (int a = 0; a < kMaxAxes; ++a) {
    const int64_t k = a < g.axes ? w.size(a + 2) : 1;
    TORCH_CHECK_VALUE(k % 2 == 1, "wconv: every kernel size must be odd (a centre tap), got ", name, " shape ",
                      w.sizes());
    g.K[a] = static_cast<int>(k);
    g.m[a] = g.K[a] / 2;
    g.off[a] = sum_m;
    if (a < g.axes) {
      sum_m += g.m[a];
      square = square && g.K[a] == g.K[0];
    }
    g.taps *= g.K[a];
  }
  g.rows = g.taps == 0 ? 0 : w.numel() / g.taps;
  if (den.numel() != sum_m) {
    TORCH_CHECK_VALUE(square && den.numel() == g.m[0], "wconv: den must have ", sum_m,
                      " values (one den per kernel axis, concatenated)", square ? " or the shared " : "",
                      square ? std::to_string(g.m[0]) : std::string(), " for kernel ", w.sizes().slice(2), ", got ",
                      den.numel());
    for (int a = 0; a < kMaxAxes; ++a) g.off[a] = 0;
  }
  g.den_numel = static_cast<int>(den.numel());
  return g;
}

// Checks, makes inputs contiguous, allocates W~ and calls launch(const FwdArgs&, DType) when there is work.
template <class Launch>
at::Tensor wconv_weight_fwd_host(const at::Tensor& weight_in, const at::Tensor& den_in, Launch&& launch) {
  const Geometry g = geometry_of(weight_in, den_in, "weight");
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor den = den_in.to(acc_type(weight.scalar_type())).contiguous();
  at::Tensor out = at::empty_like(weight, at::MemoryFormat::Contiguous);
  if (weight.numel() > 0) launch(FwdArgs{weight.const_data_ptr(), out.mutable_data_ptr(), den.const_data_ptr(), g},
                                 dtype_of(weight));
  return out;
}

// Backward. grad_weight / grad_den have shape [0] when not requested; weight is needed only for grad_den.
// launch_scale(const FwdArgs&, DType) serves dW alone (dW = dW~ * Phi is the forward applied to dW~);
// launch_bwd(const BwdArgs&, DType) computes d(den) and, with grad_w set, dW in the same pass.
template <class LaunchScale, class LaunchBwd>
std::tuple<at::Tensor, at::Tensor> wconv_weight_bwd_host(const at::Tensor& grad_in,
                                                         const std::optional<at::Tensor>& weight_in,
                                                         const at::Tensor& den_in, bool need_grad_weight,
                                                         bool need_grad_den, LaunchScale&& launch_scale,
                                                         LaunchBwd&& launch_bwd) {
  const Geometry g = geometry_of(grad_in, den_in, "grad");
  TORCH_CHECK_VALUE(!need_grad_den || weight_in.has_value(), "wconv_weight_bwd: weight is required for grad_den");
  if (weight_in.has_value()) {
    TORCH_CHECK_VALUE(weight_in->sizes() == grad_in.sizes(), "wconv_weight_bwd: weight must have grad's shape ",
                      grad_in.sizes(), ", got ", weight_in->sizes());
    TORCH_CHECK_TYPE(weight_in->scalar_type() == grad_in.scalar_type(), "wconv_weight_bwd: weight must have dtype ",
                     grad_in.scalar_type(), ", got ", weight_in->scalar_type());
    TORCH_CHECK_VALUE(weight_in->device() == grad_in.device(), "wconv_weight_bwd: weight is on ",
                      weight_in->device(), " but grad is on ", grad_in.device());
  }
  const at::Tensor grad = grad_in.contiguous();
  const auto acc = acc_type(grad.scalar_type());
  const at::Tensor den = den_in.to(acc).contiguous();
  at::Tensor grad_w = need_grad_weight ? at::empty_like(grad, at::MemoryFormat::Contiguous)
                                       : at::empty({0}, grad.options());
  if (!need_grad_den) {
    if (need_grad_weight && grad.numel() > 0)
      launch_scale(FwdArgs{grad.const_data_ptr(), grad_w.mutable_data_ptr(), den.const_data_ptr(), g},
                   dtype_of(grad));
    return {grad_w, at::empty({0}, den_in.options())};
  }
  const at::Tensor weight = weight_in->contiguous();
  at::Tensor grad_den = at::zeros({g.den_numel}, den.options());
  at::Tensor scratch = at::zeros({g.taps}, den.options());
  if (grad.numel() > 0)
    launch_bwd(BwdArgs{grad.const_data_ptr(), weight.const_data_ptr(), den.const_data_ptr(),
                       need_grad_weight ? grad_w.mutable_data_ptr() : nullptr, grad_den.mutable_data_ptr(),
                       scratch.mutable_data_ptr(), g},
               dtype_of(grad));
  return {grad_w, grad_den.to(den_in.scalar_type())};
}

}  // namespace wconv
}  // namespace pyfast
