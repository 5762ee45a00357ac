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
// faster tiles on this AMD EPYC), chosen at run time.
#define PYFAST_CLONE_LOOPS "karat/karat_cpu_kernels.inc"
#define PYFAST_CLONE_AVX512
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
void grad_scores(const A* bas, const A* E, int64_t rows, int64_t N, int G, A scale, A* gS) {
#ifdef PYFAST_X86_CLONES
  if (cpu::isa() == cpu::Isa::Avx512) return avx512::grad_scores_rows<A>(bas, E, rows, N, G, scale, gS);
  if (cpu::isa() == cpu::Isa::Avx2) return avx2::grad_scores_rows<A>(bas, E, rows, N, G, scale, gS);
#endif
  baseline::grad_scores_rows<A>(bas, E, rows, N, G, scale, gS);
}

// The attention tail's small products (karat_cpu_kernels.inc), by the same ISA choice.
#ifdef PYFAST_X86_CLONES
#define PYFAST_KARAT_TAIL_DISPATCH(fn)                                                 \
  template <class A>                                                                   \
  void fn(const A* X, const A* Z, int64_t n, int64_t m, int64_t D, A* Y) {             \
    if (cpu::isa() == cpu::Isa::Avx512) return avx512::fn<A>(X, Z, n, m, D, Y);        \
    if (cpu::isa() == cpu::Isa::Avx2) return avx2::fn<A>(X, Z, n, m, D, Y);            \
    baseline::fn<A>(X, Z, n, m, D, Y);                                                 \
  }
#else
#define PYFAST_KARAT_TAIL_DISPATCH(fn)                                                 \
  template <class A>                                                                   \
  void fn(const A* X, const A* Z, int64_t n, int64_t m, int64_t D, A* Y) {             \
    baseline::fn<A>(X, Z, n, m, D, Y);                                                 \
  }
#endif
PYFAST_KARAT_TAIL_DISPATCH(tail_xt_z)
PYFAST_KARAT_TAIL_DISPATCH(tail_x_z)
PYFAST_KARAT_TAIL_DISPATCH(tail_x_zt)
#undef PYFAST_KARAT_TAIL_DISPATCH

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

// The attention tail of pyfast::karat_attention, per (batch x head): out = (z + c0) U with U = W_h^T V [r, D], so the
// N x N attention matrix sigma = (z + c0) W^T is never formed (maths in csrc/karat/karat_attention.cpp). Absent
// (nullptr) for the bare basis ops.
template <class A>
struct Tail {
  const A* v;   // [B*H, N, D]
  const A* W;   // [H, N, r]
  const A* c0;  // [H, r]: the constant (m = 0) term sum_q a[h, p, q, 0], or null without one
  // backward only:
  const A* grad_out;  // [B*H, N, D]
  A* gv;              // [B*H, N, D]
  A* gW_part;         // [B*H, N, r], summed over the batch by the caller
  A* gc0_part;        // [B*H, r]: sum_k g_z[k, p] (null without a constant term)

  const A* W_h(const karat::Shape& s, int64_t bh) const { return W + (bh % s.H) * s.N * s.r; }
  const A* v_bh(const karat::Shape& s, int64_t bh) const { return v + bh * s.N * s.D; }

  // z_t [rows, r] += c0_h, when there is a constant term.
  void add_constant_term(const karat::Shape& s, int64_t bh, int64_t rows, A* z_t) const {
    if (c0 == nullptr) return;
    const A* c = c0 + (bh % s.H) * s.r;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t p = 0; p < s.r; ++p) z_t[i * s.r + p] += c[p];
  }
};

// From q, k [B*H, N, D] and C [H, r, L], all contiguous in A: z [B*H, N, r], or with a tail the attention's out
// [B*H, N, D] (z then lives in the thread's tile buffer only).
template <class A>
void fwd_impl(const A* q, const A* k, const A* C, A* result, const karat::Shape& s, A scale, const Tail<A>* tail) {
  const int64_t L = s.L();
  const auto [tiles, tile_rows] = row_tiling(s.N, L, sizeof(A));
  parallel_items(
      s.B * s.H * tiles,
      [&] {
        return std::array<std::vector<A>, 5>{std::vector<A>(tile_rows * s.N), std::vector<A>(tile_rows * L),
                                             std::vector<A>(tile_rows * s.r),
                                             std::vector<A>(tail ? tile_rows * s.r : 0),
                                             std::vector<A>(tail ? s.r * s.D : 0)};
      },
      [&](int64_t w, std::array<std::vector<A>, 5>& ws) {
      const int64_t bh = w / tiles, r0 = (w % tiles) * tile_rows, rows = std::min(tile_rows, s.N - r0);
      A *S_t = ws[0].data(), *bas_t = ws[1].data();
      gemm<A>(false, true, rows, s.N, s.D, q + (bh * s.N + r0) * s.D, s.D, k + bh * s.N * s.D, s.D, 0, S_t, s.N);
      basis<A>(S_t, rows, s.N, s.G, scale, bas_t);
      A* z_t = tail ? ws[3].data() : result + (bh * s.N + r0) * s.r;
      contract_tile<A>(bas_t, C + (bh % s.H) * s.r * L, rows, s.r, L, ws[2].data(), z_t);
      if (tail) {
        tail->add_constant_term(s, bh, rows, z_t);
        A* U = ws[4].data();
        tail_xt_z<A>(tail->W_h(s, bh), tail->v_bh(s, bh), s.N, s.r, s.D, U);  // U = W_h^T V
        tail_x_z<A>(z_t, U, rows, s.r, s.D, result + (bh * s.N + r0) * s.D);  // out = z U
      }
      });
}

