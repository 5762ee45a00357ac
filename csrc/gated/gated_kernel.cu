// Gated attention, CUDA kernels (torch-free: raw pointers and a stream; maths in gated.h).
//   core forward / backward (1): one block per (b, h). Warps take tokens n (a warp-reduced dot product over C), the
//     softmax (or its backward) runs over the N1 scores in shared memory, then threads take channels c and sum over
//     n (coalesced along C). x is read in its dtype, everything else in the arithmetic type A.
//   core backward (2): one block per (b, n), threads over c: gx = [n == 0] gx0 + sum_h attn gzp_h + gs w_h.
//   routing: one thread per gradient element.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "gated/gated.h"

namespace pyfast {
namespace gated {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <class T> __device__ __forceinline__ float to_acc(T v) { return static_cast<float>(v); }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T, class A> __device__ __forceinline__ T from_acc(A v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}

template <class A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <class A>
__device__ __forceinline__ A warp_max(A v) {
  for (int o = 16; o > 0; o >>= 1) {
    const A t = __shfl_xor_sync(0xffffffffu, v, o);
    v = t > v ? t : v;
  }
  return v;
}

// Block-wide reduction of one value per thread (sum, or max with kMax); every thread gets the result.
template <bool kMax, class A>
__device__ A block_reduce(A v, A* red) {
  v = kMax ? warp_max(v) : warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  A r = red[0];
  for (int i = 1; i < kWarps; ++i) r = kMax ? (red[i] > r ? red[i] : r) : r + red[i];
  return r;
}

// s[n] = x[n] . vec for every n (warps over n); vec is [C] in shared memory.
template <class X, class A>
__device__ void token_dots(const X* __restrict__ xb, const A* vec, A* s, int64_t N1, int64_t C) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t n = warp; n < N1; n += kWarps) {
    A acc = A(0);
    for (int64_t c = lane; c < C; c += 32) acc += to_acc(xb[n * C + c]) * vec[c];
    acc = warp_sum(acc);
    if (lane == 0) s[n] = acc;
  }
}

template <class X, class A>
__global__ void core_fwd_kernel(CoreArgs a) {
  extern __shared__ unsigned char smem_raw[];
  A* vec = reinterpret_cast<A*>(smem_raw);  // w[b, h] [C]
  A* s = vec + a.C;                         // scores / attn [N1]
  A* red = s + a.N1;                        // [kWarps]
  const int64_t bh = blockIdx.x, b = bh / a.H;
  const X* xb = static_cast<const X*>(a.x) + b * a.N1 * a.C;
  const A* w = static_cast<const A*>(a.w) + bh * a.C;
  for (int64_t c = threadIdx.x; c < a.C; c += kThreads) vec[c] = w[c];
  __syncthreads();
  token_dots(xb, vec, s, a.N1, a.C);
  __syncthreads();
  A mx = -INFINITY;
  for (int64_t n = threadIdx.x; n < a.N1; n += kThreads) mx = s[n] > mx ? s[n] : mx;
  mx = block_reduce<true>(mx, red);
  A sum = A(0);
  for (int64_t n = threadIdx.x; n < a.N1; n += kThreads) {
    s[n] = exp(s[n] - mx);
    sum += s[n];
  }
  sum = block_reduce<false>(sum, red);
  A* attn = static_cast<A*>(a.attn) + bh * a.N1;
  for (int64_t n = threadIdx.x; n < a.N1; n += kThreads) {
    s[n] /= sum;
    attn[n] = s[n];
  }
  __syncthreads();
  A* zp = static_cast<A*>(a.zp) + bh * a.C;
  for (int64_t c = threadIdx.x; c < a.C; c += kThreads) {
    A acc = A(0);
    for (int64_t n = 0; n < a.N1; ++n) acc += s[n] * to_acc(xb[n * a.C + c]);
    zp[c] = acc;
  }
}

template <class X, class A>
__global__ void core_bwd1_kernel(CoreArgs a) {
  extern __shared__ unsigned char smem_raw[];
  A* vec = reinterpret_cast<A*>(smem_raw);  // gzp[b, h] [C]
  A* gs = vec + a.C;                        // gA, then gs [N1]
  A* p = gs + a.N1;                         // attn [N1]
  A* red = p + a.N1;                        // [kWarps]
  const int64_t bh = blockIdx.x, b = bh / a.H;
  const X* xb = static_cast<const X*>(a.x) + b * a.N1 * a.C;
  const A* gz = static_cast<const A*>(a.gzp) + bh * a.C;
  const A* attn = static_cast<const A*>(a.attn) + bh * a.N1;
  for (int64_t c = threadIdx.x; c < a.C; c += kThreads) vec[c] = gz[c];
  for (int64_t n = threadIdx.x; n < a.N1; n += kThreads) p[n] = attn[n];
  __syncthreads();
  token_dots(xb, vec, gs, a.N1, a.C);
  __syncthreads();
  A t = A(0);
  for (int64_t n = threadIdx.x; n < a.N1; n += kThreads) t += p[n] * gs[n];
  t = block_reduce<false>(t, red);
  A* gs_out = static_cast<A*>(a.gs) + bh * a.N1;
  for (int64_t n = threadIdx.x; n < a.N1; n += kThreads) {
    gs[n] = p[n] * (gs[n] - t);
    gs_out[n] = gs[n];
  }
  __syncthreads();
  A* gw = static_cast<A*>(a.gw) + bh * a.C;
  A* zp = static_cast<A*>(a.zp) + bh * a.C;
  for (int64_t c = threadIdx.x; c < a.C; c += kThreads) {
    A acc_w = A(0), acc_z = A(0);
    for (int64_t n = 0; n < a.N1; ++n) {
      const A xv = to_acc(xb[n * a.C + c]);
      acc_w += gs[n] * xv;
      acc_z += p[n] * xv;
    }
    gw[c] = acc_w;
    zp[c] = acc_z;
  }
}

