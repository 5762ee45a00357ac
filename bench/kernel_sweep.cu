// Kernel-level sweep on a GPU: the launch choices of the LIF backward and of the fused Fourier-KArAt kernels, timed
// side by side on raw buffers (no torch, no host work between launches), so that one short GPU session shows which
// choice is fastest instead of one guess per session. bench/gpu_check.sh (stage kernel_sweep) builds and runs it:
//
//   bash bench/kernel_sweep.sh /tmp/kernel_sweep && /tmp/kernel_sweep [--lif-T 32] [--lif-neurons 4194304]
//        [--karat-tokens 65 197] [--rounds 5]
//
// LIF (float16, sigmoid surrogate, tau and threshold numbers, the issue's T = 32 target case): a device-to-device copy
// of one [T, N] array (the bandwidth the kernels are judged against), the forward and the backward as lif_kernel.cu
// launches them, and the backward at every neurons-per-thread width (1, 2, 4, 8) and time-steps-in-flight chunk (2,
// 4, 8, 16): microseconds, GB/s (bytes each kernel must move) and the fraction of the copy's rate. Every variant's
// gradient is compared with the shipped launch's.
// Fourier-KArAt (ViT-Tiny shape: B = 32, H = 3, r = 12, G = 3): the fused forward and backward (both backward kernels)
// at several part counts (the key ranges a score row is split into, karat_fused.h parts_for), the shipped count marked.
// The partial sums' reduction and the cuBLAS score GEMMs, the same for every count, are not included.
//
// Timing: each case runs `reps` launches between two CUDA events; the cases take turns over `rounds` rounds after a
// warm-up, and the median round is reported, so drift of the clock or of a shared machine hits every case alike.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "karat/karat_fused.h"
#include "karat/karat_launch.h"
#include "lif/lif_launch.h"

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "kernel_sweep: %s: %s\n", what, cudaGetErrorString(err));
    std::exit(1);
  }
}

// A reproducible value in [lo, hi) from an index (a hash: no curand, no host copy).
__device__ float hashed(uint64_t i, float lo, float hi) {
  i ^= i >> 33;
  i *= 0xff51afd7ed558ccdull;
  i ^= i >> 33;
  i *= 0xc4ceb9fe1a85ec53ull;
  i ^= i >> 33;
  return lo + (hi - lo) * static_cast<float>(i >> 40) * (1.0f / 16777216.0f);
}

__global__ void fill_half(__half* p, int64_t n, uint64_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    p[i] = __float2half(hashed(seed + i, lo, hi));
}

__global__ void fill_float(float* p, int64_t n, uint64_t seed, float lo, float hi) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    p[i] = hashed(seed + i, lo, hi);
}

// The raw scores both ways round: S[bh, k, q] = ST[bh, q, k].
__global__ void fill_scores(float* S, float* ST, int64_t BH, int64_t N, uint64_t seed) {
  const int64_t n = BH * N * N;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t bh = i / (N * N), k = i / N % N, q = i % N;
    const float s = hashed(seed + i, -24.0f, 24.0f);  // scale D^-1/2 = 1/8 puts the angles within +-3
    S[i] = s;
    ST[(bh * N + q) * N + k] = s;
  }
}

template <class T>
T* device_array(int64_t n) {
  void* p = nullptr;
  check(cudaMalloc(&p, std::max<int64_t>(n, 1) * sizeof(T)), "cudaMalloc");
  return static_cast<T*>(p);
}

struct Case {
  std::string name;
  double bytes;                    // bytes the kernel must move, for GB/s (0: not reported)
  std::function<cudaError_t()> launch;
  std::vector<float> round_ms;     // per launch, one per round
};

