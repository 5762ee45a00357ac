// The floating dtypes a kernel is launched for, as torch-free code (the .cu files, the shared maths headers) sees
// them (csrc/common/host.h maps ATen's scalar types onto it), and the host/device function qualifier.
#pragma once

// Functions shared by host and device code (the ops' maths headers).
#ifndef PYFAST_HD
#if defined(__CUDACC__)
#define PYFAST_HD __host__ __device__ __forceinline__
#else
#define PYFAST_HD inline
#endif
#endif

namespace pyfast {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

}  // namespace pyfast
