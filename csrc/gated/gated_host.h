// Host side of the gated ops, shared by the CPU and CUDA registrations: argument checks, then the O(B C^2) part of
// gated class-attention as ATen GEMMs on [B, C]-sized rows (maths in gated.h), around the device's core launchers.
// pyfast/ops/gated.py validates first with friendlier messages; these checks guard direct torch.ops.pyfast.* callers.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "common/host.h"
#include "gated/gated.h"

namespace pyfast {
namespace gated {

inline void check_like(const at::Tensor& t, const char* name, at::IntArrayRef shape, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.sizes() == shape, "gated_cattn: ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "gated_cattn: ", name, " must be floating, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), "gated_cattn: ", name, " is on ", t.device(), " but x is on ",
                    x.device());
}

// The shapes [B, N1, C], H of a gated class-attention call, after checking every argument.
struct Shape {
  int64_t B, N1, C, H, D;
};

inline Shape check_cattn(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& wq,
                         const std::optional<at::Tensor>& bq, const at::Tensor& wk, const at::Tensor& wv,
                         const std::optional<at::Tensor>& bv, const at::Tensor& wp,
                         const std::optional<at::Tensor>& bp, int64_t num_heads) {
  TORCH_CHECK_VALUE(x.dim() == 3, "gated_cattn: x must be [B, N+1, C], got shape ", x.sizes());
  check_floating(x, "gated_cattn", "x");
  const int64_t C = x.size(2);
  TORCH_CHECK_VALUE(x.size(1) >= 1, "gated_cattn: x needs at least the task token (N+1 >= 1), got shape ", x.sizes());
  TORCH_CHECK_VALUE(C > 0, "gated_cattn: x must have C > 0 channels, got shape ", x.sizes());
  TORCH_CHECK_VALUE(num_heads > 0 && C % num_heads == 0, "gated_cattn: num_heads must divide C = ", C, ", got ",
                    num_heads);
  check_like(gate, "gate", {C}, x);
  for (const auto& [t, name] : {std::pair{&wq, "wq"}, {&wk, "wk"}, {&wv, "wv"}, {&wp, "wp"}})
    check_like(*t, name, {C, C}, x);
  for (const auto& [t, name] : {std::pair{&bq, "bq"}, {&bv, "bv"}, {&bp, "bp"}})
    if (t->has_value()) check_like(**t, name, {C}, x);
  return {x.size(0), x.size(1), C, num_heads, C / num_heads};
}

inline at::Tensor acc(const at::Tensor& t, at::ScalarType a) { return t.to(a).contiguous(); }
inline at::Tensor acc(const std::optional<at::Tensor>& t, at::ScalarType a) {
  return t.has_value() ? acc(*t, a) : at::Tensor();
}

// The query side, recomputed by the backward instead of being saved: q0 [B, C], u [H, B, C], w = u . m as [B, H, C].
struct QuerySide {
  at::Tensor xm0, q0, r, u, w;
};

inline QuerySide query_side(const at::Tensor& x, const at::Tensor& m, const at::Tensor& wq, const at::Tensor& bq,
                            const at::Tensor& wk, const Shape& s) {
  QuerySide q;
  q.xm0 = x.select(1, 0).to(m.scalar_type()).mul(m);
  q.q0 = bq.defined() ? bq.addmm(q.xm0, wq.t()) : q.xm0.mm(wq.t());
  q.r = q.q0.mul(m.mul(m).mul(1.0 / std::sqrt(static_cast<double>(s.D))));
  q.u = q.r.view({s.B, s.H, s.D}).transpose(0, 1).bmm(wk.view({s.H, s.D, s.C}));
  q.w = q.u.mul(m).transpose(0, 1).contiguous();
  return q;
}

// o [B, C] = W_v (m . zp) + b_v, with z = m . zp as [B, H, C].
inline at::Tensor value_out(const at::Tensor& z, const at::Tensor& wv, const at::Tensor& bv, const Shape& s) {
  at::Tensor o = z.transpose(0, 1).bmm(wv.view({s.H, s.D, s.C}).transpose(1, 2)).transpose(0, 1).reshape({s.B, s.C});
  return bv.defined() ? o.add(bv) : o;
}

