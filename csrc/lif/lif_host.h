// Host-side argument checking and output allocation shared by the CPU and CUDA registrations of lif_fwd / lif_bwd.
// The Python layer (pyfast/ops/lif.py) validates first with friendlier messages; these checks guard direct
// torch.ops.pyfast.* callers. Layout: x is [T, *] and is processed as [T, N] with N = x[0].numel().
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string_view>
#include <tuple>

#include "common/host.h"
#include "lif/lif.h"

namespace pyfast {
namespace lif {

inline Surrogate parse_surrogate(std::string_view name) {
  if (name == "sigmoid") return Surrogate::Sigmoid;
  if (name == "atan") return Surrogate::ATan;
  if (name == "triangle") return Surrogate::Triangle;
  TORCH_CHECK_VALUE(false, "lif: surrogate must be 'sigmoid', 'atan' or 'triangle', got '", name, "'");
}

inline Config make_config(std::optional<double> v_reset, bool decay_input, std::string_view surrogate, double alpha,
                          bool detach_reset) {
  TORCH_CHECK_VALUE(std::isfinite(alpha), "lif: alpha must be finite, got ", alpha);
  TORCH_CHECK_VALUE(!v_reset.has_value() || std::isfinite(*v_reset), "lif: v_reset must be finite, got ", *v_reset);
  Config c;
  c.v_reset_f64 = v_reset.value_or(0.0);
  c.v_reset = static_cast<float>(c.v_reset_f64);
  c.hard_reset = v_reset.has_value();
  c.decay_input = decay_input;
  c.detach_reset = detach_reset;
  c.surrogate = parse_surrogate(surrogate);
  c.alpha_f64 = alpha;
  c.alpha = static_cast<float>(alpha);
  return c;
}

// k or v_th as the kernels read it: contiguous, in the arithmetic type of x (float64 for float64 x, else float32).
inline at::Tensor param_in_acc(const at::Tensor& p, const at::Tensor& x) {
  return p.to(acc_type(x.scalar_type())).contiguous();
}

inline int64_t neurons_of(const at::Tensor& x) { return x.dim() == 0 ? 0 : x.numel() / std::max<int64_t>(x.size(0), 1); }

// k and v_th: floating, one value for all neurons (numel 1) or one per neuron (numel N). Returns the element stride.
inline int64_t param_stride(const at::Tensor& p, const char* name, int64_t n, const at::Tensor& x) {
  check_floating(p, "lif", name);
  TORCH_CHECK_VALUE(p.device() == x.device(), "lif: ", name, " is on ", p.device(), " but x is on ", x.device());
  TORCH_CHECK_VALUE(p.numel() == 1 || p.numel() == n, "lif: ", name, " must have 1 or N=", n,
                    " elements (one per neuron), got ", p.numel());
  return p.numel() == 1 ? 0 : 1;
}

inline void check_x(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "lif: ", name, " must have a leading time dimension [T, *], got a 0-d tensor");
  TORCH_CHECK_VALUE(x.size(0) > 0, "lif: ", name, " must have T >= 1 time steps, got shape ", x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "lif: ", name, " must be a floating dtype, got ",
                   x.scalar_type());
}

inline void check_state(const std::optional<at::Tensor>& s, const char* name, const at::Tensor& x) {
  if (!s.has_value()) return;
  TORCH_CHECK_VALUE(s->sizes() == x.sizes().slice(1), "lif: ", name, " must have shape x.shape[1:] = ",
                    x.sizes().slice(1), ", got ", s->sizes());
  TORCH_CHECK_TYPE(s->scalar_type() == x.scalar_type(), "lif: ", name, " must have x's dtype ", x.scalar_type(),
                   ", got ", s->scalar_type());
  TORCH_CHECK_VALUE(s->device() == x.device(), "lif: ", name, " is on ", s->device(), " but x is on ", x.device());
}

template <class T>
inline const void* data_or_null(const std::optional<T>& t) { return t.has_value() ? t->const_data_ptr() : nullptr; }

// Checks, makes inputs contiguous, allocates outputs and calls launch(const FwdArgs&, DType) when there is work.
template <class Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_fwd_host(const at::Tensor& x_in, const std::optional<at::Tensor>& v0_in,
                                                            const at::Tensor& k_in, const at::Tensor& v_th_in,
                                                            std::optional<double> v_reset, bool decay_input,
                                                            std::string_view surrogate, double alpha,
                                                            bool detach_reset, bool store_h, Launch&& launch) {
  check_x(x_in, "x");
  check_state(v0_in, "v0", x_in);
  const Config cfg = make_config(v_reset, decay_input, surrogate, alpha, detach_reset);
  const int64_t n = neurons_of(x_in);
  FwdArgs a{};
  a.k_stride = param_stride(k_in, "k", n, x_in);
  a.v_th_stride = param_stride(v_th_in, "v_th", n, x_in);
  const at::Tensor x = x_in.contiguous(), k = param_in_acc(k_in, x_in), v_th = param_in_acc(v_th_in, x_in);
  std::optional<at::Tensor> v0;
  if (v0_in.has_value()) v0 = v0_in->contiguous();
  at::Tensor spikes = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor h_seq = store_h ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  at::Tensor v_last = at::empty(x.sizes().slice(1), x.options());
  a.x = x.const_data_ptr();
  a.v0 = data_or_null(v0);
  a.k = k.const_data_ptr();
  a.v_th = v_th.const_data_ptr();
  a.spikes = spikes.mutable_data_ptr();
  a.h_seq = store_h ? h_seq.mutable_data_ptr() : nullptr;
  a.v_last = v_last.mutable_data_ptr();
  a.T = x.size(0);
  a.N = n;
  a.cfg = cfg;
  if (n > 0) launch(a, dtype_of(x));
  return {spikes, h_seq, v_last};
}

// Per-neuron gradient buffer (arithmetic type) -> the shape and dtype of the parameter (summed over neurons when it
// is shared).
inline at::Tensor reduce_param_grad(const at::Tensor& per_neuron, const at::Tensor& param) {
  const at::Tensor g = param.numel() == 1 && per_neuron.numel() != 1 ? per_neuron.sum() : per_neuron;
  return g.reshape(param.sizes()).to(param.scalar_type());
}

template <class Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_bwd_host(
    const at::Tensor& grad_spikes_in, const std::optional<at::Tensor>& grad_v_last_in, const at::Tensor& h_seq_in,
    const std::optional<at::Tensor>& x_in, const std::optional<at::Tensor>& v0_in, const at::Tensor& k_in,
    const at::Tensor& v_th_in, std::optional<double> v_reset, bool decay_input, std::string_view surrogate,
    double alpha, bool detach_reset, bool need_grad_k, bool need_grad_v_th, Launch&& launch) {
  check_x(h_seq_in, "h_seq");
  TORCH_CHECK_VALUE(grad_spikes_in.sizes() == h_seq_in.sizes(), "lif_bwd: grad_spikes must have h_seq's shape ",
                    h_seq_in.sizes(), ", got ", grad_spikes_in.sizes());
  TORCH_CHECK_TYPE(grad_spikes_in.scalar_type() == h_seq_in.scalar_type(), "lif_bwd: grad_spikes must have dtype ",
                   h_seq_in.scalar_type(), ", got ", grad_spikes_in.scalar_type());
  check_state(grad_v_last_in, "grad_v_last", h_seq_in);
  check_state(v0_in, "v0", h_seq_in);
  const bool need_x = need_grad_k && decay_input;
  TORCH_CHECK_VALUE(!need_x || x_in.has_value(), "lif_bwd: x is required for grad_k when decay_input=True");
  if (x_in.has_value()) {
    TORCH_CHECK_VALUE(x_in->sizes() == h_seq_in.sizes() && x_in->scalar_type() == h_seq_in.scalar_type(),
                      "lif_bwd: x must match h_seq in shape and dtype");
  }
  const Config cfg = make_config(v_reset, decay_input, surrogate, alpha, detach_reset);
  const at::Tensor& ref = h_seq_in;
  const int64_t n = neurons_of(ref);
  BwdArgs a{};
  a.k_stride = param_stride(k_in, "k", n, ref);
  a.v_th_stride = param_stride(v_th_in, "v_th", n, ref);
  const at::Tensor h_seq = ref.contiguous(), grad_spikes = grad_spikes_in.contiguous();
  const at::Tensor k = param_in_acc(k_in, ref), v_th = param_in_acc(v_th_in, ref);
  std::optional<at::Tensor> grad_v_last, x, v0;
  if (grad_v_last_in.has_value()) grad_v_last = grad_v_last_in->contiguous();
  if (need_x) x = x_in->contiguous();
  if (v0_in.has_value()) v0 = v0_in->contiguous();
  at::Tensor grad_x = at::empty_like(h_seq, at::MemoryFormat::Contiguous);
  at::Tensor grad_v0 = at::empty(ref.sizes().slice(1), ref.options());
  const auto acc = k.options();
  at::Tensor grad_k_n = need_grad_k ? at::zeros({n}, acc) : at::empty({0}, acc);
  at::Tensor grad_v_th_n = need_grad_v_th ? at::zeros({n}, acc) : at::empty({0}, acc);
  a.grad_spikes = grad_spikes.const_data_ptr();
  a.grad_v_last = data_or_null(grad_v_last);
  a.h_seq = h_seq.const_data_ptr();
  a.x = data_or_null(x);
  a.v0 = data_or_null(v0);
  a.k = k.const_data_ptr();
  a.v_th = v_th.const_data_ptr();
  a.grad_x = grad_x.mutable_data_ptr();
  a.grad_v0 = grad_v0.mutable_data_ptr();
  a.grad_k = need_grad_k ? grad_k_n.mutable_data_ptr() : nullptr;
  a.grad_v_th = need_grad_v_th ? grad_v_th_n.mutable_data_ptr() : nullptr;
  a.T = ref.size(0);
  a.N = n;
  a.cfg = cfg;
  if (n > 0) launch(a, dtype_of(ref));
  at::Tensor grad_k = need_grad_k ? reduce_param_grad(grad_k_n, k_in) : at::empty({0}, k_in.options());
  at::Tensor grad_v_th = need_grad_v_th ? reduce_param_grad(grad_v_th_n, v_th_in) : at::empty({0}, v_th_in.options());
  return {grad_x, grad_v0, grad_k, grad_v_th};
}

}  // namespace lif
}  // namespace pyfast
