// Fourier-KArAt, CUDA registration of the basis contraction: checks (karat_host.h), the device guard and the current
// stream. Two paths. The fused one (use_fused: float arithmetic, small r and G) is the raw scores Q K^T from cuBLAS
// ([B*H, N, N], no harmonics; under torch's float32 matmul precision, so TF32 only where the user allowed it, as for
// any torch matmul), then one kernel forward and two backward (karat_fused.h: a thread per score row or column,
// nothing of size N x N x G anywhere), then the two GEMMs g_q = gS K, g_k = gS^T Q. Otherwise the rows are processed
// in tiles over every (batch x head) at once: the tile's scores Q_t K^T and its GEMMs with the packed coefficients
// are cuBLAS batched GEMMs, the basis and score-gradient tiles come from the torch-free kernels of karat_kernel.cu.
// The tile height keeps the basis tile under kTileBytes, so the workspace never holds the whole B*H*N*N*2G basis (and
// none of it is kept for backward, which regenerates it from q and k).
#include <ATen/ops/bmm.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "karat/karat_fused.h"
#include "karat/karat_host.h"
#include "karat/karat_launch.h"

namespace pyfast {
namespace {

constexpr int64_t kTileBytes = int64_t{64} << 20;

int64_t tile_rows(const karat::Shape& s, int64_t elem) {
  const int64_t per_row = std::max<int64_t>(1, s.B * s.H * s.L() * elem);
  return std::clamp<int64_t>(kTileBytes / per_row, 1, s.N);
}

karat::DType acc_dtype(at::ScalarType acc) { return acc == at::kDouble ? karat::DType::Float64 : karat::DType::Float32; }

// The fused kernels (karat_fused.h) serve float arithmetic (float32 and half inputs) with r and G within what their
// threads hold in registers, and score buffers [B*H, N, N] of at most 4 kTileBytes each; anything else (float64
// among it) takes the tiled path below.
bool use_fused(const karat::Shape& s, at::ScalarType acc) {
  return acc == at::kFloat && s.r <= karat::fused::kMaxR && s.G <= karat::fused::kMaxG &&
         s.B * s.H * s.N * s.N * static_cast<int64_t>(sizeof(float)) <= 4 * kTileBytes;
}

// x [..., r] float as the fused kernels read it: contiguous rows padded with zeros to R4 = padded_rank(r) floats,
// 16-byte aligned (a contiguous x serves as it is when r is a multiple of 4 and its data is aligned).
at::Tensor vector_rows(const at::Tensor& x, int64_t r) {
  const int64_t R4 = karat::fused::padded_rank(r);
  const at::Tensor c = (R4 != r ? at::constant_pad_nd(x, {0, R4 - r}) : x).contiguous();
  return reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 16 == 0 ? c : c.clone();
}

// The fused kernels' coefficients, key-major and float (karat_fused.h): Ck [H, N, 2 G, R4],
// Ck[h, q, t G + m - 1, p] = (t ? b : a)[h, p, q, m - 1].
at::Tensor pack_coef_keys(const at::Tensor& a, const at::Tensor& b) {
  // One copy: stack writes its output contiguous, whatever its inputs' strides.
  const at::Tensor keys = at::stack({a.permute({0, 2, 3, 1}), b.permute({0, 2, 3, 1})}, 2).to(at::kFloat);
  return vector_rows(keys, a.size(1)).view({a.size(0), a.size(2), 2 * a.size(3), -1});  // [H, N, 2, G, R4]
}

// (g_a, g_b) [H, r, N, G] in a's and b's dtypes from the fused coefficient-gradient partials [P, 2, H, r, N, G]
// (karat_fused.h): each half summed over P straight into its own output (an op's outputs must not share memory).
std::tuple<at::Tensor, at::Tensor> sum_coef_parts(const at::Tensor& gC_part, const at::Tensor& a, const at::Tensor& b) {
  const auto half_sum = [&](int64_t t, const at::Tensor& like) {
    at::Tensor g = at::empty(gC_part.sizes().slice(2), gC_part.options());
    // IntArrayRef spelled out: a braced list is ambiguous with the DimnameList overload in some torch versions (2.11).
    at::sum_out(g, gC_part.select(1, t), at::IntArrayRef{0});
    return g.to(like.scalar_type());
  };
  return {half_sum(0, a), half_sum(1, b)};
}

at::Tensor karat_fwd_cuda(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& a, const at::Tensor& b,
                          double scale) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  const karat::Shape s = karat::check_inputs(q_in, k_in, a, b);
  const auto acc = acc_type(q_in.scalar_type());
  const int64_t BH = s.B * s.H, L = s.L();
  const at::Tensor q = q_in.to(acc).contiguous().view({BH, s.N, s.D});
  const at::Tensor k = k_in.to(acc).contiguous().view({BH, s.N, s.D});
  if (BH == 0) return at::empty({s.B, s.H, s.N, s.r}, q_in.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (use_fused(s, acc)) {
    const at::Tensor Ck = pack_coef_keys(a, b);
    const at::Tensor ST = at::bmm(k, q.transpose(1, 2));  // [BH, N, N], ST[bh, q, k] = <K[q], Q[k]>
    const int64_t parts = karat::fused::parts_for(s.B * s.H * s.N, s.N);
    const at::Tensor z_part = at::empty({parts, s.B, s.H, s.N, s.r}, q.options());
    C10_CUDA_CHECK(karat::karat_fused_fwd_launch(ST.const_data_ptr<float>(), Ck.const_data_ptr<float>(),
                                                 z_part.mutable_data_ptr<float>(), BH, s.N, s.r, s.G, s.H, scale,
                                                 parts, stream));
    return z_part.sum(0).to(q_in.scalar_type());
  }
  const at::Tensor kT = k.transpose(1, 2);
  const at::Tensor CT = karat::pack_coef(a, b, acc).transpose(1, 2);  // [H, L, r]
  at::Tensor z = at::empty({s.B, s.H, s.N, s.r}, q.options());
  const int64_t kt = tile_rows(s, q.element_size());
  for (int64_t r0 = 0; r0 < s.N; r0 += kt) {
    const int64_t rows = std::min(kt, s.N - r0);
    const at::Tensor S = at::bmm(q.narrow(1, r0, rows), kT);  // [BH, rows, N]
    at::Tensor bas = at::empty({s.B, s.H, rows, L}, q.options());
    C10_CUDA_CHECK(karat::karat_basis_cuda_launch(S.const_data_ptr(), bas.mutable_data_ptr(), BH * rows, s.N, s.G,
                                                  scale, acc_dtype(acc), stream));
    z.narrow(2, r0, rows).copy_(at::matmul(bas, CT));
  }
  return z.to(q_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> karat_bwd_cuda(
    const at::Tensor& grad_z, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& a, const at::Tensor& b,
    double scale, bool recompute_z) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  const karat::Shape s = karat::check_inputs(q_in, k_in, a, b);
  karat::check_grad_z(grad_z, q_in, s);
  const auto acc = acc_type(q_in.scalar_type());
  const int64_t BH = s.B * s.H, L = s.L();
  const at::Tensor q = q_in.to(acc).contiguous().view({BH, s.N, s.D});
  const at::Tensor k = k_in.to(acc).contiguous().view({BH, s.N, s.D});
  const at::Tensor gz = grad_z.to(acc).contiguous().view({s.B, s.H, s.N, s.r});
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (use_fused(s, acc) && BH > 0) {
    const int64_t parts = karat::fused::parts_for(s.B * s.H * s.N, s.N);
    const at::Tensor Ck = pack_coef_keys(a, b), gz_vec = vector_rows(gz, s.r);
    // The scores both ways round (the row kernel reads S^T, the column kernel S; see karat_fused.h), as the forward.
    const at::Tensor S = at::bmm(q, k.transpose(1, 2)), ST = at::bmm(k, q.transpose(1, 2));
    const at::Tensor gST = at::empty({BH, s.N, s.N}, q.options());  // gST[bh, q, k] = dLoss / dS[bh, k, q]
    const at::Tensor gC_part = at::empty({parts * s.B, 2, s.H, s.r, s.N, s.G}, q.options());
    const at::Tensor z_part = at::empty({recompute_z ? parts : 0, s.B, s.H, s.N, s.r}, q.options());
    C10_CUDA_CHECK(karat::karat_fused_bwd_launch(
        gz_vec.const_data_ptr<float>(), S.const_data_ptr<float>(), ST.const_data_ptr<float>(),
        Ck.const_data_ptr<float>(), gST.mutable_data_ptr<float>(),
        recompute_z ? z_part.mutable_data_ptr<float>() : nullptr,
        gC_part.mutable_data_ptr<float>(), BH, s.N, s.r, s.G, s.H, scale, parts, stream));
    auto [ga, gb] = sum_coef_parts(gC_part, a, b);
    return {at::bmm(gST.transpose(1, 2), k).view(q_in.sizes()).to(q_in.scalar_type()),  // gS K
            at::bmm(gST, q).view(k_in.sizes()).to(k_in.scalar_type()), ga, gb,  // gS^T Q
            (recompute_z ? z_part.sum(0) : z_part.new_empty({0})).to(q_in.scalar_type())};
  }
  const at::Tensor C = karat::pack_coef(a, b, acc);  // [H, r, L]
  at::Tensor gq = at::empty_like(q), gk = at::zeros_like(k), gC = at::zeros({s.H, s.r, L}, q.options());
  at::Tensor z = recompute_z ? at::empty({s.B, s.H, s.N, s.r}, q.options()) : at::empty({0}, q.options());
  const at::Tensor CT = C.transpose(1, 2);  // [H, L, r]
  const int64_t kt = tile_rows(s, q.element_size());
  for (int64_t r0 = 0; BH > 0 && r0 < s.N; r0 += kt) {
    const int64_t rows = std::min(kt, s.N - r0);
    const at::Tensor Q_t = q.narrow(1, r0, rows);
    const at::Tensor S = at::bmm(Q_t, k.transpose(1, 2));
    at::Tensor bas = at::empty({s.B, s.H, rows, L}, q.options());
    C10_CUDA_CHECK(karat::karat_basis_cuda_launch(S.const_data_ptr(), bas.mutable_data_ptr(), BH * rows, s.N, s.G,
                                                  scale, acc_dtype(acc), stream));
    if (recompute_z) z.narrow(2, r0, rows).copy_(at::matmul(bas, CT));
    const at::Tensor gz_t = gz.narrow(2, r0, rows);                // [B, H, rows, r]
    const at::Tensor E = at::matmul(gz_t, C).contiguous();          // [B, H, rows, L]
    gC.add_(at::matmul(gz_t.transpose(-1, -2), bas).sum(0));        // [H, r, L]
    at::Tensor gS = at::empty({BH, rows, s.N}, q.options());
    C10_CUDA_CHECK(karat::karat_grad_scores_cuda_launch(bas.const_data_ptr(), E.const_data_ptr(),
                                                        gS.mutable_data_ptr(), BH * rows, s.N, s.G, scale,
                                                        acc_dtype(acc), stream));
    gq.narrow(1, r0, rows).copy_(at::bmm(gS, k));
    gk.baddbmm_(gS.transpose(1, 2), Q_t);
  }
  auto [ga, gb] = karat::unpack_coef(gC, s, a, b);
  return {gq.view(q_in.sizes()).to(q_in.scalar_type()), gk.view(k_in.sizes()).to(k_in.scalar_type()), ga,
          gb, z.to(q_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CUDA, m) {
  m.impl("karat_fwd", &karat_fwd_cuda);
  m.impl("karat_bwd", &karat_bwd_cuda);
}

}  // namespace pyfast
