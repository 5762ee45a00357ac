// The floating dtypes a kernel is launched for, as torch-free code (the .cu files, the shared maths headers) sees
// them; csrc/common/host.h maps ATen's scalar types onto it.
#pragma once

namespace pyfast {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

}  // namespace pyfast
