#pragma once
// Log-domain products for the per-pixel MS-SSIM map: prod_s relu(v_s)^w_s is
// E(sum_s w_s L(v_s)), 0 once some v_s <= 0 or is NaN (also next to an infinite v_s,
// where the reference's inf * 0 gives NaN; SSIM maps lie in [-1, 1]).
// float with AVX-512: lerp_log_sum_exp, one output row of every scale at once in
// registers, on log2 / exp2 (getexp / getmant, a 32-entry table in two registers and
// short polynomials: about half the instructions of a plain polynomial log; error
// about 1e-8 relative). Otherwise (double; float without AVX-512) a pair of loops
// over a whole tile:
//   add_weighted_log(a, v, w, n): a[q] += w * ln(v[q])  (-inf where v[q] <= 0 or NaN)
//   exp_from_log<ADD>(a, o, n):    o[q] (+)= exp(a[q])
// on Cephes-style ln / exp written so the compiler vectorises the loops (1e-7), or
// libm for double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__AVX512F__)
#include <immintrin.h>
#define IGD_FAST_AVX512 1
#else
#define IGD_FAST_AVX512 0
#endif

namespace igd_fast {
inline float bits_to_float(uint32_t b) { return __builtin_bit_cast(float, b); }
inline uint32_t float_to_bits(float f) { return __builtin_bit_cast(uint32_t, f); }

#if defined(__AVX512F__)

// log2(v) = e + log2(m), m in [1, 2) split at its top 5 mantissa bits into
// c_k = 1 + k/32 and 1 + r = m / c_k, r in [0, 1/32): log2(c_k) from the table,
// log2(1 + r) = r * (p1 + r * (p2 + r * p3)) (least-squares fit, error 3e-9).
// c_0 = 1, so v = 1 gives exactly 0.
struct Log2Table {
  alignas(64) float inv[32];  // 1 / c_k rounded to float
  alignas(64) float lg[32];   // -log2(inv[k]) of that rounded value
  Log2Table() {
    for (int k = 0; k < 32; ++k) {
      inv[k] = static_cast<float>(1.0 / (1.0 + k / 32.0));
      lg[k] = static_cast<float>(-std::log2(static_cast<double>(inv[k])));
    }
  }
};

inline const Log2Table& log2_table() {
  static const Log2Table t;
  return t;
}

// a += w * log2(v) on 16 lanes; -inf where v <= 0 or NaN (relu(v)^w = 0).
inline __m512 add_weighted_log2_16(__m512 a, __m512 v, __m512 w, __m512 inv_lo, __m512 inv_hi,
                                   __m512 lg_lo, __m512 lg_hi) {
  const __mmask16 pos = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
  const __m512 e = _mm512_getexp_ps(v);  // floor(log2 v), subnormals included
  const __m512 m = _mm512_getmant_ps(v, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
  // vpermt2ps reads the low 5 bits of each index: the top 5 mantissa bits of m
  const __m512i k = _mm512_srli_epi32(_mm512_castps_si512(m), 18);
  const __m512 r = _mm512_fmsub_ps(m, _mm512_permutex2var_ps(inv_lo, k, inv_hi),
                                   _mm512_set1_ps(1.0f));
  const __m512 t = _mm512_add_ps(e, _mm512_permutex2var_ps(lg_lo, k, lg_hi));
  __m512 q = _mm512_fmadd_ps(r, _mm512_set1_ps(0.45988578f), _mm512_set1_ps(-0.72096881f));
  q = _mm512_fmadd_ps(r, q, _mm512_set1_ps(1.44269308f));
  const __m512 lg2 = _mm512_fmadd_ps(r, q, t);
  return _mm512_mask_mov_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), pos,
                            _mm512_fmadd_ps(w, lg2, a));
}

