// Multi-sample dropout head, CPU kernels (maths in msdrop.h, mask loops in msdrop_cpu_kernels.inc; the backward's
// GEMMs in msdrop_host.h, the forward's here, fused per block of rows). Rows are independent everywhere, so results
// do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
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

// The exp polynomial of the cross-entropy rows is compute-bound: fused multiply-adds in the vector clones.
#define PYFAST_CLONE_LOOPS "msdrop/msdrop_cpu_kernels.inc"
#define PYFAST_CLONE_AVX512
#define PYFAST_CLONE_FMA
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
  void grad(const msdrop::GradArgs& a, msdrop::DType dt) const {
    dispatch(dt, [&](auto t) { pyfast::grad<decltype(t)>(a); });
  }
};

// Forward, fused per block of rows of the stacked [M B, D] matrix X: the block's rows of X (masked copies of h) are
// made in a per-thread buffer of about kBlockBytes that stays in L2, multiplied by W^T into the block's logits rows
// (ATen's GEMM, on one thread inside the parallel region), and reduced to their log-sum-exp and cross-entropy terms
// while those rows are still cached. X never goes to memory (made whole, it was written, then read back by one big
// GEMM). Each row's result depends only on its block, and the blocks are fixed, so nothing depends on the thread count.
// kBlockBytes: blocks of 512 KiB keep the per-call cost of the GEMM (it packs W^T again each call) to about 1% over one
// big GEMM, while the block and the packed W^T still share a 1 MiB L2.
constexpr int64_t kBlockBytes = int64_t{512} << 10;

std::tuple<at::Tensor, at::Tensor, at::Tensor> msdrop_fwd_cpu(const at::Tensor& h_in, const at::Tensor& weight,
                                                              const std::optional<at::Tensor>& bias,
                                                              const at::Tensor& target_in, const at::Tensor& seed,
                                                              int64_t num_samples, double p) {
  const msdrop::Shape s = msdrop::check(h_in, weight, target_in, seed, num_samples, p);
  const at::Tensor h = h_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor b = msdrop::bias_of(bias, s, h);
  const at::Tensor wt = weight.t();  // [D, C]: the GEMM reads W transposed in place
  const int64_t R = s.M * s.B;
  const auto acc = acc_type(h.scalar_type());
  at::Tensor logits = at::empty({R, s.C}, h.options());
  at::Tensor lse = at::empty({R}, h.options().dtype(acc));
  std::vector<double> loss_rows(static_cast<size_t>(R));
  const uint32_t key = msdrop::key_of(*seed.reshape({1}).contiguous().const_data_ptr<int64_t>());
  const int64_t block = std::clamp<int64_t>(kBlockBytes / (s.D * h.element_size()), 8, 512);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "msdrop_fwd_cpu", [&] {
    using A = acc_t<scalar_t>;
    const auto fns = pick<scalar_t>();
    const auto* hp = h.const_data_ptr<scalar_t>();
    const auto* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    const auto* yp = target.const_data_ptr<int64_t>();
    auto* zp = logits.mutable_data_ptr<scalar_t>();
    auto* lp = lse.mutable_data_ptr<A>();
    at::parallel_for(0, (R + block - 1) / block, 1, [&](int64_t begin, int64_t end) {
      // Below autograd on every thread (the guard is thread-local): this is the op's kernel, and mm_out would
      // otherwise refuse a weight that requires grad.
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      at::Tensor x = at::empty({block, s.D}, h.options());
      auto* xp = x.mutable_data_ptr<scalar_t>();
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t r0 = blk * block, rows = std::min(block, R - r0);
        for (int64_t r = r0; r < r0 + rows; ++r)
          fns.make_x_row(hp + (r % s.B) * s.D, xp + (r - r0) * s.D, s.D, key, static_cast<uint32_t>(r * s.D),
                         s.threshold, static_cast<A>(s.scale));
        at::Tensor z = logits.narrow(0, r0, rows);
        at::mm_out(z, x.narrow(0, 0, rows), wt);
        for (int64_t r = r0; r < r0 + rows; ++r) {
          scalar_t* zr = zp + r * s.C;
          const A l = fns.row_lse(zr, bp, s.C);
          lp[r] = l;
          const int64_t y = yp[r % s.B];
          TORCH_CHECK_VALUE(y >= 0 && y < s.C, "msdrop: target values must be in [0, ", s.C, "), got ", y);
          loss_rows[r] = static_cast<double>(l) - static_cast<double>(static_cast<A>(zr[y]));
        }
      }
    });
  });
  double total = 0.0;  // row order: the same sum whatever the thread count
  for (const double v : loss_rows) total += v;
  at::Tensor loss = at::scalar_tensor(total / static_cast<double>(R), h.options());
  return {loss, logits.view({s.M, s.B, s.C}), lse};
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