// g_q, g_k [B*H, N, D] and the coefficient partials gC_part [B*H, r, L] from grad_z [B*H, N, r], and z [B*H, N, r]
// again when z_out is not null; every output element is written (the outputs need no zeroing: a fresh zero fill of
// these megabytes cost more than the N = 65 arithmetic). With a tail, g_z = grad_out U^T and z are the thread's
// buffers instead (grad_z and z_out unused), and after the tiles g_U = (z + c0)^T grad_out gives g_V = W_h g_U and
// g_W = V g_U^T.
template <class A>
void bwd_impl(const A* gz, const A* q, const A* k, const A* C, A* gq, A* gk, A* gC_part, A* z_out,
              const karat::Shape& s, A scale, const Tail<A>* tail) {
  const int64_t L = s.L();
  const auto [tiles, tile_rows] = row_tiling(s.N, L, sizeof(A));
  const bool any_z = z_out != nullptr || tail != nullptr;
  parallel_items(
      s.B * s.H,
      [&] {
        return std::array<std::vector<A>, 8>{
            std::vector<A>(tile_rows * s.N), std::vector<A>(tile_rows * L), std::vector<A>(tile_rows * L),
            std::vector<A>(tile_rows * s.N), std::vector<A>(any_z ? tile_rows * s.r : 0),
            std::vector<A>(tail ? s.N * s.r : 0), std::vector<A>(tail ? s.N * s.r : 0),
            std::vector<A>(tail ? s.r * s.D : 0)};
      },
      [&](int64_t bh, std::array<std::vector<A>, 8>& ws) {
      A *S = ws[0].data(), *bas = ws[1].data(), *E = ws[2].data(), *gS = ws[3].data();
      const A* K = k + bh * s.N * s.D;
      const A* C_h = C + (bh % s.H) * s.r * L;
      A* gK = gk + bh * s.N * s.D;
      A* gC = gC_part + bh * s.r * L;
      const A* gz_bh = tail ? ws[5].data() : gz + bh * s.N * s.r;
      A* z_bh = tail ? ws[6].data() : z_out != nullptr ? z_out + bh * s.N * s.r : nullptr;
      A* U = ws[7].data();
      const A* grad_out = tail ? tail->grad_out + bh * s.N * s.D : nullptr;
      if (tail) {
        tail_xt_z<A>(tail->W_h(s, bh), tail->v_bh(s, bh), s.N, s.r, s.D, U);  // U = W_h^T V
        tail_x_zt<A>(grad_out, U, s.N, s.r, s.D, ws[5].data());               // g_z = grad_out U^T
      }
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t r0 = t * tile_rows, rows = std::min(tile_rows, s.N - r0);
        const A beta = t == 0 ? A(0) : A(1);  // the first tile initialises the per-(batch x head) sums
        const A* Q_t = q + (bh * s.N + r0) * s.D;
        const A* gz_t = gz_bh + r0 * s.r;
        gemm<A>(false, true, rows, s.N, s.D, Q_t, s.D, K, s.D, 0, S, s.N);
        basis<A>(S, rows, s.N, s.G, scale, bas);
        if (z_bh != nullptr) contract_tile<A>(bas, C_h, rows, s.r, L, ws[4].data(), z_bh + r0 * s.r);
        gemm<A>(false, false, rows, L, s.r, gz_t, s.r, C_h, L, 0, E, L);
        gemm<A>(true, false, s.r, L, rows, gz_t, s.r, bas, L, beta, gC, L);
        grad_scores<A>(bas, E, rows, s.N, s.G, scale, gS);
        gemm<A>(false, false, rows, s.D, s.N, gS, s.N, K, s.D, 0, gq + (bh * s.N + r0) * s.D, s.D);
        gemm<A>(true, false, s.N, s.D, rows, gS, s.N, Q_t, s.D, beta, gK, s.D);
      }
      if (tail) {
        tail->add_constant_term(s, bh, s.N, z_bh);
        if (tail->gc0_part != nullptr) {
          A* gc0 = tail->gc0_part + bh * s.r;
          for (int64_t p = 0; p < s.r; ++p) gc0[p] = A(0);
          for (int64_t i = 0; i < s.N; ++i)
            for (int64_t p = 0; p < s.r; ++p) gc0[p] += gz_bh[i * s.r + p];
        }
        A* gU = U;  // U is not needed any more
        tail_xt_z<A>(z_bh, grad_out, s.N, s.r, s.D, gU);                                 // g_U = z^T grad_out
        tail_x_z<A>(tail->W_h(s, bh), gU, s.N, s.r, s.D, tail->gv + bh * s.N * s.D);     // g_V = W_h g_U
        tail_x_zt<A>(tail->v_bh(s, bh), gU, s.N, s.r, s.D, tail->gW_part + bh * s.N * s.r);  // g_W = V g_U^T
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
                         z.mutable_data_ptr<scalar_t>(), s, static_cast<scalar_t>(scale), nullptr);
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
                         s, static_cast<scalar_t>(scale), nullptr);
    });
  }
  const at::Tensor gC = gC_part.view({s.B, s.H, s.r, s.L()}).sum(0);
  auto [ga, gb] = karat::unpack_coef(gC, s, a.scalar_type());
  return {gq.to(q_in.scalar_type()), gk.to(k_in.scalar_type()), ga, gb.to(b.scalar_type()), z.to(q_in.scalar_type())};
}