inline CoreArgs core_args(const at::Tensor& x, const Shape& s) {
  CoreArgs a{};
  a.x = x.const_data_ptr();
  a.B = s.B;
  a.N1 = s.N1;
  a.C = s.C;
  a.H = s.H;
  return a;
}

// Forward: (y [B, C] in x's dtype, attn [B, H, N1] in the arithmetic type). fwd(const CoreArgs&, DType) runs the core.
template <class Fwd>
std::tuple<at::Tensor, at::Tensor> cattn_fwd_host(const at::Tensor& x_in, const at::Tensor& gate,
                                                  const at::Tensor& wq, const std::optional<at::Tensor>& bq,
                                                  const at::Tensor& wk, const at::Tensor& wv,
                                                  const std::optional<at::Tensor>& bv, const at::Tensor& wp,
                                                  const std::optional<at::Tensor>& bp, int64_t num_heads, Fwd&& fwd) {
  const Shape s = check_cattn(x_in, gate, wq, bq, wk, wv, bv, wp, bp, num_heads);
  const auto A = acc_type(x_in.scalar_type());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor m = acc(gate, A), bpa = acc(bp, A);
  const QuerySide q = query_side(x, m, acc(wq, A), acc(bq, A), acc(wk, A), s);
  at::Tensor attn = at::empty({s.B, s.H, s.N1}, x.options().dtype(A));
  at::Tensor zp = at::empty({s.B, s.H, s.C}, x.options().dtype(A));
  if (s.B > 0) {
    CoreArgs a = core_args(x, s);
    a.w = q.w.const_data_ptr();
    a.attn = attn.mutable_data_ptr();
    a.zp = zp.mutable_data_ptr();
    fwd(a, dtype_of(x));
  }
  const at::Tensor og = value_out(zp.mul(m), acc(wv, A), acc(bv, A), s).mul(m);
  at::Tensor pre = bpa.defined() ? bpa.addmm(og, acc(wp, A).t()) : og.mm(acc(wp, A).t());
  return {pre.mul(m).to(x.scalar_type()), attn};
}

inline at::Tensor grad_or_empty(const at::Tensor& g, const std::optional<at::Tensor>& like) {
  return like.has_value() ? g.to(like->scalar_type()) : at::empty({0}, g.options());
}

