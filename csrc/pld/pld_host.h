// Host side of pld_fwd / pld_bwd, shared by the CPU and CUDA registrations: argument checks, output allocation and
// the call to the device's launcher. pyfast.losses.pld_loss validates first with friendlier messages; these checks
// guard direct torch.ops.pyfast.* callers.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>

#include "common/host.h"
#include "pld/pld.h"

namespace pyfast {
namespace pld {

// student / teacher: floating [B, C] of one dtype and device; tau finite > 0 (labels are checked by the caller).
inline void check_inputs(const at::Tensor& student, const at::Tensor& teacher, double tau) {
  check_floating(student, "pld", "student");
  TORCH_CHECK_VALUE(student.dim() == 2 && student.size(1) >= 1, "pld: student must be [B, C] with C >= 1, got shape ",
                    student.sizes());
  TORCH_CHECK_VALUE(student.size(1) <= std::numeric_limits<int32_t>::max(),
                    "pld: C must fit the int32 ranking, got C = ", student.size(1));
  TORCH_CHECK_VALUE(teacher.sizes() == student.sizes(), "pld: teacher must have student's shape ", student.sizes(),
                    ", got ", teacher.sizes());
  TORCH_CHECK_TYPE(teacher.scalar_type() == student.scalar_type(), "pld: teacher must have student's dtype ",
                   student.scalar_type(), ", got ", teacher.scalar_type());
  TORCH_CHECK_VALUE(teacher.device() == student.device(), "pld: teacher is on ", teacher.device(),
                    " but student is on ", student.device());
  TORCH_CHECK_VALUE(std::isfinite(tau) && tau > 0.0, "pld: tau_t must be a finite number > 0, got ", tau);
}

inline void check_row_tensor(const at::Tensor& x, const at::Tensor& student, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 1 && x.size(0) == student.size(0), "pld: ", name, " must be [B] = [", student.size(0),
                    "], got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.device() == student.device(), "pld: ", name, " is on ", x.device(), " but student is on ",
                    student.device());
}

// Returns loss [B] and teacher_lse [B] (float32; float64 for float64 inputs) and the ranking perm [B, C] (int32).
template <class Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> pld_fwd_host(const at::Tensor& student_in, const at::Tensor& teacher_in,
                                                            const at::Tensor& labels_in, double tau, Launch&& launch) {
  check_inputs(student_in, teacher_in, tau);
  check_row_tensor(labels_in, student_in, "labels");
  TORCH_CHECK_TYPE(labels_in.scalar_type() == at::kLong, "pld: labels must be int64, got ", labels_in.scalar_type());
  const at::Tensor s = student_in.contiguous();
  const at::Tensor t = teacher_in.contiguous();
  const at::Tensor y = labels_in.contiguous();
  const int64_t B = s.size(0), C = s.size(1);
  const auto acc = s.options().dtype(acc_type(s.scalar_type()));
  at::Tensor loss = at::empty({B}, acc);
  at::Tensor teacher_lse = at::empty({B}, acc);
  at::Tensor perm = at::empty({B, C}, s.options().dtype(at::kInt));
  if (B > 0)
    launch(FwdArgs{s.const_data_ptr(), t.const_data_ptr(), y.const_data_ptr<int64_t>(), loss.mutable_data_ptr(),
                   perm.mutable_data_ptr<int32_t>(), teacher_lse.mutable_data_ptr(), B, C, tau},
           dtype_of(s));
  return {loss, perm, teacher_lse};
}

// grad_student / grad_teacher in the inputs' dtype, [B, C]; shape [0] when not requested.
template <class Launch>
std::tuple<at::Tensor, at::Tensor> pld_bwd_host(const at::Tensor& grad_loss_in, const at::Tensor& student_in,
                                                const at::Tensor& teacher_in, const at::Tensor& perm_in,
                                                const at::Tensor& teacher_lse_in, double tau, bool need_grad_student,
                                                bool need_grad_teacher, Launch&& launch) {
  check_inputs(student_in, teacher_in, tau);
  check_row_tensor(grad_loss_in, student_in, "grad_loss");
  check_row_tensor(teacher_lse_in, student_in, "teacher_lse");
  TORCH_CHECK_VALUE(perm_in.sizes() == student_in.sizes() && perm_in.scalar_type() == at::kInt,
                    "pld_bwd: perm must be int32 of student's shape ", student_in.sizes(), ", got ",
                    perm_in.scalar_type(), " ", perm_in.sizes());
  TORCH_CHECK_VALUE(perm_in.device() == student_in.device(), "pld_bwd: perm is on ", perm_in.device(),
                    " but student is on ", student_in.device());
  const auto acc = acc_type(student_in.scalar_type());
  const at::Tensor s = student_in.contiguous();
  const at::Tensor t = teacher_in.contiguous();
  const at::Tensor perm = perm_in.contiguous();
  const at::Tensor g = grad_loss_in.to(acc).contiguous();
  const at::Tensor lse = teacher_lse_in.to(acc).contiguous();
  at::Tensor grad_s = need_grad_student ? at::empty(s.sizes(), s.options()) : at::empty({0}, s.options());
  at::Tensor grad_t = need_grad_teacher ? at::empty(t.sizes(), t.options()) : at::empty({0}, t.options());
  if ((need_grad_student || need_grad_teacher) && s.size(0) > 0)
    launch(BwdArgs{g.const_data_ptr(), s.const_data_ptr(), t.const_data_ptr(), perm.const_data_ptr<int32_t>(),
                   lse.const_data_ptr(), need_grad_student ? grad_s.mutable_data_ptr() : nullptr,
                   need_grad_teacher ? grad_t.mutable_data_ptr() : nullptr, s.size(0), s.size(1), tau},
           dtype_of(s));
  return {grad_s, grad_t};
}

}  // namespace pld
}  // namespace pyfast
