// Multi-sample dropout head, CPU kernels (maths in msdrop.h, mask loops in msdrop_cpu_kernels.inc, GEMMs in
// msdrop_host.h). Rows are independent everywhere, so results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cpu.h"
#include "common/exp.h"
#include "msdrop/msdrop_host.h"

namespace pyfast {
namespace {

#define PYFAST_CLONE_LOOPS "msdrop/msdrop_cpu_kernels.inc"
#define PYFAST_CLONE_AVX512
#include "common/isa_clones.inc"

template <typename scalar_t>
using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t>
struct Fns {
  using A = acc_t<scalar_t>;
  void (*make_x_row)(const scalar_t*, scalar_t*, int64_t, uint32_t, uint32_t, uint32_t, A);
  void (*masked_add_row)(const scalar_t*, A*, int64_t, uint32_t, uint32_t, uint32_t, A);
  A (*row_lse)(scalar_t*, const scalar_t*, int64_t);
  void (*row_grad)(const scalar_t*, scalar_t*, int64_t, A, int64_t, A);
};

#define PYFAST_MSDROP_FNS(ns) \
  Fns<scalar_t> {                                                                                      \
    &ns::make_x_row<scalar_t>, &ns::masked_add_row<scalar_t>, &ns::row_lse<scalar_t>, &ns::row_grad<scalar_t> \
  }

template <typename scalar_t>
Fns<scalar_t> pick() {
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() == cpu::Isa::Avx512) return PYFAST_MSDROP_FNS(avx512);
  if (cpu::isa() == cpu::Isa::Avx2) return PYFAST_MSDROP_FNS(avx2);
#endif
  return PYFAST_MSDROP_FNS(baseline);
}

int64_t grain_rows(int64_t D) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)); }

template <typename scalar_t>
void make_x(const msdrop::MaskArgs& a) {
  using A = acc_t<scalar_t>;
  const auto fns = pick<scalar_t>();
  const auto* h = static_cast<const scalar_t*>(a.in);
  auto* x = static_cast<scalar_t*>(a.out);
  const uint32_t key = msdrop::key_of(*a.seed);
  at::parallel_for(0, a.M * a.B, grain_rows(a.D), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      fns.make_x_row(h + (r % a.B) * a.D, x + r * a.D, a.D, key, static_cast<uint32_t>(r * a.D), a.threshold,
                     static_cast<A>(a.scale));
  });
}

template <typename scalar_t>
void masked_sum(const msdrop::MaskArgs& a) {
  using A = acc_t<scalar_t>;
  const auto fns = pick<scalar_t>();
  const auto* gx = static_cast<const scalar_t*>(a.in);
  auto* gh = static_cast<scalar_t*>(a.out);
  const uint32_t key = msdrop::key_of(*a.seed);
  at::parallel_for(0, a.B, grain_rows(a.D * a.M), [&](int64_t begin, int64_t end) {
    std::vector<A> acc(static_cast<size_t>(a.D));
    for (int64_t i = begin; i < end; ++i) {
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t k = 0; k < a.M; ++k) {
        const int64_t r = k * a.B + i;
        fns.masked_add_row(gx + r * a.D, acc.data(), a.D, key, static_cast<uint32_t>(r * a.D), a.threshold,
                           static_cast<A>(a.scale));
      }
      for (int64_t d = 0; d < a.D; ++d) gh[i * a.D + d] = static_cast<scalar_t>(acc[d]);
    }
  });
}

template <typename scalar_t>
void ce(const msdrop::CeArgs& a) {
  using A = acc_t<scalar_t>;
  const auto fns = pick<scalar_t>();
  auto* logits = static_cast<scalar_t*>(a.logits);
  const auto* bias = static_cast<const scalar_t*>(a.bias);
  auto* lse = static_cast<A*>(a.lse);
  auto* rows = static_cast<double*>(a.loss_rows);
  at::parallel_for(0, a.R, std::max<int64_t>(1, 4096 / a.C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* z = logits + r * a.C;
      const A l = fns.row_lse(z, bias, a.C);
      lse[r] = l;
      const int64_t y = a.target[r % a.B];
      TORCH_CHECK_VALUE(y >= 0 && y < a.C, "msdrop: target values must be in [0, ", a.C, "), got ", y);
      rows[r] = static_cast<double>(l) - static_cast<double>(static_cast<A>(z[y]));
    }
  });
}

template <typename scalar_t>
void grad(const msdrop::GradArgs& a) {
  using A = acc_t<scalar_t>;
  const auto fns = pick<scalar_t>();
  const auto* logits = static_cast<const scalar_t*>(a.logits);
  const auto* lse = static_cast<const A*>(a.lse);
  auto* G = static_cast<scalar_t*>(a.G);
  const A scale = *static_cast<const A*>(a.grad_loss) / static_cast<A>(a.R);
  at::parallel_for(0, a.R, std::max<int64_t>(1, 4096 / a.C), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      fns.row_grad(logits + r * a.C, G + r * a.C, a.C, lse[r], a.target[r % a.B], scale);
  });
}

struct CpuKernels {
  template <class F>
  static void dispatch(msdrop::DType dt, F&& f) {
    switch (dt) {
      case msdrop::DType::Float32: f(float{}); break;
      case msdrop::DType::Float64: f(double{}); break;
      case msdrop::DType::Float16: f(c10::Half{}); break;
      case msdrop::DType::BFloat16: f(c10::BFloat16{}); break;
    }
  }
  void make_x(const msdrop::MaskArgs& a, msdrop::DType dt) const {
    dispatch(dt, [&](auto t) { pyfast::make_x<decltype(t)>(a); });
  }
  void masked_sum(const msdrop::MaskArgs& a, msdrop::DType dt) const {
    dispatch(dt, [&](auto t) { pyfast::masked_sum<decltype(t)>(a); });
  }
  void ce(const msdrop::CeArgs& a, msdrop::DType dt) const {
    dispatch(dt, [&](auto t) { pyfast::ce<decltype(t)>(a); });
  }
  void grad(const msdrop::GradArgs& a, msdrop::DType dt) const {
    dispatch(dt, [&](auto t) { pyfast::grad<decltype(t)>(a); });
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> msdrop_fwd_cpu(const at::Tensor& h, const at::Tensor& weight,
                                                              const std::optional<at::Tensor>& bias,
                                                              const at::Tensor& target, const at::Tensor& seed,
                                                              int64_t num_samples, double p) {
  return msdrop::msdrop_fwd_host(h, weight, bias, target, seed, num_samples, p, CpuKernels{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msdrop_bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& logits,
                                                              const at::Tensor& lse, const at::Tensor& h,
                                                              const at::Tensor& weight, const at::Tensor& target,
                                                              const at::Tensor& seed, int64_t num_samples, double p,
                                                              bool need_grad_h, bool need_grad_weight,
                                                              bool need_grad_bias) {
  return msdrop::msdrop_bwd_host(grad_loss, logits, lse, h, weight, target, seed, num_samples, p, need_grad_h,
                                 need_grad_weight, need_grad_bias, CpuKernels{});
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CPU, m) {
  m.impl("msdrop_fwd", &msdrop_fwd_cpu);
  m.impl("msdrop_bwd", &msdrop_bwd_cpu);
}

}  // namespace pyfast
