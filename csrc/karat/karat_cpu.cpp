// Fourier-KArAt, CPU kernels of the basis contraction (maths in karat.h). Work items are (batch x head, tile of
// kTile score rows), handed out dynamically: the tile's scores Q_t K^T (a GEMM), its basis Bas [kTile, 2 G N] generated in a per-thread
// buffer that stays in L2 (one sincos per score, the rest by the angle-addition recurrence), then z_t = Bas C^T (a
// GEMM over the whole (t, m, q) K-dimension). The GEMMs are ATen's (MKL / oneDNN), single-threaded inside
// at::parallel_for; the elementwise loops are in karat_cpu_kernels.inc. Backward runs one (batch x head) per task,
// tiles in order, so g_K and the per-(batch x head) coefficient partials accumulate without races or atomics; the
// partials are summed over the batch at the end (deterministic for any thread count).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>

#include "common/cpu.h"
#include "karat/karat_host.h"

namespace pyfast {
namespace {

constexpr int64_t kTile = 64;  // score rows per work item: Bas is kTile x 2GN (300 KiB at N = 197, G = 3)

// Rows per tile when N rows are cut into `tiles` tiles of at most kTile rows: as even as possible (N = 65 gives 33 + 32
// rather than 64 + 1, whose one-row tile costs a whole GEMM call and a work item for almost nothing).
inline int64_t balanced_rows(int64_t n, int64_t tiles) { return tiles == 0 ? kTile : (n + tiles - 1) / tiles; }

// The same loops for AVX2 + FMA (8 floats a vector instead of 4), chosen at run time.
#define PYFAST_CLONE_LOOPS "karat/karat_cpu_kernels.inc"
#include "common/isa_clones.inc"

template <class A>
void basis(const A* S, int64_t rows, int64_t N, int G, A scale, A* bas) {
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() != cpu::Isa::Baseline) return avx2::basis_rows<A>(S, rows, N, G, scale, bas);
#endif
  baseline::basis_rows<A>(S, rows, N, G, scale, bas);
}

template <class A>
void grad_scores(const A* bas, const A* E, int64_t rows, int64_t N, int G, A scale, A* gS) {
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() != cpu::Isa::Baseline) return avx2::grad_scores_rows<A>(bas, E, rows, N, G, scale, gS);
#endif
  baseline::grad_scores_rows<A>(bas, E, rows, N, G, scale, gS);
}

// torch's MKL, when it has one (weak: a torch without MKL simply lacks the symbol). A GEMM called inside our parallel
// region must run on its own thread: MKL otherwise opens a nested team per call, which oversubscribes the cores.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

struct SequentialBlasGuard {
  int previous = 0;
  SequentialBlasGuard() {
    if (MKL_Set_Num_Threads_Local) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~SequentialBlasGuard() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous);
  }
};

// Work items handed out from a shared counter to one task per thread (not a static split): on a shared, oversubscribed
// machine a descheduled thread then delays only the items it holds, instead of half the call.
template <class Setup, class Body>
void parallel_items(int64_t items, Setup&& setup, Body&& body) {
  std::atomic<int64_t> next{0};
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const SequentialBlasGuard sequential_blas;
      auto workspace = setup();
      for (int64_t w = next.fetch_add(1); w < items; w = next.fetch_add(1)) body(w, workspace);
    }
  });
}

