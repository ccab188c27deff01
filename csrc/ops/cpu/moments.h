// The horizontal moment filter shared by the forward (ssim_forward.h) and the backward
// (ssim_scale.cpp) of one scale: four moments per pixel (x, y, (x-y)², xy; the formula in
// ops/ssim_math.h), row geometry and column strips.
#pragma once
#include <algorithm>
#include <cstdint>

#include "ops/cpu/common.h"

namespace igd_fast {
namespace cpu {

// Padded widths of the row path for a W-wide plane and a K-wide window.
struct RowGeom {
  int64_t Wv;  // output (moment / map) rows
  int64_t Wg;  // input-resolution rows of the backward
  int64_t Wi;  // input rows: read by the K taps of Wv outputs and by Wg-wide loops
  RowGeom(int64_t W, int K)
      : Wv(round_up(W - K + 1)), Wg(round_up(W)), Wi(round_up(std::max(Wv + K - 1, Wg))) {}
};

// Column strips of at most kStripCols output columns keep the forward's ring
// (K+1 rows × 4 moments × strip) in L1.
constexpr int64_t kStripCols = 128;

// The kernels filter four moments per pixel, x, y, d² and xy with d = x - y (see
// ops/ssim_math.h), stored as kMoments rows.
constexpr int kMoments = 4;

// Horizontal pass of one padded input row: the moments filtered to Wv columns,
// moment m at out[m*ms ..] (and at out2[m*ms ..] when DUP). prod: scratch of 2*Wi values.
template <int K, bool DUP = false, typename A>
inline void hpass_moments(const A* __restrict x, const A* __restrict y, A* __restrict prod,
                          int64_t Wv, int64_t Wi, const A* __restrict win, A* __restrict out,
                          int64_t ms, A* __restrict out2 = nullptr) {
  x = aligned(x);
  y = aligned(y);
  out = aligned(out);
  if constexpr (DUP) out2 = aligned(out2);
  A* __restrict dd = aligned(prod);
  A* __restrict xy = aligned(prod + Wi);
  const int64_t n = round_up(Wv + K - 1);  // <= Wi: whole vectors, no scalar tail
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const A d = x[j] - y[j];
    dd[j] = d * d;
    xy[j] = x[j] * y[j];
  }
  A w[K];
  for (int t = 0; t < K; ++t) w[t] = win[t];
#pragma omp simd
  for (int64_t j = 0; j < Wv; ++j) {
    A a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma GCC unroll 16
    for (int t = 0; t < K; ++t) {
      a0 += w[t] * x[j + t];
      a1 += w[t] * y[j + t];
      a2 += w[t] * dd[j + t];
      a3 += w[t] * xy[j + t];
    }
    out[j] = a0;
    out[ms + j] = a1;
    out[2 * ms + j] = a2;
    out[3 * ms + j] = a3;
    if constexpr (DUP) {
      out2[j] = a0;
      out2[ms + j] = a1;
      out2[2 * ms + j] = a2;
      out2[3 * ms + j] = a3;
    }
  }
}

// Forward ring: slot k holds the moments of one input row of a column strip,
// moment m at slot + m*kStripCols. Row i goes to slots i % R and i % R + R, so rows
// p..p+K are consecutive slots and every load of the vertical pass is one base
// pointer plus a compile-time offset (a pointer per ring row and moment spilled

}  // namespace cpu
}  // namespace igd_fast
