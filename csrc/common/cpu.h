// CPU helpers shared by the kernels that ship per-ISA clones of their loops: which clone to run,
// and the transparent-huge-page hint for large fresh outputs.
#pragma once

#include <cstdint>
#include <cstdlib>

#ifdef __linux__
#include <sys/mman.h>
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PYFAST_X86_CLONES 1
#endif

namespace pyfast {
namespace cpu {

enum class Isa : int { Baseline = 0, Avx2 = 1, Avx512 = 2 };

// The widest clone this CPU runs. PYFAST_CPU_BASELINE=1 forces the baseline loops (read once per process; the tests
// use it to cover both builds).
inline Isa isa() {
#ifdef PYFAST_X86_CLONES
  static const Isa best = [] {
    if (std::getenv("PYFAST_CPU_BASELINE") != nullptr) return Isa::Baseline;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return Isa::Avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
    return Isa::Baseline;
  }();
  return best;
#else
  return Isa::Baseline;
#endif
}

// Large outputs are fresh mappings (glibc mmaps allocations of 32 MiB and more on every call) whose first-touch page
// faults cost about as much as a streaming loop; asking for transparent huge pages before the first write makes
// 512x fewer faults. A hint only: where THP is off, or the range holds no whole 2 MiB page, nothing changes.
inline void advise_huge_pages(void* data, int64_t bytes) {
#ifdef __linux__
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

}  // namespace cpu
}  // namespace pyfast