float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Times the cases in turns: one warm-up round, then `rounds` rounds of `reps` launches each.
void time_cases(std::vector<Case>& cases, int rounds, int reps) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  for (int round = -1; round < rounds; ++round) {
    for (Case& c : cases) {
      check(cudaEventRecord(start), "cudaEventRecord");
      for (int i = 0; i < reps; ++i) check(c.launch(), c.name.c_str());
      check(cudaEventRecord(stop), "cudaEventRecord");
      check(cudaEventSynchronize(stop), c.name.c_str());
      float ms = 0;
      check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
      if (round >= 0) c.round_ms.push_back(ms / reps);
    }
  }
  check(cudaEventDestroy(start), "cudaEventDestroy");
  check(cudaEventDestroy(stop), "cudaEventDestroy");
}

void lif_sweep(int64_t T, int64_t N, int rounds) {
  using pyfast::lif::Surrogate;
  const int64_t TN = T * N;
  __half *x = device_array<__half>(TN), *spikes = device_array<__half>(TN), *h_seq = device_array<__half>(TN);
  __half *grad_s = device_array<__half>(TN), *grad_x = device_array<__half>(TN), *copy_dst = device_array<__half>(TN);
  __half *v_last = device_array<__half>(N), *grad_v0 = device_array<__half>(N);
  float *k = device_array<float>(1), *v_th = device_array<float>(1);
  fill_half<<<1024, 256>>>(x, TN, 1, -1.0f, 3.0f);
  fill_half<<<1024, 256>>>(grad_s, TN, 2, -1.0f, 1.0f);
  fill_float<<<1, 32>>>(k, 1, 3, 0.5f, 0.5f);        // tau = 2
  fill_float<<<1, 32>>>(v_th, 1, 4, 1.0f, 1.0f);     // threshold 1
  check(cudaGetLastError(), "fill");

  pyfast::lif::Config cfg{};
  cfg.v_reset = 0.0f;
  cfg.hard_reset = true;
  cfg.decay_input = true;
  cfg.detach_reset = false;
  cfg.surrogate = Surrogate::Sigmoid;
  cfg.alpha = 4.0f;
  const pyfast::lif::FwdArgs fa{x, nullptr, k, 0, v_th, 0, spikes, h_seq, v_last, T, N, cfg};
  const pyfast::lif::BwdArgs ba{grad_s, nullptr, h_seq, nullptr, nullptr, k, 0, v_th, 0, grad_x, grad_v0,
                                nullptr, nullptr, T, N, cfg};
  const auto f16 = pyfast::DType::Float16;
  check(pyfast::lif::lif_fwd_cuda_launch(fa, f16, nullptr), "lif forward");  // H for the backward
  check(pyfast::lif::lif_bwd_cuda_launch(ba, f16, nullptr), "lif backward");
  check(cudaDeviceSynchronize(), "lif backward");
  std::vector<__half> shipped(TN), got(TN);
  check(cudaMemcpy(shipped.data(), grad_x, TN * sizeof(__half), cudaMemcpyDeviceToHost), "copy back");

  const double step_bytes = 3.0 * TN * sizeof(__half);  // forward: x in, S and H out; backward: g_S and H in, g_x out
  std::vector<Case> cases;
  cases.push_back({"copy [T, N] (read + write)", 2.0 * TN * sizeof(__half),
                   [=] { return cudaMemcpyAsync(copy_dst, x, TN * sizeof(__half), cudaMemcpyDeviceToDevice); }, {}});
  cases.push_back({"forward (shipped launch)", step_bytes + 2.0 * N,
                   [=] { return pyfast::lif::lif_fwd_cuda_launch(fa, f16, nullptr); }, {}});
  cases.push_back({"backward (shipped launch)", step_bytes + 2.0 * N,
                   [=] { return pyfast::lif::lif_bwd_cuda_launch(ba, f16, nullptr); }, {}});
  std::vector<std::pair<std::string, float>> mismatches;  // variant, max |g_x - shipped g_x|
  for (int width : {1, 2, 4, 8}) {
    for (int chunk : {2, 4, 8, 16}) {
      const std::string name = "backward width " + std::to_string(width) + " chunk " + std::to_string(chunk);
      check(cudaMemset(grad_x, 0xff, TN * sizeof(__half)), "memset");  // NaN: an unwritten element differs
      check(pyfast::lif::lif_bwd_half_variant_launch(ba, width, chunk, nullptr), name.c_str());
      check(cudaMemcpy(got.data(), grad_x, TN * sizeof(__half), cudaMemcpyDeviceToHost), "copy back");
      if (std::memcmp(got.data(), shipped.data(), TN * sizeof(__half)) != 0) {
        float worst = 0;  // NaN (an element not written) counts as infinitely far
        for (int64_t i = 0; i < TN; ++i) {
          const float d = std::fabs(__half2float(got[i]) - __half2float(shipped[i]));
          worst = d == d ? std::max(worst, d) : INFINITY;
        }
        mismatches.push_back({name, worst});
      }
      cases.push_back({name, step_bytes + 2.0 * N,
                       [=] { return pyfast::lif::lif_bwd_half_variant_launch(ba, width, chunk, nullptr); }, {}});
    }
  }
  time_cases(cases, rounds, 10);

  std::printf("\nLIF float16, T = %lld, N = %lld neurons (sigmoid surrogate, hard reset); median of %d rounds\n",
              static_cast<long long>(T), static_cast<long long>(N), rounds);
  std::printf("%-34s %10s %10s %10s\n", "case", "us", "GB/s", "of copy");
  const double copy_rate = cases[0].bytes / median(cases[0].round_ms);
  for (const Case& c : cases) {
    const float ms = median(c.round_ms);
    std::printf("%-34s %10.1f %10.0f %9.0f%%\n", c.name.c_str(), ms * 1e3, c.bytes / ms * 1e-6,
                100.0 * (c.bytes / ms) / copy_rate);
  }
  // The variants run the same per-neuron arithmetic, so their g_x should equal the shipped launch's bit for bit; a
  // difference within half-precision rounding (the compiler contracting a product differently) is reported, a larger
  // one (or an element not written) fails the sweep.
  bool failed = false;
  if (mismatches.empty()) std::printf("every backward variant's g_x equals the shipped launch's, bit for bit\n");
  for (const auto& [name, worst] : mismatches) {
    failed = failed || !(worst <= 1e-2f);
    std::printf("%s: %s's g_x differs from the shipped launch's by up to %g\n", worst <= 1e-2f ? "note" : "MISMATCH",
                name.c_str(), worst);
  }
  for (void* p : {static_cast<void*>(x), static_cast<void*>(spikes), static_cast<void*>(h_seq),
                  static_cast<void*>(grad_s), static_cast<void*>(grad_x), static_cast<void*>(copy_dst),
                  static_cast<void*>(v_last), static_cast<void*>(grad_v0), static_cast<void*>(k),
                  static_cast<void*>(v_th)})
    check(cudaFree(p), "cudaFree");
  if (failed) std::exit(1);
}

