// Fourier-KArAt, CUDA kernels of the basis contraction (maths in karat.h). Torch-free: raw pointers, sizes and a
// cudaStream_t; launched from karat_cuda.cpp on the current stream, between the tile's cuBLAS GEMMs.
//   basis        one thread per (score row, q): one sincos of scale * S, then the G harmonics by the angle-addition
//                recurrence, written to the row's basis Bas[row, (t * G + m - 1) * N + q] (coalesced over q).
//   grad_scores  one thread per (score row, q): gS = scale * sum_m m (E_s cos(m A) - E_c sin(m A)), reading the same
//                basis tile and E = g_z C.
//   fused_*      the fused path (karat_fused.h): one thread per score row (forward; score gradient) or per score
//                column (coefficient gradient) and range of keys (rows), reading the raw scores cuBLAS made;
//                nothing of size N x N x G anywhere; float arithmetic only.
// Arithmetic in float (double for double inputs); the host passes the tensors already in that type.
#include <cuda_runtime.h>

#include <cstdint>

#include "karat/karat.h"
#include "karat/karat_fused.h"
#include "karat/karat_launch.h"

namespace pyfast {
namespace karat {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ void sincos_dev(float x, float* s, float* c) { sincosf(x, s, c); }
__device__ __forceinline__ void sincos_dev(double x, double* s, double* c) { sincos(x, s, c); }

template <class A>
__global__ void basis_kernel(const A* __restrict__ S, int64_t rows, int64_t N, int G, A scale, A* __restrict__ bas) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * N) return;
  const int64_t row = i / N, q = i - row * N;
  A* c = bas + row * 2 * G * N + q;
  A* s = c + G * N;
  A s1, c1;
  sincos_dev(scale * S[i], &s1, &c1);
  A cm = c1, sm = s1;
  c[0] = c1;
  s[0] = s1;
  for (int m = 1; m < G; ++m) {
    next_harmonic(c1, s1, cm, sm, cm, sm);
    c[m * N] = cm;
    s[m * N] = sm;
  }
}

template <class A>
__global__ void grad_scores_kernel(const A* __restrict__ bas, const A* __restrict__ E, int64_t rows, int64_t N, int G,
                                   A scale, A* __restrict__ gS) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * N) return;
  const int64_t row = i / N, q = i - row * N;
  const int64_t off = row * 2 * G * N + q;
  A g = A(0);
  for (int m = 1; m <= G; ++m) {
    const int64_t j = off + (m - 1) * N;
    g += static_cast<A>(m) * (E[j + G * N] * bas[j] - E[j] * bas[j + G * N]);
  }
  gS[i] = scale * g;
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

constexpr int kFusedThreads = 128;

// A thread's task and its part's output slice: fused::task_of; kG, kRV: fused::with_fused_shape (karat_fused.h).
template <int kG, int kRV>
__global__ void __launch_bounds__(kFusedThreads)
    fused_fwd_kernel(const float* __restrict__ ST, const float* __restrict__ Ck, int64_t rows, int64_t parts,
                     int64_t N, int64_t r, int64_t H, float scale, float* __restrict__ z_part) {
  fused::Task t;
  if (fused::task_of(static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, rows, parts, N, t))
    fused::fwd_row<kG, kRV>(t.item, t.begin, t.end, ST, Ck, N, r, H, scale, z_part + t.part * rows * r);
}

template <int kG, int kRV>
__global__ void __launch_bounds__(kFusedThreads)
    fused_grad_scores_kernel(const float* __restrict__ gz, const float* __restrict__ ST, const float* __restrict__ Ck,
                             int64_t rows, int64_t parts, int64_t N, int64_t r, int64_t H, float scale,
                             float* __restrict__ gST, float* __restrict__ z_part) {
  fused::Task t;
  if (fused::task_of(static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, rows, parts, N, t))
    fused::grad_scores_row<kG, kRV>(t.item, t.begin, t.end, gz, ST, Ck, N, r, H, scale, gST,
                                    z_part != nullptr ? z_part + t.part * rows * r : nullptr);
}

template <int kG, int kRV>
__global__ void __launch_bounds__(kFusedThreads)
    fused_coef_grad_kernel(const float* __restrict__ gz, const float* __restrict__ S, int64_t cols, int64_t parts,
                           int64_t N, int64_t r, int64_t H, float scale, float* __restrict__ gC_part) {
  fused::Task t;
  if (fused::task_of(static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, cols, parts, N, t))
    fused::coef_grad_column<kG, kRV>(t.item, t.begin, t.end, gz, S, N, r, H, scale,
                                     gC_part + t.part * cols * r * 2 * kG);  // cols * 2 G r = B 2 H r N G
}

