// CRReLU, CUDA registration: argument checks (crrelu_host.h), the device guard and the current stream, then the
// torch-free launchers of crrelu_kernel.cu.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "crrelu/crrelu_host.h"

namespace pyfast {
namespace crrelu {
cudaError_t crrelu_fwd_cuda_launch(const FwdArgs& a, DType dtype, cudaStream_t stream);
cudaError_t crrelu_bwd_cuda_launch(const BwdArgs& a, DType dtype, cudaStream_t stream);
}  // namespace crrelu

namespace {

at::Tensor crrelu_fwd_cuda(const at::Tensor& x, const at::Tensor& eps, int64_t dim) {
  const c10::cuda::CUDAGuard guard(x.device());
  return crrelu::crrelu_fwd_host(x, eps, dim, [](const crrelu::FwdArgs& a, crrelu::DType dtype) {
    C10_CUDA_CHECK(crrelu::crrelu_fwd_cuda_launch(a, dtype, c10::cuda::getCurrentCUDAStream()));
  });
}

std::tuple<at::Tensor, at::Tensor> crrelu_bwd_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& eps,
                                                   int64_t dim, bool need_grad_x, bool need_grad_eps) {
  const c10::cuda::CUDAGuard guard(x.device());
  return crrelu::crrelu_bwd_host(grad, x, eps, dim, need_grad_x, need_grad_eps,
                                 [](const crrelu::BwdArgs& a, crrelu::DType dtype) {
                                   C10_CUDA_CHECK(
                                       crrelu::crrelu_bwd_cuda_launch(a, dtype, c10::cuda::getCurrentCUDAStream()));
                                 });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CUDA, m) {
  m.impl("crrelu_fwd", &crrelu_fwd_cuda);
  m.impl("crrelu_bwd", &crrelu_bwd_cuda);
}

}  // namespace pyfast