template <class A>
at::Tensor view(const A* p, at::IntArrayRef sizes) {
  return at::from_blob(const_cast<A*>(p), sizes, at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
}

// z [B*H, N, r] from q, k [B*H, N, D] and C [H, r, L], all contiguous in A.
template <class A>
void fwd_impl(const A* q, const A* k, const A* C, A* z, const karat::Shape& s, A scale) {
  const int64_t tiles = (s.N + kTile - 1) / kTile, tile_rows = balanced_rows(s.N, tiles), L = s.L();
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
  parallel_items(
      s.B * s.H * tiles, [&] { return std::array<at::Tensor, 2>{at::empty({kTile, s.N}, opts), at::empty({kTile, L}, opts)}; },
      [&](int64_t w, std::array<at::Tensor, 2>& ws) {
      const int64_t bh = w / tiles, r0 = (w % tiles) * tile_rows, rows = std::min(tile_rows, s.N - r0);
      at::Tensor S_t = ws[0].narrow(0, 0, rows), bas_t = ws[1].narrow(0, 0, rows);
      at::mm_out(S_t, view(q + (bh * s.N + r0) * s.D, {rows, s.D}), view(k + bh * s.N * s.D, {s.N, s.D}).t());
      basis<A>(S_t.const_data_ptr<A>(), rows, s.N, s.G, scale, bas_t.mutable_data_ptr<A>());
      at::Tensor z_t = view(z + (bh * s.N + r0) * s.r, {rows, s.r});
      at::mm_out(z_t, bas_t, view(C + (bh % s.H) * s.r * L, {s.r, L}).t());
      });
}

// g_q, g_k [B*H, N, D] and the coefficient partials gC_part [B*H, r, L] from grad_z [B*H, N, r].
template <class A>
void bwd_impl(const A* gz, const A* q, const A* k, const A* C, A* gq, A* gk, A* gC_part, const karat::Shape& s,
              A scale) {
  const int64_t tiles = (s.N + kTile - 1) / kTile, tile_rows = balanced_rows(s.N, tiles), L = s.L();
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
  parallel_items(
      s.B * s.H,
      [&] {
        return std::array<at::Tensor, 4>{at::empty({kTile, s.N}, opts), at::empty({kTile, L}, opts),
                                         at::empty({kTile, L}, opts), at::empty({kTile, s.N}, opts)};
      },
      [&](int64_t bh, std::array<at::Tensor, 4>& ws) {
      const at::Tensor &S = ws[0], &bas = ws[1], &E = ws[2], &gS = ws[3];
      const at::Tensor K = view(k + bh * s.N * s.D, {s.N, s.D});
      const at::Tensor C_h = view(C + (bh % s.H) * s.r * L, {s.r, L});
      at::Tensor gK = view(gk + bh * s.N * s.D, {s.N, s.D});
      at::Tensor gC = view(gC_part + bh * s.r * L, {s.r, L});
      gK.zero_();
      gC.zero_();
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t r0 = t * tile_rows, rows = std::min(tile_rows, s.N - r0);
        const at::Tensor Q_t = view(q + (bh * s.N + r0) * s.D, {rows, s.D});
        const at::Tensor gz_t = view(gz + (bh * s.N + r0) * s.r, {rows, s.r});
        at::Tensor S_t = S.narrow(0, 0, rows), bas_t = bas.narrow(0, 0, rows);
        at::Tensor E_t = E.narrow(0, 0, rows), gS_t = gS.narrow(0, 0, rows);
        at::mm_out(S_t, Q_t, K.t());
        basis<A>(S_t.const_data_ptr<A>(), rows, s.N, s.G, scale, bas_t.mutable_data_ptr<A>());
        at::mm_out(E_t, gz_t, C_h);
        gC.addmm_(gz_t.t(), bas_t);
        grad_scores<A>(bas_t.const_data_ptr<A>(), E_t.const_data_ptr<A>(), rows, s.N, s.G, scale,
                       gS_t.mutable_data_ptr<A>());
        at::Tensor gQ_t = view(gq + (bh * s.N + r0) * s.D, {rows, s.D});
        at::mm_out(gQ_t, gS_t, K);
        gK.addmm_(gS_t.t(), Q_t);
      }
      });
}

at::Tensor karat_fwd_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& a, const at::Tensor& b,
                         double scale) {
  const karat::Shape s = karat::check_inputs(q_in, k_in, a, b);
  const auto acc = acc_type(q_in.scalar_type());
  const at::Tensor q = q_in.to(acc).contiguous(), k = k_in.to(acc).contiguous();
  const at::Tensor C = karat::pack_coef(a, b, acc);
  at::Tensor z = at::empty({s.B, s.H, s.N, s.r}, q.options());
  if (z.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "karat_fwd_cpu", [&] {
      fwd_impl<scalar_t>(q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), C.const_data_ptr<scalar_t>(),
                         z.mutable_data_ptr<scalar_t>(), s, static_cast<scalar_t>(scale));
    });
  }
  return z.to(q_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> karat_bwd_cpu(const at::Tensor& grad_z,
                                                                         const at::Tensor& q_in,
                                                                         const at::Tensor& k_in, const at::Tensor& a,
                                                                         const at::Tensor& b, double scale) {
  const karat::Shape s = karat::check_inputs(q_in, k_in, a, b);
  karat::check_grad_z(grad_z, q_in, s);
  const auto acc = acc_type(q_in.scalar_type());
  const at::Tensor q = q_in.to(acc).contiguous(), k = k_in.to(acc).contiguous(), gz = grad_z.to(acc).contiguous();
  const at::Tensor C = karat::pack_coef(a, b, acc);
  at::Tensor gq = at::zeros_like(q), gk = at::zeros_like(k);
  at::Tensor gC_part = at::zeros({s.B * s.H, s.r, s.L()}, q.options());
  if (gz.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "karat_bwd_cpu", [&] {
      bwd_impl<scalar_t>(gz.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
                         C.const_data_ptr<scalar_t>(), gq.mutable_data_ptr<scalar_t>(), gk.mutable_data_ptr<scalar_t>(),
                         gC_part.mutable_data_ptr<scalar_t>(), s, static_cast<scalar_t>(scale));
    });
  }
  const at::Tensor gC = gC_part.view({s.B, s.H, s.r, s.L()}).sum(0);
  auto [ga, gb] = karat::unpack_coef(gC, s, a.scalar_type());
  return {gq.to(q_in.scalar_type()), gk.to(k_in.scalar_type()), ga, gb.to(b.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CPU, m) {
  m.impl("karat_fwd", &karat_fwd_cpu);
  m.impl("karat_bwd", &karat_bwd_cpu);
}

}  // namespace pyfast
