// LIF / IF neuron, CUDA kernels: forward and BPTT backward (the maths is in lif.h). Torch-free: raw pointers,
// sizes and a cudaStream_t, so this file compiles in seconds; lif_cuda.cpp does the checks and the launch.
//
// One thread owns V neighbouring neurons for all T steps (the recurrence is sequential in t only), so global
// traffic is exactly one read of each input and one write of each output, coalesced across the warp: a warp
// touches 32 * V consecutive elements per time step. Forward: V = 16 bytes / sizeof(storage), or 1 when N or a
// pointer does not allow the vector access. Backward, which keeps more live values per neuron (gradient carries,
// surrogate): V = 1 for float32 and float64, V = 2 for the 16-bit types, so a warp's access of one step is a whole
// 128-byte line in every dtype, and it loads kBwdChunk steps at once before computing them: what limits it is the
// bytes in flight. The measurements behind these choices are in bench/RESULTS.md ("LIF CUDA kernel"), and
// bench/kernel_sweep.cu times every width and chunk beside them.
// Arithmetic is float32 (float64 for double, k / v_th and their gradients included).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_dtype.cuh"
#include "lif/lif.h"
#include "lif/lif_launch.h"

namespace pyfast {
namespace lif {
namespace {

constexpr int kThreads = 256;
constexpr int kBwdChunk = 8;  // backward time steps whose loads are in flight together (lif_bwd_kernel's kChunk)

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T e[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> load(const T* base, int64_t i) {
  return *reinterpret_cast<const Pack<T, V>*>(base + i);
}

// A pack is stored with one st.global of its whole width, in inline PTX the compiler cannot split. Assigning the
// struct, or a word built from it, left the unrolled forward storing a 16-byte pack as four 4-byte pieces and the
// backward a pair of halves as two 2-byte ones (PTX of nvcc 13.0); CUDA's __stwb keeps the width but makes the store
// a strong one (STG.STRONG.SM), a needless ordering constraint.
__device__ __forceinline__ void store_word(void* p, const Pack<unsigned short, 1>& w) {
  asm("st.global.u16 [%0], %1;" ::"l"(p), "h"(w.e[0]) : "memory");
}
__device__ __forceinline__ void store_word(void* p, const Pack<unsigned, 1>& w) {
  asm("st.global.u32 [%0], %1;" ::"l"(p), "r"(w.e[0]) : "memory");
}
__device__ __forceinline__ void store_word(void* p, const Pack<unsigned, 2>& w) {
  asm("st.global.v2.u32 [%0], {%1, %2};" ::"l"(p), "r"(w.e[0]), "r"(w.e[1]) : "memory");
}
__device__ __forceinline__ void store_word(void* p, const Pack<unsigned, 4>& w) {
  asm("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(w.e[0]), "r"(w.e[1]), "r"(w.e[2]), "r"(w.e[3])
      : "memory");
}

// The words of a pack of kBytes bytes, as store_word takes them.
template <int kBytes>
struct WordsOf {
  using type = Pack<unsigned, kBytes / 4>;
};
template <>
struct WordsOf<2> {
  using type = Pack<unsigned short, 1>;
};

template <typename T, int V>
__device__ __forceinline__ void store(T* base, int64_t i, const Pack<T, V>& p) {
  typename WordsOf<sizeof(p)>::type w;
  static_assert(sizeof(w) == sizeof(p), "a pack is 2, 4, 8 or 16 bytes");
  memcpy(&w, &p, sizeof(p));
  store_word(base + i, w);
}

template <typename T, int V, bool kStoreH>
__global__ void __launch_bounds__(kThreads) lif_fwd_kernel(FwdArgs a) {
  using A = typename Acc<T>::type;
  const int64_t i0 = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * V;
  if (i0 >= a.N) return;
  const Config c = a.cfg;
  const T* x = static_cast<const T*>(a.x);
  A v[V], k[V], th[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    k[j] = static_cast<const A*>(a.k)[(i0 + j) * a.k_stride];
    th[j] = static_cast<const A*>(a.v_th)[(i0 + j) * a.v_th_stride];
    v[j] = a.v0 ? to_acc(static_cast<const T*>(a.v0)[i0 + j]) : initial_membrane<A>(c);
  }
#pragma unroll 4
  for (int64_t t = 0; t < a.T; ++t) {
    const int64_t off = t * a.N + i0;
    const Pack<T, V> xt = load<T, V>(x, off);
    Pack<T, V> st, ht;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      // Fire and reset on H rounded to the storage dtype: the backward recomputes S from that same value.
      ht.e[j] = from_acc<T>(charge(v[j], to_acc(xt.e[j]), k[j], c));
      const A h = to_acc(ht.e[j]);
      const A s = fire(h, th[j]);
      st.e[j] = from_acc<T>(s);
      v[j] = reset(h, s, th[j], c);
    }
    store<T, V>(static_cast<T*>(a.spikes), off, st);
    if (kStoreH) store<T, V>(static_cast<T*>(a.h_seq), off, ht);
  }
  Pack<T, V> vl;
#pragma unroll
  for (int j = 0; j < V; ++j) vl.e[j] = from_acc<T>(v[j]);
  store<T, V>(static_cast<T*>(a.v_last), i0, vl);
}

template <typename T, int V, Surrogate kSurrogate, bool kGradK, bool kGradVth, int kChunk = kBwdChunk>
__global__ void __launch_bounds__(kThreads) lif_bwd_kernel(BwdArgs a) {
  using A = typename Acc<T>::type;
  const int64_t i0 = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * V;
  if (i0 >= a.N) return;
  const Config c = a.cfg;
  const T* h_seq = static_cast<const T*>(a.h_seq);
  const T* grad_s = static_cast<const T*>(a.grad_spikes);
  const T* x = static_cast<const T*>(a.x);
  A gv[V], gk[V], gth[V], k[V], th[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    k[j] = static_cast<const A*>(a.k)[(i0 + j) * a.k_stride];
    th[j] = static_cast<const A*>(a.v_th)[(i0 + j) * a.v_th_stride];
    gv[j] = a.grad_v_last ? to_acc(static_cast<const T*>(a.grad_v_last)[i0 + j]) : A(0);
    gk[j] = A(0);
    gth[j] = A(0);
  }
  // The steps run in chunks of kChunk, newest first: every load of a chunk (grad_s, H, x and, with grad_k, the H of
  // the step below the chunk) is issued before its first store. The compiler may not move a load above a store to
  // grad_x (the pointers could alias), so loading step by step would keep one step's loads in flight per thread and
  // leave the backward latency-bound; a chunk keeps kChunk steps in flight.
  for (int64_t t_hi = a.T - 1; t_hi >= 0; t_hi -= kChunk) {
    Pack<T, V> gs[kChunk], h[kChunk + 1], xt[kChunk];  // h[u] = H at step t_hi - u; h[kChunk] = H below the chunk
#pragma unroll
    for (int u = 0; u <= kChunk; ++u) {
      const int64_t t = t_hi - u;
      if (t < 0 || (u == kChunk && !kGradK)) continue;
      h[u] = load<T, V>(h_seq, t * a.N + i0);
      if (u == kChunk) continue;
      gs[u] = load<T, V>(grad_s, t * a.N + i0);
      if (kGradK && x) xt[u] = load<T, V>(x, t * a.N + i0);
    }
#pragma unroll
    for (int u = 0; u < kChunk; ++u) {
      const int64_t t = t_hi - u;
      if (t < 0) continue;
      Pack<T, V> gx;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const StepGrad<A> g =
            backward_step<kSurrogate>(to_acc(gs[u].e[j]), gv[j], to_acc(h[u].e[j]), th[j], c);
        gx.e[j] = from_acc<T>(charge_grad_x(k[j], c) * g.grad_h);
        if (kGradVth) gth[j] += g.grad_vth;
        if (kGradK) {
          A v_prev;
          if (t > 0) {
            const A hp = to_acc(h[u + 1].e[j]);
            v_prev = reset(hp, fire(hp, th[j]), th[j], c);
          } else {
            v_prev = a.v0 ? to_acc(static_cast<const T*>(a.v0)[i0 + j]) : initial_membrane<A>(c);
          }
          gk[j] += g.grad_h * charge_grad_k(x ? to_acc(xt[u].e[j]) : A(0), v_prev, c);
        }
        gv[j] = (A(1) - k[j]) * g.grad_h;
      }
      store<T, V>(static_cast<T*>(a.grad_x), t * a.N + i0, gx);
    }
  }
  Pack<T, V> g0;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    g0.e[j] = from_acc<T>(gv[j]);
    if (kGradK) static_cast<A*>(a.grad_k)[i0 + j] = gk[j];
    if (kGradVth) static_cast<A*>(a.grad_v_th)[i0 + j] = gth[j];
  }
  store<T, V>(static_cast<T*>(a.grad_v0), i0, g0);
}

bool aligned(const void* p, int bytes) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Neurons per thread: kWidth when N and every [T, N] / [N] pointer read or written as a vector allow it, else 1.
template <typename T, int kWidth>
int vector_width(int64_t n, std::initializer_list<const void*> ptrs) {
  if (n % kWidth != 0) return 1;
  for (const void* p : ptrs)
    if (!aligned(p, kWidth * sizeof(T))) return 1;
  return kWidth;
}

int64_t blocks_for(int64_t n, int v) { return (n / v + kThreads - 1) / kThreads; }

template <typename T>
void fwd(const FwdArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int v = vector_width<T, kVec>(a.N, {a.x, a.v0, a.spikes, a.h_seq, a.v_last});
  const dim3 grid(static_cast<unsigned>(blocks_for(a.N, v)));
  if (v == kVec) {
    if (a.h_seq) lif_fwd_kernel<T, kVec, true><<<grid, kThreads, 0, stream>>>(a);
    else lif_fwd_kernel<T, kVec, false><<<grid, kThreads, 0, stream>>>(a);
  } else {
    if (a.h_seq) lif_fwd_kernel<T, 1, true><<<grid, kThreads, 0, stream>>>(a);
    else lif_fwd_kernel<T, 1, false><<<grid, kThreads, 0, stream>>>(a);
  }
}

// The surrogate is a template argument (lif.h with_surrogate): with a run-time switch in every step, the steps of a
// chunk could not overlap their surrogates (exp and division for the sigmoid), which depend on H alone.
template <typename T, int V>
void bwd_launch(const BwdArgs& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(blocks_for(a.N, V)));
  with_surrogate(a.cfg.surrogate, [&](auto surrogate) {
    constexpr Surrogate S = decltype(surrogate)::value;
    if (a.grad_k) {
      if (a.grad_v_th) lif_bwd_kernel<T, V, S, true, true><<<grid, kThreads, 0, stream>>>(a);
      else lif_bwd_kernel<T, V, S, true, false><<<grid, kThreads, 0, stream>>>(a);
    } else {
      if (a.grad_v_th) lif_bwd_kernel<T, V, S, false, true><<<grid, kThreads, 0, stream>>>(a);
      else lif_bwd_kernel<T, V, S, false, false><<<grid, kThreads, 0, stream>>>(a);
    }
  });
}