void karat_sweep(int64_t N, int rounds) {
  namespace fused = pyfast::karat::fused;
  const int64_t B = 32, H = 3, r = 12, BH = B * H;
  const int G = 3;
  const int64_t R4 = fused::padded_rank(r);
  const double scale = 0.125;
  const int64_t shipped = fused::parts_for(BH * N, N);
  std::vector<int64_t> counts;
  for (int64_t p : {1, 2, 3, 4, 6, 8, 12, 16, 24, 32})
    if (p <= std::max<int64_t>(N / 4, 1)) counts.push_back(p);
  if (std::find(counts.begin(), counts.end(), shipped) == counts.end()) counts.push_back(shipped);
  const int64_t most = *std::max_element(counts.begin(), counts.end());

  float *S = device_array<float>(BH * N * N), *ST = device_array<float>(BH * N * N);
  float *gST = device_array<float>(BH * N * N), *Ck = device_array<float>(H * N * 2 * G * R4);
  float *gz = device_array<float>(BH * N * R4), *z_part = device_array<float>(most * BH * N * r);
  float* gC_part = device_array<float>(most * B * 2 * H * r * N * G);
  fill_scores<<<1024, 256>>>(S, ST, BH, N, 5);
  fill_float<<<1024, 256>>>(Ck, H * N * 2 * G * R4, 6, -1.0f, 1.0f);
  fill_float<<<1024, 256>>>(gz, BH * N * R4, 7, -1.0f, 1.0f);
  check(cudaDeviceSynchronize(), "fill");

  std::vector<Case> cases;
  for (int64_t parts : counts) {
    const std::string tag = "parts " + std::to_string(parts) + (parts == shipped ? " (shipped)" : "");
    cases.push_back({"forward, " + tag, 0, [=] {
      return pyfast::karat::karat_fused_fwd_launch(ST, Ck, z_part, BH, N, r, G, H, scale, parts, nullptr);
    }, {}});
    cases.push_back({"backward, " + tag, 0, [=] {
      return pyfast::karat::karat_fused_bwd_launch(gz, S, ST, Ck, gST, nullptr, gC_part, BH, N, r, G, H, scale, parts,
                                                   nullptr);
    }, {}});
  }
  time_cases(cases, rounds, 10);

  std::printf("\nFourier-KArAt fused kernels, B = %lld, H = %lld, N = %lld, r = %lld, G = %d; median of %d rounds\n",
              static_cast<long long>(B), static_cast<long long>(H), static_cast<long long>(N),
              static_cast<long long>(r), G, rounds);
  std::printf("%-36s %10s %10s %16s\n", "case", "us", "threads", "partials MB");
  for (size_t i = 0; i < cases.size(); ++i) {
    const int64_t parts = counts[i / 2];
    const bool forward = i % 2 == 0;
    const double partial_floats = forward ? parts * BH * N * r : parts * B * 2 * H * r * N * G;
    std::printf("%-36s %10.1f %10lld %16.2f\n", cases[i].name.c_str(), median(cases[i].round_ms) * 1e3,
                static_cast<long long>(BH * N * parts), partial_floats * 4 / 1e6);
  }
  for (float* p : {S, ST, gST, Ck, gz, z_part, gC_part}) check(cudaFree(p), "cudaFree");
}

}  // namespace