template <class X, class A>
__global__ void core_bwd2_kernel(CoreArgs a) {
  const int64_t bn = blockIdx.x, b = bn / a.N1, n = bn % a.N1;
  const A* attn = static_cast<const A*>(a.attn) + b * a.H * a.N1 + n;
  const A* gs = static_cast<const A*>(a.gs) + b * a.H * a.N1 + n;
  const A* gz = static_cast<const A*>(a.gzp) + b * a.H * a.C;
  const A* w = static_cast<const A*>(a.w) + b * a.H * a.C;
  const A* g0 = static_cast<const A*>(a.gx0) + b * a.C;
  X* gx = static_cast<X*>(a.gx) + bn * a.C;
  for (int64_t c = threadIdx.x; c < a.C; c += kThreads) {
    A acc = n == 0 ? g0[c] : A(0);
    for (int64_t h = 0; h < a.H; ++h) acc += attn[h * a.N1] * gz[h * a.C + c] + gs[h * a.N1] * w[h * a.C + c];
    gx[c] = from_acc<X, A>(acc);
  }
}

template <class G, class A>
__global__ void route_kernel(RouteArgs r) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (i >= r.rows * r.cols) return;
  G* g = static_cast<G*>(r.g);
  const A* mo = static_cast<const A*>(r.m_out);
  const A* mi = static_cast<const A*>(r.m_in);
  const A keep = A(1) - mo[i / r.cols] * (mi == nullptr ? A(1) : mi[i % r.cols]);
  g[i] = from_acc<G, A>(to_acc(g[i]) * keep);
}

template <class G, class A>
__global__ void comp_kernel(CompArgs c) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x;
  if (i >= c.n) return;
  G* g = static_cast<G*>(c.g);
  const G* e = static_cast<const G*>(c.e);
  g[i] = from_acc<G, A>(to_acc(g[i]) * compensation<A>(to_acc(e[i]), A(c.s), A(c.s_max), A(c.clamp)));
}

template <class X, class A>
cudaError_t core_typed(int pass, const CoreArgs& a, cudaStream_t stream) {
  const size_t vec = static_cast<size_t>(a.C) * sizeof(A), tok = static_cast<size_t>(a.N1) * sizeof(A);
  const size_t red = kWarps * sizeof(A);
  if (pass == 0) {
    const size_t smem = vec + tok + red;
    cudaError_t err = cudaFuncSetAttribute(core_fwd_kernel<X, A>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem));
    if (err != cudaSuccess) return err;
    core_fwd_kernel<X, A><<<static_cast<unsigned>(a.B * a.H), kThreads, smem, stream>>>(a);
  } else if (pass == 1) {
    const size_t smem = vec + 2 * tok + red;
    cudaError_t err = cudaFuncSetAttribute(core_bwd1_kernel<X, A>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem));
    if (err != cudaSuccess) return err;
    core_bwd1_kernel<X, A><<<static_cast<unsigned>(a.B * a.H), kThreads, smem, stream>>>(a);
  } else {
    core_bwd2_kernel<X, A><<<static_cast<unsigned>(a.B * a.N1), kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

// pass: 0 forward, 1 backward (1), 2 backward (2).
cudaError_t gated_core_cuda_launch(int pass, const CoreArgs& a, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32: return core_typed<float, float>(pass, a, stream);
    case DType::Float64: return core_typed<double, double>(pass, a, stream);
    case DType::Float16: return core_typed<__half, float>(pass, a, stream);
    default: return core_typed<__nv_bfloat16, float>(pass, a, stream);
  }
}

cudaError_t gated_route_cuda_launch(const RouteArgs& r, DType dtype, cudaStream_t stream) {
  const unsigned blocks = blocks_for(r.rows * r.cols);
  switch (dtype) {
    case DType::Float32: route_kernel<float, float><<<blocks, kThreads, 0, stream>>>(r); break;
    case DType::Float64: route_kernel<double, double><<<blocks, kThreads, 0, stream>>>(r); break;
    case DType::Float16: route_kernel<__half, float><<<blocks, kThreads, 0, stream>>>(r); break;
    default: route_kernel<__nv_bfloat16, float><<<blocks, kThreads, 0, stream>>>(r); break;
  }
  return cudaGetLastError();
}

cudaError_t gated_comp_cuda_launch(const CompArgs& c, DType dtype, cudaStream_t stream) {
  const unsigned blocks = blocks_for(c.n);
  switch (dtype) {
    case DType::Float32: comp_kernel<float, float><<<blocks, kThreads, 0, stream>>>(c); break;
    case DType::Float64: comp_kernel<double, double><<<blocks, kThreads, 0, stream>>>(c); break;
    case DType::Float16: comp_kernel<__half, float><<<blocks, kThreads, 0, stream>>>(c); break;
    default: comp_kernel<__nv_bfloat16, float><<<blocks, kThreads, 0, stream>>>(c); break;
  }
  return cudaGetLastError();
}

}  // namespace gated
}  // namespace pyfast
