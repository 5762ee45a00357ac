// Fourier-KArAt, the CUDA launchers of karat_kernel.cu (torch-free): karat_cuda.cpp calls them between its cuBLAS
// GEMMs, on the current stream; bench/kernel_sweep.cu times the fused ones on raw buffers. Shapes and layouts are
// given where they are defined, in karat_kernel.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "karat/karat.h"

namespace pyfast {
namespace karat {

cudaError_t karat_fused_fwd_launch(const float* ST, const float* Ck, float* z_part, int64_t BH, int64_t N, int64_t r,
                                   int G, int64_t H, double scale, int64_t parts, cudaStream_t stream);
cudaError_t karat_fused_bwd_launch(const float* gz, const float* S, const float* ST, const float* Ck, float* gST,
                                   float* z_part, float* gC_part, int64_t BH, int64_t N, int64_t r, int G, int64_t H,
                                   double scale, int64_t parts, cudaStream_t stream);
cudaError_t karat_basis_cuda_launch(const void* S, void* bas, int64_t rows, int64_t N, int G, double scale,
                                    DType acc, cudaStream_t stream);
cudaError_t karat_grad_scores_cuda_launch(const void* bas, const void* E, void* gS, int64_t rows, int64_t N, int G,
                                          double scale, DType acc, cudaStream_t stream);

}  // namespace karat
}  // namespace pyfast
