// Multi-sample dropout head, CUDA registration: the host code of msdrop_host.h (checks, cuBLAS GEMMs through ATen)
// with the torch-free launchers of msdrop_kernel.cu, under the device guard and on the current stream.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "msdrop/msdrop_host.h"

namespace pyfast {
namespace msdrop {
cudaError_t msdrop_make_x_cuda(const MaskArgs& a, DType dt, cudaStream_t st);
cudaError_t msdrop_masked_sum_cuda(const MaskArgs& a, DType dt, cudaStream_t st);
cudaError_t msdrop_ce_cuda(const CeArgs& a, DType dt, cudaStream_t st);
cudaError_t msdrop_grad_cuda(const GradArgs& a, DType dt, cudaStream_t st);
}  // namespace msdrop

namespace {

struct CudaKernels {
  void make_x(const msdrop::MaskArgs& a, msdrop::DType dt) const {
    C10_CUDA_CHECK(msdrop::msdrop_make_x_cuda(a, dt, c10::cuda::getCurrentCUDAStream()));
  }
  void masked_sum(const msdrop::MaskArgs& a, msdrop::DType dt) const {
    C10_CUDA_CHECK(msdrop::msdrop_masked_sum_cuda(a, dt, c10::cuda::getCurrentCUDAStream()));
  }
  void ce(const msdrop::CeArgs& a, msdrop::DType dt) const {
    C10_CUDA_CHECK(msdrop::msdrop_ce_cuda(a, dt, c10::cuda::getCurrentCUDAStream()));
  }
  void grad(const msdrop::GradArgs& a, msdrop::DType dt) const {
    C10_CUDA_CHECK(msdrop::msdrop_grad_cuda(a, dt, c10::cuda::getCurrentCUDAStream()));
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> msdrop_fwd_cuda(const at::Tensor& h, const at::Tensor& weight,
                                                               const std::optional<at::Tensor>& bias,
                                                               const at::Tensor& target, const at::Tensor& seed,
                                                               int64_t num_samples, double p) {
  const c10::cuda::CUDAGuard guard(h.device());
  return msdrop::msdrop_fwd_host(h, weight, bias, target, seed, num_samples, p, CudaKernels{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> msdrop_bwd_cuda(const at::Tensor& grad_loss, const at::Tensor& logits,
                                                               const at::Tensor& lse, const at::Tensor& h,
                                                               const at::Tensor& weight, const at::Tensor& target,
                                                               const at::Tensor& seed, int64_t num_samples, double p,
                                                               bool need_grad_h, bool need_grad_weight,
                                                               bool need_grad_bias) {
  const c10::cuda::CUDAGuard guard(h.device());
  return msdrop::msdrop_bwd_host(grad_loss, logits, lse, h, weight, target, seed, num_samples, p, need_grad_h,
                                 need_grad_weight, need_grad_bias, CudaKernels{});
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CUDA, m) {
  m.impl("msdrop_fwd", &msdrop_fwd_cuda);
  m.impl("msdrop_bwd", &msdrop_bwd_cuda);
}

}  // namespace pyfast
