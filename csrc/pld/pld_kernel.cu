// PLD, CUDA kernels (maths in pld.h). Torch-free: raw pointers, sizes and a cudaStream_t; launched from pld_cuda.cpp
// on the current stream. One block of kThreads per row, C <= kCudaMaxClasses (checked on the host):
//   forward   teacher_lse by block reductions; the ranking by a bitonic sort of (order key, class) pairs in shared
//             memory (keys unique with the class index, so the order is the stable one of pld.h); then thread i owns
//             the contiguous positions [i per, (i + 1) per) of the ranking (per <= 4, in registers), a block-wide
//             suffix scan of (max, sum of exp) pairs gives log Z_k, and a block sum the row's loss.
//   backward  the ranking from perm, the same suffix scan, then a prefix scan of log a_k - log Z_k in the same
//             log-sum-exp form for dL/dz; dL/dt from l_k and one block sum. Gradients are scattered back through pi.
// An out-of-range label (the host does not read labels back from the device) gives a NaN loss for its row.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_dtype.cuh"
#include "pld/pld.h"

namespace pyfast {
namespace pld {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kPer = static_cast<int>(kCudaMaxClasses / kThreads);  // ranking positions per thread at most
constexpr unsigned kFull = 0xffffffffu;

// log(s) + m: a partial log-sum-exp; the empty sum is m = -inf, s = 0.
template <typename A>
struct Lse {
  A m, s;
};

template <typename A>
__device__ __forceinline__ Lse<A> lse_empty() {
  return {static_cast<A>(-INFINITY), A(0)};
}

template <typename A>
__device__ __forceinline__ Lse<A> lse_add(Lse<A> a, Lse<A> b) {
  if (a.m < b.m) {
    const Lse<A> x = a;
    a = b;
    b = x;
  }
  if (b.s == A(0)) return a;
  return {a.m, a.s + b.s * exp(b.m - a.m)};
}

template <typename A>
__device__ __forceinline__ Lse<A> shfl_down(Lse<A> v, int o) {
  return {__shfl_down_sync(kFull, v.m, o), __shfl_down_sync(kFull, v.s, o)};
}

template <typename A>
__device__ __forceinline__ Lse<A> shfl_up(Lse<A> v, int o) {
  return {__shfl_up_sync(kFull, v.m, o), __shfl_up_sync(kFull, v.s, o)};
}

struct Sum {
  template <typename A>
  __device__ __forceinline__ A operator()(A x, A y) const { return x + y; }
};
struct Max {
  template <typename A>
  __device__ __forceinline__ A operator()(A x, A y) const { return max(x, y); }
};

// The block's reduction of v (every thread gets it). red: kWarps values of shared memory.
template <typename A, typename Op>
__device__ __forceinline__ A block_reduce(A v, Op op, A* red) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFull, v, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  A total = red[0];
  for (int w = 1; w < kWarps; ++w) total = op(total, red[w]);
  __syncthreads();
  return total;
}

// Inclusive block scan over the ranking positions of v[0, cnt) of each thread (thread i owns the positions after
// those of thread i - 1): kSuffix, v[i] <- the log-sum-exp of the positions >= its own; else of those <= its own.
template <bool kSuffix, typename A>
__device__ __forceinline__ void block_scan(Lse<A> (&v)[kPer], int cnt, Lse<A>* tot) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  Lse<A> inc = lse_empty<A>();
#pragma unroll
  for (int i = 0; i < kPer; ++i)
    if (i < cnt) inc = lse_add(inc, v[i]);
  for (int o = 1; o < 32; o <<= 1) {
    const Lse<A> other = kSuffix ? shfl_down(inc, o) : shfl_up(inc, o);
    if (kSuffix ? lane + o < 32 : lane >= o) inc = lse_add(inc, other);
  }
  if (lane == (kSuffix ? 0 : 31)) tot[warp] = inc;
  __syncthreads();
  Lse<A> run = kSuffix ? shfl_down(inc, 1) : shfl_up(inc, 1);
  if (kSuffix ? lane == 31 : lane == 0) run = lse_empty<A>();
  for (int w = 0; w < kWarps; ++w)
    if (kSuffix ? w > warp : w < warp) run = lse_add(run, tot[w]);
  __syncthreads();
  if (kSuffix) {
#pragma unroll
    for (int i = kPer - 1; i >= 0; --i)
      if (i < cnt) v[i] = run = lse_add(run, v[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kPer; ++i)
      if (i < cnt) v[i] = run = lse_add(run, v[i]);
  }
}

// Ascending bitonic sort of n (a power of two) (key, idx) pairs in shared memory, by key then idx.
__device__ __forceinline__ void bitonic_sort(unsigned long long* key, int32_t* idx, int n) {
  for (int k = 2; k <= n; k <<= 1)
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < n; i += kThreads) {
        const int p = i ^ j;
        if (p > i) {
          const bool greater = key[i] > key[p] || (key[i] == key[p] && idx[i] > idx[p]);
          if (greater == ((i & k) == 0)) {
            const unsigned long long kk = key[i];
            key[i] = key[p];
            key[p] = kk;
            const int32_t ii = idx[i];
            idx[i] = idx[p];
            idx[p] = ii;
          }
        }
      }
      __syncthreads();
    }
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const T* __restrict__ s, const T* __restrict__ t,
                                                       const int64_t* __restrict__ labels, A* __restrict__ loss,
                                                       int32_t* __restrict__ perm, A* __restrict__ t_lse, int64_t C,
                                                       A tau) {
  __shared__ unsigned long long key[kCudaMaxClasses];
  __shared__ int32_t idx[kCudaMaxClasses];
  __shared__ A red[kWarps];
  __shared__ Lse<A> tot[kWarps];
  const int64_t row = blockIdx.x;
  const T* sr = s + row * C;
  const T* tr = t + row * C;
  const int64_t y = labels[row];

  A mx = static_cast<A>(-INFINITY);
  for (int64_t c = threadIdx.x; c < C; c += kThreads) mx = max(mx, load<T, A>(tr, c) / tau);
  mx = block_reduce(mx, Max{}, red);
  A sum = A(0);
  for (int64_t c = threadIdx.x; c < C; c += kThreads) sum += exp(load<T, A>(tr, c) / tau - mx);
  const A lse = mx + log(block_reduce(sum, Sum{}, red));

  int n = 1;
  while (n < C) n <<= 1;
  for (int i = threadIdx.x; i < n; i += kThreads) {
    key[i] = i >= C ? ~0ull : (i == y ? 0ull : static_cast<unsigned long long>(~order_key(load<T, A>(tr, i))));
    idx[i] = i < C ? i : INT32_MAX;
  }
  __syncthreads();
  bitonic_sort(key, idx, n);

  const int per = static_cast<int>((C + kThreads - 1) / kThreads);
  const int k0 = threadIdx.x * per;
  const int cnt = max(0, min(per, static_cast<int>(C) - k0));
  Lse<A> v[kPer];
  A z[kPer], a[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i)
    if (i < cnt) {
      const int32_t c = idx[k0 + i];
      perm[row * C + k0 + i] = c;
      z[i] = load<T, A>(sr, c);
      a[i] = exp(load<T, A>(tr, c) / tau - lse);
      v[i] = {z[i], A(1)};
    }
  block_scan<true>(v, cnt, tot);
  A part = A(0);
#pragma unroll
  for (int i = 0; i < kPer; ++i)
    if (i < cnt) part += a[i] * ((v[i].m - z[i]) + log(v[i].s));
  part = block_reduce(part, Sum{}, red);
  if (threadIdx.x == 0) {
    loss[row] = y >= 0 && y < C ? part : static_cast<A>(NAN);
    t_lse[row] = lse;
  }
}