// 2^x on 16 lanes: 2^n * p(x - n), n = round(x), p a degree-6 fit of 2^f on
// [-1/2, 1/2] (relative error 2e-9); below -200 (and at -inf) the result is 0, above
// 200 (and at +inf) inf.
inline __m512 exp2_16(__m512 x) {
  // (max also maps NaN to -200: the callers put NaN back)
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-200.0f)), _mm512_set1_ps(200.0f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_fmadd_ps(f, _mm512_set1_ps(1.5337577e-4f), _mm512_set1_ps(1.3399860e-3f));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(9.6185195e-3f));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(5.5503290e-2f));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(2.4022647e-1f));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(6.9314721e-1f));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Lanes [j, n) of a 16-lane block starting at j (all of them when n - j >= 16).
inline __mmask16 tail_mask(int64_t j, int64_t n) {
  const int64_t left = n - j;
  return left >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << left) - 1u);
}

// The interpolations round as PyTorch's upsample_bilinear2d does, fma(l0, t0, l1 * t1):
// where a map crosses zero the interpolated value cancels, and its power amplifies
// any other rounding.
//
// o[j] (+)= 2^(sum_s w[s] * log2(la[s] * ra[s][j] + lb[s] * rb[s][j])) for j < n: one
// output row of S vertically interpolated scale maps, combined per 16-lane block with
// the sum in a register (no accumulator row to store and reload per scale). NaN sums
// (inf and -inf from different scales) stay NaN, as the reference's inf * 0.
template <bool ADD>
inline void lerp_log_sum_exp(int64_t S, const float* const* ra, const float* const* rb,
                             const float* la, const float* lb, const float* w,
                             float* __restrict o, int64_t n) {
  const Log2Table& tb = log2_table();
  const __m512 inv_lo = _mm512_load_ps(tb.inv), inv_hi = _mm512_load_ps(tb.inv + 16);
  const __m512 lg_lo = _mm512_load_ps(tb.lg), lg_hi = _mm512_load_ps(tb.lg + 16);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = tail_mask(j, n);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t s = 0; s < S; ++s) {
      // lb = 0 (no resize along the rows): no 0 * rb term, which is NaN where rb is inf
      const __m512 ta = _mm512_maskz_loadu_ps(k, ra[s] + j);
      const __m512 v = lb[s] == 0.0f
                           ? _mm512_mul_ps(_mm512_set1_ps(la[s]), ta)
                           : _mm512_fmadd_ps(_mm512_set1_ps(la[s]), ta,
                                             _mm512_mul_ps(_mm512_set1_ps(lb[s]),
                                                           _mm512_maskz_loadu_ps(k, rb[s] + j)));
      acc = add_weighted_log2_16(acc, v, _mm512_set1_ps(w[s]), inv_lo, inv_hi, lg_lo, lg_hi);
    }
    __m512 e = _mm512_mask_mov_ps(acc, _mm512_cmp_ps_mask(acc, acc, _CMP_ORD_Q), exp2_16(acc));
    if constexpr (ADD) e = _mm512_add_ps(_mm512_maskz_loadu_ps(k, o + j), e);
    _mm512_mask_storeu_ps(o + j, k, e);
  }
}

// dst[j] = l0[j] * src[c0[j]] + l1[j] * src[c1[j]], j < n, where in every 16-column
// block b both taps lie in src[base[b] .. base[b] + 16) (offsets rel0 / rel1 from
// base[b]): one load and two in-register permutes per block instead of 32 scalar
// loads (GCC does not emit gathers for this CPU). src holds mw values. COPY: no
// resize, dst[j] = src[c0[j]] (the replicate padding alone).
template <bool COPY>
inline void lerp_cols_windowed(const float* __restrict src, int64_t mw, const int32_t* base,
                               const int32_t* rel0, const int32_t* rel1, const float* l0,
                               const float* l1, float* __restrict dst, int64_t n) {
  for (int64_t j = 0, b = 0; j < n; j += 16, ++b) {
    const __mmask16 k = tail_mask(j, n);
    const __m512 win = _mm512_maskz_loadu_ps(tail_mask(0, mw - base[b]), src + base[b]);
    const __m512 a = _mm512_permutexvar_ps(_mm512_maskz_loadu_epi32(k, rel0 + j), win);
    if constexpr (COPY) {
      _mm512_mask_storeu_ps(dst + j, k, a);
    } else {
      const __m512 c = _mm512_permutexvar_ps(_mm512_maskz_loadu_epi32(k, rel1 + j), win);
      const __m512 r = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, l0 + j), a,
                                       _mm512_mul_ps(_mm512_maskz_loadu_ps(k, l1 + j), c));
      _mm512_mask_storeu_ps(dst + j, k, r);
    }
  }
}

