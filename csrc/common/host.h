// Host-side helpers shared by the ops' CPU and CUDA registrations (ATen headers only, never torch/extension.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/dtype.h"

namespace pyfast {

// ATen scalar type -> the kernels' DType; anything but the four floating types is a TypeError.
inline DType dtype_of(c10::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK_TYPE(false, "pyfast: unsupported dtype ", t, " (float32, float64, float16 or bfloat16)");
  }
}

inline DType dtype_of(const at::Tensor& x) { return dtype_of(x.scalar_type()); }

// TypeError naming the op and the argument unless t has one of the four floating types.
inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, op, ": ", name,
                   " must be float32/float64/float16/bfloat16, got ", s);
}

// Accumulation type of a kernel on inputs of type t: float64 stays float64, everything else accumulates in float32.
inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace pyfast
