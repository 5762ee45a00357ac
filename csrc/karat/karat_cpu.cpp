// Fourier-KArAt, CPU kernels of the basis contraction (maths in karat.h). Work items are (batch x head, tile of
// score rows), handed out dynamically: the tile's scores Q_t K^T (a GEMM), its basis Bas [rows, 2 G N] generated in a per-thread
// buffer that stays in L2 (one sincos per score, the rest by the angle-addition recurrence), then z_t = Bas C^T (a
// GEMM over the whole (t, m, q) K-dimension). The GEMMs are BLAS calls on raw pointers (torch's MKL), single-threaded
// inside at::parallel_for; the elementwise loops are in karat_cpu_kernels.inc. Backward runs one (batch x head) per task,
// tiles in order, so g_K and the per-(batch x head) coefficient partials accumulate without races or atomics; the
// partials are summed over the batch at the end (deterministic for any thread count).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "common/cpu.h"
#include "karat/karat_host.h"

namespace pyfast {
namespace {


// Row tiling of the N score rows: tiles as large as keeps one basis tile (rows x 2GN values of A) within kBasisBytes,
// which stays in L2 next to the GEMM panels, and as even as possible (N = 197, G = 3: 4 tiles of 50 rows rather than
// 54 + 54 + 54 + 35). Larger tiles mean fewer and larger GEMM calls: at N = 65 the whole row block is one tile.
constexpr int64_t kBasisBytes = 256 * 1024;

struct Tiling {
  int64_t tiles, rows;  // number of tiles, rows per tile (the last may have fewer)
};

inline Tiling row_tiling(int64_t N, int64_t L, int64_t elem_bytes) {
  const int64_t max_rows = std::clamp<int64_t>(kBasisBytes / (L * elem_bytes), 8, std::max<int64_t>(N, 1));
  const int64_t tiles = (N + max_rows - 1) / max_rows;
  return {tiles, (N + tiles - 1) / tiles};
}

// The same loops for AVX2 + FMA and for AVX-512 (the basis is sincos-heavy enough that the wider vectors pay: 18 %
// faster tiles on this AMD EPYC), chosen at run time. Both contract a * b + c into fused multiply-adds: their results
// differ from the baseline clone's by rounding (the tests compare them within float tolerance), as MKL's do anyway.
#define PYFAST_CLONE_LOOPS "karat/karat_cpu_kernels.inc"
#define PYFAST_CLONE_AVX512
#define PYFAST_CLONE_FMA
#include "common/isa_clones.inc"

template <class A>
void basis(const A* S, int64_t rows, int64_t N, int G, A scale, A* bas) {
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() == cpu::Isa::Avx512) return avx512::basis_rows<A>(S, rows, N, G, scale, bas);
  if (cpu::isa() == cpu::Isa::Avx2) return avx2::basis_rows<A>(S, rows, N, G, scale, bas);
#endif
  baseline::basis_rows<A>(S, rows, N, G, scale, bas);
}

template <class A>
void grad_scores(const A* bas, const A* gz, const A* C, int64_t rows, int64_t N, int G, int64_t r, A scale, A* gS) {
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() == cpu::Isa::Avx512) return avx512::grad_scores_rows<A>(bas, gz, C, rows, N, G, r, scale, gS);
  if (cpu::isa() == cpu::Isa::Avx2) return avx2::grad_scores_rows<A>(bas, gz, C, rows, N, G, r, scale, gS);
#endif
  baseline::grad_scores_rows<A>(bas, gz, C, rows, N, G, r, scale, gS);
}

// torch's MKL, when it has one (weak: a torch without MKL simply lacks the symbols, and gemm() below falls back to
// ATen). A GEMM called inside our parallel region must run on its own thread: MKL otherwise opens a nested team per
// call, which oversubscribes the cores. The tiles' GEMMs are small (tens of rows), so they call BLAS directly on raw
// pointers: through at::mm_out each paid more in dispatch and tensor bookkeeping than in arithmetic at N = 65.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*) __attribute__((weak));
extern "C" void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
                       const int*, const double*, const int*, const double*, double*, const int*)
    __attribute__((weak));