template <typename T, typename A, bool kGradS, bool kGradT>
__global__ void __launch_bounds__(kThreads) bwd_kernel(const A* __restrict__ grad_loss, const T* __restrict__ s,
                                                       const T* __restrict__ t, const int32_t* __restrict__ perm,
                                                       const A* __restrict__ t_lse, T* __restrict__ gs,
                                                       T* __restrict__ gt, int64_t C, A tau) {
  __shared__ A red[kWarps];
  __shared__ Lse<A> tot[kWarps];
  const int64_t row = blockIdx.x;
  const T* sr = s + row * C;
  const T* tr = t + row * C;
  const A lse = t_lse[row], g = grad_loss[row];
  const int per = static_cast<int>((C + kThreads - 1) / kThreads);
  const int k0 = threadIdx.x * per;
  const int cnt = max(0, min(per, static_cast<int>(C) - k0));
  int32_t cls[kPer];
  A z[kPer], la[kPer], a[kPer];
  Lse<A> v[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i)
    if (i < cnt) {
      cls[i] = perm[row * C + k0 + i];
      z[i] = load<T, A>(sr, cls[i]);
      la[i] = load<T, A>(tr, cls[i]) / tau - lse;
      a[i] = exp(la[i]);
      v[i] = {z[i], A(1)};
    }
  block_scan<true>(v, cnt, tot);
  A log_z[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i)
    if (i < cnt) log_z[i] = v[i].m + log(v[i].s);
  if (kGradS) {
    Lse<A> w[kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i)
      if (i < cnt) w[i] = {la[i] - log_z[i], A(1)};
    block_scan<false>(w, cnt, tot);
#pragma unroll
    for (int i = 0; i < kPer; ++i)
      if (i < cnt) gs[row * C + cls[i]] = store<T, A>(g * (exp(z[i] + w[i].m + log(w[i].s)) - a[i]));
  }
  if (kGradT) {
    A part = A(0);
#pragma unroll
    for (int i = 0; i < kPer; ++i)
      if (i < cnt) part += a[i] * (log_z[i] - z[i]);
    const A L = block_reduce(part, Sum{}, red);
    const A scale = g / tau;
#pragma unroll
    for (int i = 0; i < kPer; ++i)
      if (i < cnt) gt[row * C + cls[i]] = store<T, A>(scale * a[i] * ((log_z[i] - z[i]) - L));
  }
}

