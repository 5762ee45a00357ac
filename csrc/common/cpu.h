// CPU helpers shared by the kernels that ship per-ISA clones of their loops: which clone to run, the
// transparent-huge-page hint for large fresh outputs, and streaming (non-temporal) stores for outputs too large to
// stay cached.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif
#if defined(__x86_64__)
#include <emmintrin.h>  // SSE2, part of every x86-64: usable from the baseline clone as well as the vector ones
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

// Bytes of the last-level cache of CPU 0: the kernel's report (/sys/devices/system/cpu/cpu0/cache/index*/, the
// highest level), else the C library's, else 32 MiB. The kernel's comes first because glibc reads CPUID, which
// virtual machines fill loosely (320 MiB of L3 on a 32 MiB KVM guest seen here).
inline int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int64_t best = 0;
    int best_level = 0;
#ifdef __linux__
    // One sysfs file holds one number ("3"; "32768K"): read it, with its unit suffix if any.
    const auto read = [](int index, const char* name, long long& value, char& unit) {
      char path[96];
      std::snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu0/cache/index%d/%s", index, name);
      std::FILE* f = std::fopen(path, "r");
      if (f == nullptr) return false;
      unit = ' ';
      const int got = std::fscanf(f, "%lld%c", &value, &unit);
      std::fclose(f);
      return got >= 1;
    };
    for (int i = 0; i < 16; ++i) {
      long long level = 0, size = 0;
      char unit = ' ';
      if (!read(i, "level", level, unit) || level < best_level || !read(i, "size", size, unit)) continue;
      const int64_t value = size << (unit == 'K' ? 10 : unit == 'M' ? 20 : 0);
      if (value > 0) best = value, best_level = static_cast<int>(level);
    }
#if defined(_SC_LEVEL3_CACHE_SIZE)
    if (best <= 0) best = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
#endif
    return best > 0 ? best : int64_t{32} << 20;
  }();
  return bytes;
}

// Whether a loop should write an output of `bytes` with streaming stores (stream_copy): from a quarter of the
// last-level cache up. The output and the input it is computed from then fill half of that cache, and the rest of
// the working set (other layers' tensors, weights, the other cores' data) the other half, so the output would not
// stay cached for its consumer anyway; ordinary stores would first read every output line from memory
// (read-for-ownership: a third of the traffic of y = f(x)) and push the input out on the way, while streaming stores
// write whole lines straight to memory. glibc's memcpy switches to streaming stores at a similar fraction of the L3.
// Smaller outputs stay cached. PYFAST_STREAM_MIN_BYTES=<n> sets the threshold instead (read once per process; the
// tests use it to stream every output, or none).
inline bool stream_output(int64_t bytes) {
#if defined(__x86_64__)
  static const int64_t threshold = [] {
    const char* env = std::getenv("PYFAST_STREAM_MIN_BYTES");
    return env != nullptr ? std::strtoll(env, nullptr, 10) : last_level_cache_bytes() / 4;
  }();
  return bytes >= threshold;
#else
  (void)bytes;
  return false;
#endif
}

// Copies n bytes from src (a small buffer the loop just wrote, still in L1) to dst with non-temporal stores; the
// bytes before dst's first and after its last 16-byte boundary are copied normally. Each thread that streams must
// call stream_fence() before its part of dst is read by another thread (at the end of its parallel_for chunk).
inline void stream_copy(void* dst, const void* src, int64_t n) {
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
#if defined(__x86_64__)
  const int64_t head = std::min<int64_t>(n, static_cast<int64_t>((16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15));
  std::memcpy(d, s, static_cast<size_t>(head));
  int64_t i = head;
  for (; i + 16 <= n; i += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
  std::memcpy(d + i, s + i, static_cast<size_t>(n - i));
#else
  std::memcpy(d, s, static_cast<size_t>(n));
#endif
}

// Orders this thread's streaming stores before its later stores (and so before the end of the parallel region).
inline void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

// Where a loop writes one piece of its output: straight into the output, or, when streaming (stream_output), into a
// small buffer that stays in L1 and is then copied out with streaming stores. One per thread (inside the
// parallel_for body); its destructor fences the thread's streaming stores. Usage:
//   T* p = out.target(dst);  loop(..., p, n);  out.commit(dst, n);
template <typename T>
class PieceWriter {
 public:
  PieceWriter(bool stream, int64_t capacity) : stream_(stream), buf_(stream ? static_cast<size_t>(capacity) : 0) {}
  PieceWriter(const PieceWriter&) = delete;
  PieceWriter& operator=(const PieceWriter&) = delete;
  ~PieceWriter() {
    if (stream_) stream_fence();
  }
  T* target(T* dst) { return stream_ ? buf_.data() : dst; }
  // Copies n elements from the buffer, starting at element `from`, to dst (nothing when not streaming).
  void commit(T* dst, int64_t n, int64_t from = 0) {
    if (stream_) stream_copy(dst, buf_.data() + from, n * static_cast<int64_t>(sizeof(T)));
  }

 private:
  bool stream_;
  std::vector<T> buf_;
};

}  // namespace cpu
}  // namespace pyfast
