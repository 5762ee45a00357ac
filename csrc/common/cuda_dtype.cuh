// Torch-free helpers of the ops' .cu files: element loads/stores through the accumulation type, and
// for_dtype(dtype, f), which calls f(T{}) with T the CUDA element type of dtype (float, double, __half,
// __nv_bfloat16) and returns the launch status:
//   return for_dtype(dtype, [&](auto t) { fwd<decltype(t)>(args, stream); });
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace pyfast {

// Acc<T>::type: the accumulation type of element type T (double for double, float otherwise).
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

// load<T, A>(p, i): element i of p in the accumulation type A; store<T, A>(v): v rounded (to nearest) back to T.
template <typename T, typename A> __device__ __forceinline__ A load(const T* p, int64_t i) { return static_cast<A>(p[i]); }
template <> __device__ __forceinline__ float load<__half, float>(const __half* p, int64_t i) { return __half2float(p[i]); }
template <> __device__ __forceinline__ float load<__nv_bfloat16, float>(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
template <typename T, typename A> __device__ __forceinline__ T store(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half store<__half, float>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 store<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

// to_acc(v): one element in its accumulation type; from_acc<T>(a): an accumulator rounded (to nearest) to T. The
// value forms of load / store, for elements already in registers (e.g. unpacked from a vector load).
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type a) {
  return store<T, typename Acc<T>::type>(a);
}

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
