// Multi-sample dropout head, CUDA kernels (maths in msdrop.h; the GEMMs are cuBLAS through ATen in msdrop_host.h).
// Torch-free: raw pointers and a cudaStream_t; launched from msdrop_cuda.cpp on the current stream.
//   make_x      X = h * keep * s, one element per thread (grid-stride); the seed is read on the device.
//   masked_sum  dh = sum_k keep_k * s * (G W)_k, one element of dh per thread, a loop over the M samples.
//   ce          one warp per row: + bias, max, sum exp (shuffles), lse, and lse - logit of the target.
//   grad        G = (softmax - onehot) dloss / R, one element per thread.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_dtype.cuh"
#include "msdrop/msdrop.h"

namespace pyfast {
namespace msdrop {

namespace {

constexpr int kThreads = 256;

template <typename T, typename A>
__global__ void make_x_kernel(const T* __restrict__ h, T* __restrict__ x, const int64_t* __restrict__ seed, int64_t B,
                              int64_t D, int64_t n, uint32_t threshold, A scale) {
  const uint32_t key = key_of(*seed);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / D, d = i % D;
    const A v = load<T, A>(h, (r % B) * D + d);
    x[i] = store<T, A>(keep(key, static_cast<uint32_t>(i), threshold) ? v * scale : A(0));
  }
}

template <typename T, typename A>
__global__ void masked_sum_kernel(const T* __restrict__ gx, T* __restrict__ gh, const int64_t* __restrict__ seed,
                                  int64_t M, int64_t B, int64_t D, uint32_t threshold, A scale) {
  const uint32_t key = key_of(*seed);
  const int64_t n = B * D;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A s = A(0);
    for (int64_t k = 0; k < M; ++k) {
      const int64_t j = k * n + i;
      if (keep(key, static_cast<uint32_t>(j), threshold)) s += load<T, A>(gx, j) * scale;
    }
    gh[i] = store<T, A>(s);
  }
}

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T, typename A>
__global__ void ce_kernel(T* __restrict__ logits, const T* __restrict__ bias, const int64_t* __restrict__ target,
                          A* __restrict__ lse, double* __restrict__ rows, int64_t R, int64_t C, int64_t B) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (r >= R) return;  // whole warps leave together
  const int lane = threadIdx.x % 32;
  T* z = logits + r * C;
  if (bias) {
    for (int64_t c = lane; c < C; c += 32) z[c] = store<T, A>(load<T, A>(z, c) + load<T, A>(bias, c));
    __syncwarp();
  }
  A mx = -INFINITY;
  for (int64_t c = lane; c < C; c += 32) mx = max(mx, load<T, A>(z, c));
  mx = warp_max(mx);
  A s = A(0);
  for (int64_t c = lane; c < C; c += 32) s += exp(load<T, A>(z, c) - mx);
  s = warp_sum(s);
  if (lane == 0) {
    const A l = mx + log(s);
    lse[r] = l;
    int64_t y = target[r % B];
    y = y < 0 ? 0 : (y >= C ? C - 1 : y);  // checked on the host side; never read out of bounds
    rows[r] = static_cast<double>(l) - static_cast<double>(load<T, A>(z, y));
  }
}

template <typename T, typename A>
__global__ void grad_kernel(const T* __restrict__ logits, const A* __restrict__ lse,
                            const int64_t* __restrict__ target, const A* __restrict__ grad_loss, T* __restrict__ G,
                            int64_t R, int64_t C, int64_t B) {
  const A scale = *grad_loss / static_cast<A>(R);
  const int64_t n = R * C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / C, c = i % C;
    const A sm = exp(load<T, A>(logits, i) - lse[r]);
    G[i] = store<T, A>((sm - (c == target[r % B] ? A(1) : A(0))) * scale);
  }
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8)); }

template <typename T>
void make_x(const MaskArgs& a, cudaStream_t st) {
  using A = typename Acc<T>::type;
  const int64_t n = a.M * a.B * a.D;
  make_x_kernel<T, A><<<blocks_for(n), kThreads, 0, st>>>(static_cast<const T*>(a.in), static_cast<T*>(a.out), a.seed,
                                                          a.B, a.D, n, a.threshold, static_cast<A>(a.scale));
}

template <typename T>
void masked_sum(const MaskArgs& a, cudaStream_t st) {
  using A = typename Acc<T>::type;
  masked_sum_kernel<T, A><<<blocks_for(a.B * a.D), kThreads, 0, st>>>(
      static_cast<const T*>(a.in), static_cast<T*>(a.out), a.seed, a.M, a.B, a.D, a.threshold,
      static_cast<A>(a.scale));
}

template <typename T>
void ce(const CeArgs& a, cudaStream_t st) {
  using A = typename Acc<T>::type;
  const int64_t warps = kThreads / 32;
  ce_kernel<T, A><<<static_cast<unsigned>((a.R + warps - 1) / warps), kThreads, 0, st>>>(
      static_cast<T*>(a.logits), static_cast<const T*>(a.bias), a.target, static_cast<A*>(a.lse),
      static_cast<double*>(a.loss_rows), a.R, a.C, a.B);
}

template <typename T>
void grad(const GradArgs& a, cudaStream_t st) {
  using A = typename Acc<T>::type;
  grad_kernel<T, A><<<blocks_for(a.R * a.C), kThreads, 0, st>>>(
      static_cast<const T*>(a.logits), static_cast<const A*>(a.lse), a.target, static_cast<const A*>(a.grad_loss),
      static_cast<T*>(a.G), a.R, a.C, a.B);
}

}  // namespace

cudaError_t msdrop_make_x_cuda(const MaskArgs& a, DType dt, cudaStream_t st) {
  return for_dtype(dt, [&](auto t) { make_x<decltype(t)>(a, st); });
}
cudaError_t msdrop_masked_sum_cuda(const MaskArgs& a, DType dt, cudaStream_t st) {
  return for_dtype(dt, [&](auto t) { masked_sum<decltype(t)>(a, st); });
}
cudaError_t msdrop_ce_cuda(const CeArgs& a, DType dt, cudaStream_t st) {
  return for_dtype(dt, [&](auto t) { ce<decltype(t)>(a, st); });
}
cudaError_t msdrop_grad_cuda(const GradArgs& a, DType dt, cudaStream_t st) {
  return for_dtype(dt, [&](auto t) { grad<decltype(t)>(a, st); });
}

}  // namespace msdrop
}  // namespace pyfast
