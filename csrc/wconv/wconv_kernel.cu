// Weighted convolution, CUDA kernels of the density-weight op (maths in wconv.h). Torch-free: raw pointers, the
// geometry and a cudaStream_t; launched from wconv_cuda.cpp on the current stream.
//   scale     out = in * Phi, one element per thread (W~ in the forward; dW in a backward without d(den)). Phi is
//             computed from den per element (three cached loads): nothing else is allocated or launched.
//   bwd       dW = dW~ * Phi and the per-tap sums S[t] = sum_r dW~ W in one pass. A block owns a run of whole rows;
//             thread i starts at element begin + i and strides by a multiple of taps, so it always sees tap
//             i % taps (coalesced loads, a register accumulator), then the block reduces per tap in shared memory
//             and adds to S with one atomic per tap.
//   den_grad  one block: dalpha_a[k] per thread from S, folded onto den (mirrored taps) by thread 0.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_dtype.cuh"
#include "wconv/wconv.h"

namespace pyfast {
namespace wconv {

namespace {

constexpr int kThreads = 256;

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T, typename A> __device__ __forceinline__ A to_acc(T v) { return static_cast<A>(v); }
template <> __device__ __forceinline__ float to_acc<__half, float>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16, float>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <typename T, typename A> __device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T, typename A>
__global__ void scale_kernel(const T* __restrict__ in, T* __restrict__ out, const A* __restrict__ den, Geometry g,
                             int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const A phi = phi_at(den, g, static_cast<int>(i % g.taps));
    out[i] = from_acc<T, A>(to_acc<T, A>(in[i]) * phi);
  }
}

template <typename T, typename A, bool kGradW>
__global__ void bwd_kernel(const T* __restrict__ grad, const T* __restrict__ w, const A* __restrict__ den,
                           T* __restrict__ grad_w, A* __restrict__ S, Geometry g, int64_t rows_per_block) {
  extern __shared__ unsigned char smem_raw[];
  A* red = reinterpret_cast<A*>(smem_raw);
  const int taps = g.taps;
  const int64_t r0 = blockIdx.x * rows_per_block;
  const int64_t r1 = r0 + rows_per_block < g.rows ? r0 + rows_per_block : g.rows;
  const int64_t begin = r0 * taps, end = r1 * taps;
  if (taps <= static_cast<int>(blockDim.x)) {
    const int groups = blockDim.x / taps;
    const int active = groups * taps;
    const int tid = threadIdx.x;
    A acc = A(0);
    if (tid < active) {
      const A phi = phi_at(den, g, tid % taps);
      for (int64_t i = begin + tid; i < end; i += active) {
        const A gv = to_acc<T, A>(grad[i]);
        if (kGradW) grad_w[i] = from_acc<T, A>(gv * phi);
        acc += gv * to_acc<T, A>(w[i]);
      }
    }
    red[tid] = acc;
    __syncthreads();
    if (tid < taps) {
      A sum = A(0);
      for (int k = 0; k < groups; ++k) sum += red[k * taps + tid];
      atomicAdd(S + tid, sum);
    }
  } else {
    for (int t = threadIdx.x; t < taps; t += blockDim.x) {
      const A phi = phi_at(den, g, t);
      A acc = A(0);
      for (int64_t i = begin + t; i < end; i += taps) {
        const A gv = to_acc<T, A>(grad[i]);
        if (kGradW) grad_w[i] = from_acc<T, A>(gv * phi);
        acc += gv * to_acc<T, A>(w[i]);
      }
      atomicAdd(S + t, acc);
    }
  }
}

template <typename A>
__global__ void den_grad_kernel(const A* __restrict__ den, const A* __restrict__ S, A* __restrict__ dden, Geometry g,
                                int kmax) {
  extern __shared__ unsigned char smem_raw[];
  A* dalpha = reinterpret_cast<A*>(smem_raw);
  for (int i = threadIdx.x; i < kMaxAxes * kmax; i += blockDim.x) {
    const int a = i / kmax, k = i % kmax;
    dalpha[i] = (a < g.axes && k < g.K[a]) ? dalpha_at(den, S, g, a, k) : A(0);
  }
  __syncthreads();
  if (threadIdx.x == 0) fold_den_grad(dalpha, kmax, g, dden);
}

int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, 65535); }

template <typename T>
void scale(const FwdArgs& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const int64_t n = a.g.rows * a.g.taps;
  scale_kernel<T, A><<<static_cast<unsigned>(blocks_for(n)), kThreads, 0, stream>>>(
      static_cast<const T*>(a.in), static_cast<T*>(a.out), static_cast<const A*>(a.den), a.g, n);
}

template <typename T>
void bwd(const BwdArgs& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const Geometry& g = a.g;
  // About 4 elements per thread in a block, and at most 4096 blocks (so at most 4096 atomics per tap).
  const int64_t rows_per_tile = std::max<int64_t>(1, 4 * kThreads / g.taps);
  const int64_t blocks = std::min<int64_t>((g.rows + rows_per_tile - 1) / rows_per_tile, 4096);
  const int64_t rows_per_block = (g.rows + blocks - 1) / blocks;
  const size_t smem = kThreads * sizeof(A);
  const auto* grad = static_cast<const T*>(a.grad);
  const auto* w = static_cast<const T*>(a.w);
  const auto* den = static_cast<const A*>(a.den);
  auto* S = static_cast<A*>(a.scratch);
  if (a.grad_w)
    bwd_kernel<T, A, true><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(
        grad, w, den, static_cast<T*>(a.grad_w), S, g, rows_per_block);
  else
    bwd_kernel<T, A, false><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(grad, w, den, nullptr, S, g,
                                                                                      rows_per_block);
  int kmax = 1;
  for (int ax = 0; ax < kMaxAxes; ++ax) kmax = std::max(kmax, g.K[ax]);
  den_grad_kernel<A><<<1, kThreads, kMaxAxes * kmax * sizeof(A), stream>>>(den, S, static_cast<A*>(a.grad_den), g,
                                                                          kmax);
}

}  // namespace

cudaError_t wconv_scale_cuda_launch(const FwdArgs& a, DType dtype, cudaStream_t stream) {
  return for_dtype(dtype, [&](auto t) { scale<decltype(t)>(a, stream); });
}

cudaError_t wconv_bwd_cuda_launch(const BwdArgs& a, DType dtype, cudaStream_t stream) {
  return for_dtype(dtype, [&](auto t) { bwd<decltype(t)>(a, stream); });
}

}  // namespace wconv
}  // namespace pyfast
