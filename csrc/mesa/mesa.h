// Mesa group-wise 8-bit activation storage: per-group and per-element maths shared by the CPU and CUDA kernels
// (torch-free). pyfast/reference/mesa.py is the readable definition; every backend follows it bit for bit.
//
// Grouping: x is viewed as [outer, G, inner] around the axis `dim` (outer = prod(shape[:dim]), inner =
// shape[dim] / G * prod(shape[dim+1:])): one group per head for [B, H, N, D] with dim = 1, G contiguous channel
// chunks for [..., C] with dim = -1. Group g owns x[:, g, :].
//
// Running estimates, float32, per group, from the finite values of this batch (r = max - min, m = min):
//   no finite value          alpha' = alpha                     beta' = beta
//   not initialized          alpha' = r                         beta' = m
//   initialized and update   alpha' = lam alpha + (1-lam) r     beta' = lam beta + (1-lam) m
//   initialized, no update   alpha' = alpha                     beta' = beta
// each product rounded to float32 before the sum (no FMA), lam and 1-lam rounded to float32 on the host. A group
// without finite values (all NaN / inf, or no elements) says nothing about the range, so it keeps its estimates:
// taking r = 0 made the first such batch set alpha' = 0 (s = inf), and every later batch then decoded to one value.
//
// Quantize with the new estimates (float32, every operation rounded):
//   s = (L-1) / alpha',  t = (x - beta') s [+ (u - 1/2)],  q = round_half_even(min(max(t, 0), L-1))
// where max(t, 0) is written t > 0 ? t : 0 (NaN -> 0), and u in [0, 1) is a counter-based hash of (seed, linear
// index of the element), so CPU, CUDA and Triton draw the same bits. Upper values clamp to L-1: the original Mesa
// kernel has no upper clamp and wraps modulo 256. Dequantize: x_hat = q / s + beta (alpha = 0: s = inf, x_hat =
// beta). A code q > L-1 (q quantized with more levels, or not by Mesa) is an error: the CPU kernel raises one after
// its loop (a max of the codes kept alongside, no second pass); the CUDA kernel, which cannot raise without a host
// sync, writes NaN there.
#pragma once

#include "common/dtype.h"

#include <cstdint>

namespace pyfast {
namespace mesa {

using DType = ::pyfast::DType;

constexpr uint32_t kHashMul1 = 0x7FEB352Du, kHashMul2 = 0x846CA68Bu;
constexpr uint32_t kSeedSalt = 0x9E3779B9u, kIndexMul = 0x85EBCA6Bu;

// 32-bit integer hash: xor-shift / multiply rounds (all arithmetic mod 2^32).
PYFAST_HD uint32_t h32(uint32_t x) {
  x ^= x >> 16;
  x *= kHashMul1;
  x ^= x >> 15;
  x *= kHashMul2;
  x ^= x >> 16;
  return x;
}

PYFAST_HD uint32_t seed_key(int64_t seed) {
  const uint64_t s = static_cast<uint64_t>(seed);
  return h32(static_cast<uint32_t>(s) ^ h32(static_cast<uint32_t>(s >> 32) ^ kSeedSalt));
}

// u - 1/2 for element i: u = (hash >> 8) * 2^-24 in [0, 1); the subtraction is exact.
PYFAST_HD float noise(uint32_t key, int64_t i) {
  const uint64_t k = static_cast<uint64_t>(i);
  const uint32_t h = h32(h32(static_cast<uint32_t>(k) ^ key) + static_cast<uint32_t>(k >> 32) * kIndexMul);
  // h >> 8 < 2^24 converts exactly either way; through int32 because x86 has no vector uint32 -> float.
  return static_cast<float>(static_cast<int32_t>(h >> 8)) * 5.9604644775390625e-08f - 0.5f;
}

// Float arithmetic that is never contracted into an FMA (the CPU build has -ffp-contract=off).
#if defined(__CUDA_ARCH__)
PYFAST_HD float add_rn(float a, float b) { return __fadd_rn(a, b); }
PYFAST_HD float sub_rn(float a, float b) { return __fsub_rn(a, b); }
PYFAST_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }
PYFAST_HD float div_rn(float a, float b) { return __fdiv_rn(a, b); }
PYFAST_HD float round_even(float v) { return rintf(v); }
#else
inline float add_rn(float a, float b) { return a + b; }
inline float sub_rn(float a, float b) { return a - b; }
inline float mul_rn(float a, float b) { return a * b; }
inline float div_rn(float a, float b) { return a / b; }
// Round half to even for 0 <= v < 2^22: adding 2^23 leaves no fraction bits (vectorises, unlike nearbyint).
inline float round_even(float v) { return (v + 8388608.0f) - 8388608.0f; }
#endif

PYFAST_HD bool is_finite(float v) { return (v < 0.0f ? -v : v) <= 3.40282347e38f; }

// The hyperparameters of one quantize call that are the same for every group.
struct Config {
  float lam;        // float32(ema_decay)
  float one_minus;  // float32(1 - ema_decay)
  float lm1;        // L - 1
  bool update;
  bool stochastic;
};

// New (alpha', beta') of one group from the batch min / max over finite values (mn > mx: none were finite).
PYFAST_HD void finalize(float mn, float mx, float clip, float shift, bool initialized, const Config& c,
                             float* clip_out, float* shift_out) {
  const bool empty = !(mn <= mx);
  const float r = sub_rn(mx, mn);
  if (empty || (initialized && !c.update)) {
    *clip_out = clip;
    *shift_out = shift;
  } else if (!initialized) {
    *clip_out = r;
    *shift_out = mn;
  } else {
    *clip_out = add_rn(mul_rn(clip, c.lam), mul_rn(r, c.one_minus));
    *shift_out = add_rn(mul_rn(shift, c.lam), mul_rn(mn, c.one_minus));
  }
}

PYFAST_HD float scale_of(float clip, float lm1) { return div_rn(lm1, clip); }

// q of one element; nz = u - 1/2 (stochastic) or 0 (round to nearest).
PYFAST_HD uint8_t quantize_one(float x, float beta, float s, float nz, float lm1) {
  float t = mul_rn(sub_rn(x, beta), s);
  t = add_rn(t, nz);
  t = t > 0.0f ? t : 0.0f;
  t = t < lm1 ? t : lm1;
  return static_cast<uint8_t>(round_even(t));
}

PYFAST_HD float dequantize_one(uint8_t q, float s, float beta) {
  return add_rn(div_rn(static_cast<float>(q), s), beta);
}

// Raw pointers of one quantize call. x and q are contiguous [outer, G, inner]; clip/shift are float32 [G];
// initialized is one bool and seed one int64 (device memory on CUDA: read by the kernels, never by the host).
struct QuantArgs {
  const void* x;
  uint8_t* q;
  const float* clip;
  const float* shift;
  const bool* initialized;
  const int64_t* seed;
  float* clip_out;
  float* shift_out;
  int64_t outer;
  int64_t groups;
  int64_t inner;
  Config cfg;
};

struct DequantArgs {
  const uint8_t* q;
  const float* clip;
  const float* shift;
  void* out;
  int64_t outer;
  int64_t groups;
  int64_t inner;
  float lm1;
  uint8_t max_code;  // L - 1: larger codes are invalid
};

}  // namespace mesa
}  // namespace pyfast