// pyfast::karat_attention on the CPU: the basis contraction and the tail out = (z + c0) (W^T V) in one pass per tile,
// z never leaving the thread's buffers (the CUDA kernel is the ATen composition of karat_attention.cpp).
at::Tensor karat_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                               const at::Tensor& a, const at::Tensor& b, const at::Tensor& W_in, double scale,
                               bool constant_term) {
  const karat::Shape s = karat::check_attention_inputs(q_in, k_in, v_in, a, b, W_in, constant_term);
  const karat::AttentionOperands ops(q_in, k_in, v_in, a, b, W_in, constant_term);
  at::Tensor out = at::empty({s.B, s.H, s.N, s.D}, ops.q.options());
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ops.q.scalar_type(), "karat_attention_cpu", [&] {
      const Tail<scalar_t> tail{ops.v.const_data_ptr<scalar_t>(), ops.W.const_data_ptr<scalar_t>(),
                                constant_term ? ops.c0.const_data_ptr<scalar_t>() : nullptr, nullptr, nullptr,
                                nullptr, nullptr};
      fwd_impl<scalar_t>(ops.q.const_data_ptr<scalar_t>(), ops.k.const_data_ptr<scalar_t>(),
                         ops.C.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), s,
                         static_cast<scalar_t>(scale), &tail);
    });
  }
  return out.to(q_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> karat_attention_bwd_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& W_in, double scale, bool constant_term) {
  const karat::Shape s = karat::check_attention_inputs(q_in, k_in, v_in, a, b, W_in, constant_term);
  karat::check_grad_out(grad_out_in, q_in);
  const karat::AttentionOperands ops(q_in, k_in, v_in, a, b, W_in, constant_term);
  const at::Tensor grad_out = grad_out_in.to(ops.q.scalar_type()).contiguous();
  at::Tensor gq = at::empty_like(ops.q), gk = at::empty_like(ops.k), gv = at::empty_like(ops.v);
  at::Tensor gC_part = at::empty({s.B * s.H, s.r, s.L()}, ops.q.options());
  at::Tensor gW_part = at::empty({s.B * s.H, s.N, s.r}, ops.q.options());
  at::Tensor gc0_part = at::empty({constant_term ? s.B * s.H : 0, s.r}, ops.q.options());
  if (gq.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(ops.q.scalar_type(), "karat_attention_bwd_cpu", [&] {
      const Tail<scalar_t> tail{ops.v.const_data_ptr<scalar_t>(),
                                ops.W.const_data_ptr<scalar_t>(),
                                constant_term ? ops.c0.const_data_ptr<scalar_t>() : nullptr,
                                grad_out.const_data_ptr<scalar_t>(),
                                gv.mutable_data_ptr<scalar_t>(),
                                gW_part.mutable_data_ptr<scalar_t>(),
                                constant_term ? gc0_part.mutable_data_ptr<scalar_t>() : nullptr};
      bwd_impl<scalar_t>(nullptr, ops.q.const_data_ptr<scalar_t>(), ops.k.const_data_ptr<scalar_t>(),
                         ops.C.const_data_ptr<scalar_t>(), gq.mutable_data_ptr<scalar_t>(),
                         gk.mutable_data_ptr<scalar_t>(), gC_part.mutable_data_ptr<scalar_t>(), nullptr, s,
                         static_cast<scalar_t>(scale), &tail);
    });
  }
  auto [g_a_h, g_b_h] = karat::unpack_coef(gC_part.view({s.B, s.H, s.r, s.L()}).sum(0), s, a.scalar_type());
  auto [g_a, g_b] = karat::with_constant_term_grads(
      g_a_h, g_b_h.to(b.scalar_type()), constant_term ? gc0_part.view({s.B, s.H, s.r}).sum(0) : at::Tensor(), s, a, b);
  return {gq.to(q_in.scalar_type()), gk.to(k_in.scalar_type()), gv.to(v_in.scalar_type()), g_a, g_b,
          gW_part.view({s.B, s.H, s.N, s.r}).sum(0).to(W_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CPU, m) {
  m.impl("karat_fwd", &karat_fwd_cpu);
  m.impl("karat_bwd", &karat_bwd_cpu);
  m.impl("karat_attention", &karat_attention_cpu);
  m.impl("karat_attention_bwd", &karat_attention_bwd_cpu);
}

}  // namespace pyfast
