// CRReLU, CPU kernels (maths in crrelu.h, loops in crrelu_cpu_kernels.inc). Work items of at most kChunk elements
// with one eps each ([outer, C, inner] runs; the whole tensor in chunks for a shared eps) or, channel-last
// (inner = 1, C > 1), blocks of whole rows. Each item's share of d(eps) is written to its own double slot and the
// slots are added in item order, so d(eps) does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/cpu.h"
#include "crrelu/crrelu_host.h"

namespace pyfast {
namespace {

constexpr int64_t kChunk = 16384;   // elements per work item
constexpr int64_t kMinColRows = 64;  // rows per channel-last item at least (bounds the d(eps) partials to numel/64)

// The same loops for AVX2 + FMA and for AVX-512 (512-bit vectors preferred): the exp polynomial makes the loops
// compute-bound, so the vector width shows, and so do fused multiply-adds (PYFAST_CLONE_FMA: about a fifth less time
// per element than unfused; results within an ulp or so of the baseline clone's). Chosen at run time, so the library
// runs on any x86-64.
#define PYFAST_CLONE_LOOPS "crrelu/crrelu_cpu_kernels.inc"
#define PYFAST_CLONE_AVX512
#define PYFAST_CLONE_FMA
#include "common/isa_clones.inc"

template <typename scalar_t>
using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t, bool kGradX, bool kGradEps>
struct Fns {
  using A = acc_t<scalar_t>;
  void (*fwd_run)(const scalar_t*, scalar_t*, int64_t, A);
  void (*fwd_cols)(const scalar_t*, scalar_t*, int64_t, int64_t, const A*);
  double (*bwd_run)(const scalar_t*, const scalar_t*, scalar_t*, int64_t, A);
  void (*bwd_cols)(const scalar_t*, const scalar_t*, scalar_t*, int64_t, int64_t, const A*, A*);
};

#define PYFAST_CRRELU_FNS(ns)                                                                                    \
  Fns<scalar_t, kGradX, kGradEps> {                                                                              \
    &ns::fwd_run<scalar_t>, &ns::fwd_cols<scalar_t>, &ns::bwd_run<scalar_t, kGradX, kGradEps>,                   \
        &ns::bwd_cols<scalar_t, kGradX, kGradEps>                                                                \
  }

template <typename scalar_t, bool kGradX, bool kGradEps>
Fns<scalar_t, kGradX, kGradEps> pick() {
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() == cpu::Isa::Avx512) return PYFAST_CRRELU_FNS(avx512);
  if (cpu::isa() == cpu::Isa::Avx2) return PYFAST_CRRELU_FNS(avx2);
#endif
  return PYFAST_CRRELU_FNS(baseline);
}

// The work split: channel-last blocks of rows, or per-eps runs cut into chunks.
struct Split {
  bool cols;
  int64_t items;
  int64_t chunks_per_row;  // runs: chunks of one [inner] run
  int64_t rows_per_item;   // cols: rows of C elements per item
  int64_t grain;           // items per parallel task at least
};

Split split_of(const crrelu::Layout& l) {
  Split s{};
  s.cols = l.inner == 1 && l.C > 1;
  if (s.cols) {
    s.rows_per_item = std::max(kMinColRows, kChunk / l.C);
    s.items = (l.outer + s.rows_per_item - 1) / s.rows_per_item;
    s.grain = 1;
  } else {
    s.chunks_per_row = (l.inner + kChunk - 1) / kChunk;
    s.items = l.outer * l.C * s.chunks_per_row;
    s.grain = std::max<int64_t>(1, kChunk / std::min(l.inner, kChunk));
  }
  return s;
}

template <typename scalar_t>
void fwd_cpu_kernel(const crrelu::FwdArgs& a) {
  using A = acc_t<scalar_t>;
  const auto fns = pick<scalar_t, false, false>();
  const auto& l = a.l;
  const auto* x = static_cast<const scalar_t*>(a.x);
  auto* y = static_cast<scalar_t*>(a.y);
  const auto* eps = static_cast<const A*>(a.eps);
  cpu::advise_huge_pages(y, l.outer * l.C * l.inner * static_cast<int64_t>(sizeof(scalar_t)));
  const Split s = split_of(l);
  at::parallel_for(0, s.items, s.grain, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      if (s.cols) {
        const int64_t r0 = it * s.rows_per_item, rows = std::min(s.rows_per_item, l.outer - r0);
        fns.fwd_cols(x + r0 * l.C, y + r0 * l.C, rows, l.C, eps);
      } else {
        const int64_t row = it / s.chunks_per_row, k = (it % s.chunks_per_row) * kChunk;
        const int64_t off = row * l.inner + k;
        fns.fwd_run(x + off, y + off, std::min(kChunk, l.inner - k), eps[row % l.C]);
      }
    }
  });
}