// Backward: (grad_x, grad_gate, grad_wq, grad_bq, grad_wk, grad_wv, grad_bv, grad_wp, grad_bp), each in its input's
// dtype; the gradient of an absent bias has shape [0]. bwd1 / bwd2(const CoreArgs&, DType) run the core passes.
template <class Bwd1, class Bwd2>
std::vector<at::Tensor> cattn_bwd_host(const at::Tensor& gy_in, const at::Tensor& x_in, const at::Tensor& gate,
                                       const at::Tensor& wq_in, const std::optional<at::Tensor>& bq,
                                       const at::Tensor& wk_in, const at::Tensor& wv_in,
                                       const std::optional<at::Tensor>& bv, const at::Tensor& wp_in,
                                       const std::optional<at::Tensor>& bp, const at::Tensor& attn_in,
                                       int64_t num_heads, Bwd1&& bwd1, Bwd2&& bwd2) {
  const Shape s = check_cattn(x_in, gate, wq_in, bq, wk_in, wv_in, bv, wp_in, bp, num_heads);
  const auto A = acc_type(x_in.scalar_type());
  TORCH_CHECK_VALUE(gy_in.sizes() == at::IntArrayRef({s.B, s.C}), "gated_cattn_bwd: grad_out must have shape [",
                    s.B, ", ", s.C, "], got ", gy_in.sizes());
  TORCH_CHECK_VALUE(attn_in.sizes() == at::IntArrayRef({s.B, s.H, s.N1}), "gated_cattn_bwd: attn must have shape [",
                    s.B, ", ", s.H, ", ", s.N1, "], got ", attn_in.sizes());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor m = acc(gate, A), wq = acc(wq_in, A), wk = acc(wk_in, A), wv = acc(wv_in, A), wp = acc(wp_in, A);
  const at::Tensor attn = acc(attn_in, A), gy = acc(gy_in, A);
  const QuerySide q = query_side(x, m, wq, acc(bq, A), wk, s);
  // Output side first: the gradient reaching zp needs no forward value.
  const at::Tensor gpre = gy.mul(m);
  const at::Tensor g_og = gpre.mm(wp);
  const at::Tensor g_o = g_og.mul(m);
  const at::Tensor g_o_h = g_o.view({s.B, s.H, s.D}).transpose(0, 1);                       // [H, B, D]
  const at::Tensor gz = g_o_h.bmm(wv.view({s.H, s.D, s.C})).transpose(0, 1);                // [B, H, C]
  const at::Tensor gzp = gz.mul(m).contiguous();
  at::Tensor zp = at::empty({s.B, s.H, s.C}, x.options().dtype(A));
  at::Tensor gs = at::empty({s.B, s.H, s.N1}, x.options().dtype(A));
  at::Tensor gw = at::empty({s.B, s.H, s.C}, x.options().dtype(A));
  CoreArgs a = core_args(x, s);
  a.w = q.w.const_data_ptr();
  a.attn = const_cast<void*>(attn.const_data_ptr());
  a.zp = zp.mutable_data_ptr();
  a.gzp = gzp.const_data_ptr();
  a.gs = gs.mutable_data_ptr();
  a.gw = gw.mutable_data_ptr();
  if (s.B > 0) bwd1(a, dtype_of(x));
  // Forward values from zp (recomputed by pass (1)).
  const at::Tensor z = zp.mul(m);
  const at::Tensor o = value_out(z, wv, acc(bv, A), s);
  const at::Tensor og = o.mul(m);
  const at::Tensor bpa = acc(bp, A);
  const at::Tensor pre = bpa.defined() ? bpa.addmm(og, wp.t()) : og.mm(wp.t());
  // Query side: w = m . u, u_h = r_h W_k,h, r = q0 . m . m / sqrt(D), q0 = W_q (x_0 . m) + b_q.
  const at::Tensor g_u = gw.mul(m).transpose(0, 1);                                          // [H, B, C]
  const at::Tensor r_h = q.r.view({s.B, s.H, s.D}).permute({1, 2, 0});                       // [H, D, B]
  const at::Tensor grad_wk = r_h.bmm(g_u).reshape({s.C, s.C});
  const at::Tensor g_r = g_u.bmm(wk.view({s.H, s.D, s.C}).transpose(1, 2)).transpose(0, 1).reshape({s.B, s.C});
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  const at::Tensor g_q0 = g_r.mul(m.mul(m).mul(scale));
  const at::Tensor g_xm0 = g_q0.mm(wq);
  const at::Tensor gx0 = g_xm0.mul(m).contiguous();
  // The gate collects every place m multiplies: y, o, zp (values), u (keys, input and output), q0 . m . m, x_0.
  at::Tensor grad_m = gy.mul(pre).sum(0);
  grad_m.add_(g_og.mul(o).sum(0));
  grad_m.add_(gz.mul(zp).sum(at::IntArrayRef{0, 1}));  // IntArrayRef: {0, 1} alone is ambiguous in torch < 2.13
  grad_m.add_(gw.mul(q.u.transpose(0, 1)).sum(at::IntArrayRef{0, 1}));
  grad_m.add_(g_r.mul(q.q0).sum(0).mul(m).mul(2.0 * scale));
  grad_m.add_(g_xm0.mul(x.select(1, 0).to(A)).sum(0));
  at::Tensor gx = at::empty_like(x);
  a.gx0 = gx0.const_data_ptr();
  a.gx = gx.mutable_data_ptr();
  if (s.B > 0) bwd2(a, dtype_of(x));
  const at::Tensor grad_wv = g_o_h.transpose(1, 2).bmm(z.transpose(0, 1)).reshape({s.C, s.C});
  return {gx,
          grad_m.to(gate.scalar_type()),
          g_q0.t().mm(q.xm0).to(wq_in.scalar_type()),
          grad_or_empty(g_q0.sum(0), bq),
          grad_wk.to(wk_in.scalar_type()),
          grad_wv.to(wv_in.scalar_type()),
          grad_or_empty(g_o.sum(0), bv),
          gpre.t().mm(og).to(wp_in.scalar_type()),
          grad_or_empty(gpre.sum(0), bp)};
}

