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

template <typename scalar_t, bool kStoreH>
void lif_fwd_cpu_kernel(const lif::FwdArgs& a) {
  using acc = acc_t<scalar_t>;
  const auto* x = static_cast<const scalar_t*>(a.x);
  const auto* v0 = static_cast<const scalar_t*>(a.v0);
  auto* spikes = static_cast<scalar_t*>(a.spikes);
  auto* h_seq = static_cast<scalar_t*>(a.h_seq);
  auto* v_last = static_cast<scalar_t*>(a.v_last);
  const lif::Config c = a.cfg;
  const int64_t N = a.N;
  at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
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
  });
}

template <typename scalar_t, bool kGradK>
void lif_bwd_cpu_kernel(const lif::BwdArgs& a) {
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
  at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
    acc gv[kBlock], gk[kBlock], gth[kBlock], k[kBlock], th[kBlock];
    for (int64_t i0 = begin; i0 < end; i0 += kBlock) {
      const int64_t n = std::min(kBlock, end - i0);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = i0 + j;
        gv[j] = grad_v_last ? static_cast<acc>(grad_v_last[i]) : acc(0);
        gk[j] = gth[j] = acc(0);
        k[j] = a.k[i * a.k_stride];
        th[j] = a.v_th[i * a.v_th_stride];
      }
      for (int64_t t = a.T - 1; t >= 0; --t) {
        const int64_t off = t * N + i0;
        for (int64_t j = 0; j < n; ++j) {
          const acc h = static_cast<acc>(h_seq[off + j]);
          const lif::StepGrad<acc> g = lif::backward_step(static_cast<acc>(grad_s[off + j]), gv[j], h, th[j], c);
          grad_x[off + j] = static_cast<scalar_t>(c.decay_input ? k[j] * g.grad_h : g.grad_h);
          gth[j] += g.grad_vth;
          if constexpr (kGradK) {
            acc v_prev;
            if (t > 0) {
              const acc h_prev = static_cast<acc>(h_seq[off - N + j]);
              v_prev = lif::reset(h_prev, lif::fire(h_prev, th[j]), th[j], c);
            } else {
              v_prev = v0 ? static_cast<acc>(v0[i0 + j]) : static_cast<acc>(lif::initial_membrane(c));
            }
            const acc x_t = x ? static_cast<acc>(x[off + j]) : acc(0);
            gk[j] += g.grad_h * lif::charge_grad_k(x_t, v_prev, c);
          }
          gv[j] = (acc(1) - k[j]) * g.grad_h;
        }
      }
      for (int64_t j = 0; j < n; ++j) {
        grad_v0[i0 + j] = static_cast<scalar_t>(gv[j]);
        if (kGradK) a.grad_k[i0 + j] = static_cast<float>(gk[j]);
        if (a.grad_v_th) a.grad_v_th[i0 + j] = static_cast<float>(gth[j]);
      }
    }
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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_bwd_cpu(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last, const at::Tensor& h_seq,
    const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& v0, const at::Tensor& k,
    const at::Tensor& v_th, std::optional<double> v_reset, bool decay_input, c10::string_view surrogate, double alpha,
    bool detach_reset, bool need_grad_k, bool need_grad_v_th) {
  return lif::lif_bwd_host(grad_spikes, grad_v_last, h_seq, x, v0, k, v_th, v_reset, decay_input, surrogate, alpha,
                           detach_reset, need_grad_k, need_grad_v_th, [&](const lif::BwdArgs& a, lif::DType) {
                             AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h_seq.scalar_type(),
                                                             "lif_bwd_cpu", [&] {
                                                               if (a.grad_k)
                                                                 lif_bwd_cpu_kernel<scalar_t, true>(a);
                                                               else
                                                                 lif_bwd_cpu_kernel<scalar_t, false>(a);
                                                             });
                           });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CPU, m) {
  m.impl("lif_fwd", &lif_fwd_cpu);
  m.impl("lif_bwd", &lif_bwd_cpu);
}

}  // namespace pyfast
