// Ghost batch norm, CPU kernels (maths in ghost_bn.h, loops in ghost_bn_cpu_kernels.inc). Work items are
// (ghost batch, block of whole channels); one item computes its channels' statistics and then normalises them
// (forward), or its channels' sums and then dx (backward), while the item's data is still in cache. Per-position
// sums are folded onto channels in double; no item shares an output, so results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/cpu.h"
#include "ghost_bn/ghost_bn_host.h"

namespace pyfast {
namespace {

constexpr int64_t kSpan = 1024;  // values per sample in one item (whole channels, at least one): 3 vectors of it fit L1

#define PYFAST_CLONE_LOOPS "ghost_bn/ghost_bn_cpu_kernels.inc"
#define PYFAST_CLONE_AVX512
#include "common/isa_clones.inc"

template <typename scalar_t>
using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t>
struct Fns {
  using A = acc_t<scalar_t>;
  void (*stats)(const scalar_t*, int64_t, int64_t, int64_t, const A*, A*, A*);
  void (*norm)(const scalar_t*, scalar_t*, int64_t, int64_t, int64_t, const A*, const A*, const A*);
  void (*bwd_stats)(const scalar_t*, const scalar_t*, int64_t, int64_t, int64_t, const A*, A*, A*);
  void (*bwd_dx)(const scalar_t*, const scalar_t*, scalar_t*, int64_t, int64_t, int64_t, const A*, const A*, const A*,
                 const A*);
};

#define PYFAST_GHOST_BN_FNS(ns)                                                                                   \
  Fns<scalar_t> {                                                                                                 \
    &ns::stats_rows<scalar_t>, &ns::norm_rows<scalar_t>, &ns::bwd_stats_rows<scalar_t>, &ns::bwd_dx_rows<scalar_t> \
  }

template <typename scalar_t>
Fns<scalar_t> pick() {
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() == cpu::Isa::Avx512) return PYFAST_GHOST_BN_FNS(avx512);
  if (cpu::isa() == cpu::Isa::Avx2) return PYFAST_GHOST_BN_FNS(avx2);
#endif
  return PYFAST_GHOST_BN_FNS(baseline);
}

struct Items {
  int64_t per_block;  // channels per item
  int64_t blocks;     // channel blocks per ghost batch
  int64_t count;      // G x blocks
};

Items items_of(const ghost_bn::Layout& l) {
  Items it{};
  it.per_block = std::max<int64_t>(1, kSpan / l.S);
  it.blocks = (l.C + it.per_block - 1) / it.per_block;
  it.count = l.G * it.blocks;
  return it;
}

// The per-position vectors of an item's loops hold one value per channel, repeated over its S positions. With S = 1
// (x of [N, C]) that is the per-channel array itself and nothing is copied; otherwise `span` is filled from it.
template <typename A>
const A* per_position(const A* per_channel, int64_t nc, int64_t S, std::vector<A>& span) {
  if (S == 1) return per_channel;
  span.resize(static_cast<size_t>(nc * S));
  for (int64_t ci = 0; ci < nc; ++ci) std::fill(span.begin() + ci * S, span.begin() + (ci + 1) * S, per_channel[ci]);
  return span.data();
}

// Sum over channel ci's S positions of the per-position sums s, in double.
template <typename A>
double fold(const A* s, int64_t ci, int64_t S) {
  double t = 0.0;
  for (int64_t p = ci * S; p < (ci + 1) * S; ++p) t += static_cast<double>(s[p]);
  return t;
}

template <typename scalar_t>
void fwd_cpu_kernel(const ghost_bn::FwdArgs& a) {
  using A = acc_t<scalar_t>;
  const auto fns = pick<scalar_t>();
  const auto& l = a.l;
  const auto* x = static_cast<const scalar_t*>(a.x);
  auto* y = static_cast<scalar_t*>(a.y);
  const auto* w = static_cast<const A*>(a.weight);
  const auto* b = static_cast<const A*>(a.bias);
  auto* mean = static_cast<A*>(a.mean);
  auto* var = static_cast<A*>(a.var);
  auto* invstd = static_cast<A*>(a.invstd);
  const int64_t stride = l.C * l.S;
  cpu::advise_huge_pages(y, l.N * stride * static_cast<int64_t>(sizeof(scalar_t)));
  const Items items = items_of(l);
  at::parallel_for(0, items.count, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> s1, s2, kc, scale, zeros, k_span, mu_span, sc_span, sh_span;
    for (int64_t it = begin; it < end; ++it) {
      const int64_t g = it / items.blocks, c0 = (it % items.blocks) * items.per_block;
      const int64_t nc = std::min(items.per_block, l.C - c0), L = nc * l.S;
      const int64_t rows = ghost_bn::ghost_rows(l, g);
      const scalar_t* xb = x + g * l.B * stride + c0 * l.S;
      s1.assign(static_cast<size_t>(L), A(0));
      s2.assign(static_cast<size_t>(L), A(0));
      kc.resize(static_cast<size_t>(nc));
      for (int64_t ci = 0; ci < nc; ++ci) kc[ci] = static_cast<A>(xb[ci * l.S]);
      fns.stats(xb, stride, rows, L, per_position(kc.data(), nc, l.S, k_span), s1.data(), s2.data());
      const double inv_m = 1.0 / static_cast<double>(rows * l.S);
      A* mean_c = mean + g * l.C + c0;
      A* var_c = var + g * l.C + c0;
      A* inv_c = invstd + g * l.C + c0;
      scale.resize(static_cast<size_t>(nc));
      for (int64_t ci = 0; ci < nc; ++ci) {
        const double d = fold(s1.data(), ci, l.S) * inv_m;
        const double v = std::max(fold(s2.data(), ci, l.S) * inv_m - d * d, 0.0);
        const double inv = 1.0 / std::sqrt(v + a.eps);
        mean_c[ci] = static_cast<A>(static_cast<double>(kc[ci]) + d);
        var_c[ci] = static_cast<A>(v);
        inv_c[ci] = static_cast<A>(inv);
        scale[ci] = static_cast<A>((w ? static_cast<double>(w[c0 + ci]) : 1.0) * inv);
      }
      if (!b) zeros.assign(static_cast<size_t>(nc), A(0));
      const A* mu = per_position<A>(mean_c, nc, l.S, mu_span);
      const A* sc = per_position(scale.data(), nc, l.S, sc_span);
      const A* sh = per_position(b ? b + c0 : zeros.data(), nc, l.S, sh_span);
      fns.norm(xb, y + (xb - x), stride, rows, L, mu, sc, sh);
    }
  });
}

