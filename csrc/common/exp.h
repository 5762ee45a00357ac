// exp(t) for t <= 0 in the CPU loops, written so gcc vectorises the loop that calls it (libm's expf is an opaque
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

}  // namespace cpu
}  // namespace pyfast
