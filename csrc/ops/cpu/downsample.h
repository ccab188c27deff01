// The 2×2 average pool between scales on the CPU (namespace igd_fast::cpu), used by
// downsample.cpp and by the fused map (ms_ssim_fused.cpp):
//   downsample_row, downsample_plane_row   one output row (odd sizes padded in front)
//   downsample_impl                        every plane
#pragma once
#include <cstdint>
#include <type_traits>
#include <vector>

#include "ops/cpu/common.h"

namespace igd_fast {
namespace cpu {

// reference.ssim.downsample: 2×2 average pool, odd sizes zero-padded by one in front
// (avg_pool2d with padding = size % 2, zeros counted). Sums in avg_pool2d's order.
// One output row from the two padded input rows a, b (2*wo values each).
template <typename A, typename T>
inline void downsample_row(const A* __restrict a, const A* __restrict b, int64_t wo, T* __restrict o) {
#pragma omp simd
  for (int64_t j = 0; j < wo; ++j) {
    o[j] = static_cast<T>((((a[2 * j] + a[2 * j + 1]) + b[2 * j]) + b[2 * j + 1]) / A(4));
  }
}

// Output row i of an H×W plane: rows 2i+1-ph and the one above it (zeros when it is
// the padding), columns shifted by pw into p0 / p1 (2*wo values, p*[0] = 0), both
// read as A. Even sizes of A: the rows in place.
template <typename T, typename A>
inline void downsample_plane_row(const T* xp, int64_t H, int64_t W, int64_t i, A* __restrict p0,
                                 A* __restrict p1, T* __restrict o) {
  const int64_t ph = H % 2, pw = W % 2, wo = (W + 1) / 2;
  if constexpr (std::is_same_v<T, A>) {
    if (ph == 0 && pw == 0) {
      downsample_row<A, A>(xp + 2 * i * W, xp + (2 * i + 1) * W, wo, o);
      return;
    }
  }
  const int64_t r1 = 2 * i + 1 - ph, r0 = r1 - 1;  // r1 < H always; r0 may be -1
  p0[0] = p1[0] = A(0);  // the front padding column when pw = 1
  for (int64_t c = 0; c < W; ++c) {
    p0[pw + c] = r0 >= 0 ? static_cast<A>(xp[r0 * W + c]) : A(0);
    p1[pw + c] = static_cast<A>(xp[r1 * W + c]);
  }
  downsample_row<A, T>(p0, p1, wo, o);
}

template <typename T, typename A>
void downsample_impl(const T* x, T* out, int64_t planes, int64_t H, int64_t W) {
  const int64_t ho = (H + 1) / 2, wo = (W + 1) / 2;
  parallel_tasks(planes * ho, [&](int64_t begin, int64_t end) {
    std::vector<A> p0(2 * wo, A(0)), p1(2 * wo, A(0));  // rows with the front padding
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pl = task / ho, i = task % ho;
      downsample_plane_row<T, A>(x + pl * H * W, H, W, i, p0.data(), p1.data(),
                                 out + (pl * ho + i) * wo);
    }
  });
}

}  // namespace cpu
}  // namespace igd_fast
