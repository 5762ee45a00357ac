// exp(t) for t <= 0 (and log(x) for x > 0, below) in the CPU loops, written so gcc vectorises the loop that calls it (libm's expf is an opaque
// scalar call, and a float -> int conversion would also stop the vectoriser): exp(t) = 2^n exp(r), n = round(t / ln 2)
// from the 1.5 * 2^23 rounding trick, r = t - n ln 2 (ln 2 split in two, |r| <= ln(2)/2), exp(r) by the Cephes expf
// minimax polynomial (about 1 ulp), 2^n written into the exponent bits. Below t = -87.33 (2^-126) the result is
// flushed to 0, where libm returns subnormals under 1.2e-38. Torch-free; host only.
#pragma once

#include <cstdint>
#include <cstring>

namespace pyfast {
namespace cpu {

inline float exp_nonpositive(float t) {
  const float lo = -87.33654475f;
  const float tc = t < lo ? lo : t;  // NaN stays NaN (the comparison is false)
  const float round_magic = 12582912.0f;
  const float shifted = tc * 1.44269504088896341f + round_magic;
  const float n = shifted - round_magic;
  const float r = (tc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  uint32_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  bits = (bits + 127u) << 23;  // low bits of `shifted` hold n + 2^22: the shift drops the offset, keeps n + 127
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return t < lo ? 0.0f : p * scale;
}

// log(x) for normal finite x > 0 (NaN stays NaN; zero, negative, subnormal and infinite x are outside its domain),
// vectorisable like exp_nonpositive: x = 2^e m with m in [sqrt(1/2), sqrt(2)) read off the bits, log(m) = log(1 + f)
// by the Cephes logf minimax polynomial in f = m - 1 (about 1 ulp), plus e ln 2 (ln 2 split in two).
inline float log_positive(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const uint32_t mant_bits = (bits & 0x007FFFFFu) | 0x3F000000u;  // the mantissa as a float in [0.5, 1)
  float m;
  std::memcpy(&m, &mant_bits, sizeof(m));
  const bool low = m < 0.707106781186547524f;
  const float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - (low ? 127 : 126));
  const float f = low ? m + m - 1.0f : m - 1.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float y = p * f * z + e * -2.12194440e-4f - 0.5f * z;
  const float r = (f + y) + e * 0.693359375f;
  return x != x ? x : r;
}

}  // namespace cpu
}  // namespace pyfast
