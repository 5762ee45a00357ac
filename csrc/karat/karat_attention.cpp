// Fourier-KArAt attention, pyfast::karat_attention (and karat_attention_fwd, which also returns z) /
// karat_attention_bwd: the basis contraction z (pyfast::karat_fwd / karat_bwd: the CPU or CUDA kernels, by the
// tensors' device) and the learned row operator W, one kernel for every device (CompositeExplicitAutograd), and its
// autograd (the Autograd key, below). Per batch element and head:
//   z' = z + c0,  c0[p] = sum_q a[p, q, 0]   (the m = 0 constant term, when constant_term)
//   out = sigma V = (z' W^T) V = z' U,  U = W^T V [r, D]      (the N x N attention matrix sigma is never formed)
// Backward, from g_out, q, k, v and z' (saved, in q's dtype: [B, H, N, r], r/D of q's size; recomputing z in karat_bwd
// took 18 % of that CPU backward at ViT-Tiny shape, N = 65; z' rather than z spares the backward the constant term):
//   g_z = g_out U^T,  then karat_bwd(g_z) gives g_q, g_k, g_a, g_b
//   g_U = z'^T g_out,  g_V = W g_U,  g_W = sum_batch V g_U^T,  g_c0 = sum_{batch, k} g_z
// The tail runs as batched GEMMs over every (batch x head) at once, in the accumulation type (float32 for half inputs,
// rounded once at the end). Fusing it into the CPU basis tiles, with BLAS calls or with register-blocked loops per
// (batch x head), measured no faster than these batched calls. The Triton twins compute the same in Python
// (pyfast/ops/karat.py).
//
// Autograd in C++, as for pyfast::lif_fwd (csrc/lif/lif_autograd.cpp): with torch.library.register_autograd,
// Python's garbage collector showed at about 7 % of a single-thread CPU fwd+bwd profile at ViT-Tiny shape; in C++ the
// CPU fwd+bwd measured 2-3 % faster, and a GPU step spends less host time. The op reaches its fake kernel
// (pyfast/ops/karat.py) through the dispatcher, so torch.compile traces it as before.
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/matmul.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

#include "common/dispatch.h"
#include "karat/karat_host.h"