// The backward's neurons per thread: kBwdWidth<T> (2 for the 16-bit types, so a warp's access of a step is 128 bytes,
// a whole cache line, as for float32) when N and the vector pointers allow it, else 1.
template <typename T>
constexpr int kBwdWidth = sizeof(T) == 2 ? 2 : 1;

template <typename T>
void bwd(const BwdArgs& a, cudaStream_t stream) {
  constexpr int kWidth = kBwdWidth<T>;
  if (kWidth > 1 &&
      vector_width<T, kWidth>(a.N, {a.grad_spikes, a.h_seq, a.x, a.grad_x, a.grad_v0}) == kWidth)
    bwd_launch<T, kWidth>(a, stream);
  else
    bwd_launch<T, 1>(a, stream);
}

}  // namespace

cudaError_t lif_fwd_cuda_launch(const FwdArgs& a, DType dtype, cudaStream_t stream) {
  return for_dtype(dtype, [&](auto t) { fwd<decltype(t)>(a, stream); });
}

cudaError_t lif_bwd_cuda_launch(const BwdArgs& a, DType dtype, cudaStream_t stream) {
  return for_dtype(dtype, [&](auto t) { bwd<decltype(t)>(a, stream); });
}

#ifdef PYFAST_KERNEL_SWEEP
namespace {
template <int V>
cudaError_t half_variant(const BwdArgs& a, int chunk, cudaStream_t stream) {
  if (vector_width<__half, V>(a.N, {a.grad_spikes, a.h_seq, a.x, a.grad_x, a.grad_v0}) != V)
    return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks_for(a.N, V)));
  constexpr Surrogate S = Surrogate::Sigmoid;
  switch (chunk) {
    case 2: lif_bwd_kernel<__half, V, S, false, false, 2><<<grid, kThreads, 0, stream>>>(a); break;
    case 4: lif_bwd_kernel<__half, V, S, false, false, 4><<<grid, kThreads, 0, stream>>>(a); break;
    case 8: lif_bwd_kernel<__half, V, S, false, false, 8><<<grid, kThreads, 0, stream>>>(a); break;
    case 16: lif_bwd_kernel<__half, V, S, false, false, 16><<<grid, kThreads, 0, stream>>>(a); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
}  // namespace

cudaError_t lif_bwd_half_variant_launch(const BwdArgs& a, int width, int chunk, cudaStream_t stream) {
  if (a.grad_k != nullptr || a.grad_v_th != nullptr || a.cfg.surrogate != Surrogate::Sigmoid)
    return cudaErrorInvalidValue;
  switch (width) {
    case 1: return half_variant<1>(a, chunk, stream);
    case 2: return half_variant<2>(a, chunk, stream);
    case 4: return half_variant<4>(a, chunk, stream);
    case 8: return half_variant<8>(a, chunk, stream);
    default: return cudaErrorInvalidValue;
  }
}
#endif

}  // namespace lif
}  // namespace pyfast
