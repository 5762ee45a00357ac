// Ghost batch norm, CUDA kernels (maths in ghost_bn.h). Torch-free: raw pointers, the layout and a cudaStream_t;
// launched from ghost_bn_cuda.cpp on the current stream.
//   stats      one block per (ghost g, channel c): shifted sums of x over the ghost's n_g x S values, reduced in
//              shared memory (double), then mean, biased var and invstd.
//   normalize  one element per thread: y = (x - mu_gc) inv_gc w_c + b_c.
//   bwd_stats  one block per (g, c): sum dy and sum dy (x - mu_gc).
//   bwd_dx     one element per thread: dx = a dy + b (x - mu) + c from the sums (see ghost_bn.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_dtype.cuh"
#include "ghost_bn/ghost_bn.h"

namespace pyfast {
namespace ghost_bn {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t ghost_rows_d(const Layout& l, int64_t g) {
  return (g + 1) * l.B < l.N ? l.B : l.N - g * l.B;
}

// Sums two per-thread values over the block (double); the result is valid in every thread.
__device__ __forceinline__ void block_sum2(double& a, double& b) {
  __shared__ double ra[kThreads], rb[kThreads];
  ra[threadIdx.x] = a;
  rb[threadIdx.x] = b;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      ra[threadIdx.x] += ra[threadIdx.x + s];
      rb[threadIdx.x] += rb[threadIdx.x + s];
    }
    __syncthreads();
  }
  a = ra[0];
  b = rb[0];
}

template <typename T, typename A>
__global__ void stats_kernel(const T* __restrict__ x, A* __restrict__ mean, A* __restrict__ var,
                             A* __restrict__ invstd, double eps, Layout l) {
  const int64_t g = blockIdx.x / l.C, c = blockIdx.x % l.C;
  const int64_t rows = ghost_rows_d(l, g), m = rows * l.S, stride = l.C * l.S;
  const T* base = x + g * l.B * stride + c * l.S;
  const A k = load<T, A>(base, 0);
  A s1 = A(0), s2 = A(0);
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
    const A d = load<T, A>(base, (i / l.S) * stride + i % l.S) - k;
    s1 += d;
    s2 += d * d;
  }
  double t1 = s1, t2 = s2;
  block_sum2(t1, t2);
  if (threadIdx.x == 0) {
    const double d = t1 / static_cast<double>(m);
    const double v = fmax(t2 / static_cast<double>(m) - d * d, 0.0);
    mean[blockIdx.x] = static_cast<A>(static_cast<double>(k) + d);
    var[blockIdx.x] = static_cast<A>(v);
    invstd[blockIdx.x] = static_cast<A>(1.0 / sqrt(v + eps));
  }
}

template <typename T, typename A>
__global__ void normalize_kernel(const T* __restrict__ x, T* __restrict__ y, const A* __restrict__ w,
                                 const A* __restrict__ b, const A* __restrict__ mean, const A* __restrict__ invstd,
                                 Layout l, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = (i / l.S) % l.C, gc = (i / (l.C * l.S)) / l.B * l.C + c;
    const A scale = (w ? w[c] : A(1)) * invstd[gc];
    y[i] = store<T, A>((load<T, A>(x, i) - mean[gc]) * scale + (b ? b[c] : A(0)));
  }
}

template <typename T, typename A>
__global__ void bwd_stats_kernel(const T* __restrict__ grad, const T* __restrict__ x, const A* __restrict__ mean,
                                 A* __restrict__ sdy, A* __restrict__ sdyxmu, Layout l) {
  const int64_t g = blockIdx.x / l.C, c = blockIdx.x % l.C;
  const int64_t rows = ghost_rows_d(l, g), m = rows * l.S, stride = l.C * l.S;
  const int64_t off = g * l.B * stride + c * l.S;
  const A mu = mean[blockIdx.x];
  A s1 = A(0), s2 = A(0);
  for (int64_t i = threadIdx.x; i < m; i += blockDim.x) {
    const int64_t j = off + (i / l.S) * stride + i % l.S;
    const A dy = load<T, A>(grad, j);
    s1 += dy;
    s2 += dy * (load<T, A>(x, j) - mu);
  }
  double t1 = s1, t2 = s2;
  block_sum2(t1, t2);
  if (threadIdx.x == 0) {
    sdy[blockIdx.x] = static_cast<A>(t1);
    sdyxmu[blockIdx.x] = static_cast<A>(t2);
  }
}

template <typename T, typename A>
__global__ void bwd_dx_kernel(const T* __restrict__ grad, const T* __restrict__ x, T* __restrict__ gx,
                              const A* __restrict__ w, const A* __restrict__ mean, const A* __restrict__ invstd,
                              const A* __restrict__ sdy, const A* __restrict__ sdyxmu, Layout l, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = (i / l.S) % l.C, g = (i / (l.C * l.S)) / l.B, gc = g * l.C + c;
    const A m = static_cast<A>(ghost_rows_d(l, g) * l.S);
    const A inv = invstd[gc];
    const A a = (w ? w[c] : A(1)) * inv;
    const A xmu = load<T, A>(x, i) - mean[gc];
    gx[i] = store<T, A>(a * load<T, A>(grad, i) - a * inv * inv * sdyxmu[gc] / m * xmu - a * sdy[gc] / m);
  }
}

int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8); }

template <typename T>
void fwd(const FwdArgs& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const Layout& l = a.l;
  const auto* x = static_cast<const T*>(a.x);
  stats_kernel<T, A><<<static_cast<unsigned>(l.G * l.C), kThreads, 0, stream>>>(
      x, static_cast<A*>(a.mean), static_cast<A*>(a.var), static_cast<A*>(a.invstd), a.eps, l);
  const int64_t n = l.N * l.C * l.S;
  normalize_kernel<T, A><<<static_cast<unsigned>(blocks_for(n)), kThreads, 0, stream>>>(
      x, static_cast<T*>(a.y), static_cast<const A*>(a.weight), static_cast<const A*>(a.bias),
      static_cast<const A*>(a.mean), static_cast<const A*>(a.invstd), l, n);
}

template <typename T>
void bwd(const BwdArgs& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const Layout& l = a.l;
  const auto* grad = static_cast<const T*>(a.grad);
  const auto* x = static_cast<const T*>(a.x);
  const auto* mean = static_cast<const A*>(a.mean);
  bwd_stats_kernel<T, A><<<static_cast<unsigned>(l.G * l.C), kThreads, 0, stream>>>(
      grad, x, mean, static_cast<A*>(a.sdy), static_cast<A*>(a.sdyxmu), l);
  if (!a.grad_x) return;
  const int64_t n = l.N * l.C * l.S;
  bwd_dx_kernel<T, A><<<static_cast<unsigned>(blocks_for(n)), kThreads, 0, stream>>>(
      grad, x, static_cast<T*>(a.grad_x), static_cast<const A*>(a.weight), mean, static_cast<const A*>(a.invstd),
      static_cast<const A*>(a.sdy), static_cast<const A*>(a.sdyxmu), l, n);
}

}  // namespace

cudaError_t ghost_bn_fwd_cuda_launch(const FwdArgs& a, DType dtype, cudaStream_t stream) {
  return for_dtype(dtype, [&](auto t) { fwd<decltype(t)>(a, stream); });
}

cudaError_t ghost_bn_bwd_cuda_launch(const BwdArgs& a, DType dtype, cudaStream_t stream) {
  return for_dtype(dtype, [&](auto t) { bwd<decltype(t)>(a, stream); });
}

}  // namespace ghost_bn
}  // namespace pyfast