int main(int argc, char** argv) {
  int64_t lif_T = 32, lif_neurons = int64_t{1} << 22;
  std::vector<int64_t> tokens = {65, 197};
  int rounds = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> int64_t {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "kernel_sweep: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return std::atoll(argv[++i]);
    };
    if (arg == "--lif-T") {
      lif_T = value();
    } else if (arg == "--lif-neurons") {
      lif_neurons = value();
    } else if (arg == "--rounds") {
      rounds = static_cast<int>(value());
    } else if (arg == "--karat-tokens") {
      tokens.clear();
      while (i + 1 < argc && argv[i + 1][0] != '-') tokens.push_back(std::atoll(argv[++i]));
    } else {
      std::fprintf(stderr, "kernel_sweep: unknown argument %s\n", arg.c_str());
      return 2;
    }
  }
  if (lif_T < 1 || lif_neurons < 8 || lif_neurons % 8 != 0 || rounds < 1 || tokens.empty() ||
      *std::min_element(tokens.begin(), tokens.end()) < 1) {
    std::fprintf(stderr, "kernel_sweep: need --lif-T >= 1, --lif-neurons a positive multiple of 8 (every width "
                         "divides it), --rounds >= 1 and --karat-tokens >= 1\n");
    return 2;
  }
  int device = 0;
  cudaDeviceProp prop{};
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  std::printf("kernel_sweep on %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  lif_sweep(lif_T, lif_neurons, rounds);
  for (int64_t N : tokens) karat_sweep(N, rounds);
  return 0;
}
