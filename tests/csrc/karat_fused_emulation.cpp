// CPU emulation of the fused Fourier-KArAt CUDA kernels (csrc/karat/karat_fused.h): the same per-thread functions,
// run for every thread index in turn, as plain C entry points for ctypes (tests/ops/test_karat_fused_emulation.py).
// float32 only, as the CUDA kernels run for float32 and half inputs; kD = 64 or 128 as karat_kernel.cu picks.
#include <cstdint>

#include "karat/karat_fused.h"

namespace fused = pyfast::karat::fused;

extern "C" {

void karat_fused_fwd(const float* q, const float* k, const float* C, int64_t BH, int64_t N, int64_t D, int64_t r,
                     int G, int64_t H, float scale, float* z) {
  for (int64_t row = 0; row < BH * N; ++row) {
    if (D <= 64)
      fused::fwd_row<float, 64>(row, q, k, C, N, D, r, G, H, scale, z);
    else
      fused::fwd_row<float, 128>(row, q, k, C, N, D, r, G, H, scale, z);
  }
}

// gS [BH, N, N], z [BH, N, r] (or null), gC_part [BH, r, 2 G N].
void karat_fused_bwd(const float* gz, const float* q, const float* k, const float* C, int64_t BH, int64_t N,
                     int64_t D, int64_t r, int G, int64_t H, float scale, float* gS, float* z, float* gC_part) {
  for (int64_t i = 0; i < BH * N; ++i) {
    if (D <= 64) {
      fused::grad_scores_row<float, 64>(i, gz, q, k, C, N, D, r, G, H, scale, gS, z);
      fused::coef_grad_column<float, 64>(i, gz, q, k, N, D, r, G, scale, gC_part);
    } else {
      fused::grad_scores_row<float, 128>(i, gz, q, k, C, N, D, r, G, H, scale, gS, z);
      fused::coef_grad_column<float, 128>(i, gz, q, k, N, D, r, G, scale, gC_part);
    }
  }
}

}  // extern "C"