template <typename scalar_t>
void bwd_cpu_kernel(const ghost_bn::BwdArgs& a) {
  using A = acc_t<scalar_t>;
  const auto fns = pick<scalar_t>();
  const auto& l = a.l;
  const auto* gr = static_cast<const scalar_t*>(a.grad);
  const auto* x = static_cast<const scalar_t*>(a.x);
  auto* gx = static_cast<scalar_t*>(a.grad_x);
  const auto* mean = static_cast<const A*>(a.mean);
  const auto* invstd = static_cast<const A*>(a.invstd);
  const auto* w = static_cast<const A*>(a.weight);
  auto* sdy = static_cast<A*>(a.sdy);
  auto* sdyxmu = static_cast<A*>(a.sdyxmu);
  const int64_t stride = l.C * l.S;
  if (gx) cpu::advise_huge_pages(gx, l.N * stride * static_cast<int64_t>(sizeof(scalar_t)));
  const Items items = items_of(l);
  at::parallel_for(0, items.count, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> t1, t2, ca, cb, cc, mu_span, ca_span, cb_span, cc_span;
    for (int64_t it = begin; it < end; ++it) {
      const int64_t g = it / items.blocks, c0 = (it % items.blocks) * items.per_block;
      const int64_t nc = std::min(items.per_block, l.C - c0), L = nc * l.S;
      const int64_t rows = ghost_bn::ghost_rows(l, g);
      const int64_t off = g * l.B * stride + c0 * l.S;
      t1.assign(static_cast<size_t>(L), A(0));
      t2.assign(static_cast<size_t>(L), A(0));
      const A* mu = per_position(mean + g * l.C + c0, nc, l.S, mu_span);
      fns.bwd_stats(gr + off, x + off, stride, rows, L, mu, t1.data(), t2.data());
      const double inv_m = 1.0 / static_cast<double>(rows * l.S);
      for (auto* v : {&ca, &cb, &cc}) v->resize(static_cast<size_t>(nc));
      for (int64_t ci = 0; ci < nc; ++ci) {
        const double sum_dy = fold(t1.data(), ci, l.S), sum_dyxmu = fold(t2.data(), ci, l.S);
        const int64_t c = c0 + ci, gc = g * l.C + c;
        sdy[gc] = static_cast<A>(sum_dy);
        sdyxmu[gc] = static_cast<A>(sum_dyxmu);
        const double inv = static_cast<double>(invstd[gc]);
        const double wa = (w ? static_cast<double>(w[c]) : 1.0) * inv;
        ca[ci] = static_cast<A>(wa);
        cb[ci] = static_cast<A>(-wa * inv * inv * sum_dyxmu * inv_m);
        cc[ci] = static_cast<A>(-wa * sum_dy * inv_m);
      }
      if (!gx) continue;
      const A* pa = per_position(ca.data(), nc, l.S, ca_span);
      const A* pb = per_position(cb.data(), nc, l.S, cb_span);
      const A* pc = per_position(cc.data(), nc, l.S, cc_span);
      fns.bwd_dx(gr + off, x + off, gx + off, stride, rows, L, mu, pa, pb, pc);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ghost_bn_fwd_cpu(const at::Tensor& x,
                                                                            const std::optional<at::Tensor>& weight,
                                                                            const std::optional<at::Tensor>& bias,
                                                                            int64_t ghost_batch_size, double eps) {
  return ghost_bn::ghost_bn_fwd_host(x, weight, bias, ghost_batch_size, eps,
                                     [&](const ghost_bn::FwdArgs& a, ghost_bn::DType) {
                                       AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                                                       "ghost_bn_fwd_cpu",
                                                                       [&] { fwd_cpu_kernel<scalar_t>(a); });
                                     });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ghost_bn_bwd_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                const at::Tensor& mean, const at::Tensor& invstd,
                                                                const std::optional<at::Tensor>& weight,
                                                                int64_t ghost_batch_size, bool need_grad_x,
                                                                bool need_grad_weight, bool need_grad_bias) {
  return ghost_bn::ghost_bn_bwd_host(grad, x, mean, invstd, weight, ghost_batch_size, need_grad_x, need_grad_weight,
                                     need_grad_bias, [&](const ghost_bn::BwdArgs& a, ghost_bn::DType) {
                                       AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                                                       "ghost_bn_bwd_cpu",
                                                                       [&] { bwd_cpu_kernel<scalar_t>(a); });
                                     });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CPU, m) {
  m.impl("ghost_bn_fwd", &ghost_bn_fwd_cpu);
  m.impl("ghost_bn_bwd", &ghost_bn_bwd_cpu);
}

}  // namespace pyfast