namespace pyfast {
namespace {

// The harmonic slots m = 1..G of a coefficient tensor [H, r, N, M] (slot 0 is the m = 0 constant term when there is
// one).
at::Tensor harmonic_slots(const at::Tensor& c, bool constant_term) {
  return constant_term ? c.narrow(3, 1, c.size(3) - 1) : c;
}

// pyfast::karat_attention's inputs: q, k, v [B, H, N, D]; a, b [H, r, N, M] with M = G + 1 slots (m = 0..G) when
// constant_term, M = G otherwise; W [H, N, r]. Returns the shape of the basis contraction (harmonics 1..G).
karat::Shape check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& a, const at::Tensor& b, const at::Tensor& W,
                                    bool constant_term) {
  karat::check_float(v, "v");
  TORCH_CHECK_VALUE(v.sizes() == q.sizes() && v.scalar_type() == q.scalar_type() && v.device() == q.device(),
                    "karat_attention: v must match q (shape ", q.sizes(), ", ", q.scalar_type(), ", ", q.device(),
                    "), got shape ", v.sizes(), ", ", v.scalar_type(), ", ", v.device());
  TORCH_CHECK_VALUE(a.dim() == 4 && a.size(3) >= (constant_term ? 2 : 1), "karat_attention: a must be [H, r, N, M] "
                    "with M >= ", constant_term ? "2 slots (m = 0, and G >= 1 harmonics)" : "1 slot (G >= 1)",
                    ", got shape ", a.sizes());
  TORCH_CHECK_VALUE(b.sizes() == a.sizes(), "karat: b must have a's shape ", a.sizes(), ", got ", b.sizes());
  const karat::Shape s = karat::check_inputs(q, k, harmonic_slots(a, constant_term), harmonic_slots(b, constant_term));
  karat::check_float(W, "W");
  TORCH_CHECK_VALUE(W.dim() == 3 && W.size(0) == s.H && W.size(1) == s.N && W.size(2) == s.r,
                    "karat_attention: W must be [H, N, r] = [", s.H, ", ", s.N, ", ", s.r, "], got shape ", W.sizes());
  TORCH_CHECK_VALUE(W.device() == q.device(), "karat_attention: W is on ", W.device(), " but q is on ", q.device());
  return s;
}

void check_grad_out(const at::Tensor& grad_out, const at::Tensor& q) {
  TORCH_CHECK_VALUE(grad_out.sizes() == q.sizes(), "karat_attention_bwd: grad_out must have q's shape ", q.sizes(),
                    ", got ", grad_out.sizes());
  TORCH_CHECK_VALUE(grad_out.device() == q.device(), "karat_attention_bwd: grad_out is on ", grad_out.device(),
                    " but q is on ", q.device());
}

// (g_a, g_b) [H, r, N, M] of karat_attention from the harmonic slots' gradients g_a_h, g_b_h [H, r, N, G] and, with
// the constant term (g_c0 defined, [H, r]), slot 0: dz / da[p, q, 0] = 1 for every q, and b[..., 0] multiplies
// sin 0 = 0, so its gradient is zero.
std::tuple<at::Tensor, at::Tensor> with_constant_term_grads(const at::Tensor& g_a_h, const at::Tensor& g_b_h,
                                                            const at::Tensor& g_c0, const karat::Shape& s,
                                                            const at::Tensor& a) {
  if (!g_c0.defined()) return {g_a_h, g_b_h};
  const at::Tensor g_a0 = g_c0.to(a.scalar_type()).view({s.H, s.r, 1, 1}).expand({s.H, s.r, s.N, 1});
  return {at::cat({g_a0, g_a_h}, 3), at::constant_pad_nd(g_b_h, {1, 0})};  // g_b[..., 0] = 0
}

using FwdSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double);
using BwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, bool);

constexpr auto basis_fwd = &dispatched<"pyfast::karat_fwd", FwdSig>;
constexpr auto basis_bwd = &dispatched<"pyfast::karat_bwd", BwdSig>;

// z' [B, H, N, r] in the accumulation type: z plus the constant term c0 [H, r] when there is one.
at::Tensor with_constant_term(const at::Tensor& z_basis, const at::Tensor& a, const karat::Shape& s,
                              bool constant_term) {
  const at::Tensor z = z_basis.to(acc_type(z_basis.scalar_type()));
  return constant_term ? z.add(a.select(3, 0).to(z.scalar_type()).sum(-1).view({1, s.H, 1, s.r})) : z;
}

// (out, z'): z' [B, H, N, r] = z + c0 (z alone without the constant term), in q's dtype, for the backward.
std::tuple<at::Tensor, at::Tensor> karat_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       const at::Tensor& a, const at::Tensor& b, const at::Tensor& W,
                                                       double scale, bool constant_term) {
  const karat::Shape s = check_attention_inputs(q, k, v, a, b, W, constant_term);
  const auto acc = acc_type(q.scalar_type());
  const at::Tensor z = with_constant_term(
      basis_fwd().call(q, k, harmonic_slots(a, constant_term), harmonic_slots(b, constant_term), scale), a, s,
      constant_term);
  const at::Tensor U = at::matmul(W.to(acc).transpose(-1, -2), v.to(acc));  // [B, H, r, D]
  return {at::matmul(z, U).to(q.scalar_type()), z.to(q.scalar_type())};
}

