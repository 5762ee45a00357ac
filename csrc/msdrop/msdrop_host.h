// Host side of msdrop_fwd / msdrop_bwd: argument checks, allocation, the two ATen GEMMs of each pass, and calls to the
// device's elementwise / row kernels (a Kernels struct of launchers: make_x, masked_sum, ce, grad). The backward is
// shared by the CPU and CUDA registrations, the forward is CUDA's (the CPU forward fuses its steps per block of rows
// in msdrop_cpu.cpp, with check() and bias_of() from here). pyfast/ops/msdrop.py validates first with friendlier
// messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>

#include "common/host.h"
#include "msdrop/msdrop.h"

namespace pyfast {
namespace msdrop {

struct Shape {
  int64_t M, B, D, C;
  uint32_t threshold;
  double scale;
};

inline Shape check(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& target, const at::Tensor& seed,
                   int64_t M, double p) {
  check_floating(h, "msdrop", "h");
  TORCH_CHECK_VALUE(h.dim() == 2 && h.numel() > 0, "msdrop: h must be a non-empty [B, D], got shape ", h.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == h.size(1) && weight.size(0) > 0,
                    "msdrop: weight must be [C, D] with D = ", h.size(1), ", got shape ", weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == h.scalar_type(), "msdrop: weight must have h's dtype ", h.scalar_type(),
                   ", got ", weight.scalar_type());
  TORCH_CHECK_VALUE(target.dim() == 1 && target.size(0) == h.size(0), "msdrop: target must be [B] with B = ",
                    h.size(0), ", got shape ", target.sizes());
  TORCH_CHECK_TYPE(target.scalar_type() == at::kLong, "msdrop: target must be int64, got ", target.scalar_type());
  TORCH_CHECK_VALUE(seed.numel() == 1 && seed.scalar_type() == at::kLong, "msdrop: seed must be one int64");
  for (const at::Tensor* t : {&weight, &target, &seed})
    TORCH_CHECK_VALUE(t->device() == h.device(), "msdrop: every tensor must be on h's device ", h.device(),
                      ", got one on ", t->device());
  TORCH_CHECK_VALUE(M >= 1, "msdrop: num_samples must be >= 1, got ", M);
  TORCH_CHECK_VALUE(std::isfinite(p) && p >= 0.0 && p < 1.0, "msdrop: p must be in [0, 1), got ", p);
  TORCH_CHECK_VALUE(M * h.size(0) * h.size(1) < (int64_t{1} << 32),
                    "msdrop: num_samples x B x D must be < 2^32 (the mask index is 32-bit), got ",
                    M * h.size(0) * h.size(1));
  Shape s{M, h.size(0), h.size(1), weight.size(0), static_cast<uint32_t>(std::ceil(p * 16777216.0)), 1.0 / (1.0 - p)};
  return s;
}

// The bias, checked (h's dtype, like weight: a cast here would take an integer bias, or round a float64 one), and
// contiguous; undefined when absent.
inline at::Tensor bias_of(const std::optional<at::Tensor>& bias, const Shape& s, const at::Tensor& h) {
  if (!bias.has_value()) return at::Tensor();
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == s.C, "msdrop: bias must be [C] = [", s.C, "], got ",
                    bias->sizes());
  TORCH_CHECK_TYPE(bias->scalar_type() == h.scalar_type(), "msdrop: bias must have h's dtype ", h.scalar_type(),
                   ", got ", bias->scalar_type());
  TORCH_CHECK_VALUE(bias->device() == h.device(), "msdrop: bias must be on h's device");
  return bias->contiguous();
}

// Returns loss (0-d, h's dtype), logits [M, B, C] (h's dtype) and lse [M B] (float32, float64 for float64 h). The CUDA
// forward; the CPU one (msdrop_cpu.cpp) fuses the same steps per block of rows.
template <class Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor> msdrop_fwd_host(const at::Tensor& h_in, const at::Tensor& weight_in,
                                                               const std::optional<at::Tensor>& bias,
                                                               const at::Tensor& target_in, const at::Tensor& seed_in,
                                                               int64_t M, double p, const Kernels& k) {
  const Shape s = check(h_in, weight_in, target_in, seed_in, M, p);
  const at::Tensor h = h_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor seed = seed_in.reshape({1}).contiguous();
  at::Tensor x = at::empty({s.M * s.B, s.D}, h.options());
  k.make_x(MaskArgs{h.const_data_ptr(), x.mutable_data_ptr(), seed.const_data_ptr<int64_t>(), s.M, s.B, s.D,
                    s.threshold, s.scale},
           dtype_of(h));
  const at::Tensor b = bias_of(bias, s, h);
  at::Tensor logits = at::mm(x, weight_in.t());  // the bias is added by the cross-entropy pass (no broadcast copy)
  const auto acc = acc_type(h.scalar_type());
  at::Tensor lse = at::empty({s.M * s.B}, h.options().dtype(acc));
  at::Tensor rows = at::empty({s.M * s.B}, h.options().dtype(at::kDouble));
  k.ce(CeArgs{logits.mutable_data_ptr(), b.defined() ? b.const_data_ptr() : nullptr,
              target.const_data_ptr<int64_t>(), lse.mutable_data_ptr(),
              rows.mutable_data_ptr(), s.M * s.B, s.C, s.B},
       dtype_of(h));
  at::Tensor loss = rows.sum().div(static_cast<double>(s.M * s.B)).to(h.scalar_type());
  return {loss, logits.view({s.M, s.B, s.C}), lse};
}

// grad_h [B, D], grad_weight [C, D], grad_bias [C] (h's dtype); shape [0] when not requested.
template <class Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor> msdrop_bwd_host(
    const at::Tensor& grad_loss, const at::Tensor& logits_in, const at::Tensor& lse_in, const at::Tensor& h_in,
    const at::Tensor& weight_in, const at::Tensor& target_in, const at::Tensor& seed_in, int64_t M, double p,
    bool need_grad_h, bool need_grad_weight, bool need_grad_bias, const Kernels& k) {
  const Shape s = check(h_in, weight_in, target_in, seed_in, M, p);
  TORCH_CHECK_VALUE(logits_in.numel() == s.M * s.B * s.C, "msdrop_bwd: logits must be [M, B, C] = [", s.M, ", ",
                    s.B, ", ", s.C, "], got ", logits_in.sizes());
  TORCH_CHECK_VALUE(lse_in.numel() == s.M * s.B, "msdrop_bwd: lse must have M B = ", s.M * s.B, " values");
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, "msdrop_bwd: grad_loss must be one value");
  const auto acc = acc_type(h_in.scalar_type());
  const at::Tensor h = h_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor seed = seed_in.reshape({1}).contiguous();
  const at::Tensor logits = logits_in.reshape({s.M * s.B, s.C}).to(h.scalar_type()).contiguous();
  const at::Tensor lse = lse_in.to(acc).contiguous();
  const at::Tensor gl = grad_loss.reshape({1}).to(acc).contiguous();
  at::Tensor G = at::empty({s.M * s.B, s.C}, h.options());
  k.grad(GradArgs{logits.const_data_ptr(), lse.const_data_ptr(), target.const_data_ptr<int64_t>(),
                  gl.const_data_ptr(), G.mutable_data_ptr(), s.M * s.B, s.C, s.B},
         dtype_of(h));
  at::Tensor grad_w = at::empty({0}, h.options()), grad_b = at::empty({0}, h.options());
  at::Tensor grad_h = at::empty({0}, h.options());
  if (need_grad_weight) {
    at::Tensor x = at::empty({s.M * s.B, s.D}, h.options());
    k.make_x(MaskArgs{h.const_data_ptr(), x.mutable_data_ptr(), seed.const_data_ptr<int64_t>(), s.M, s.B, s.D,
                      s.threshold, s.scale},
             dtype_of(h));
    grad_w = at::mm(G.t(), x);
  }
  if (need_grad_bias) grad_b = G.sum(0);
  if (need_grad_h) {
    const at::Tensor gx = at::mm(G, weight_in.contiguous());
    grad_h = at::empty({s.B, s.D}, h.options());
    k.masked_sum(MaskArgs{gx.const_data_ptr(), grad_h.mutable_data_ptr(), seed.const_data_ptr<int64_t>(), s.M, s.B,
                          s.D, s.threshold, s.scale},
                 dtype_of(h));
  }
  return {grad_h, grad_w, grad_b};
}

}  // namespace msdrop
}  // namespace pyfast
