// for_dtype(dtype, f): call f(T{}) with T the CUDA element type of dtype (float, double, __half, __nv_bfloat16),
// then return the launch status. Torch-free, for the ops' .cu launchers:
//   return for_dtype(dtype, [&](auto t) { fwd<decltype(t)>(args, stream); });
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/dtype.h"

namespace pyfast {

template <class F>
cudaError_t for_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: f(float{}); break;
    case DType::Float64: f(double{}); break;
    case DType::Float16: f(__half{}); break;
    case DType::BFloat16: f(__nv_bfloat16{}); break;
  }
  return cudaGetLastError();
}

}  // namespace pyfast
