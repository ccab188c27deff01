#pragma once
#include <algorithm>
#include <cstdint>
// Cephes-style single-precision log / exp without libm calls, so the pixel loops
// around them vectorise; relative error about 1e-7. Clamps and selects are integer
// min/max and bit masks: float compares and branches here keep GCC's loops scalar.
namespace igd_fast {
inline float bits_to_float(uint32_t b) { return __builtin_bit_cast(float, b); }
inline uint32_t float_to_bits(float f) { return __builtin_bit_cast(uint32_t, f); }

// log(x) for normal x > 0; smaller or non-positive inputs give log(FLT_MIN).
inline float fast_logf(float x) {
  const int32_t b = std::max(static_cast<int32_t>(float_to_bits(x)), int32_t(0x00800000));
  const int32_t mant = b & 0x007fffff;
  const int32_t lo = mant < 0x003504f3;  // mantissa below sqrt(0.5): use [1, sqrt(2))
  const float fe = static_cast<float>((b >> 23) - 126 - lo);
  const float m = bits_to_float(static_cast<uint32_t>(mant | (0x3f000000 + (lo << 23)))) - 1.0f;
  const float z = m * m;
  float y = 7.0376836292E-2f;
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return m + y + 0.693359375f * fe;
}

// acc + w * log(v) where v > 0, else -inf (so exp gives 0); NaN counts as <= 0.
inline float add_log_or_neg_inf(float acc, float w, float v) {
  const uint32_t b = float_to_bits(v);
  const uint32_t keep = -static_cast<uint32_t>(static_cast<int32_t>(b) > 0 && b <= 0x7f800000u);
  return bits_to_float((float_to_bits(acc + w * fast_logf(v)) & keep) | (0xff800000u & ~keep));
}

// exp(x); 0 below -87.3 (where the result would be subnormal) and for -inf.
inline float fast_expf(float x) {
  const uint32_t b = float_to_bits(x);
  const uint32_t tiny = -static_cast<uint32_t>(b > 0xc2ae999au);  // x < -87.3: all ones
  // min on the signed pattern clamps x > 88.37 and leaves negatives alone.
  const int32_t bc = std::min(static_cast<int32_t>(b), int32_t(0x42b0bd71));
  x = bits_to_float(static_cast<uint32_t>(bc) & ~tiny);
  // Round to nearest by the 1.5 * 2^23 trick (floorf would not vectorise here).
  const float fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500E-4f;
  y = y * r + 1.3981999507E-3f;
  y = y * r + 8.3334519073E-3f;
  y = y * r + 4.1665795894E-2f;
  y = y * r + 1.6666665459E-1f;
  y = y * r + 5.0000001201E-1f;
  y = y * z + r + 1.0f;
  const float p = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(fx) + 127) << 23);
  return bits_to_float(float_to_bits(y * p) & ~tiny);
}
}  // namespace igd_fast
