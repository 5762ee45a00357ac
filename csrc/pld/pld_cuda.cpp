// PLD, CUDA registration: argument checks (pld_host.h) plus the shared-memory limit C <= 1024 of the kernel's sort,
// the device guard and the current stream, then the torch-free launchers of pld_kernel.cu.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "pld/pld_host.h"

namespace pyfast {
namespace pld {
cudaError_t pld_fwd_cuda_launch(const FwdArgs& a, DType dtype, cudaStream_t stream);
cudaError_t pld_bwd_cuda_launch(const BwdArgs& a, DType dtype, cudaStream_t stream);
}  // namespace pld

namespace {

void check_classes(const at::Tensor& student) {
  TORCH_CHECK_VALUE(student.dim() != 2 || student.size(1) <= pld::kCudaMaxClasses,
                    "pld: the CUDA kernel sorts rows of at most ", pld::kCudaMaxClasses,
                    " classes in shared memory, got C = ", student.size(1),
                    "; use backend='triton' or backend='reference' (pyfast.losses.pld_loss with backend='auto' does)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pld_fwd_cuda(const at::Tensor& student, const at::Tensor& teacher,
                                                            const at::Tensor& labels, double tau_t) {
  check_classes(student);
  const c10::cuda::CUDAGuard guard(student.device());
  return pld::pld_fwd_host(student, teacher, labels, tau_t, [](const pld::FwdArgs& a, pld::DType dtype) {
    C10_CUDA_CHECK(pld::pld_fwd_cuda_launch(a, dtype, c10::cuda::getCurrentCUDAStream()));
  });
}

std::tuple<at::Tensor, at::Tensor> pld_bwd_cuda(const at::Tensor& grad_loss, const at::Tensor& student,
                                                const at::Tensor& teacher, const at::Tensor& perm,
                                                const at::Tensor& teacher_lse, double tau_t, bool need_grad_student,
                                                bool need_grad_teacher) {
  check_classes(student);
  const c10::cuda::CUDAGuard guard(student.device());
  return pld::pld_bwd_host(grad_loss, student, teacher, perm, teacher_lse, tau_t, need_grad_student,
                           need_grad_teacher, [](const pld::BwdArgs& a, pld::DType dtype) {
                             C10_CUDA_CHECK(pld::pld_bwd_cuda_launch(a, dtype, c10::cuda::getCurrentCUDAStream()));
                           });
}

}  // namespace

TORCH_LIBRARY_IMPL(pyfast, CUDA, m) {
  m.impl("pld_fwd", &pld_fwd_cuda);
  m.impl("pld_bwd", &pld_bwd_cuda);
}

}  // namespace pyfast
