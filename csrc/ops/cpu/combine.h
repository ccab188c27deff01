// The per-pixel MS-SSIM combination on the CPU (namespace igd_fast::cpu), used by
// combine_maps.cpp and by the fused map (ms_ssim_fused.cpp):
//   Axis            replicate-pad + bilinear resize of one axis (PyTorch's index rule)
//   ScaleRows,      one scale resized along the columns on the rows a tile reads
//   resize_cols
//   CombineScratch, prod_s relu(v_s)^w_s of output rows in the log domain, one exp per
//   combine_rows    pixel (ssim_fast_math.h)
//   combine_channel one channel into a channel mean
//   combine_impl    every plane and tile of the combination
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "ops/cpu/common.h"
#include "ops/cpu/ssim_fast_math.h"

namespace igd_fast {
namespace cpu {

// One axis of "replicate-pad by r, then bilinear (align_corners=False) to n_out":
// for each output index, the two source indices in the unpadded map and their
// weights (PyTorch's upsample_bilinear2d source-index rule).
template <typename A>
struct Axis {
  std::vector<int32_t> i0, i1;
  std::vector<A> l0, l1;
  bool identity;  // no resize: only the replicate padding
  // Per 16-output block b, both taps within 16 source values from base[b] (rel0 / rel1
  // the offsets): true for every upsampling, what lerp_cols_windowed needs.
  std::vector<int32_t> base, rel0, rel1;
  bool windowed = true;
  Axis(int64_t n_in, int64_t r, int64_t n_out)
      : i0(n_out), i1(n_out), l0(n_out), l1(n_out), identity(n_in + 2 * r == n_out) {
    const int64_t np = n_in + 2 * r;
    const bool same = identity;
    const A scale = static_cast<A>(np) / static_cast<A>(n_out);
    for (int64_t o = 0; o < n_out; ++o) {
      int64_t a;
      A lam;
      if (same) {
        a = o;
        lam = 0;
      } else {
        const A src = std::max(scale * (static_cast<A>(o) + A(0.5)) - A(0.5), A(0));
        a = std::min(static_cast<int64_t>(src), np - 1);
        lam = src - static_cast<A>(a);
      }
      const int64_t b = (same || a == np - 1) ? a : a + 1;
      i0[o] = static_cast<int32_t>(std::clamp<int64_t>(a - r, 0, n_in - 1));
      i1[o] = static_cast<int32_t>(std::clamp<int64_t>(b - r, 0, n_in - 1));
      l0[o] = A(1) - lam;
      l1[o] = lam;
    }
    rel0.resize(n_out);
    rel1.resize(n_out);
    for (int64_t j0 = 0; j0 < n_out; j0 += kLanes) {
      const int64_t j1 = std::min(n_out, j0 + kLanes);
      const int32_t lo = *std::min_element(i0.begin() + j0, i0.begin() + j1);
      base.push_back(lo);
      for (int64_t j = j0; j < j1; ++j) {
        rel0[j] = i0[j] - lo;
        rel1[j] = i1[j] - lo;
        windowed = windowed && rel0[j] < kLanes && rel1[j] < kLanes;
      }
    }
  }
};

// One scale of the combination for a tile of output rows: the map resized along the
// columns on the source rows the tile reads (rows r0.. of h, out_w wide), the row
// axis still to apply, and the scale's weight.
template <typename A>
struct ScaleRows {
  const Axis<A>* ah;
  int64_t r0;
  A w;
  std::vector<A> h;
};

// Column pass of one scale for output rows [o0, o1) (PyTorch's order: columns first,
// on the few coarse rows these output rows read): the map m (mw columns, row stride
// ms) replicate-padded by r and resized by aw.
template <typename A>
void resize_cols(const A* m, int64_t mw, int64_t ms, const Axis<A>& ah, const Axis<A>& aw,
                 int64_t r, A wt, int64_t o0, int64_t o1, int64_t out_w, ScaleRows<A>& sr) {
  const int64_t r0 = ah.i0[o0], rows = ah.i1[o1 - 1] - r0 + 1;
  sr.ah = &ah;
  sr.r0 = r0;
  sr.w = wt;
  sr.h.resize(rows * out_w);
  for (int64_t i = 0; i < rows; ++i) {
    const A* __restrict src = m + (r0 + i) * ms;
    A* __restrict dst = sr.h.data() + i * out_w;
    if constexpr (IGD_FAST_AVX512 && std::is_same_v<A, float>) {
      if (aw.windowed) {  // (for the padding alone too: a memmove per short row was slower)
        if (aw.identity) {
          lerp_cols_windowed<true>(src, mw, aw.base.data(), aw.rel0.data(), aw.rel1.data(),
                                   aw.l0.data(), aw.l1.data(), dst, out_w);
        } else {
          lerp_cols_windowed<false>(src, mw, aw.base.data(), aw.rel0.data(), aw.rel1.data(),
                                    aw.l0.data(), aw.l1.data(), dst, out_w);
        }
        continue;
      }
    }
    if (aw.identity) {  // replicate padding only
      std::fill(dst, dst + r, src[0]);
      std::copy(src, src + mw, dst + r);
      std::fill(dst + r + mw, dst + out_w, src[mw - 1]);
      continue;
    }
    const int32_t* __restrict c0 = aw.i0.data();
    const int32_t* __restrict c1 = aw.i1.data();
    const A* __restrict l0 = aw.l0.data();
    const A* __restrict l1 = aw.l1.data();
#pragma omp simd
    for (int64_t j = 0; j < out_w; ++j) dst[j] = l0[j] * src[c0[j]] + l1[j] * src[c1[j]];
  }
}

// Per-thread scratch of the combination: per-scale row pointers and weights of one
// output row (the AVX-512 path), or tile-sized rows (the other).
template <typename A>
struct CombineScratch {
  std::vector<const A*> ra, rb;
  std::vector<A> la, lb, w, u, a;
};

// Output rows [o0, o1) (out_w columns, contiguous from out) (+)=
// prod_s relu(v_s)^w_s = E(sum_s w_s L(v_s)) (ssim_fast_math.h), 0 once some v_s <= 0
// or is NaN; v_s the row interpolation of sc[s].h.
template <bool ADD, typename A>
void combine_rows(const std::vector<ScaleRows<A>>& sc, int64_t o0, int64_t o1, int64_t out_w,
                  CombineScratch<A>& cs, A* __restrict out) {
  const size_t S = sc.size();
  if constexpr (IGD_FAST_AVX512 && std::is_same_v<A, float>) {
    // per output row, the scales' sum stays in registers
    cs.ra.resize(S);
    cs.rb.resize(S);
    cs.la.resize(S);
    cs.lb.resize(S);
    cs.w.resize(S);
    for (int64_t oy = o0; oy < o1; ++oy) {
      for (size_t s = 0; s < S; ++s) {
        const Axis<A>& ah = *sc[s].ah;
        cs.ra[s] = sc[s].h.data() + (ah.i0[oy] - sc[s].r0) * out_w;
        cs.rb[s] = sc[s].h.data() + (ah.i1[oy] - sc[s].r0) * out_w;
        cs.la[s] = ah.l0[oy];
        cs.lb[s] = ah.l1[oy];
        cs.w[s] = sc[s].w;
      }
      lerp_log_sum_exp<ADD>(static_cast<int64_t>(S), cs.ra.data(), cs.rb.data(), cs.la.data(),
                            cs.lb.data(), cs.w.data(), out + (oy - o0) * out_w, out_w);
    }
  } else {
    // per scale over the whole tile, so the log runs as one long loop (per-row loops of
    // a narrow map left its dependent polynomial chain exposed)
    const int64_t n = (o1 - o0) * out_w;
    cs.u.resize(n);
    cs.a.assign(n, A(0));
    A* __restrict u = cs.u.data();
    for (const ScaleRows<A>& s : sc) {
      for (int64_t oy = o0; oy < o1; ++oy) {
        const A* __restrict ra = s.h.data() + (s.ah->i0[oy] - s.r0) * out_w;
        const A* __restrict rb = s.h.data() + (s.ah->i1[oy] - s.r0) * out_w;
        const A lb = s.ah->l1[oy], la = s.ah->l0[oy];
        A* __restrict ur = u + (oy - o0) * out_w;
        if (lb == A(0)) {  // no resize along the rows: no 0 * rb term (NaN where rb is inf)
#pragma omp simd
          for (int64_t j = 0; j < out_w; ++j) ur[j] = la * ra[j];
          continue;
        }
#pragma omp simd
        for (int64_t j = 0; j < out_w; ++j) ur[j] = la * ra[j] + lb * rb[j];
      }
      add_weighted_log(cs.a.data(), u, s.w, n);
    }
    exp_from_log<ADD>(cs.a.data(), out, n);
  }
}

// Channel c of `group` channels into output rows [o0, o1): the first channel writes,
// the others add, and the last scales the sum to the mean.
template <typename A>
void combine_channel(const std::vector<ScaleRows<A>>& sc, int64_t c, int64_t group, int64_t o0,
                     int64_t o1, int64_t out_w, CombineScratch<A>& cs, A* out) {
  if (c == 0) {
    combine_rows<false>(sc, o0, o1, out_w, cs, out);
  } else {
    combine_rows<true>(sc, o0, o1, out_w, cs, out);
  }
  if (group > 1 && c == group - 1) {
    const A f = A(1) / static_cast<A>(group);
    const int64_t n = (o1 - o0) * out_w;
#pragma omp simd
    for (int64_t q = 0; q < n; ++q) out[q] *= f;
  }
}

// Output plane g (of `planes`) is the mean of the combinations of map planes
// g*group .. g*group + group - 1: group 1 for combine_maps, the channel count for
// the fused map's channel mean.
template <typename A>
void combine_impl(const std::vector<at::Tensor>& maps, const std::vector<double>& weights,
                  int64_t planes, int64_t group, int64_t out_h, int64_t out_w, int64_t r, A* out) {
  const size_t M = maps.size();
  std::vector<Axis<A>> ax_h, ax_w;
  std::vector<const A*> base(M);
  std::vector<int64_t> mh(M), mw(M);
  for (size_t s = 0; s < M; ++s) {
    mh[s] = maps[s].size(2);
    mw[s] = maps[s].size(3);
    TORCH_CHECK(mw[s] < (int64_t(1) << 31), "combine_maps: map ", s, " is too wide");
    ax_h.emplace_back(mh[s], r, out_h);
    ax_w.emplace_back(mw[s], r, out_w);
    base[s] = maps[s].const_data_ptr<A>();
  }
  const int64_t tiles = tiles_per_plane(planes, out_h, 8);
  parallel_tasks(planes * tiles, [&](int64_t begin, int64_t end) {
    CombineScratch<A> cs;
    std::vector<ScaleRows<A>> sc(M);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pl = task / tiles, tl = task % tiles;
      const auto [o0, o1] = tile_range(out_h, tiles, tl);
      if (o0 >= o1) continue;
      A* o = out + (pl * out_h + o0) * out_w;
      for (int64_t c = 0; c < group; ++c) {
        const int64_t mp = pl * group + c;
        for (size_t s = 0; s < M; ++s) {
          resize_cols(base[s] + mp * mh[s] * mw[s], mw[s], mw[s], ax_h[s], ax_w[s], r,
                      static_cast<A>(weights[s]), o0, o1, out_w, sc[s]);
        }
        combine_channel(sc, c, group, o0, o1, out_w, cs, o);
      }
    }
  });
}

}  // namespace cpu
}  // namespace igd_fast