unsigned fused_blocks(int64_t n) { return static_cast<unsigned>((n + kFusedThreads - 1) / kFusedThreads); }

}  // namespace

cudaError_t karat_basis_cuda_launch(const void* S, void* bas, int64_t rows, int64_t N, int G, double scale,
                                    DType acc, cudaStream_t stream) {
  if (rows * N == 0) return cudaSuccess;
  if (acc == DType::Float64)
    basis_kernel<double><<<blocks_for(rows * N), kThreads, 0, stream>>>(static_cast<const double*>(S), rows, N, G,
                                                                         scale, static_cast<double*>(bas));
  else
    basis_kernel<float><<<blocks_for(rows * N), kThreads, 0, stream>>>(
        static_cast<const float*>(S), rows, N, G, static_cast<float>(scale), static_cast<float*>(bas));
  return cudaGetLastError();
}

cudaError_t karat_grad_scores_cuda_launch(const void* bas, const void* E, void* gS, int64_t rows, int64_t N, int G,
                                          double scale, DType acc, cudaStream_t stream) {
  if (rows * N == 0) return cudaSuccess;
  if (acc == DType::Float64)
    grad_scores_kernel<double><<<blocks_for(rows * N), kThreads, 0, stream>>>(
        static_cast<const double*>(bas), static_cast<const double*>(E), rows, N, G, scale, static_cast<double*>(gS));
  else
    grad_scores_kernel<float><<<blocks_for(rows * N), kThreads, 0, stream>>>(
        static_cast<const float*>(bas), static_cast<const float*>(E), rows, N, G, static_cast<float>(scale),
        static_cast<float*>(gS));
  return cudaGetLastError();
}

// Fused forward: partial sums z_part [parts, BH, N, r] (parts ranges of the keys; the caller adds them) from the
// transposed raw scores ST [BH, N, N] (ST[bh, q, k] = <K[q], Q[k]>) and the key-major coefficients Ck
// [H, N, 2 G, R4] (karat_fused.h; 16-byte aligned), all float.
cudaError_t karat_fused_fwd_launch(const float* ST, const float* Ck, float* z_part, int64_t BH, int64_t N, int64_t r,
                                   int G, int64_t H, double scale, int64_t parts, cudaStream_t stream) {
  const int64_t rows = BH * N;
  if (rows == 0) return cudaSuccess;
  fused::with_fused_shape(G, r, [&](auto g, auto rv) {
    fused_fwd_kernel<g, rv><<<fused_blocks(rows * parts), kFusedThreads, 0, stream>>>(
        ST, Ck, rows, parts, N, r, H, static_cast<float>(scale), z_part);
  });
  return cudaGetLastError();
}

// Fused backward, from g_z [BH, N, R4] and Ck [H, N, 2 G, R4] (karat_fused.h; 16-byte aligned) and the raw scores S
// and ST [BH, N, N]: the transposed score gradient gST [BH, N, N], z's partial sums z_part [parts, BH, N, r] when not
// null, and the coefficient gradients' partial sums gC_part [parts * B, 2, H, r, N, G] (parts ranges of the rows;
// karat_fused.h coef_grad_column).
cudaError_t karat_fused_bwd_launch(const float* gz, const float* S, const float* ST, const float* Ck, float* gST,
                                   float* z_part, float* gC_part, int64_t BH, int64_t N, int64_t r, int G, int64_t H,
                                   double scale, int64_t parts, cudaStream_t stream) {
  const int64_t n = BH * N;
  if (n == 0) return cudaSuccess;
  const float sc = static_cast<float>(scale);
  const unsigned blocks = fused_blocks(n * parts);
  fused::with_fused_shape(G, r, [&](auto g, auto rv) {
    fused_grad_scores_kernel<g, rv><<<blocks, kFusedThreads, 0, stream>>>(gz, ST, Ck, n, parts, N, r, H, sc, gST,
                                                                          z_part);
    fused_coef_grad_kernel<g, rv><<<blocks, kFusedThreads, 0, stream>>>(gz, S, n, parts, N, r, H, sc, gC_part);
  });
  return cudaGetLastError();
}

}  // namespace karat
}  // namespace pyfast
