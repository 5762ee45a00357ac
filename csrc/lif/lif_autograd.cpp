// LIF / IF neuron, autograd of pyfast::lif_fwd in C++ (the Autograd dispatch key, any device): forward saves the
// charged membrane H (and x only when dL/dk needs it with decay_input, or when the caller asked for no H: then
// backward recomputes H from x), backward calls pyfast::lif_bwd (csrc/lif/lif.h has the BPTT maths).
//
// Why C++ and not torch.library.register_autograd: a GPU step of the op family is a few hundred microseconds, and the
// Python autograd wrapper (argument re-binding, setup_context, the backward's checks) cost about as much host time as
// the forward itself; here the whole autograd path is C++. The Triton twins keep their Python autograd
// (pyfast/ops/lif.py), which computes the same thing. Both ops reach their fake kernels through the dispatcher, so
// torch.compile traces forward and backward alike.
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "common/dispatch.h"

namespace pyfast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&,
                                                              const at::Tensor&, const at::Tensor&,
                                                              std::optional<double>, bool, c10::string_view, double,
                                                              bool, bool);
using BwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, std::optional<double>, bool,
    c10::string_view, double, bool, bool, bool);

constexpr auto fwd_op = &dispatched<"pyfast::lif_fwd", FwdSig>;
constexpr auto bwd_op = &dispatched<"pyfast::lif_bwd", BwdSig>;

class LifFunction : public torch::autograd::Function<LifFunction> {
 public:
  // Outputs: spikes, h_seq, v_last (as the op).
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& v0,
                               const at::Tensor& k, const at::Tensor& v_th, std::optional<double> v_reset,
                               bool decay_input, c10::string_view surrogate, double alpha, bool detach_reset,
                               bool store_h) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [spikes, h_seq, v_last] =
        fwd_op().call(x, v0, k, v_th, v_reset, decay_input, surrogate, alpha, detach_reset, store_h);
    const bool has_v0 = v0.has_value() && v0->defined();
    const bool need_k = k.requires_grad();
    // x is needed only for dL/dk with decay_input (dH/dk = X + V_r - V_prev); the rest is recomputed from H. A caller
    // that asked for no history although an input requires grad (pyfast.ops.lif decides store_h from requires_grad,
    // which it cannot see inside torch.vmap, whose fallback then records this op per sample) gets H recomputed from x
    // in backward: x is saved instead, the same size.
    const bool keep_x = (decay_input && need_k) || !store_h;
    ctx->save_for_backward({h_seq, keep_x ? x : at::Tensor(), has_v0 ? *v0 : at::Tensor(), k, v_th});
    ctx->saved_data["v_reset"] = v_reset.has_value() ? c10::IValue(*v_reset) : c10::IValue();
    ctx->saved_data["decay_input"] = decay_input;
    ctx->saved_data["surrogate"] = std::string(surrogate);
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["detach_reset"] = detach_reset;
    ctx->saved_data["store_h"] = store_h;
    ctx->saved_data["need_v0"] = has_v0 && v0->requires_grad();
    ctx->saved_data["need_k"] = need_k;
    ctx->saved_data["need_v_th"] = v_th.requires_grad();
    // Unused outputs (h_seq; v_last unless the caller asked for it) get no materialised zero gradients.
    ctx->set_materialize_grads(false);
    return {spikes, h_seq, v_last};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& data = ctx->saved_data;
    const variable_list saved = ctx->get_saved_variables();
    const auto optional = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
    const bool need_k = data["need_k"].toBool(), need_v_th = data["need_v_th"].toBool();
    const c10::IValue& v_reset_value = data["v_reset"];
    const std::optional<double> v_reset =
        v_reset_value.isNone() ? std::nullopt : std::optional<double>(v_reset_value.toDouble());
    const bool decay_input = data["decay_input"].toBool(), detach_reset = data["detach_reset"].toBool();
    const c10::string_view surrogate = data["surrogate"].toStringRef();
    const double alpha = data["alpha"].toDouble();
    at::Tensor h_seq = saved[0];
    if (!data["store_h"].toBool()) {  // no history kept (see forward): the forward once more, from the saved x
      const at::NoGradGuard no_grad;
      h_seq = std::get<1>(fwd_op().call(saved[1], optional(saved[2]), saved[3], saved[4], v_reset, decay_input,
                                        surrogate, alpha, detach_reset, true));
    }
    auto [grad_x, grad_v0, grad_k, grad_v_th] =
        bwd_op().call(grads[0].defined() ? grads[0] : at::zeros_like(h_seq), optional(grads[2]), h_seq,
                      optional(saved[1]), optional(saved[2]), saved[3], saved[4], v_reset, decay_input, surrogate,
                      alpha, detach_reset, need_k, need_v_th);
    // One gradient per forward argument: undefined for the non-tensors and for inputs that need none.
    return {grad_x,
            data["need_v0"].toBool() ? grad_v0 : at::Tensor(),
            need_k ? grad_k : at::Tensor(),
            need_v_th ? grad_v_th : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_fwd_autograd(const at::Tensor& x,
                                                                const std::optional<at::Tensor>& v0,
                                                                const at::Tensor& k, const at::Tensor& v_th,
                                                                std::optional<double> v_reset, bool decay_input,
                                                                c10::string_view surrogate, double alpha,
                                                                bool detach_reset, bool store_h) {
  const bool any_grad = x.requires_grad() || (v0.has_value() && v0->requires_grad()) || k.requires_grad() ||
                        v_th.requires_grad();
  if (!any_grad || !at::GradMode::is_enabled()) {  // nothing to record: straight to the device kernel
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fwd_op().call(x, v0, k, v_th, v_reset, decay_input, surrogate, alpha, detach_reset, store_h);
  }
  variable_list out = LifFunction::apply(x, v0, k, v_th, v_reset, decay_input, surrogate, alpha, detach_reset, store_h);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, Autograd, m) { m.impl("lif_fwd", &lif_fwd_autograd); }

}  // namespace pyfast