template <typename T>
void fwd(const FwdArgs& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  fwd_kernel<T, A><<<static_cast<unsigned>(a.B), kThreads, 0, stream>>>(
      static_cast<const T*>(a.student), static_cast<const T*>(a.teacher), a.labels, static_cast<A*>(a.loss), a.perm,
      static_cast<A*>(a.teacher_lse), a.C, static_cast<A>(a.tau));
}

template <typename T, bool kGradS, bool kGradT>
void bwd_launch(const BwdArgs& a, cudaStream_t stream) {
  using A = typename Acc<T>::type;
  bwd_kernel<T, A, kGradS, kGradT><<<static_cast<unsigned>(a.B), kThreads, 0, stream>>>(
      static_cast<const A*>(a.grad_loss), static_cast<const T*>(a.student), static_cast<const T*>(a.teacher), a.perm,
      static_cast<const A*>(a.teacher_lse), static_cast<T*>(a.grad_student), static_cast<T*>(a.grad_teacher), a.C,
      static_cast<A>(a.tau));
}

template <typename T>
void bwd(const BwdArgs& a, cudaStream_t stream) {
  if (a.grad_student && a.grad_teacher)
    bwd_launch<T, true, true>(a, stream);
  else if (a.grad_student)
    bwd_launch<T, true, false>(a, stream);
  else
    bwd_launch<T, false, true>(a, stream);
}

}  // namespace

cudaError_t pld_fwd_cuda_launch(const FwdArgs& a, DType dtype, cudaStream_t stream) {
  return for_dtype(dtype, [&](auto t) { fwd<decltype(t)>(a, stream); });
}

cudaError_t pld_bwd_cuda_launch(const BwdArgs& a, DType dtype, cudaStream_t stream) {
  return for_dtype(dtype, [&](auto t) { bwd<decltype(t)>(a, stream); });
}

}  // namespace pld
}  // namespace pyfast
