// Ghost batch norm, CUDA registration: argument checks (ghost_bn_host.h), the device guard and the current stream,
// then the torch-free launchers of ghost_bn_kernel.cu.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ghost_bn/ghost_bn_host.h"

namespace pyfast {
namespace ghost_bn {
cudaError_t ghost_bn_fwd_cuda_launch(const FwdArgs& a, DType dtype, cudaStream_t stream);
cudaError_t ghost_bn_bwd_cuda_launch(const BwdArgs& a, DType dtype, cudaStream_t stream);
}  // namespace ghost_bn

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ghost_bn_fwd_cuda(const at::Tensor& x,
                                                                             const std::optional<at::Tensor>& weight,
                                                                             const std::optional<at::Tensor>& bias,
                                                                             int64_t ghost_batch_size, double eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  return ghost_bn::ghost_bn_fwd_host(x, weight, bias, ghost_batch_size, eps,
                                     [](const ghost_bn::FwdArgs& a, ghost_bn::DType dtype) {
                                       C10_CUDA_CHECK(ghost_bn::ghost_bn_fwd_cuda_launch(
                                           a, dtype, c10::cuda::getCurrentCUDAStream()));
                                     });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ghost_bn_bwd_cuda(const at::Tensor& grad, const at::Tensor& x,
                                                                 const at::Tensor& mean, const at::Tensor& invstd,
                                                                 const std::optional<at::Tensor>& weight,
                                                                 int64_t ghost_batch_size, bool need_grad_x,
                                                                 bool need_grad_weight, bool need_grad_bias) {
  const c10::cuda::CUDAGuard guard(x.device());
  return ghost_bn::ghost_bn_bwd_host(grad, x, mean, invstd, weight, ghost_batch_size, need_grad_x, need_grad_weight,
                                     need_grad_bias, [](const ghost_bn::BwdArgs& a, ghost_bn::DType dtype) {
                                       C10_CUDA_CHECK(ghost_bn::ghost_bn_bwd_cuda_launch(
                                           a, dtype, c10::cuda::getCurrentCUDAStream()));
                                     });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CUDA, m) {
  m.impl("ghost_bn_fwd", &ghost_bn_fwd_cuda);
  m.impl("ghost_bn_bwd", &ghost_bn_bwd_cuda);
}

}  // namespace pyfast
