// CRReLU, CUDA kernels (maths in crrelu.h). Torch-free: raw pointers, the layout and a cudaStream_t; launched from
// crrelu_cuda.cpp on the current stream.
//   fwd       one element per thread (grid-stride), eps[(i / inner) % C].
//   bwd_runs  [outer, C, inner] with runs of one eps: a block owns a chunk of one run, writes grad_x, reduces
//             g x e(x) in shared memory and adds it to grad_eps[c] with one double atomic.
//   bwd_cols  channel-last (inner = 1, C > 1): threads walk the channels (coalesced), a block owns a band of rows,
//             and each thread adds its channel's sum with one atomic per band.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_dtype.cuh"
#include "crrelu/crrelu.h"

namespace pyfast {
namespace crrelu {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kRunChunk = 4096;  // elements of a run per block (bwd_runs)
constexpr int64_t kColRows = 64;     // rows per block (bwd_cols)

template <typename T, typename A>
__global__ void fwd_kernel(const T* __restrict__ x, T* __restrict__ y, const A* __restrict__ eps, Layout l, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const A v = load<T, A>(x, i);
    y[i] = store<T, A>(forward(v, eps[(i / l.inner) % l.C], gauss(v)));
  }
}

__device__ __forceinline__ double block_sum(double v, double* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  return red[0];
}

template <typename T, typename A>
__global__ void bwd_runs_kernel(const T* __restrict__ g, const T* __restrict__ x, const A* __restrict__ eps,
                                T* __restrict__ gx, double* __restrict__ geps, Layout l, int64_t chunks_per_row) {
  __shared__ double red[kThreads];
  const int64_t row = blockIdx.x / chunks_per_row;
  const int64_t k0 = (blockIdx.x % chunks_per_row) * kRunChunk;
  const int64_t k1 = k0 + kRunChunk < l.inner ? k0 + kRunChunk : l.inner;
  const A e_ = eps[row % l.C];
  A s = A(0);
  for (int64_t k = k0 + threadIdx.x; k < k1; k += blockDim.x) {
    const int64_t i = row * l.inner + k;
    const A v = load<T, A>(x, i), gv = load<T, A>(g, i), e = gauss(v);
    if (gx) gx[i] = store<T, A>(grad_x(gv, v, e_, e));
    s += grad_eps_term(gv, v, e);
  }
  if (geps) {
    const double total = block_sum(static_cast<double>(s), red);
    if (threadIdx.x == 0) atomicAdd(geps + row % l.C, total);
  }
}

template <typename T, typename A>
__global__ void bwd_cols_kernel(const T* __restrict__ g, const T* __restrict__ x, const A* __restrict__ eps,
                                T* __restrict__ gx, double* __restrict__ geps, Layout l) {
  const int64_t r0 = blockIdx.x * kColRows;
  const int64_t r1 = r0 + kColRows < l.outer ? r0 + kColRows : l.outer;
  for (int64_t c = threadIdx.x; c < l.C; c += blockDim.x) {
    const A e_ = eps[c];
    A s = A(0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r * l.C + c;
      const A v = load<T, A>(x, i), gv = load<T, A>(g, i), e = gauss(v);
      if (gx) gx[i] = store<T, A>(grad_x(gv, v, e_, e));
      s += grad_eps_term(gv, v, e);
    }
    if (geps) atomicAdd(geps + c, static_cast<double>(s));
  }
}

template <typename T>
void fwd(const FwdArgs& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const int64_t n = a.l.outer * a.l.C * a.l.inner;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8);
  fwd_kernel<T, A><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const T*>(a.x), static_cast<T*>(a.y), static_cast<const A*>(a.eps), a.l, n);
}

template <typename T>
void bwd(const BwdArgs& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const auto* g = static_cast<const T*>(a.grad);
  const auto* x = static_cast<const T*>(a.x);
  const auto* eps = static_cast<const A*>(a.eps);
  auto* gx = static_cast<T*>(a.grad_x);
  auto* geps = static_cast<double*>(a.grad_eps);
  const Layout& l = a.l;
  if (l.inner == 1 && l.C > 1) {
    const int64_t blocks = (l.outer + kColRows - 1) / kColRows;
    bwd_cols_kernel<T, A><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(g, x, eps, gx, geps, l);
  } else {
    const int64_t chunks = (l.inner + kRunChunk - 1) / kRunChunk;
    const int64_t blocks = l.outer * l.C * chunks;
    bwd_runs_kernel<T, A><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(g, x, eps, gx, geps, l, chunks);
  }
}

}  // namespace

cudaError_t crrelu_fwd_cuda_launch(const FwdArgs& a, DType dtype, cudaStream_t stream) {
  return for_dtype(dtype, [&](auto t) { fwd<decltype(t)>(a, stream); });
}

cudaError_t crrelu_bwd_cuda_launch(const BwdArgs& a, DType dtype, cudaStream_t stream) {
  return for_dtype(dtype, [&](auto t) { bwd<decltype(t)>(a, stream); });
}

}  // namespace crrelu
}  // namespace pyfast