// ---------------------------------------------------------------------------------------------------------------
// Gradient routing
// ---------------------------------------------------------------------------------------------------------------

// Runs route(const RouteArgs&, DType grad dtype) on each gradient (in place; a non-contiguous gradient is routed in
// a contiguous copy that is written back) and comp(const CompArgs&, DType) on each embedding gradient.
template <class Route, class Comp>
void route_host(at::TensorList grads, at::TensorList masks_out, at::TensorList masks_in, at::TensorList emb_grads,
                at::TensorList embs, double s, double s_max, double clamp, Route&& route, Comp&& comp) {
  TORCH_CHECK_VALUE(masks_out.size() == grads.size() && masks_in.size() == grads.size(),
                    "gated_route: grads, masks_out and masks_in must have the same length, got ", grads.size(), ", ",
                    masks_out.size(), ", ", masks_in.size());
  TORCH_CHECK_VALUE(embs.size() == emb_grads.size(), "gated_route: emb_grads and embs must have the same length, got ",
                    emb_grads.size(), " and ", embs.size());
  TORCH_CHECK_VALUE(std::isfinite(s) && s > 0, "gated_route: s must be finite and > 0, got ", s);
  TORCH_CHECK_VALUE(std::isfinite(s_max) && s_max > 0, "gated_route: s_max must be finite and > 0, got ", s_max);
  TORCH_CHECK_VALUE(std::isfinite(clamp) && clamp > 0, "gated_route: clamp must be finite and > 0, got ", clamp);
  auto in_place = [](const at::Tensor& g, auto&& fn) {
    at::Tensor c = g.contiguous();
    fn(c);
    if (!c.is_same(g)) g.copy_(c);
  };
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& g = grads[i];
    check_floating(g, "gated_route", "grad");
    const auto A = acc_type(g.scalar_type());
    const bool bias = masks_in[i].numel() == 0;
    TORCH_CHECK_VALUE(g.dim() == (bias ? 1 : 2), "gated_route: grads[", i, "] must be ",
                      bias ? "a bias [out] (masks_in[i] is empty)" : "a weight [out, in]", ", got shape ", g.sizes());
    TORCH_CHECK_VALUE(masks_out[i].dim() == 1 && masks_out[i].size(0) == g.size(0), "gated_route: masks_out[", i,
                      "] must have shape [", g.size(0), "], got ", masks_out[i].sizes());
    TORCH_CHECK_VALUE(bias || (masks_in[i].dim() == 1 && masks_in[i].size(0) == g.size(1)), "gated_route: masks_in[",
                      i, "] must have shape [", g.size(bias ? 0 : 1), "] or be empty (a bias), got ",
                      masks_in[i].sizes());
    TORCH_CHECK_VALUE(masks_out[i].device() == g.device() && masks_in[i].device() == g.device(),
                      "gated_route: the masks of grads[", i, "] must be on ", g.device());
    const at::Tensor mo = acc(masks_out[i], A);
    const at::Tensor mi = bias ? at::Tensor() : acc(masks_in[i], A);
    in_place(g, [&](at::Tensor& c) {
      if (c.numel() > 0)
        route(RouteArgs{c.mutable_data_ptr(), mo.const_data_ptr(), bias ? nullptr : mi.const_data_ptr(), c.size(0),
                        bias ? 1 : c.size(1)},
              dtype_of(c));
    });
  }
  for (size_t i = 0; i < emb_grads.size(); ++i) {
    const at::Tensor& g = emb_grads[i];
    check_floating(g, "gated_route", "grad");
    TORCH_CHECK_VALUE(embs[i].sizes() == g.sizes(), "gated_route: embs[", i, "] must have emb_grads[", i,
                      "]'s shape ", g.sizes(), ", got ", embs[i].sizes());
    TORCH_CHECK_VALUE(embs[i].device() == g.device(), "gated_route: embs[", i, "] must be on ", g.device());
    const at::Tensor e = embs[i].to(g.scalar_type()).contiguous();
    in_place(g, [&](at::Tensor& c) {
      if (c.numel() > 0) comp(CompArgs{c.mutable_data_ptr(), e.const_data_ptr(), c.numel(), s, s_max, clamp}, dtype_of(c));
    });
  }
}

}  // namespace gated
}  // namespace pyfast
