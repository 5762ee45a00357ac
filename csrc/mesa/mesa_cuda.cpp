// Mesa quantize / dequantize, CUDA registration: argument checks (mesa_host.h), the current stream and device guard,
// a small buffer for the per-chunk min / max partials, then the torch-free launchers of mesa_kernel.cu.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "mesa/mesa_host.h"

namespace pyfast {
namespace mesa {
int64_t quantize_cuda_partials(const QuantArgs& a);
cudaError_t quantize_cuda_launch(const QuantArgs& a, DType dtype, float* partials, cudaStream_t stream);
cudaError_t dequantize_cuda_launch(const DequantArgs& a, DType dtype, cudaStream_t stream);
}  // namespace mesa

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> mesa_quantize_cuda(const at::Tensor& x, const at::Tensor& clip_val,
                                                                  const at::Tensor& shift,
                                                                  const at::Tensor& initialized,
                                                                  const at::Tensor& seed, int64_t dim, int64_t levels,
                                                                  double ema_decay, bool update, bool stochastic) {
  const c10::cuda::CUDAGuard guard(x.device());
  return mesa::quantize_host(x, clip_val, shift, initialized, seed, dim, levels, ema_decay, update, stochastic,
                             [&](const mesa::QuantArgs& a, mesa::DType dtype) {
                               // [2, G, chunks] float32: G x (size / 4096) floats, not a full-size temporary.
                               at::Tensor partials =
                                   at::empty({mesa::quantize_cuda_partials(a)}, x.options().dtype(at::kFloat));
                               C10_CUDA_CHECK(mesa::quantize_cuda_launch(a, dtype, partials.mutable_data_ptr<float>(),
                                                                         c10::cuda::getCurrentCUDAStream()));
                             });
}

at::Tensor mesa_dequantize_cuda(const at::Tensor& q, const at::Tensor& clip_val, const at::Tensor& shift, int64_t dim,
                                int64_t levels, c10::ScalarType dtype) {
  const c10::cuda::CUDAGuard guard(q.device());
  return mesa::dequantize_host(q, clip_val, shift, dim, levels, dtype,
                               [&](const mesa::DequantArgs& a, mesa::DType dt) {
                                 C10_CUDA_CHECK(
                                     mesa::dequantize_cuda_launch(a, dt, c10::cuda::getCurrentCUDAStream()));
                               });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CUDA, m) {
  m.impl("mesa_quantize", &mesa_quantize_cuda);
  m.impl("mesa_dequantize", &mesa_dequantize_cuda);
}

}  // namespace pyfast