struct SequentialBlasGuard {
  int previous = 0;
  SequentialBlasGuard() {
    if (MKL_Set_Num_Threads_Local) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~SequentialBlasGuard() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous);
  }
};

template <class A>
at::Tensor view(const A* p, at::IntArrayRef sizes, at::IntArrayRef strides) {
  return at::from_blob(const_cast<A*>(p), sizes, strides,
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
}

// Row-major C[M, N] = op(X)[M, K] op(Y)[K, N] + beta C, op(X) = X^T when trans_x (X stored [K, M]); ld* are the
// row strides. BLAS is column-major, so it computes C^T = op(Y)^T op(X)^T: the operands swap places.
template <class A>
void gemm(bool trans_x, bool trans_y, int64_t M, int64_t N, int64_t K, const A* X, int64_t ldx, const A* Y,
          int64_t ldy, A beta, A* C, int64_t ldc) {
  const char tx = trans_x ? 'T' : 'N', ty = trans_y ? 'T' : 'N';
  const int m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  const int lx = static_cast<int>(ldx), ly = static_cast<int>(ldy), lc = static_cast<int>(ldc);
  const A one = 1;
  if constexpr (std::is_same_v<A, float>) {
    if (sgemm_) return sgemm_(&ty, &tx, &n, &m, &k, &one, Y, &ly, X, &lx, &beta, C, &lc);
  } else {
    if (dgemm_) return dgemm_(&ty, &tx, &n, &m, &k, &one, Y, &ly, X, &lx, &beta, C, &lc);
  }
  const at::Tensor x = trans_x ? view(X, {M, K}, {1, ldx}) : view(X, {M, K}, {ldx, 1});
  const at::Tensor y = trans_y ? view(Y, {K, N}, {1, ldy}) : view(Y, {K, N}, {ldy, 1});
  at::Tensor c = view(C, {M, N}, {ldc, 1});
  if (beta == A(0)) {
    at::mm_out(c, x, y);
  } else {
    c.addmm_(x, y, beta);
  }
}

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

// z_t [rows, r] = Bas_t C_h^T, computed as its transpose C_h Bas_t^T into zT [r, rows] and copied across: with only r
// (about 12) output columns the direct form ran at half the speed in MKL.
template <class A>
void contract_tile(const A* bas, const A* C_h, int64_t rows, int64_t r, int64_t L, A* zT, A* z_t) {
  gemm<A>(false, true, r, rows, L, C_h, L, bas, L, 0, zT, rows);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t p = 0; p < r; ++p) z_t[i * r + p] = zT[p * rows + i];
}

// z [B*H, N, r] from q, k [B*H, N, D] and C [H, r, L], all contiguous in A.
template <class A>
void fwd_impl(const A* q, const A* k, const A* C, A* z, const karat::Shape& s, A scale) {
  const int64_t L = s.L();
  const auto [tiles, tile_rows] = row_tiling(s.N, L, sizeof(A));
  parallel_items(
      s.B * s.H * tiles,
      [&] {
        return std::array<std::vector<A>, 3>{std::vector<A>(tile_rows * s.N), std::vector<A>(tile_rows * L),
                                             std::vector<A>(tile_rows * s.r)};
      },
      [&](int64_t w, std::array<std::vector<A>, 3>& ws) {
      const int64_t bh = w / tiles, r0 = (w % tiles) * tile_rows, rows = std::min(tile_rows, s.N - r0);
      A *S_t = ws[0].data(), *bas_t = ws[1].data();
      gemm<A>(false, true, rows, s.N, s.D, q + (bh * s.N + r0) * s.D, s.D, k + bh * s.N * s.D, s.D, 0, S_t, s.N);
      basis<A>(S_t, rows, s.N, s.G, scale, bas_t);
      contract_tile<A>(bas_t, C + (bh % s.H) * s.r * L, rows, s.r, L, ws[2].data(), z + (bh * s.N + r0) * s.r);
      });
}

