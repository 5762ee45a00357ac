// PLD, CPU kernels (maths in pld.h, row loops in pld_cpu_kernels.inc). Rows are independent: at::parallel_for over
// rows, each thread with its own Work buffers, so results do not depend on the thread count.
//
// The ranking is a stable LSD radix sort of integer order keys (8-bit digits): O(C) per pass, ties keep ascending class
// order for free, and passes whose digit is the same for every key of the row are skipped.
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
#include "pld/pld_host.h"

namespace pyfast {
namespace {

// Order keys of the ranking: 32-bit for float32/float16/bfloat16 teacher logits (compared as float32), 64-bit for
// float64.
template <typename scalar_t>
using key_t = std::conditional_t<std::is_same_v<scalar_t, double>, uint64_t, uint32_t>;

// Scratch of one thread for rows of C classes: the row along the ranking and the radix sort's buffers.
template <typename scalar_t>
struct Work {
  using A = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  A *u, *z, *a, *m, *e, *r, *S;
  key_t<scalar_t>*key, *key_tmp;
  int32_t *idx, *idx_tmp;
};

template <typename scalar_t>
struct WorkStorage {
  using A = typename Work<scalar_t>::A;
  std::vector<A> acc;
  std::vector<key_t<scalar_t>> keys;
  std::vector<int32_t> idx;
  Work<scalar_t> w;
  explicit WorkStorage(int64_t C)
      : acc(static_cast<size_t>(7 * C)), keys(static_cast<size_t>(2 * C)), idx(static_cast<size_t>(2 * C)) {
    A* p = acc.data();
    w = Work<scalar_t>{p, p + C, p + 2 * C, p + 3 * C, p + 4 * C, p + 5 * C, p + 6 * C,
                       keys.data(), keys.data() + C, idx.data(), idx.data() + C};
  }
};

// Classes 0..n-1 with keys key[c], written to perm in ascending key order, equal keys in ascending class order (the
// sort is stable and starts from class order). key / idx are overwritten; key_tmp / idx_tmp are scratch.
template <class K>
void radix_rank(K* key, K* key_tmp, int32_t* idx, int32_t* idx_tmp, int64_t n, int32_t* perm) {
  constexpr int kDigits = sizeof(K);
  uint32_t count[kDigits][256] = {};
  for (int64_t i = 0; i < n; ++i) {
    const K k = key[i];
    for (int d = 0; d < kDigits; ++d) ++count[d][(k >> (8 * d)) & 0xFF];
    idx[i] = static_cast<int32_t>(i);
  }
  for (int d = 0; d < kDigits && n > 1; ++d) {
    if (count[d][(key[0] >> (8 * d)) & 0xFF] == static_cast<uint32_t>(n)) continue;  // one digit for all: no move
    uint32_t offset[256];
    uint32_t sum = 0;
    for (int b = 0; b < 256; ++b) {
      offset[b] = sum;
      sum += count[d][b];
    }
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t pos = offset[(key[i] >> (8 * d)) & 0xFF]++;
      key_tmp[pos] = key[i];
      idx_tmp[pos] = idx[i];
    }
    std::swap(key, key_tmp);
    std::swap(idx, idx_tmp);
  }
  std::copy(idx, idx + n, perm);
}

#define PYFAST_CLONE_LOOPS "pld/pld_cpu_kernels.inc"
#define PYFAST_CLONE_AVX512
#include "common/isa_clones.inc"

template <typename scalar_t>
using acc_t = typename Work<scalar_t>::A;

template <typename scalar_t>
struct Fns {
  using A = acc_t<scalar_t>;
  double (*fwd_row)(const scalar_t*, const scalar_t*, int64_t, int64_t, A, int32_t*, A*, const Work<scalar_t>&);
  void (*bwd_row_st)(const scalar_t*, const scalar_t*, const int32_t*, int64_t, A, A, A, scalar_t*, scalar_t*,
                     const Work<scalar_t>&);
  void (*bwd_row_s)(const scalar_t*, const scalar_t*, const int32_t*, int64_t, A, A, A, scalar_t*, scalar_t*,
                    const Work<scalar_t>&);
  void (*bwd_row_t)(const scalar_t*, const scalar_t*, const int32_t*, int64_t, A, A, A, scalar_t*, scalar_t*,
                    const Work<scalar_t>&);
};

#define PYFAST_PLD_FNS(ns)                                                                                  \
  Fns<scalar_t> {                                                                                           \
    &ns::fwd_row<scalar_t>, &ns::bwd_row<scalar_t, true, true>, &ns::bwd_row<scalar_t, true, false>,        \
        &ns::bwd_row<scalar_t, false, true>                                                                 \
  }

template <typename scalar_t>
Fns<scalar_t> pick() {
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() == cpu::Isa::Avx512) return PYFAST_PLD_FNS(avx512);
  if (cpu::isa() == cpu::Isa::Avx2) return PYFAST_PLD_FNS(avx2);
#endif
  return PYFAST_PLD_FNS(baseline);
}

