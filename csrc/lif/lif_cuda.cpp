// LIF / IF neuron, CUDA registration: argument checks (lif_host.h), the current stream and device guard, then the
// torch-free launchers of lif_kernel.cu.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "lif/lif_host.h"
#include "lif/lif_launch.h"

namespace pyfast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_fwd_cuda(const at::Tensor& x, const std::optional<at::Tensor>& v0,
                                                            const at::Tensor& k, const at::Tensor& v_th,
                                                            std::optional<double> v_reset, bool decay_input,
                                                            c10::string_view surrogate, double alpha,
                                                            bool detach_reset, bool store_h) {
  const c10::cuda::CUDAGuard guard(x.device());
  return lif::lif_fwd_host(x, v0, k, v_th, v_reset, decay_input, surrogate, alpha, detach_reset, store_h,
                           [&](const lif::FwdArgs& a, lif::DType dtype) {
                             C10_CUDA_CHECK(lif::lif_fwd_cuda_launch(a, dtype, c10::cuda::getCurrentCUDAStream()));
                           });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_bwd_cuda(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last, const at::Tensor& h_seq,
    const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& v0, const at::Tensor& k,
    const at::Tensor& v_th, std::optional<double> v_reset, bool decay_input, c10::string_view surrogate, double alpha,
    bool detach_reset, bool need_grad_k, bool need_grad_v_th) {
  const c10::cuda::CUDAGuard guard(h_seq.device());
  return lif::lif_bwd_host(grad_spikes, grad_v_last, h_seq, x, v0, k, v_th, v_reset, decay_input, surrogate, alpha,
                           detach_reset, need_grad_k, need_grad_v_th, [&](const lif::BwdArgs& a, lif::DType dtype) {
                             C10_CUDA_CHECK(lif::lif_bwd_cuda_launch(a, dtype, c10::cuda::getCurrentCUDAStream()));
                           });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CUDA, m) {
  m.impl("lif_fwd", &lif_fwd_cuda);
  m.impl("lif_bwd", &lif_bwd_cuda);
}

}  // namespace pyfast
