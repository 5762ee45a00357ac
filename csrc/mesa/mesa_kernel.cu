// Mesa quantize / dequantize, CUDA kernels (the maths is in mesa.h). Torch-free: raw pointers, sizes and a
// cudaStream_t; mesa_cuda.cpp does the checks and the launch.
//
// Quantize is three launches on one stream, with no full-size temporary: (1) partial min / max of every group over
// chunks of its elements, grid (chunks, G); (2) one thread per group folds its partials into the new estimates
// (EMA, first-call and no-update rules); (3) the codes, element-wise over the linear index (coalesced), each thread
// reading its group's estimates. The initialized flag and the seed are read on the device: no host sync.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "mesa/mesa.h"

namespace pyfast {
namespace mesa {
namespace {

constexpr int kThreads = 256;
// Elements of one group per reduction block: 4096 spreads a ViT activation's min / max over hundreds of blocks, where
// 2^16 left most of a large GPU idle (bench/RESULTS.md, "Launch choices").
constexpr int64_t kChunk = int64_t{1} << 12;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(double v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_f32<double>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__global__ void minmax_kernel(const T* __restrict__ x, float* __restrict__ mins, float* __restrict__ maxs, int64_t G,
                              int64_t inner, int64_t M) {
  const int64_t c = blockIdx.x, g = blockIdx.y, chunks = gridDim.x;
  const int64_t start = c * kChunk, end = min(start + kChunk, M);
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t m = start + threadIdx.x; m < end; m += blockDim.x) {
    const int64_t o = m / inner;
    const float v = to_f32(x[(o * G + g) * inner + (m - o * inner)]);
    if (is_finite(v)) {
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
  }
  __shared__ float s_lo[kThreads], s_hi[kThreads];
  s_lo[threadIdx.x] = lo;
  s_hi[threadIdx.x] = hi;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      s_lo[threadIdx.x] = fminf(s_lo[threadIdx.x], s_lo[threadIdx.x + stride]);
      s_hi[threadIdx.x] = fmaxf(s_hi[threadIdx.x], s_hi[threadIdx.x + stride]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    mins[g * chunks + c] = s_lo[0];
    maxs[g * chunks + c] = s_hi[0];
  }
}

__global__ void finalize_kernel(const float* __restrict__ mins, const float* __restrict__ maxs, int64_t chunks,
                                QuantArgs a) {
  const int64_t g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g >= a.groups) return;
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t c = 0; c < chunks; ++c) {
    lo = fminf(lo, mins[g * chunks + c]);
    hi = fmaxf(hi, maxs[g * chunks + c]);
  }
  finalize(lo, hi, a.clip[g], a.shift[g], *a.initialized, a.cfg, a.clip_out + g, a.shift_out + g);
}

template <typename T, bool kStochastic>
__global__ void quantize_kernel(const T* __restrict__ x, uint8_t* __restrict__ q, const float* __restrict__ clip,
                                const float* __restrict__ shift, const int64_t* __restrict__ seed, int64_t numel,
                                int64_t G, int64_t inner, float lm1) {
  const uint32_t key = kStochastic ? seed_key(*seed) : 0u;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < numel; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t g = (i / inner) % G;
    const float s = scale_of(clip[g], lm1);
    const float nz = kStochastic ? noise(key, i) : 0.0f;
    q[i] = quantize_one(to_f32(x[i]), shift[g], s, nz, lm1);
  }
}

// A code past max_code decodes to NaN: raising would need a host sync (mesa.h).
template <typename T>
__global__ void dequantize_kernel(const uint8_t* __restrict__ q, T* __restrict__ out, const float* __restrict__ clip,
                                  const float* __restrict__ shift, int64_t numel, int64_t G, int64_t inner,
                                  float lm1, uint8_t max_code) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < numel; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t g = (i / inner) % G;
    const uint8_t code = q[i];
    out[i] = from_f32<T>(code > max_code ? NAN : dequantize_one(code, scale_of(clip[g], lm1), shift[g]));
  }
}

unsigned elementwise_blocks(int64_t numel) {
  const int64_t blocks = (numel + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 * 8 ? blocks : 65535 * 8);  // grid-stride loops cover the rest
}

template <typename T>
cudaError_t quantize_typed(const QuantArgs& a, float* partials, cudaStream_t stream) {
  const int64_t M = a.outer * a.inner, numel = M * a.groups;
  const int64_t chunks = M > 0 ? (M + kChunk - 1) / kChunk : 1;
  float* mins = partials;
  float* maxs = partials + chunks * a.groups;
  if (M > 0) {
    minmax_kernel<T><<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(a.groups)), kThreads, 0, stream>>>(
        static_cast<const T*>(a.x), mins, maxs, a.groups, a.inner, M);
  } else {
    // No elements: every group's partials are empty (min > max), so every group keeps its estimates.
    finalize_kernel<<<static_cast<unsigned>((a.groups + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        mins, maxs, 0, a);
    return cudaGetLastError();
  }
  finalize_kernel<<<static_cast<unsigned>((a.groups + kThreads - 1) / kThreads), kThreads, 0, stream>>>(mins, maxs,
                                                                                                        chunks, a);
  const auto* x = static_cast<const T*>(a.x);
  if (a.cfg.stochastic) {
    quantize_kernel<T, true><<<elementwise_blocks(numel), kThreads, 0, stream>>>(
        x, a.q, a.clip_out, a.shift_out, a.seed, numel, a.groups, a.inner, a.cfg.lm1);
  } else {
    quantize_kernel<T, false><<<elementwise_blocks(numel), kThreads, 0, stream>>>(
        x, a.q, a.clip_out, a.shift_out, a.seed, numel, a.groups, a.inner, a.cfg.lm1);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t dequantize_typed(const DequantArgs& a, cudaStream_t stream) {
  const int64_t numel = a.outer * a.groups * a.inner;
  dequantize_kernel<T><<<elementwise_blocks(numel), kThreads, 0, stream>>>(
      a.q, static_cast<T*>(a.out), a.clip, a.shift, numel, a.groups, a.inner, a.lm1, a.max_code);
  return cudaGetLastError();
}

}  // namespace

int64_t quantize_cuda_partials(const QuantArgs& a) {
  const int64_t M = a.outer * a.inner;
  return 2 * a.groups * (M > 0 ? (M + kChunk - 1) / kChunk : 1);
}

cudaError_t quantize_cuda_launch(const QuantArgs& a, DType dtype, float* partials, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32: return quantize_typed<float>(a, partials, stream);
    case DType::Float64: return quantize_typed<double>(a, partials, stream);
    case DType::Float16: return quantize_typed<__half>(a, partials, stream);
    default: return quantize_typed<__nv_bfloat16>(a, partials, stream);
  }
}

cudaError_t dequantize_cuda_launch(const DequantArgs& a, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32: return dequantize_typed<float>(a, stream);
    case DType::Float64: return dequantize_typed<double>(a, stream);
    case DType::Float16: return dequantize_typed<__half>(a, stream);
    default: return dequantize_typed<__nv_bfloat16>(a, stream);
  }
}

}  // namespace mesa
}  // namespace pyfast
