// LIF / IF neuron, the CUDA launchers of lif_kernel.cu (torch-free): lif_cuda.cpp calls them after its checks, on
// the current stream; bench/kernel_sweep.cu times them on raw buffers.
#pragma once

#include <cuda_runtime.h>

#include "lif/lif.h"

namespace pyfast {
namespace lif {

cudaError_t lif_fwd_cuda_launch(const FwdArgs& a, DType dtype, cudaStream_t stream);
cudaError_t lif_bwd_cuda_launch(const BwdArgs& a, DType dtype, cudaStream_t stream);

#ifdef PYFAST_KERNEL_SWEEP
// bench/kernel_sweep.cu only, never in _C: the float16 backward (sigmoid surrogate, no grad_k / grad_v_th) at `width`
// neurons per thread (1, 2, 4 or 8) and `chunk` time steps whose loads are in flight together (2, 4, 8 or 16), so
// that the alternatives to lif_bwd_cuda_launch's choice are timed side by side. cudaErrorInvalidValue for other
// values, or when N or a pointer does not allow the width.
cudaError_t lif_bwd_half_variant_launch(const BwdArgs& a, int width, int chunk, cudaStream_t stream);
#endif

}  // namespace lif
}  // namespace pyfast