at::Tensor karat_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                           const at::Tensor& b, const at::Tensor& W, double scale, bool constant_term) {
  return std::get<0>(karat_attention_fwd(q, k, v, a, b, W, scale, constant_term));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> karat_attention_bwd(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
    const at::Tensor& b, const at::Tensor& W, const at::Tensor& z_saved, double scale, bool constant_term) {
  const karat::Shape s = check_attention_inputs(q, k, v, a, b, W, constant_term);
  check_grad_out(grad_out, q);
  TORCH_CHECK_VALUE(z_saved.dim() == 4 && z_saved.size(0) == s.B && z_saved.size(1) == s.H && z_saved.size(2) == s.N &&
                        z_saved.size(3) == s.r && z_saved.device() == q.device(),
                    "karat_attention_bwd: z must be [B, H, N, r] = [", s.B, ", ", s.H, ", ", s.N, ", ", s.r,
                    "] on q's device (karat_attention_fwd's second output), got shape ", z_saved.sizes(), " on ",
                    z_saved.device());
  const auto acc = acc_type(q.scalar_type());
  const at::Tensor W_acc = W.to(acc), v_acc = v.to(acc), g_out = grad_out.to(acc);
  const at::Tensor U = at::matmul(W_acc.transpose(-1, -2), v_acc);  // [B, H, r, D]
  const at::Tensor g_z = at::matmul(g_out, U.transpose(-1, -2));    // [B, H, N, r]
  auto [g_q, g_k, g_a_h, g_b_h, unused_z] =
      basis_bwd().call(g_z.to(q.scalar_type()), q, k, harmonic_slots(a, constant_term),
                       harmonic_slots(b, constant_term), scale, false);
  const at::Tensor g_U = at::matmul(z_saved.to(acc).transpose(-1, -2), g_out);  // z'^T g_out [B, H, r, D]
  // IntArrayRef spelled out: a braced list is ambiguous with the DimnameList overload in some torch versions (2.11).
  const at::Tensor g_constant = constant_term ? g_z.sum(at::IntArrayRef{0, 2}) : at::Tensor();
  auto [g_a, g_b] = with_constant_term_grads(g_a_h, g_b_h, g_constant, s, a);
  return {g_q, g_k, at::matmul(W_acc, g_U).to(v.scalar_type()), g_a, g_b,
          at::matmul(v_acc, g_U.transpose(-1, -2)).sum(0).to(W.scalar_type())};
}

using AttentionSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, const at::Tensor&, double, bool);
using AttentionFwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                           double, bool);
using AttentionBwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, double, bool);

constexpr auto attention_op = &dispatched<"pyfast::karat_attention", AttentionSig>;
constexpr auto attention_fwd_op = &dispatched<"pyfast::karat_attention_fwd", AttentionFwdSig>;
constexpr auto attention_bwd_op = &dispatched<"pyfast::karat_attention_bwd", AttentionBwdSig>;

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saves q, k, v, z and the parameters a, b, W; backward is one karat_attention_bwd call.
class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& a, const at::Tensor& b, const at::Tensor& W, double scale,
                               bool constant_term) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, z] = attention_fwd_op().call(q, k, v, a, b, W, scale, constant_term);
    ctx->save_for_backward({q, k, v, a, b, W, z});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["constant_term"] = constant_term;
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    auto [g_q, g_k, g_v, g_a, g_b, g_W] =
        attention_bwd_op().call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], saved[6],
                                ctx->saved_data["scale"].toDouble(), ctx->saved_data["constant_term"].toBool());
    return {g_q, g_k, g_v, g_a, g_b, g_W, at::Tensor(), at::Tensor()};
  }
};

at::Tensor karat_attention_autograd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& a, const at::Tensor& b, const at::Tensor& W, double scale,
                                    bool constant_term) {
  const bool any_grad = q.requires_grad() || k.requires_grad() || v.requires_grad() || a.requires_grad() ||
                        b.requires_grad() || W.requires_grad();
  if (!any_grad || !at::GradMode::is_enabled()) {  // nothing to record: straight to the kernel
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return attention_op().call(q, k, v, a, b, W, scale, constant_term);
  }
  return AttentionFunction::apply(q, k, v, a, b, W, scale, constant_term)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CompositeExplicitAutograd, m) {
  m.impl("karat_attention", &karat_attention);
  m.impl("karat_attention_fwd", &karat_attention_fwd);
  m.impl("karat_attention_bwd", &karat_attention_bwd);
}

TORCH_LIBRARY_IMPL(pyfast, Autograd, m) { m.impl("karat_attention", &karat_attention_autograd); }

}  // namespace pyfast
