// Forward of one scale on the CPU (namespace igd_fast::cpu), used by ssim_scale.cpp and
// by the fused map (ms_ssim_fused.cpp):
//   small_planes        the one rule for planes that fit L1 (flat path, per-image fusion)
//   ssim_plane_flat     a small plane in one flat pass (moments, SSIM/cs, sums, maps)
//   vpass_ssim, vtaps   the row path's vertical pass fused with SSIM/cs and the sums
//   ssim_fwd_impl       all planes: flat path or row tiles × column strips over a ring
//
// Per (n, c) plane and tile of output rows: each input row is filtered horizontally once
// into a ring of K+1 rows × 4 moments; each pair of output rows is one vertical pass over
// the ring fused with the SSIM/cs formula and the mean. No full-size moment tensors are
// written. Window size K is a template parameter so the tap loops unroll and the pixel
// loops vectorise.
#pragma once
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "ops/cpu/common.h"
#include "ops/cpu/moments.h"
#include "ops/gaussian_window.h"
#include "ops/ssim_math.h"

namespace igd_fast {
namespace cpu {

// Small planes (whole plane in L1, the local model's patches): the flat forward path and
// the fused map's one-image-per-task path.
inline bool small_planes(int64_t H, int64_t W) { return W <= 64 && H * W <= 4096; }

// Forward ring: slot k holds the moments of one input row of a column strip,
// moment m at slot + m*kStripCols. Row i goes to slots i % R and i % R + R, so rows
// p..p+K are consecutive slots and every load of the vertical pass is one base
// pointer plus a compile-time offset (a pointer per ring row and moment spilled
// registers and made the loop several times slower).
constexpr int64_t kSlot = kMoments * kStripCols;

// Vertical taps of one moment column for NR output rows: a0 over slots 0..K-1,
// a1 over slots 1..K.
template <int K, int NR, typename A>
IGD_NO_CONTRACT inline void vtaps(const A* __restrict col, const A* __restrict w, A& a0, A& a1) {
#pragma GCC unroll 16
  for (int t = 0; t < K + NR - 1; ++t) {
    const A v = col[t * kSlot];
    if (t < K) a0 = std::fma(w[t], v, a0);
    if (NR == 2 && t > 0) a1 = std::fma(w[t - 1], v, a1);
  }
}

// Vertical pass for NR (1 or 2) consecutive output rows over K + NR - 1 ring slots
// from base, fused with SSIM / cs and the row sums; columns >= Ws are padding.
// MAPS: output row h goes to srow/crow + h*map_stride, through the padded rows
// stage[0..4*kStripCols) (masked stores in the loop kept it scalar).
template <int K, int NR, bool MAPS, typename A>
IGD_NO_CONTRACT void vpass_ssim(const A* __restrict base, int64_t Ws, const int32_t* __restrict valid,
                                A* __restrict stage, int64_t map_stride,
                                const A* __restrict win, A c1, A c2, A* __restrict srow,
                                A* __restrict crow, double& ssum, double& csum) {
  A w[K];
  for (int t = 0; t < K; ++t) w[t] = win[t];
  const int64_t Wv = round_up(Ws);
  base = aligned(base);
  stage = aligned(stage);
  A s_acc0 = 0, c_acc0 = 0, s_acc1 = 0, c_acc1 = 0;
  // Named scalars, no arrays: arrays inside the simd loop became per-lane stack
  // arrays and a scalar fallback loop.
#pragma omp simd reduction(+ : s_acc0, c_acc0, s_acc1, c_acc1)
  for (int64_t j = 0; j < Wv; ++j) {
    A mx0 = 0, my0 = 0, dd0 = 0, xy0 = 0, mx1 = 0, my1 = 0, dd1 = 0, xy1 = 0;
    vtaps<K, NR>(base + j, w, mx0, mx1);
    vtaps<K, NR>(base + kStripCols + j, w, my0, my1);
    vtaps<K, NR>(base + 2 * kStripCols + j, w, dd0, dd1);
    vtaps<K, NR>(base + 3 * kStripCols + j, w, xy0, xy1);
    const bool in = valid[j] != 0;
    A s0, cs0, s1 = 0, cs1 = 0;
    ssim_and_cs(mx0, my0, dd0, xy0, c1, c2, s0, cs0);
    if constexpr (NR == 2) ssim_and_cs(mx1, my1, dd1, xy1, c1, c2, s1, cs1);
    s0 = in ? s0 : A(0);
    cs0 = in ? cs0 : A(0);
    s1 = in ? s1 : A(0);
    cs1 = in ? cs1 : A(0);
    if constexpr (MAPS) {
      stage[j] = s0;
      stage[kStripCols + j] = cs0;
      stage[2 * kStripCols + j] = s1;
      stage[3 * kStripCols + j] = cs1;
    }
    s_acc0 += s0;
    c_acc0 += cs0;
    s_acc1 += s1;
    c_acc1 += cs1;
  }
  ssum += s_acc0;
  csum += c_acc0;
  ssum += s_acc1;
  csum += c_acc1;
  if constexpr (MAPS) {  // either row pointer may be null: that map is not wanted
    for (int h = 0; h < NR; ++h) {
      if (srow != nullptr) copy_row(stage + 2 * h * kStripCols, srow + h * map_stride, Ws);
      if (crow != nullptr) copy_row(stage + (2 * h + 1) * kStripCols, crow + h * map_stride, Ws);
    }
  }
}

// Small planes (whole plane in L1): both passes run over the plane as one flat
// array with row stride W, so there is no per-row loop overhead. Flat hpass index
// q = i*W + j reads q + t (columns j >= Wo mix two rows and are never used); flat
// vpass index q = p*W + j reads q + t*W; valid[q] selects the real outputs. The
// planes are copied into aligned, zero-padded scratch (stride P) so every loop runs
// over whole vectors and the padding lanes stay finite.
inline int64_t flat_stride(int64_t H, int64_t W) { return round_up(H * W + 2 * kLanes); }
// Slots of the flat scratch (each flat_stride values): x, y, (x-y)², xy, the four
// moments, then the SSIM and cs maps (row stride W) that the fused map kernel reads.
constexpr int kFlatSlots = 10, kFlatSsim = 8, kFlatCs = 9;

template <int K, bool MAPS, typename A>
IGD_NO_CONTRACT void ssim_plane_flat(const A* __restrict x_in, const A* __restrict y_in, int64_t H,
                                     int64_t W, const A* __restrict win, A c1, A c2,
                                     const int32_t* __restrict valid, A* __restrict buf,
                                     A* __restrict s_map, A* __restrict c_map, double& ssum,
                                     double& csum) {
  const int64_t HW = H * W, Ho = H - K + 1, Wo = W - K + 1, P = flat_stride(H, W);
  A* __restrict x = aligned(buf);
  A* __restrict y = aligned(buf + P);
  A* __restrict dd = aligned(buf + 2 * P);
  A* __restrict xy = aligned(buf + 3 * P);
  A* __restrict m0 = aligned(buf + 4 * P);
  A* __restrict m1 = aligned(buf + 5 * P);
  A* __restrict m2 = aligned(buf + 6 * P);
  A* __restrict m3 = aligned(buf + 7 * P);
  A* __restrict st = aligned(buf + kFlatSsim * P);
  A* __restrict ct = aligned(buf + kFlatCs * P);
  copy_row(x_in, x, HW);
  copy_row(y_in, y, HW);
  A w[K];
  for (int t = 0; t < K; ++t) w[t] = win[t];
  const int64_t n = round_up(HW);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const A d = x[j] - y[j];
    dd[j] = d * d;
    xy[j] = x[j] * y[j];
  }
  const int64_t nh = round_up(HW - K + 1);
#pragma omp simd
  for (int64_t j = 0; j < nh; ++j) {
    A a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma GCC unroll 16
    for (int t = 0; t < K; ++t) {
      a0 = std::fma(w[t], x[j + t], a0);
      a1 = std::fma(w[t], y[j + t], a1);
      a2 = std::fma(w[t], dd[j + t], a2);
      a3 = std::fma(w[t], xy[j + t], a3);
    }
    m0[j] = a0;
    m1[j] = a1;
    m2[j] = a2;
    m3[j] = a3;
  }
  const int64_t nv = round_up((Ho - 1) * W + Wo);
  A s_acc = 0, c_acc = 0;
#pragma omp simd reduction(+ : s_acc, c_acc)
  for (int64_t j = 0; j < nv; ++j) {
    A mx = 0, my = 0, edd = 0, exy = 0;
#pragma GCC unroll 16
    for (int t = 0; t < K; ++t) {
      mx = std::fma(w[t], m0[j + t * W], mx);
      my = std::fma(w[t], m1[j + t * W], my);
      edd = std::fma(w[t], m2[j + t * W], edd);
      exy = std::fma(w[t], m3[j + t * W], exy);
    }
    A sv, cv;
    ssim_and_cs(mx, my, edd, exy, c1, c2, sv, cv);
    if constexpr (MAPS) {
      st[j] = sv;
      ct[j] = cv;
    }
    const bool in = valid[j] != 0;
    s_acc += in ? sv : A(0);
    c_acc += in ? cv : A(0);
  }
  ssum += s_acc;
  csum += c_acc;
  if constexpr (MAPS) {  // a null map: not wanted, or the caller reads st / ct in buf
    for (int64_t p = 0; p < Ho; ++p) {
      if (s_map != nullptr) copy_row(st + p * W, s_map + p * Wo, Wo);
      if (c_map != nullptr) copy_row(ct + p * W, c_map + p * Wo, Wo);
    }
  }
}

// m + offset, or null for a map that is not wanted.
template <typename A>
inline A* map_at(A* m, int64_t offset) {
  return m == nullptr ? nullptr : m + offset;
}

// MAPS: write the SSIM map to s_map and the cs map to c_map, each unless null.
template <int K, bool MAPS, typename T, typename A>
void ssim_fwd_impl(const T* x, const T* y, int64_t planes, int64_t H, int64_t W, double sigma,
                   double c1d, double c2d, A* s_mean, A* c_mean, A* s_map, A* c_map) {
  const int64_t Ho = H - K + 1, Wo = W - K + 1;
  const std::vector<A> win = gaussian_window<A>(K, sigma);
  const A c1 = static_cast<A>(c1d), c2 = static_cast<A>(c2d);
  if constexpr (std::is_same_v<T, A>) {
    if (small_planes(H, W) && planes >= 4 * static_cast<int64_t>(at::get_num_threads())) {
      const int64_t nv = (Ho - 1) * W + Wo;
      std::vector<int32_t> valid(round_up(nv), 0);
      for (int64_t q = 0; q < nv; ++q) valid[q] = (q % W) < Wo;
      const double npix = static_cast<double>(Ho * Wo);
      parallel_tasks(planes, [&](int64_t begin, int64_t end) {
        Scratch<A> buf(kFlatSlots * flat_stride(H, W));
        for (int64_t pl = begin; pl < end; ++pl) {
          double ssum = 0, csum = 0;
          ssim_plane_flat<K, MAPS, A>(x + pl * H * W, y + pl * H * W, H, W, win.data(), c1, c2,
                                      valid.data(), buf.data(),
                                      map_at(s_map, pl * Ho * Wo), map_at(c_map, pl * Ho * Wo),
                                      ssum, csum);
          s_mean[pl] = static_cast<A>(ssum / npix);
          c_mean[pl] = static_cast<A>(csum / npix);
        }
      });
      return;
    }
  }
  const int64_t strips = (Wo + kStripCols - 1) / kStripCols;
  const int64_t row_tiles = tiles_per_plane(planes * strips, Ho, 16);
  const int64_t tiles = row_tiles * strips;
  std::vector<double> partial(planes * tiles * 2, 0.0);
  std::vector<std::vector<int32_t>> strip_mask(strips);
  for (int64_t sp = 0; sp < strips; ++sp) {
    const auto [q0, q1] = tile_range(Wo, strips, sp);
    lane_mask(strip_mask[sp], q1 - q0);
  }

  parallel_tasks(planes * tiles, [&](int64_t begin, int64_t end) {
    constexpr int R = K + 1;  // ring rows: two output rows per vertical sweep
    const int64_t Wi = RowGeom(kStripCols + K - 1, K).Wi;
    Scratch<A> xbuf(Wi), ybuf(Wi), prod(2 * Wi), ring(2 * R * kSlot), stage(4 * kStripCols);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pl = task / tiles, tl = task % tiles;
      const auto [p0, p1] = tile_range(Ho, row_tiles, tl / strips);
      const auto [q0, q1] = tile_range(Wo, strips, tl % strips);  // output columns
      const int64_t Ws = q1 - q0, Wv = round_up(Ws);
      const int32_t* valid = strip_mask[tl % strips].data();
      const Plane<T, A> px{x + pl * H * W, W}, py{y + pl * H * W, W};
      double ssum = 0, csum = 0;
      for (int64_t i = p0; i < p1 + K - 1; ++i) {
        A* slot = ring.data() + (i % R) * kSlot;
        hpass_moments<K, true, A>(px.row(i, xbuf.data(), q0, Ws + K - 1),
                                  py.row(i, ybuf.data(), q0, Ws + K - 1), prod.data(), Wv, Wi,
                                  win.data(), slot, kStripCols, slot + R * kSlot);
        const int64_t p = i - K + 1;
        if (p < p0) continue;
        if ((p - p0) % 2 == 1) {  // rows p - 1 and p
          const A* base = ring.data() + ((p - 1) % R) * kSlot;
          A* srow = map_at(s_map, (pl * Ho + p - 1) * Wo + q0);
          A* crow = map_at(c_map, (pl * Ho + p - 1) * Wo + q0);
          vpass_ssim<K, 2, MAPS, A>(base, Ws, valid, stage.data(), Wo, win.data(), c1, c2, srow,
                                    crow, ssum, csum);
        } else if (p == p1 - 1) {  // last row of an odd count
          const A* base = ring.data() + (p % R) * kSlot;
          A* srow = map_at(s_map, (pl * Ho + p) * Wo + q0);
          A* crow = map_at(c_map, (pl * Ho + p) * Wo + q0);
          vpass_ssim<K, 1, MAPS, A>(base, Ws, valid, stage.data(), Wo, win.data(), c1, c2, srow,
                                    crow, ssum, csum);
        }
      }
      partial[task * 2] = ssum;
      partial[task * 2 + 1] = csum;
    }
  });
  // Tiles are summed in a fixed order: results do not depend on the thread count.
  const double npix = static_cast<double>(Ho * Wo);
  for (int64_t pl = 0; pl < planes; ++pl) {
    double ss = 0, cs = 0;
    for (int64_t tl = 0; tl < tiles; ++tl) {
      ss += partial[(pl * tiles + tl) * 2];
      cs += partial[(pl * tiles + tl) * 2 + 1];
    }
    s_mean[pl] = static_cast<A>(ss / npix);
    c_mean[pl] = static_cast<A>(cs / npix);
  }
}

}  // namespace cpu
}  // namespace igd_fast