// g_q, g_k [B*H, N, D] and the coefficient partials gC_part [B*H, r, L] from grad_z [B*H, N, r], and z [B*H, N, r]
// again when z_out is not null; every output element is written (the outputs need no zeroing: a fresh zero fill of
// these megabytes cost more than the N = 65 arithmetic).
template <class A>
void bwd_impl(const A* gz, const A* q, const A* k, const A* C, A* gq, A* gk, A* gC_part, A* z_out,
              const karat::Shape& s, A scale) {
  const int64_t L = s.L();
  const auto [tiles, tile_rows] = row_tiling(s.N, L, sizeof(A));
  parallel_items(
      s.B * s.H,
      [&] {
        return std::array<std::vector<A>, 4>{std::vector<A>(tile_rows * s.N), std::vector<A>(tile_rows * L),
                                             std::vector<A>(tile_rows * s.N),
                                             std::vector<A>(z_out != nullptr ? tile_rows * s.r : 0)};
      },
      [&](int64_t bh, std::array<std::vector<A>, 4>& ws) {
      A *S = ws[0].data(), *bas = ws[1].data(), *gS = ws[2].data();
      const A* K = k + bh * s.N * s.D;
      const A* C_h = C + (bh % s.H) * s.r * L;
      A* gK = gk + bh * s.N * s.D;
      A* gC = gC_part + bh * s.r * L;
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t r0 = t * tile_rows, rows = std::min(tile_rows, s.N - r0);
        const A beta = t == 0 ? A(0) : A(1);  // the first tile initialises the per-(batch x head) sums
        const A* Q_t = q + (bh * s.N + r0) * s.D;
        const A* gz_t = gz + (bh * s.N + r0) * s.r;
        gemm<A>(false, true, rows, s.N, s.D, Q_t, s.D, K, s.D, 0, S, s.N);
        basis<A>(S, rows, s.N, s.G, scale, bas);
        if (z_out != nullptr) contract_tile<A>(bas, C_h, rows, s.r, L, ws[3].data(), z_out + (bh * s.N + r0) * s.r);
        gemm<A>(true, false, s.r, L, rows, gz_t, s.r, bas, L, beta, gC, L);
        grad_scores<A>(bas, gz_t, C_h, rows, s.N, s.G, s.r, scale, gS);
        gemm<A>(false, false, rows, s.D, s.N, gS, s.N, K, s.D, 0, gq + (bh * s.N + r0) * s.D, s.D);
        gemm<A>(true, false, s.N, s.D, rows, gS, s.N, Q_t, s.D, beta, gK, s.D);
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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> karat_bwd_cpu(
    const at::Tensor& grad_z, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& a, const at::Tensor& b,
    double scale, bool recompute_z) {
  const karat::Shape s = karat::check_inputs(q_in, k_in, a, b);
  karat::check_grad_z(grad_z, q_in, s);
  const auto acc = acc_type(q_in.scalar_type());
  const at::Tensor q = q_in.to(acc).contiguous(), k = k_in.to(acc).contiguous(), gz = grad_z.to(acc).contiguous();
  const at::Tensor C = karat::pack_coef(a, b, acc);
  at::Tensor gq = at::empty_like(q), gk = at::empty_like(k);
  at::Tensor gC_part = at::empty({s.B * s.H, s.r, s.L()}, q.options());
  at::Tensor z = recompute_z ? at::empty({s.B, s.H, s.N, s.r}, q.options()) : at::empty({0}, q.options());
  if (gz.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "karat_bwd_cpu", [&] {
      bwd_impl<scalar_t>(gz.const_data_ptr<scalar_t>(), q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
                         C.const_data_ptr<scalar_t>(), gq.mutable_data_ptr<scalar_t>(), gk.mutable_data_ptr<scalar_t>(),
                         gC_part.mutable_data_ptr<scalar_t>(), recompute_z ? z.mutable_data_ptr<scalar_t>() : nullptr,
                         s, static_cast<scalar_t>(scale));
    });
  }
  auto [ga, gb] = karat::unpack_coef(gC_part.view({s.B, s.H, s.r, s.L()}).sum(0), s, a, b);
  return {gq.to(q_in.scalar_type()), gk.to(k_in.scalar_type()), ga, gb, z.to(q_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CPU, m) {
  m.impl("karat_fwd", &karat_fwd_cpu);
  m.impl("karat_bwd", &karat_bwd_cpu);
}

}  // namespace pyfast
