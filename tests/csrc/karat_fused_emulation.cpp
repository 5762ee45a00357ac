// CPU emulation of the fused Fourier-KArAt CUDA kernels (csrc/karat/karat_fused.h): the same per-thread functions,
// run for every thread index of a launch in turn (fused::task_of, as in karat_kernel.cu), as plain C entry points for
// ctypes (tests/ops/test_karat_fused_emulation.py), and their sincos. float32 only, as the CUDA kernels run; the raw scores S = Q K^T
// and ST = K Q^T ([BH, N, N]) come from the caller, as they come from cuBLAS on the GPU, and so do the key-major
// coefficients Ck [H, N, 2 G, R4] and g_z [BH, N, R4] (rank padded to R4 = fused::padded_rank(r)).
#include <cstdint>

#include "karat/karat_fused.h"

namespace fused = pyfast::karat::fused;

extern "C" {

// z_part [parts, BH, N, r]: partial sums over the parts' key ranges.
void karat_fused_fwd(const float* ST, const float* Ck, int64_t BH, int64_t N, int64_t r, int G, int64_t H, float scale,
                     int64_t parts, float* z_part) {
  const int64_t rows = BH * N;
  fused::with_fused_shape(G, r, [&](auto g, auto rv) {
    fused::Task t;
    for (int64_t idx = 0; fused::task_of(idx, rows, parts, N, t); ++idx)
      fused::fwd_row<g, rv>(t.item, t.begin, t.end, ST, Ck, N, r, H, scale, z_part + t.part * rows * r);
  });
}

// gST [BH, N, N] (the score gradient, transposed); z_part [parts, BH, N, r] (or null) and
// gC_part [parts * B, 2, H, r, N, G]: partial sums over the parts.
void karat_fused_bwd(const float* gz, const float* S, const float* ST, const float* Ck, int64_t BH, int64_t N,
                     int64_t r, int G, int64_t H, float scale, int64_t parts, float* gST, float* z_part,
                     float* gC_part) {
  const int64_t n = BH * N;
  fused::with_fused_shape(G, r, [&](auto g, auto rv) {
    fused::Task t;
    for (int64_t idx = 0; fused::task_of(idx, n, parts, N, t); ++idx) {
      float* z = z_part != nullptr ? z_part + t.part * n * r : nullptr;
      fused::grad_scores_row<g, rv>(t.item, t.begin, t.end, gz, ST, Ck, N, r, H, scale, gST, z);
      fused::coef_grad_column<g, rv>(t.item, t.begin, t.end, gz, S, N, r, H, scale, gC_part + t.part * n * r * 2 * G);
    }
  });
}

// s[i], c[i] = sin, cos of x[i] as every fused kernel computes them (karat.h sincos_any), or by the exact reduction
// alone (reduce_huge, which sincos_any uses from 2^30 on) when `exact`.
void karat_sincos(const float* x, int64_t n, int exact, float* s, float* c) {
  namespace karat = pyfast::karat;
  for (int64_t i = 0; i < n; ++i) {
    if (exact)
      karat::sincos_quadrant(karat::reduce_huge(x[i]), s[i], c[i]);
    else
      karat::sincos_any(x[i], s[i], c[i]);
  }
}

}  // extern "C"
