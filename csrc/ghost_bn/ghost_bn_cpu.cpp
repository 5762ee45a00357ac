// Ghost batch norm, CPU kernels (maths in ghost_bn.h, loops in ghost_bn_cpu_kernels.inc). Work items are
// (ghost batch, block of whole channels); one item computes its channels' statistics and then normalises them
// (forward), or its channels' sums and then dx (backward), while the item's data is still in cache. Per-position
// sums are folded onto channels in double; no item shares an output, so results do not depend on the thread count.
// Outputs of half the last-level cache or more are written through an L1 buffer with streaming stores
// (cpu::PieceWriter): they would not stay cached anyway, and streaming saves the read of every output line.
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
// Streamed outputs (cpu::stream_output) are written kPieceRows rows x kPieceSpan values at a time into an L1 buffer.
constexpr int64_t kPieceRows = 4, kPieceSpan = 512;

#define PYFAST_CLONE_LOOPS "ghost_bn/ghost_bn_cpu_kernels.inc"
#define PYFAST_CLONE_AVX512
#include "common/isa_clones.inc"

template <typename scalar_t>
using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t>
struct Fns {
  using A = acc_t<scalar_t>;
  void (*stats)(const scalar_t*, int64_t, int64_t, int64_t, const A*, A*, A*);
  void (*norm)(const scalar_t*, int64_t, scalar_t*, int64_t, int64_t, int64_t, const A*, const A*, const A*);
  void (*bwd_stats)(const scalar_t*, const scalar_t*, int64_t, int64_t, int64_t, const A*, A*, A*);
  void (*bwd_dx)(const scalar_t*, const scalar_t*, int64_t, scalar_t*, int64_t, int64_t, int64_t, const A*, const A*,
                 const A*, const A*);
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

// Fills v[j] over channel ci's S positions of the span.
template <typename A>
void fill_channel(A* v, int64_t ci, int64_t S, A value) {
  std::fill(v + ci * S, v + (ci + 1) * S, value);
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
  const int64_t bytes = l.N * stride * static_cast<int64_t>(sizeof(scalar_t));
  cpu::advise_huge_pages(y, bytes);
  const bool stream = cpu::stream_output(bytes);
  const Items items = items_of(l);
  at::parallel_for(0, items.count, 1, [&](int64_t begin, int64_t end) {
    cpu::PieceWriter<scalar_t> out(stream, kPieceRows * kPieceSpan);
    std::vector<A> k, s1, s2, mu, sc, sh;
    for (int64_t it = begin; it < end; ++it) {
      const int64_t g = it / items.blocks, c0 = (it % items.blocks) * items.per_block;
      const int64_t nc = std::min(items.per_block, l.C - c0), L = nc * l.S;
      const int64_t rows = ghost_bn::ghost_rows(l, g);
      const scalar_t* xb = x + g * l.B * stride + c0 * l.S;
      for (auto* v : {&k, &s1, &s2, &mu, &sc, &sh}) v->assign(static_cast<size_t>(L), A(0));
      for (int64_t ci = 0; ci < nc; ++ci) fill_channel(k.data(), ci, l.S, static_cast<A>(xb[ci * l.S]));
      fns.stats(xb, stride, rows, L, k.data(), s1.data(), s2.data());
      const double m = static_cast<double>(rows * l.S);
      for (int64_t ci = 0; ci < nc; ++ci) {
        double t1 = 0.0, t2 = 0.0;
        for (int64_t s = 0; s < l.S; ++s) {
          t1 += static_cast<double>(s1[ci * l.S + s]);
          t2 += static_cast<double>(s2[ci * l.S + s]);
        }
        const double d = t1 / m;
        const double v = std::max(t2 / m - d * d, 0.0);
        const double inv = 1.0 / std::sqrt(v + a.eps);
        const int64_t c = c0 + ci, gc = g * l.C + c;
        mean[gc] = static_cast<A>(static_cast<double>(k[ci * l.S]) + d);
        var[gc] = static_cast<A>(v);
        invstd[gc] = static_cast<A>(inv);
        fill_channel(mu.data(), ci, l.S, mean[gc]);
        fill_channel(sc.data(), ci, l.S, static_cast<A>((w ? static_cast<double>(w[c]) : 1.0) * inv));
        fill_channel(sh.data(), ci, l.S, b ? b[c] : A(0));
      }
      scalar_t* yb = y + (xb - x);
      if (stream) {
        for (int64_t r = 0; r < rows; r += kPieceRows)
          for (int64_t j = 0; j < L; j += kPieceSpan) {
            const int64_t nr = std::min(kPieceRows, rows - r), len = std::min(kPieceSpan, L - j);
            fns.norm(xb + r * stride + j, stride, out.target(nullptr), len, nr, len, mu.data() + j, sc.data() + j,
                     sh.data() + j);
            for (int64_t i = 0; i < nr; ++i) out.commit(yb + (r + i) * stride + j, len, i * len);
          }
      } else {
        fns.norm(xb, stride, yb, stride, rows, L, mu.data(), sc.data(), sh.data());
      }
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
  const int64_t bytes = l.N * stride * static_cast<int64_t>(sizeof(scalar_t));
  if (gx) cpu::advise_huge_pages(gx, bytes);
  const bool stream = gx && cpu::stream_output(bytes);
  const Items items = items_of(l);
  at::parallel_for(0, items.count, 1, [&](int64_t begin, int64_t end) {
    cpu::PieceWriter<scalar_t> out(stream, kPieceRows * kPieceSpan);
    std::vector<A> mu, t1, t2, ca, cb, cc;
    for (int64_t it = begin; it < end; ++it) {
      const int64_t g = it / items.blocks, c0 = (it % items.blocks) * items.per_block;
      const int64_t nc = std::min(items.per_block, l.C - c0), L = nc * l.S;
      const int64_t rows = ghost_bn::ghost_rows(l, g);
      const int64_t off = g * l.B * stride + c0 * l.S;
      for (auto* v : {&mu, &t1, &t2, &ca, &cb, &cc}) v->assign(static_cast<size_t>(L), A(0));
      for (int64_t ci = 0; ci < nc; ++ci) fill_channel(mu.data(), ci, l.S, mean[g * l.C + c0 + ci]);
      fns.bwd_stats(gr + off, x + off, stride, rows, L, mu.data(), t1.data(), t2.data());
      const double m = static_cast<double>(rows * l.S);
      for (int64_t ci = 0; ci < nc; ++ci) {
        double sum_dy = 0.0, sum_dyxmu = 0.0;
        for (int64_t s = 0; s < l.S; ++s) {
          sum_dy += static_cast<double>(t1[ci * l.S + s]);
          sum_dyxmu += static_cast<double>(t2[ci * l.S + s]);
        }
        const int64_t c = c0 + ci, gc = g * l.C + c;
        sdy[gc] = static_cast<A>(sum_dy);
        sdyxmu[gc] = static_cast<A>(sum_dyxmu);
        const double inv = static_cast<double>(invstd[gc]);
        const double wa = (w ? static_cast<double>(w[c]) : 1.0) * inv;
        fill_channel(ca.data(), ci, l.S, static_cast<A>(wa));
        fill_channel(cb.data(), ci, l.S, static_cast<A>(-wa * inv * inv * sum_dyxmu / m));
        fill_channel(cc.data(), ci, l.S, static_cast<A>(-wa * sum_dy / m));
      }
      if (gx && stream) {
        for (int64_t r = 0; r < rows; r += kPieceRows)
          for (int64_t j = 0; j < L; j += kPieceSpan) {
            const int64_t nr = std::min(kPieceRows, rows - r), len = std::min(kPieceSpan, L - j);
            const int64_t o = off + r * stride + j;
            fns.bwd_dx(gr + o, x + o, stride, out.target(nullptr), len, nr, len, mu.data() + j, ca.data() + j,
                       cb.data() + j, cc.data() + j);
            for (int64_t i = 0; i < nr; ++i) out.commit(gx + o + i * stride, len, i * len);
          }
      } else if (gx) {
        fns.bwd_dx(gr + off, x + off, stride, gx + off, stride, rows, L, mu.data(), ca.data(), cb.data(), cc.data());
      }
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
