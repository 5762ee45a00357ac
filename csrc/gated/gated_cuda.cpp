// Gated attention, CUDA registration: argument checks and the ATen GEMMs (gated_host.h, cuBLAS on the current
// stream), the device guard, then the torch-free launchers of gated_kernel.cu on the current stream.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "gated/gated_host.h"

namespace pyfast {
namespace gated {
cudaError_t gated_core_cuda_launch(int pass, const CoreArgs& a, DType dtype, cudaStream_t stream);
cudaError_t gated_route_cuda_launch(const RouteArgs& r, DType dtype, cudaStream_t stream);
cudaError_t gated_comp_cuda_launch(const CompArgs& c, DType dtype, cudaStream_t stream);
}  // namespace gated

namespace {

auto core_cuda(int pass) {
  return [pass](const gated::CoreArgs& a, gated::DType dtype) {
    C10_CUDA_CHECK(gated::gated_core_cuda_launch(pass, a, dtype, c10::cuda::getCurrentCUDAStream()));
  };
}

std::tuple<at::Tensor, at::Tensor> gated_cattn_fwd_cuda(const at::Tensor& x, const at::Tensor& gate,
                                                        const at::Tensor& wq, const std::optional<at::Tensor>& bq,
                                                        const at::Tensor& wk, const at::Tensor& wv,
                                                        const std::optional<at::Tensor>& bv, const at::Tensor& wp,
                                                        const std::optional<at::Tensor>& bp, int64_t num_heads) {
  const c10::cuda::CUDAGuard guard(x.device());
  return gated::cattn_fwd_host(x, gate, wq, bq, wk, wv, bv, wp, bp, num_heads, core_cuda(0));
}

std::vector<at::Tensor> gated_cattn_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& gate,
                                             const at::Tensor& wq, const std::optional<at::Tensor>& bq,
                                             const at::Tensor& wk, const at::Tensor& wv,
                                             const std::optional<at::Tensor>& bv, const at::Tensor& wp,
                                             const std::optional<at::Tensor>& bp, const at::Tensor& attn,
                                             int64_t num_heads) {
  const c10::cuda::CUDAGuard guard(x.device());
  return gated::cattn_bwd_host(grad_out, x, gate, wq, bq, wk, wv, bv, wp, bp, attn, num_heads, core_cuda(1),
                               core_cuda(2));
}

void gated_route_cuda(at::TensorList grads, at::TensorList masks_out, at::TensorList masks_in,
                      at::TensorList emb_grads, at::TensorList embs, double s, double s_max, double clamp) {
  if (!grads.empty() || !emb_grads.empty()) {
    const c10::cuda::CUDAGuard guard(grads.empty() ? emb_grads[0].device() : grads[0].device());
    gated::route_host(
        grads, masks_out, masks_in, emb_grads, embs, s, s_max, clamp,
        [](const gated::RouteArgs& r, gated::DType dtype) {
          C10_CUDA_CHECK(gated::gated_route_cuda_launch(r, dtype, c10::cuda::getCurrentCUDAStream()));
        },
        [](const gated::CompArgs& c, gated::DType dtype) {
          C10_CUDA_CHECK(gated::gated_comp_cuda_launch(c, dtype, c10::cuda::getCurrentCUDAStream()));
        });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CUDA, m) {
  m.impl("gated_cattn_fwd", &gated_cattn_fwd_cuda);
  m.impl("gated_cattn_bwd", &gated_cattn_bwd_cuda);
  m.impl("gated_route", &gated_route_cuda);
}

}  // namespace pyfast