template <typename scalar_t, bool kGradX, bool kGradEps>
void bwd_cpu_kernel(const crrelu::BwdArgs& a) {
  using A = acc_t<scalar_t>;
  const auto fns = pick<scalar_t, kGradX, kGradEps>();
  const auto& l = a.l;
  const auto* g = static_cast<const scalar_t*>(a.grad);
  const auto* x = static_cast<const scalar_t*>(a.x);
  auto* gx = static_cast<scalar_t*>(a.grad_x);
  const auto* eps = static_cast<const A*>(a.eps);
  if (kGradX) cpu::advise_huge_pages(gx, l.outer * l.C * l.inner * static_cast<int64_t>(sizeof(scalar_t)));
  const Split s = split_of(l);
  std::vector<double> partial(kGradEps ? static_cast<size_t>(s.items * (s.cols ? l.C : 1)) : 0);
  at::parallel_for(0, s.items, s.grain, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(s.cols && kGradEps ? static_cast<size_t>(l.C) : 0);
    for (int64_t it = begin; it < end; ++it) {
      if (s.cols) {
        const int64_t r0 = it * s.rows_per_item, rows = std::min(s.rows_per_item, l.outer - r0);
        std::fill(acc.begin(), acc.end(), A(0));
        fns.bwd_cols(g + r0 * l.C, x + r0 * l.C, kGradX ? gx + r0 * l.C : nullptr, rows, l.C, eps, acc.data());
        if (kGradEps)
          for (int64_t c = 0; c < l.C; ++c) partial[it * l.C + c] = static_cast<double>(acc[c]);
      } else {
        const int64_t row = it / s.chunks_per_row, k = (it % s.chunks_per_row) * kChunk;
        const int64_t off = row * l.inner + k;
        const double sum = fns.bwd_run(g + off, x + off, kGradX ? gx + off : nullptr, std::min(kChunk, l.inner - k),
                                       eps[row % l.C]);
        if (kGradEps) partial[it] = sum;
      }
    }
  });
  if (!kGradEps) return;
  auto* out = static_cast<double*>(a.grad_eps);
  if (s.cols) {
    for (int64_t it = 0; it < s.items; ++it)
      for (int64_t c = 0; c < l.C; ++c) out[c] += partial[it * l.C + c];
  } else {
    for (int64_t it = 0; it < s.items; ++it) out[(it / s.chunks_per_row) % l.C] += partial[it];
  }
}

at::Tensor crrelu_fwd_cpu(const at::Tensor& x, const at::Tensor& eps, int64_t dim) {
  return crrelu::crrelu_fwd_host(x, eps, dim, [&](const crrelu::FwdArgs& a, crrelu::DType) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "crrelu_fwd_cpu",
                                    [&] { fwd_cpu_kernel<scalar_t>(a); });
  });
}

std::tuple<at::Tensor, at::Tensor> crrelu_bwd_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& eps,
                                                  int64_t dim, bool need_grad_x, bool need_grad_eps) {
  return crrelu::crrelu_bwd_host(grad, x, eps, dim, need_grad_x, need_grad_eps,
                                 [&](const crrelu::BwdArgs& a, crrelu::DType) {
                                   AT_DISPATCH_FLOATING_TYPES_AND2(
                                       at::kHalf, at::kBFloat16, x.scalar_type(), "crrelu_bwd_cpu", [&] {
                                         if (a.grad_x && a.grad_eps)
                                           bwd_cpu_kernel<scalar_t, true, true>(a);
                                         else if (a.grad_x)
                                           bwd_cpu_kernel<scalar_t, true, false>(a);
                                         else
                                           bwd_cpu_kernel<scalar_t, false, true>(a);
                                       });
                                 });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CPU, m) {
  m.impl("crrelu_fwd", &crrelu_fwd_cpu);
  m.impl("crrelu_bwd", &crrelu_bwd_cpu);
}

}  // namespace pyfast