#else  // no AVX-512: natural log / exp in plain code the compiler vectorises

// log(x) for finite x > 0 (subnormals scaled by 2^23 first); non-positive inputs give
// log(FLT_MIN). Clamps and selects are integer min/max and bit masks: float compares
// and branches here keep GCC's loops scalar.
inline float fast_logf(float x) {
  const int32_t xb = static_cast<int32_t>(float_to_bits(x));
  const int32_t sub = -static_cast<int32_t>(xb < 0x00800000);  // subnormal (or <= 0)
  const int32_t scaled = static_cast<int32_t>(float_to_bits(x * 8388608.0f));
  const int32_t b = std::max((scaled & sub) | (xb & ~sub), int32_t(0x00800000));
  const int32_t mant = b & 0x007fffff;
  const int32_t lo = mant < 0x003504f3;  // mantissa below sqrt(0.5): use [1, sqrt(2))
  const float fe = static_cast<float>((b >> 23) - 126 - lo - (sub & 23));
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

// exp(x) over the whole float range: subnormal results included (2^n applied as two
// normal factors), 0 below -103.97 and for -inf, inf above 88.72 and for +inf, NaN
// for NaN.
inline float fast_expf(float x) {
  const uint32_t b = float_to_bits(x);
  const uint32_t tiny = -static_cast<uint32_t>(b > 0xc2cff1b4u && b <= 0xff800000u);
  const uint32_t huge = -static_cast<uint32_t>(static_cast<int32_t>(b) > 0x42b17217);
  const uint32_t nan = -static_cast<uint32_t>((b & 0x7fffffffu) > 0x7f800000u);
  x = bits_to_float(b & ~tiny & ~huge);  // those lanes compute exp(0)
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
  const int32_t n = static_cast<int32_t>(fx), n1 = n >> 1, n2 = n - n1;  // n in [-150, 128]
  const float p1 = bits_to_float(static_cast<uint32_t>(n1 + 127) << 23);
  const float p2 = bits_to_float(static_cast<uint32_t>(n2 + 127) << 23);
  const uint32_t e = (float_to_bits(y * p1 * p2) & ~tiny & ~huge) | (0x7f800000u & huge);
  return bits_to_float((e & ~nan) | (b & nan));
}

inline void add_weighted_log(float* __restrict a, const float* __restrict v, float w, int64_t n) {
#pragma omp simd
  for (int64_t q = 0; q < n; ++q) {
    const uint32_t b = float_to_bits(v[q]);
    const uint32_t keep =
        -static_cast<uint32_t>(static_cast<int32_t>(b) > 0 && b <= 0x7f800000u);
    const uint32_t inf = -static_cast<uint32_t>(b == 0x7f800000u);
    const float lv = bits_to_float((float_to_bits(fast_logf(v[q])) & ~inf) | (0x7f800000u & inf));
    a[q] = bits_to_float((float_to_bits(a[q] + w * lv) & keep) | (0xff800000u & ~keep));
  }
}

template <bool ADD>
inline void exp_from_log(const float* __restrict a, float* __restrict o, int64_t n) {
#pragma omp simd
  for (int64_t q = 0; q < n; ++q) o[q] = (ADD ? o[q] : 0.0f) + fast_expf(a[q]);
}

#endif  // __AVX512F__

inline void add_weighted_log(double* __restrict a, const double* __restrict v, double w,
                             int64_t n) {
  for (int64_t q = 0; q < n; ++q) {
    a[q] = v[q] > 0 ? a[q] + w * std::log(v[q]) : -std::numeric_limits<double>::infinity();
  }
}

template <bool ADD>
inline void exp_from_log(const double* __restrict a, double* __restrict o, int64_t n) {
  for (int64_t q = 0; q < n; ++q) o[q] = (ADD ? o[q] : 0.0) + std::exp(a[q]);
}
}  // namespace igd_fast
