// Weighted convolution, CUDA registration of the density-weight op: argument checks (wconv_host.h), the device
// guard and the current stream, then the torch-free launchers of wconv_kernel.cu.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "wconv/wconv_host.h"

namespace pyfast {
namespace wconv {
cudaError_t wconv_scale_cuda_launch(const FwdArgs& a, DType dtype, cudaStream_t stream);
cudaError_t wconv_bwd_cuda_launch(const BwdArgs& a, DType dtype, cudaStream_t stream);
}  // namespace wconv

namespace {

void scale_cuda(const wconv::FwdArgs& a, wconv::DType dtype) {
  C10_CUDA_CHECK(wconv::wconv_scale_cuda_launch(a, dtype, c10::cuda::getCurrentCUDAStream()));
}

at::Tensor wconv_weight_fwd_cuda(const at::Tensor& weight, const at::Tensor& den) {
  const c10::cuda::CUDAGuard guard(weight.device());
  return wconv::wconv_weight_fwd_host(weight, den, scale_cuda);
}

std::tuple<at::Tensor, at::Tensor> wconv_weight_bwd_cuda(const at::Tensor& grad, const std::optional<at::Tensor>& weight,
                                                         const at::Tensor& den, bool need_grad_weight,
                                                         bool need_grad_den) {
  const c10::cuda::CUDAGuard guard(grad.device());
  return wconv::wconv_weight_bwd_host(grad, weight, den, need_grad_weight, need_grad_den, scale_cuda,
                                      [](const wconv::BwdArgs& a, wconv::DType dtype) {
                                        C10_CUDA_CHECK(wconv::wconv_bwd_cuda_launch(
                                            a, dtype, c10::cuda::getCurrentCUDAStream()));
                                      });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CUDA, m) {
  m.impl("wconv_weight_fwd", &wconv_weight_fwd_cuda);
  m.impl("wconv_weight_bwd", &wconv_weight_bwd_cuda);
}

}  // namespace pyfast
