// LIF / IF neuron, CPU kernels: forward and BPTT backward. The maths is in lif.h, the loops in
// lif_cpu_kernels.inc. Parallel over neurons (at::parallel_for), sequential over time.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "common/cpu.h"
#include "lif/lif_host.h"

namespace pyfast {
namespace {

constexpr int64_t kGrain = 4096;  // neurons per task: enough work to amortise a parallel_for chunk

// The same loops compiled for AVX2 + FMA (8 floats a vector instead of 4): about 2.5x less compute in the backward,
// which the surrogate makes compute-heavy. Chosen at run time, so the library still runs on any x86-64.
#define PYFAST_CLONE_LOOPS "lif/lif_cpu_kernels.inc"
#include "common/isa_clones.inc"

template <typename scalar_t, bool kStoreH>
void lif_fwd_cpu_kernel(const lif::FwdArgs& a) {
  const int64_t bytes = a.T * a.N * static_cast<int64_t>(sizeof(scalar_t));
  cpu::advise_huge_pages(a.spikes, bytes);
  if (kStoreH) cpu::advise_huge_pages(a.h_seq, bytes);
  auto range = &baseline::lif_fwd_range<scalar_t, kStoreH>;
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() != cpu::Isa::Baseline) range = &avx2::lif_fwd_range<scalar_t, kStoreH>;
#endif
  at::parallel_for(0, a.N, kGrain, [&](int64_t begin, int64_t end) { range(a, begin, end); });
}

template <typename scalar_t, lif::Surrogate kSurrogate, bool kGradK>
void lif_bwd_cpu_kernel(const lif::BwdArgs& a) {
  cpu::advise_huge_pages(a.grad_x, a.T * a.N * static_cast<int64_t>(sizeof(scalar_t)));
  auto range = &baseline::lif_bwd_range<scalar_t, kSurrogate, kGradK>;
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() != cpu::Isa::Baseline) range = &avx2::lif_bwd_range<scalar_t, kSurrogate, kGradK>;
#endif
  at::parallel_for(0, a.N, kGrain, [&](int64_t begin, int64_t end) { range(a, begin, end); });
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
  lif::with_surrogate(a.cfg.surrogate, [&](auto surrogate) {
    constexpr lif::Surrogate S = decltype(surrogate)::value;
    if (a.grad_k)
      lif_bwd_cpu_kernel<scalar_t, S, true>(a);
    else
      lif_bwd_cpu_kernel<scalar_t, S, false>(a);
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
