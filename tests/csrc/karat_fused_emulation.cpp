// CPU emulation of the fused Fourier-KArAt CUDA kernels (csrc/karat/karat_fused.h): the same per-thread functions,
// run for every thread index of a launch in turn (parts x rows, as karat_kernel.cu lays them out), as plain C entry
// points for ctypes (tests/ops/test_karat_fused_emulation.py). float32 only, as the CUDA kernels run; kD = 64 or 128
// as karat_kernel.cu picks.
#include <cstdint>

#include "karat/karat_fused.h"

namespace fused = pyfast::karat::fused;

extern "C" {

// z_part [parts, BH, N, r]: partial sums over the parts' key ranges.
void karat_fused_fwd(const float* q, const float* k, const float* C, int64_t BH, int64_t N, int64_t D, int64_t r,
                     int G, int64_t H, float scale, int64_t parts, float* z_part) {
  const int64_t rows = BH * N;
  for (int64_t part = 0; part < parts; ++part)
    for (int64_t row = 0; row < rows; ++row) {
      int64_t j0, j1;
      fused::part_range(N, parts, part, j0, j1);
      float* z = z_part + part * rows * r;
      if (D <= 64)
        fused::fwd_row<float, 64>(row, j0, j1, q, k, C, N, D, r, G, H, scale, z);
      else
        fused::fwd_row<float, 128>(row, j0, j1, q, k, C, N, D, r, G, H, scale, z);
    }
}

// gS [BH, N, N]; z_part [parts, BH, N, r] (or null) and gC_part [parts, BH, r, 2 G N]: partial sums over the parts.
void karat_fused_bwd(const float* gz, const float* q, const float* k, const float* C, int64_t BH, int64_t N,
                     int64_t D, int64_t r, int G, int64_t H, float scale, int64_t parts, float* gS, float* z_part,
                     float* gC_part) {
  const int64_t n = BH * N;
  for (int64_t part = 0; part < parts; ++part)
    for (int64_t i = 0; i < n; ++i) {
      int64_t b0, b1;
      fused::part_range(N, parts, part, b0, b1);
      float* z = z_part != nullptr ? z_part + part * n * r : nullptr;
      float* gC = gC_part + part * BH * r * 2 * G * N;
      if (D <= 64) {
        fused::grad_scores_row<float, 64>(i, b0, b1, gz, q, k, C, N, D, r, G, H, scale, gS, z);
        fused::coef_grad_column<float, 64>(i, b0, b1, gz, q, k, N, D, r, G, scale, gC);
      } else {
        fused::grad_scores_row<float, 128>(i, b0, b1, gz, q, k, C, N, D, r, G, H, scale, gS, z);
        fused::coef_grad_column<float, 128>(i, b0, b1, gz, q, k, N, D, r, G, scale, gC);
      }
    }
}

}  // extern "C"
