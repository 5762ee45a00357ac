// Gated attention, CPU kernels: the gated class-attention core (loops in gated_cpu_kernels.inc, parallel over the
// batch) and gradient routing (parallel over rows). The O(B C^2) GEMMs around the core are ATen's (gated_host.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "common/cpu.h"
#include "gated/gated_host.h"

namespace pyfast {
namespace {

// The same loops for AVX2 (8 floats a vector instead of 4), chosen at run time; no FMA contraction
// (-ffp-contract=off), so both builds round alike.
#define PYFAST_CLONE_LOOPS "gated/gated_cpu_kernels.inc"
#include "common/isa_clones.inc"

enum class Pass { Fwd, Bwd1, Bwd2 };

template <class X, class A>
void run_core(Pass pass, const gated::CoreArgs& a) {
  using Range = void (*)(const gated::CoreArgs&, int64_t, int64_t);
  Range fn = pass == Pass::Fwd ? &baseline::core_fwd<X, A>
             : pass == Pass::Bwd1 ? &baseline::core_bwd1<X, A>
                                  : &baseline::core_bwd2<X, A>;
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() != cpu::Isa::Baseline)
    fn = pass == Pass::Fwd ? &avx2::core_fwd<X, A> : pass == Pass::Bwd1 ? &avx2::core_bwd1<X, A> : &avx2::core_bwd2<X, A>;
#endif
  at::parallel_for(0, a.B, 1, [&](int64_t b0, int64_t b1) { fn(a, b0, b1); });
}

auto core_cpu(Pass pass) {
  return [pass](const gated::CoreArgs& a, gated::DType dtype) {
    switch (dtype) {
      case gated::DType::Float32: return run_core<float, float>(pass, a);
      case gated::DType::Float64: return run_core<double, double>(pass, a);
      case gated::DType::Float16: return run_core<c10::Half, float>(pass, a);
      case gated::DType::BFloat16: return run_core<c10::BFloat16, float>(pass, a);
    }
  };
}

std::tuple<at::Tensor, at::Tensor> gated_cattn_fwd_cpu(const at::Tensor& x, const at::Tensor& gate,
                                                       const at::Tensor& wq, const std::optional<at::Tensor>& bq,
                                                       const at::Tensor& wk, const at::Tensor& wv,
                                                       const std::optional<at::Tensor>& bv, const at::Tensor& wp,
                                                       const std::optional<at::Tensor>& bp, int64_t num_heads) {
  return gated::cattn_fwd_host(x, gate, wq, bq, wk, wv, bv, wp, bp, num_heads, core_cpu(Pass::Fwd));
}

std::vector<at::Tensor> gated_cattn_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& gate,
                                            const at::Tensor& wq, const std::optional<at::Tensor>& bq,
                                            const at::Tensor& wk, const at::Tensor& wv,
                                            const std::optional<at::Tensor>& bv, const at::Tensor& wp,
                                            const std::optional<at::Tensor>& bp, const at::Tensor& attn,
                                            int64_t num_heads) {
  return gated::cattn_bwd_host(grad_out, x, gate, wq, bq, wk, wv, bv, wp, bp, attn, num_heads,
                               core_cpu(Pass::Bwd1), core_cpu(Pass::Bwd2));
}

template <class G, class A>
void route_cpu_typed(const gated::RouteArgs& r) {
  G* g = static_cast<G*>(r.g);
  const A* mo = static_cast<const A*>(r.m_out);
  const A* mi = static_cast<const A*>(r.m_in);
  at::parallel_for(0, r.rows, std::max<int64_t>(1, 16384 / r.cols), [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      G* row = g + o * r.cols;
      if (mi == nullptr) {
        row[0] = static_cast<G>(static_cast<A>(row[0]) * (A(1) - mo[o]));
      } else {
        const A m = mo[o];
        for (int64_t i = 0; i < r.cols; ++i) row[i] = static_cast<G>(static_cast<A>(row[i]) * (A(1) - m * mi[i]));
      }
    }
  });
}

template <class G, class A>
void comp_cpu_typed(const gated::CompArgs& c) {
  G* g = static_cast<G*>(c.g);
  const G* e = static_cast<const G*>(c.e);
  at::parallel_for(0, c.n, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      g[i] = static_cast<G>(static_cast<A>(g[i]) * gated::compensation<A>(static_cast<A>(e[i]), A(c.s), A(c.s_max),
                                                                          A(c.clamp)));
  });
}

void gated_route_cpu(at::TensorList grads, at::TensorList masks_out, at::TensorList masks_in,
                     at::TensorList emb_grads, at::TensorList embs, double s, double s_max, double clamp) {
  gated::route_host(
      grads, masks_out, masks_in, emb_grads, embs, s, s_max, clamp,
      [](const gated::RouteArgs& r, gated::DType dtype) {
        switch (dtype) {
          case gated::DType::Float32: return route_cpu_typed<float, float>(r);
          case gated::DType::Float64: return route_cpu_typed<double, double>(r);
          case gated::DType::Float16: return route_cpu_typed<c10::Half, float>(r);
          case gated::DType::BFloat16: return route_cpu_typed<c10::BFloat16, float>(r);
        }
      },
      [](const gated::CompArgs& c, gated::DType dtype) {
        switch (dtype) {
          case gated::DType::Float32: return comp_cpu_typed<float, float>(c);
          case gated::DType::Float64: return comp_cpu_typed<double, double>(c);
          case gated::DType::Float16: return comp_cpu_typed<c10::Half, float>(c);
          case gated::DType::BFloat16: return comp_cpu_typed<c10::BFloat16, float>(c);
        }
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CPU, m) {
  m.impl("gated_cattn_fwd", &gated_cattn_fwd_cpu);
  m.impl("gated_cattn_bwd", &gated_cattn_bwd_cpu);
  m.impl("gated_route", &gated_route_cpu);
}

}  // namespace pyfast