// Rows per parallel task at least: about 4096 logits of work.
int64_t grain_rows(int64_t C) { return std::max<int64_t>(1, 4096 / C); }

template <typename scalar_t>
void fwd_kernel(const pld::FwdArgs& a) {
  using A = acc_t<scalar_t>;
  const auto fns = pick<scalar_t>();
  const auto* s = static_cast<const scalar_t*>(a.student);
  const auto* t = static_cast<const scalar_t*>(a.teacher);
  auto* loss = static_cast<A*>(a.loss);
  auto* lse = static_cast<A*>(a.teacher_lse);
  const int64_t C = a.C;
  at::parallel_for(0, a.B, grain_rows(C), [&](int64_t begin, int64_t end) {
    WorkStorage<scalar_t> ws(C);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t y = a.labels[r];
      TORCH_CHECK_VALUE(y >= 0 && y < C, "pld: labels must hold class indices in [0, ", C, "), got ", y);
      loss[r] = static_cast<A>(fns.fwd_row(s + r * C, t + r * C, y, C, static_cast<A>(a.tau), a.perm + r * C,
                                           lse + r, ws.w));
    }
  });
}

template <typename scalar_t>
void bwd_kernel(const pld::BwdArgs& a) {
  using A = acc_t<scalar_t>;
  const auto fns = pick<scalar_t>();
  const auto row = a.grad_student && a.grad_teacher ? fns.bwd_row_st : (a.grad_student ? fns.bwd_row_s : fns.bwd_row_t);
  const auto* s = static_cast<const scalar_t*>(a.student);
  const auto* t = static_cast<const scalar_t*>(a.teacher);
  const auto* g = static_cast<const A*>(a.grad_loss);
  const auto* lse = static_cast<const A*>(a.teacher_lse);
  auto* gs = static_cast<scalar_t*>(a.grad_student);
  auto* gt = static_cast<scalar_t*>(a.grad_teacher);
  const int64_t C = a.C;
  at::parallel_for(0, a.B, grain_rows(C), [&](int64_t begin, int64_t end) {
    WorkStorage<scalar_t> ws(C);
    for (int64_t r = begin; r < end; ++r)
      row(s + r * C, t + r * C, a.perm + r * C, C, static_cast<A>(a.tau), lse[r], g[r], gs ? gs + r * C : nullptr,
          gt ? gt + r * C : nullptr, ws.w);
  });
}

template <class F>
void dispatch(pld::DType dt, F&& f) {
  switch (dt) {
    case pld::DType::Float32: f(float{}); break;
    case pld::DType::Float64: f(double{}); break;
    case pld::DType::Float16: f(c10::Half{}); break;
    case pld::DType::BFloat16: f(c10::BFloat16{}); break;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pld_fwd_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                                           const at::Tensor& labels, double tau_t) {
  return pld::pld_fwd_host(student, teacher, labels, tau_t, [](const pld::FwdArgs& a, pld::DType dt) {
    dispatch(dt, [&](auto x) { fwd_kernel<decltype(x)>(a); });
  });
}

std::tuple<at::Tensor, at::Tensor> pld_bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& student,
                                               const at::Tensor& teacher, const at::Tensor& perm,
                                               const at::Tensor& teacher_lse, double tau_t, bool need_grad_student,
                                               bool need_grad_teacher) {
  return pld::pld_bwd_host(grad_loss, student, teacher, perm, teacher_lse, tau_t, need_grad_student,
                           need_grad_teacher, [](const pld::BwdArgs& a, pld::DType dt) {
                             dispatch(dt, [&](auto x) { bwd_kernel<decltype(x)>(a); });
                           });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CPU, m) {
  m.impl("pld_fwd", &pld_fwd_cpu);
  m.impl("pld_bwd", &pld_bwd_cpu);
}

}  // namespace pyfast
