// LIF / IF neuron, CPU kernels: forward and BPTT backward. The maths is in lif.h.
//
// Parallel over neurons (at::parallel_for), sequential over time. Neurons are processed in blocks of kBlock with
// the membrane and gradient state in small local arrays, so the inner loop over a block is branch-free
// contiguous float work that the compiler vectorises; all arithmetic is float32 whatever the storage dtype
// (float64 runs in float64).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "lif/lif_host.h"

namespace pyfast {
namespace {

constexpr int64_t kBlock = 64;
constexpr int64_t kGrain = 4096;  // neurons per task: enough work to amortise a parallel_for chunk

// float32 maths for float/half/bfloat16 storage, float64 for double.
template <typename scalar_t>
using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Neurons [begin, end) for all T steps. Kept out of line so there is exactly one (vectorised) copy of the loop,
// whether parallel_for runs it on a worker or inline.
template <typename scalar_t, bool kStoreH>
C10_NOINLINE void lif_fwd_range(const lif::FwdArgs& a, int64_t begin, int64_t end) {
  using acc = acc_t<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(a.x);
  const auto* v0 = static_cast<const scalar_t*>(a.v0);
  auto* spikes = static_cast<scalar_t*>(a.spikes);
  auto* h_seq = static_cast<scalar_t*>(a.h_seq);
  auto* v_last = static_cast<scalar_t*>(a.v_last);
  const lif::Config c = a.cfg;
  const int64_t N = a.N;
  {
    acc v[kBlock], k[kBlock], th[kBlock];
    for (int64_t i0 = begin; i0 < end; i0 += kBlock) {
      const int64_t n = std::min(kBlock, end - i0);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = i0 + j;
        v[j] = v0 ? static_cast<acc>(v0[i]) : static_cast<acc>(lif::initial_membrane(c));
        k[j] = a.k[i * a.k_stride];
        th[j] = a.v_th[i * a.v_th_stride];
      }
      for (int64_t t = 0; t < a.T; ++t) {
        const scalar_t* xt = x + t * N + i0;
        scalar_t* st = spikes + t * N + i0;
        scalar_t* ht = kStoreH ? h_seq + t * N + i0 : nullptr;
        for (int64_t j = 0; j < n; ++j) {
          // Fire and reset on H rounded to the storage dtype: the backward recomputes S from that same value.
          const scalar_t h_store = static_cast<scalar_t>(lif::charge(v[j], static_cast<acc>(xt[j]), k[j], c));
          const acc h = static_cast<acc>(h_store);
          const acc s = lif::fire(h, th[j]);
          st[j] = static_cast<scalar_t>(s);
          if constexpr (kStoreH) ht[j] = h_store;
          v[j] = lif::reset(h, s, th[j], c);
        }
      }
      for (int64_t j = 0; j < n; ++j) v_last[i0 + j] = static_cast<scalar_t>(v[j]);
    }
  }
}

template <typename scalar_t, bool kStoreH>
void lif_fwd_cpu_kernel(const lif::FwdArgs& a) {
  at::parallel_for(0, a.N, kGrain, [&](int64_t begin, int64_t end) { lif_fwd_range<scalar_t, kStoreH>(a, begin, end); });
}

template <typename scalar_t, lif::Surrogate kSurrogate, bool kGradK>
C10_NOINLINE void lif_bwd_range(const lif::BwdArgs& a, int64_t begin, int64_t end) {
  using acc = acc_t<scalar_t>;
  const auto* grad_s = static_cast<const scalar_t*>(a.grad_spikes);
  const auto* grad_v_last = static_cast<const scalar_t*>(a.grad_v_last);
  const auto* h_seq = static_cast<const scalar_t*>(a.h_seq);
  const auto* x = static_cast<const scalar_t*>(a.x);
  const auto* v0 = static_cast<const scalar_t*>(a.v0);
  auto* grad_x = static_cast<scalar_t*>(a.grad_x);
  auto* grad_v0 = static_cast<scalar_t*>(a.grad_v0);
  const lif::Config c = a.cfg;
  const int64_t N = a.N;
  {
    acc gv[kBlock], gk[kBlock], gth[kBlock], gh[kBlock], v_prev[kBlock], k[kBlock], th[kBlock], dh_dx[kBlock];
    for (int64_t i0 = begin; i0 < end; i0 += kBlock) {
      const int64_t n = std::min(kBlock, end - i0);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = i0 + j;
        gv[j] = grad_v_last ? static_cast<acc>(grad_v_last[i]) : acc(0);
        gk[j] = gth[j] = acc(0);
        k[j] = a.k[i * a.k_stride];
        th[j] = a.v_th[i * a.v_th_stride];
        dh_dx[j] = lif::charge_grad_x(k[j], c);
      }
      for (int64_t t = a.T - 1; t >= 0; --t) {
        const int64_t off = t * N + i0;
        for (int64_t j = 0; j < n; ++j) {
          const acc h = static_cast<acc>(h_seq[off + j]);
          const lif::StepGrad<acc> g = lif::backward_step<kSurrogate>(static_cast<acc>(grad_s[off + j]), gv[j], h,
                                                                      th[j], c);
          grad_x[off + j] = static_cast<scalar_t>(dh_dx[j] * g.grad_h);
          gth[j] += g.grad_vth;
          gh[j] = g.grad_h;
          gv[j] = (acc(1) - k[j]) * g.grad_h;
        }
        if constexpr (kGradK) {
          // dL/dk needs V_{t-1}: recomputed from H_{t-1} (or v0 at t = 0). Separate loops keep each branch-free.
          if (t > 0) {
            for (int64_t j = 0; j < n; ++j) {
              const acc h_prev = static_cast<acc>(h_seq[off - N + j]);
              v_prev[j] = lif::reset(h_prev, lif::fire(h_prev, th[j]), th[j], c);
            }
          } else {
            for (int64_t j = 0; j < n; ++j)
              v_prev[j] = v0 ? static_cast<acc>(v0[i0 + j]) : static_cast<acc>(lif::initial_membrane(c));
          }
          for (int64_t j = 0; j < n; ++j) {
            const acc x_t = x ? static_cast<acc>(x[off + j]) : acc(0);
            gk[j] += gh[j] * lif::charge_grad_k(x_t, v_prev[j], c);
          }
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        grad_v0[i0 + j] = static_cast<scalar_t>(gv[j]);
        if (kGradK) a.grad_k[i0 + j] = static_cast<float>(gk[j]);
        if (a.grad_v_th) a.grad_v_th[i0 + j] = static_cast<float>(gth[j]);
      }
    }
  }
}

template <typename scalar_t, lif::Surrogate kSurrogate, bool kGradK>
void lif_bwd_cpu_kernel(const lif::BwdArgs& a) {
  at::parallel_for(0, a.N, kGrain, [&](int64_t begin, int64_t end) {
    lif_bwd_range<scalar_t, kSurrogate, kGradK>(a, begin, end);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_fwd_cpu(const at::Tensor& x, const std::optional<at::Tensor>& v0,
                                                           const at::Tensor& k, const at::Tensor& v_th,
                                                           std::optional<double> v_reset, bool decay_input,
                                                           c10::string_view surrogate, double alpha, bool detach_reset,
                                                           bool store_h) {
  return lif::lif_fwd_host(x, v0, k, v_th, v_reset, decay_input, surrogate, alpha, detach_reset, store_h,
                           [&](const lif::FwdArgs& a, lif::DType) {
                             AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_fwd_cpu",
                                                             [&] {
                                                               if (a.h_seq)
                                                                 lif_fwd_cpu_kernel<scalar_t, true>(a);
                                                               else
                                                                 lif_fwd_cpu_kernel<scalar_t, false>(a);
                                                             });
                           });
}

// Surrogate and grad_k as template arguments: the time loop's body stays branch-free and vectorises.
template <typename scalar_t>
void bwd_cpu_dispatch(const lif::BwdArgs& a) {
  auto with_grad_k = [&](auto surrogate) {
    constexpr lif::Surrogate S = decltype(surrogate)::value;
    if (a.grad_k)
      lif_bwd_cpu_kernel<scalar_t, S, true>(a);
    else
      lif_bwd_cpu_kernel<scalar_t, S, false>(a);
  };
  switch (a.cfg.surrogate) {
    case lif::Surrogate::Sigmoid: with_grad_k(std::integral_constant<lif::Surrogate, lif::Surrogate::Sigmoid>{}); break;
    case lif::Surrogate::ATan: with_grad_k(std::integral_constant<lif::Surrogate, lif::Surrogate::ATan>{}); break;
    default: with_grad_k(std::integral_constant<lif::Surrogate, lif::Surrogate::Triangle>{}); break;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_bwd_cpu(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last, const at::Tensor& h_seq,
    const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& v0, const at::Tensor& k,
    const at::Tensor& v_th, std::optional<double> v_reset, bool decay_input, c10::string_view surrogate, double alpha,
    bool detach_reset, bool need_grad_k, bool need_grad_v_th) {
  return lif::lif_bwd_host(grad_spikes, grad_v_last, h_seq, x, v0, k, v_th, v_reset, decay_input, surrogate, alpha,
                           detach_reset, need_grad_k, need_grad_v_th, [&](const lif::BwdArgs& a, lif::DType) {
                             AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h_seq.scalar_type(),
                                                             "lif_bwd_cpu", [&] {
                                                               bwd_cpu_dispatch<scalar_t>(a);
                                                             });
                           });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CPU, m) {
  m.impl("lif_fwd", &lif_fwd_cpu);
  m.impl("lif_bwd", &lif_bwd_cpu);
}

}  // namespace pyfast
