// Weighted convolution, CPU kernels of the density-weight op (maths in wconv.h). The weight is [rows, taps]; Phi is
// laid out once per call, repeated over a tile of whole rows, so the inner loops are plain elementwise products of
// equal-length arrays (vectorised) instead of per-element tap arithmetic. The per-tap sums of the backward are kept
// per tile position and folded onto the taps at the end of each chunk; chunk partials are added in chunk order in
// double, so d(den) does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "wconv/wconv_host.h"

namespace pyfast {
namespace {

constexpr int64_t kTileElems = 1024;  // elements of a Phi tile (whole rows, at least one)
constexpr int64_t kChunkTiles = 16;   // tiles per backward chunk (one partial of S each)

int64_t rows_per_tile(const wconv::Geometry& g) { return std::max<int64_t>(1, kTileElems / g.taps); }

template <class A>
std::vector<A> phi_tile(const A* den, const wconv::Geometry& g, int64_t tile_rows) {
  std::vector<A> tile(static_cast<size_t>(tile_rows * g.taps));
  for (int t = 0; t < g.taps; ++t) {
    const A phi = wconv::phi_at(den, g, t);
    for (int64_t r = 0; r < tile_rows; ++r) tile[r * g.taps + t] = phi;
  }
  return tile;
}

template <typename scalar_t>
void scale_cpu(const wconv::FwdArgs& a) {
  using A = at::opmath_type<scalar_t>;
  const auto& g = a.g;
  const int64_t tr = rows_per_tile(g);
  const std::vector<A> phi = phi_tile(static_cast<const A*>(a.den), g, tr);
  const auto* in = static_cast<const scalar_t*>(a.in);
  auto* out = static_cast<scalar_t*>(a.out);
  const int64_t tiles = (g.rows + tr - 1) / tr;
  at::parallel_for(0, tiles, 64, [&](int64_t begin, int64_t end) {
    const A* p = phi.data();
    for (int64_t i = begin; i < end; ++i) {
      const int64_t base = i * tr * g.taps;
      const int64_t n = (std::min(g.rows, (i + 1) * tr) - i * tr) * g.taps;
      const scalar_t* x = in + base;
      scalar_t* y = out + base;
      for (int64_t j = 0; j < n; ++j) y[j] = static_cast<scalar_t>(static_cast<A>(x[j]) * p[j]);
    }
  });
}

template <typename scalar_t, bool kGradW>
void bwd_cpu(const wconv::BwdArgs& a) {
  using A = at::opmath_type<scalar_t>;
  const auto& g = a.g;
  const int64_t tr = rows_per_tile(g);
  const int64_t tile_n = tr * g.taps;
  const A* den = static_cast<const A*>(a.den);
  const std::vector<A> phi = phi_tile(den, g, tr);
  const auto* gr = static_cast<const scalar_t*>(a.grad);
  const auto* w = static_cast<const scalar_t*>(a.w);
  auto* gw = static_cast<scalar_t*>(a.grad_w);
  const int64_t tiles = (g.rows + tr - 1) / tr;
  const int64_t chunks = (tiles + kChunkTiles - 1) / kChunkTiles;
  std::vector<double> partial(static_cast<size_t>(chunks * g.taps), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(static_cast<size_t>(tile_n));
    const A* p = phi.data();
    for (int64_t c = begin; c < end; ++c) {
      std::fill(acc.begin(), acc.end(), A(0));
      A* s = acc.data();
      for (int64_t i = c * kChunkTiles; i < std::min(tiles, (c + 1) * kChunkTiles); ++i) {
        const int64_t base = i * tile_n;
        const int64_t n = (std::min(g.rows, (i + 1) * tr) - i * tr) * g.taps;
        const scalar_t* x = gr + base;
        const scalar_t* v = w + base;
        for (int64_t j = 0; j < n; ++j) s[j] += static_cast<A>(x[j]) * static_cast<A>(v[j]);
        if (kGradW) {
          scalar_t* y = gw + base;
          for (int64_t j = 0; j < n; ++j) y[j] = static_cast<scalar_t>(static_cast<A>(x[j]) * p[j]);
        }
      }
      double* out = partial.data() + c * g.taps;
      for (int64_t j = 0; j < tile_n; ++j) out[j % g.taps] += static_cast<double>(s[j]);
    }
  });
  std::vector<double> S(static_cast<size_t>(g.taps), 0.0), den_d(static_cast<size_t>(g.den_numel));
  for (int64_t c = 0; c < chunks; ++c)
    for (int t = 0; t < g.taps; ++t) S[t] += partial[c * g.taps + t];
  for (int i = 0; i < g.den_numel; ++i) den_d[i] = static_cast<double>(den[i]);
  int kmax = 1;
  for (int ax = 0; ax < wconv::kMaxAxes; ++ax) kmax = std::max(kmax, g.K[ax]);
  std::vector<double> dalpha(static_cast<size_t>(wconv::kMaxAxes * kmax), 0.0);
  for (int ax = 0; ax < g.axes; ++ax)
    for (int k = 0; k < g.K[ax]; ++k) dalpha[ax * kmax + k] = wconv::dalpha_at(den_d.data(), S.data(), g, ax, k);
  std::vector<double> dden(static_cast<size_t>(g.den_numel), 0.0);
  wconv::fold_den_grad(dalpha.data(), kmax, g, dden.data());
  A* out = static_cast<A*>(a.grad_den);
  for (int i = 0; i < g.den_numel; ++i) out[i] = static_cast<A>(dden[i]);
}

at::Tensor wconv_weight_fwd_cpu(const at::Tensor& weight, const at::Tensor& den) {
  return wconv::wconv_weight_fwd_host(weight, den, [&](const wconv::FwdArgs& a, wconv::DType) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "wconv_weight_fwd_cpu",
                                    [&] { scale_cpu<scalar_t>(a); });
  });
}

std::tuple<at::Tensor, at::Tensor> wconv_weight_bwd_cpu(const at::Tensor& grad, const std::optional<at::Tensor>& weight,
                                                        const at::Tensor& den, bool need_grad_weight,
                                                        bool need_grad_den) {
  return wconv::wconv_weight_bwd_host(
      grad, weight, den, need_grad_weight, need_grad_den,
      [&](const wconv::FwdArgs& a, wconv::DType) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "wconv_weight_bwd_cpu",
                                        [&] { scale_cpu<scalar_t>(a); });
      },
      [&](const wconv::BwdArgs& a, wconv::DType) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "wconv_weight_bwd_cpu", [&] {
          if (a.grad_w)
            bwd_cpu<scalar_t, true>(a);
          else
            bwd_cpu<scalar_t, false>(a);
        });
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CPU, m) {
  m.impl("wconv_weight_fwd", &wconv_weight_fwd_cpu);
  m.impl("wconv_weight_bwd", &wconv_weight_bwd_cpu);
}

}  // namespace pyfast
