// CPU kernels of one scale: ssim_scale (forward: means and optional maps) and
// ssim_scale_backward (analytic gradients), registered for igd_fast_C on the CPU.
// Semantics: igd_fast/reference/ssim.py. The forward engine is ssim_forward.h (shared with
// the fused map); the backward's row engine lives here.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/cpu/common.h"
#include "ops/cpu/moments.h"
#include "ops/cpu/ssim_forward.h"
#include "ops/gaussian_window.h"
#include "ops/ssim_math.h"

namespace igd_fast {
namespace cpu {
namespace {

// ------------------------------------------------------------------ forward

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ssim_scale_cpu(
    const at::Tensor& x_in, const at::Tensor& y_in, int64_t win_size, double sigma, double c1,
    double c2, bool want_maps) {
  check_pair(x_in, y_in, win_size, sigma, "ssim_scale");
  const auto x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H - win_size + 1, Wo = W - win_size + 1;
  const auto opts = x.options().dtype(acc_type(x.scalar_type()));
  at::Tensor s_mean = at::empty({N, C}, opts), c_mean = at::empty({N, C}, opts);
  at::Tensor s_map = want_maps ? at::empty({N, C, Ho, Wo}, opts) : at::empty({0}, opts);
  at::Tensor c_map = want_maps ? at::empty({N, C, Ho, Wo}, opts) : at::empty({0}, opts);
  if (N * C == 0) return {s_mean, c_mean, s_map, c_map};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ssim_scale", [&] {
    using T = scalar_t;
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    dispatch_window(win_size, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      const T* xp = x.const_data_ptr<T>();
      const T* yp = y.const_data_ptr<T>();
      if (want_maps) {
        ssim_fwd_impl<K, true, T, A>(xp, yp, N * C, H, W, sigma, c1, c2, s_mean.data_ptr<A>(),
                                     c_mean.data_ptr<A>(), s_map.data_ptr<A>(),
                                     c_map.data_ptr<A>());
      } else {
        ssim_fwd_impl<K, false, T, A>(xp, yp, N * C, H, W, sigma, c1, c2, s_mean.data_ptr<A>(),
                                      c_mean.data_ptr<A>(), nullptr, nullptr);
      }
    });
  });
  return {s_mean, c_mean, s_map, c_map};
}

// ------------------------------------------------------------------ backward
//
// Recomputes the moments as the forward does, forms the per-pixel moment gradients of
// one output row, applies the horizontal adjoint filter into a second ring and finishes
// each input row with the vertical adjoint as soon as every output row touching it is done.

// Per output row: the moment gradients (reference ssim_scale_backward) into zero-padded
// rows gp[m] (K-1 zeros in front), m = 0 var, 1 cov, 2 mu_y, 3 mu_x; padding columns
// (>= Wo) get 0. gsmap / gcmap: padded rows of Wv values, zero rows when the map
// has no gradient (a null pointer made the masked loads fault-suppressing assists).
template <int K, bool GX, typename A>
IGD_NO_CONTRACT void grad_row(const A* const* rows, const int32_t* __restrict valid, int64_t Wv,
                              const A* __restrict win,
                              A c1, A c2, A gs0, A gc0, const A* __restrict gsmap,
                              const A* __restrict gcmap, A* __restrict gvar, A* __restrict gcov,
                              A* __restrict gmuy, A* __restrict gmux) {
  const A* r[K];
  A w[K];
  for (int t = 0; t < K; ++t) {
    r[t] = rows[t];
    w[t] = win[t];
  }
#pragma omp simd
  for (int64_t j = 0; j < Wv; ++j) {
    A mx = 0, my = 0, edd = 0, exy = 0;
#pragma GCC unroll 16
    for (int t = 0; t < K; ++t) {
      mx = std::fma(w[t], r[t][j], mx);
      my = std::fma(w[t], r[t][Wv + j], my);
      edd = std::fma(w[t], r[t][2 * Wv + j], edd);
      exy = std::fma(w[t], r[t][3 * Wv + j], exy);
    }
    const A in = valid[j] != 0 ? A(1) : A(0);
    A g_var, g_cov, g_mu_y, g_mu_x = 0;
    ssim_moment_grads<GX>(mx, my, edd, exy, c1, c2, in * (gs0 + gsmap[j]), in * (gc0 + gcmap[j]),
                          g_var, g_cov, g_mu_y, g_mu_x);
    gvar[j] = g_var;
    gcov[j] = g_cov;
    gmuy[j] = g_mu_y;
    if constexpr (GX) gmux[j] = g_mu_x;
  }
}

// Horizontal adjoint (full correlation with the reversed window): zero-padded
// gradient row -> Wg values (columns >= W are padding).
template <int K, typename A>
inline void hadjoint(const A* __restrict gp, int64_t Wg, const A* __restrict win,
                     A* __restrict out) {
  A wr[K];
  for (int t = 0; t < K; ++t) wr[t] = win[K - 1 - t];
#pragma omp simd
  for (int64_t j = 0; j < Wg; ++j) {
    A a = 0;
#pragma GCC unroll 16
    for (int t = 0; t < K; ++t) a += wr[t] * gp[j + t];
    out[j] = a;
  }
}

template <int K, bool GX, typename T, typename A>
void ssim_bwd_impl(const T* x, const T* y, int64_t planes, int64_t H, int64_t W, double sigma,
                   double c1d, double c2d, const A* g_s_mean, const A* g_c_mean,
                   const A* g_s_map, const A* g_c_map, T* gx, T* gy) {
  constexpr int NG = GX ? 4 : 3;
  const int64_t Ho = H - K + 1, Wo = W - K + 1;
  const RowGeom geo(W, K);
  const int64_t Wv = geo.Wv, Wg = geo.Wg, Wi = geo.Wi;
  // gradient rows: K-1 zeros, Wv values, zeros up to what the Wg-wide adjoint reads
  const int64_t Wp = std::max(Wg, Wv + K - 1) + K - 1;
  std::vector<int32_t> mask;
  const int32_t* valid = lane_mask(mask, Wo);
  const std::vector<A> win = gaussian_window<A>(K, sigma);
  const A c1 = static_cast<A>(c1d), c2 = static_cast<A>(c2d);
  const A npix = static_cast<A>(Ho * Wo);
  const int64_t tiles = tiles_per_plane(planes, H, std::max<int64_t>(16, 4 * K));

  parallel_tasks(planes * tiles, [&](int64_t begin, int64_t end) {
    Scratch<A> xbuf(Wi), ybuf(Wi), prod(2 * Wi), ring(K * kMoments * Wv);
    Scratch<A> gp(NG * Wp), gring(K * NG * Wg), zero(NG * Wg), out(2 * Wg), gsrow(Wv), gcrow(Wv);
    const A* rows[K];
    const A* grows[K];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pl = task / tiles, tl = task % tiles;
      const auto [i0, i1] = tile_range(H, tiles, tl);
      if (i0 >= i1) continue;
      const Plane<T, A> px{x + pl * H * W, W}, py{y + pl * H * W, W};
      const A gs0 = g_s_mean[pl] / npix, gc0 = g_c_mean[pl] / npix;
      const int64_t p0 = std::max<int64_t>(0, i0 - K + 1), p1 = std::min(Ho, i1);
      std::fill(gp.data(), gp.data() + NG * Wp, A(0));

      // Input row i is final once Gh rows i-K+1..i (within [0, Ho)) exist.
      auto finish_row = [&](int64_t i) {
        for (int t = 0; t < K; ++t) {
          const int64_t p = i - t;  // weight win[t] = win[i - p]
          grows[t] = (p >= 0 && p < Ho) ? gring.data() + (p % K) * NG * Wg : zero.data();
        }
        A wk[K];
        for (int t = 0; t < K; ++t) wk[t] = win[t];
        const A* xr = px.row(i, xbuf.data());
        const A* yr = py.row(i, ybuf.data());
        A* oy = out.data();
        A* ox = out.data() + Wg;
#pragma omp simd
        for (int64_t j = 0; j < Wg; ++j) {
          A avar = 0, acov = 0, amuy = 0, amux = 0;
#pragma GCC unroll 16
          for (int t = 0; t < K; ++t) {
            avar += wk[t] * grows[t][j];
            acov += wk[t] * grows[t][Wg + j];
            amuy += wk[t] * grows[t][2 * Wg + j];
            if constexpr (GX) amux += wk[t] * grows[t][3 * Wg + j];
          }
          oy[j] = amuy + A(2) * yr[j] * avar + xr[j] * acov;
          if constexpr (GX) ox[j] = amux + A(2) * xr[j] * avar + yr[j] * acov;
        }
        if constexpr (std::is_same_v<T, A>) {
          std::copy(oy, oy + W, gy + (pl * H + i) * W);
          if constexpr (GX) std::copy(ox, ox + W, gx + (pl * H + i) * W);
        } else {
          store_row<A, T>(oy, gy + (pl * H + i) * W, W);
          if constexpr (GX) store_row<A, T>(ox, gx + (pl * H + i) * W, W);
        }
      };

      for (int64_t i = p0; i < p1 + K - 1; ++i) {
        hpass_moments<K, false, A>(px.row(i, xbuf.data()), py.row(i, ybuf.data()), prod.data(), Wv,
                                   Wi, win.data(), ring.data() + (i % K) * kMoments * Wv, Wv);
        const int64_t p = i - K + 1;
        if (p < p0) continue;
        for (int t = 0; t < K; ++t) rows[t] = ring.data() + ((p + t) % K) * kMoments * Wv;
        const int64_t off = (pl * Ho + p) * Wo;
        if (g_s_map) std::copy(g_s_map + off, g_s_map + off + Wo, gsrow.data());
        if (g_c_map) std::copy(g_c_map + off, g_c_map + off + Wo, gcrow.data());
        A* g = gp.data() + (K - 1);
        grad_row<K, GX, A>(rows, valid, Wv, win.data(), c1, c2, gs0, gc0,
                           gsrow.data(), gcrow.data(),
                           g, g + Wp, g + 2 * Wp, GX ? g + 3 * Wp : nullptr);
        A* gh = gring.data() + (p % K) * NG * Wg;
        for (int m = 0; m < NG; ++m) hadjoint<K, A>(gp.data() + m * Wp, Wg, win.data(), gh + m * Wg);
        if (p >= i0) finish_row(p);
      }
      for (int64_t i = std::max(i0, p1); i < i1; ++i) finish_row(i);
    }
  });
}

at::Tensor plane_param(const at::Tensor& g, int64_t N, int64_t C, at::ScalarType dt,
                       const char* name) {
  TORCH_CHECK(g.defined() && g.numel() == N * C, "ssim_scale_backward: ", name,
              " must hold N×C = ", N * C, " values, got shape ", g.sizes());
  TORCH_CHECK(g.device().is_cpu(), "ssim_scale_backward: ", name, " must be on the CPU");
  return g.to(dt).contiguous();
}

at::Tensor map_param(const at::Tensor& g, int64_t N, int64_t C, int64_t Ho, int64_t Wo,
                     at::ScalarType dt, const char* name) {
  if (!g.defined() || g.numel() == 0) return at::Tensor();
  TORCH_CHECK(g.dim() == 4 && g.size(0) == N && g.size(1) == C && g.size(2) == Ho &&
                  g.size(3) == Wo,
              "ssim_scale_backward: ", name, " must be empty or of shape [", N, ", ", C, ", ", Ho,
              ", ", Wo, "], got ", g.sizes());
  TORCH_CHECK(g.device().is_cpu(), "ssim_scale_backward: ", name, " must be on the CPU");
  return g.to(dt).contiguous();
}

std::tuple<at::Tensor, at::Tensor> ssim_scale_backward_cpu(
    const at::Tensor& x_in, const at::Tensor& y_in, int64_t win_size, double sigma, double c1,
    double c2, const at::Tensor& g_ssim_mean, const at::Tensor& g_cs_mean,
    const at::Tensor& g_ssim_map, const at::Tensor& g_cs_map, bool need_gx) {
  check_pair(x_in, y_in, win_size, sigma, "ssim_scale_backward");
  const auto x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H - win_size + 1, Wo = W - win_size + 1;
  const auto dt = acc_type(x.scalar_type());
  const auto gsm = plane_param(g_ssim_mean, N, C, dt, "g_ssim_mean");
  const auto gcm = plane_param(g_cs_mean, N, C, dt, "g_cs_mean");
  const auto gsmap = map_param(g_ssim_map, N, C, Ho, Wo, dt, "g_ssim_map");
  const auto gcmap = map_param(g_cs_map, N, C, Ho, Wo, dt, "g_cs_map");
  at::Tensor gy = at::empty({N, C, H, W}, x.options());
  at::Tensor gx = need_gx ? at::empty({N, C, H, W}, x.options()) : at::empty({0}, x.options());
  if (N * C == 0) return {gx, gy};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ssim_scale_backward", [&] {
    using T = scalar_t;
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const A* gs_map = gsmap.defined() ? gsmap.const_data_ptr<A>() : nullptr;
    const A* gc_map = gcmap.defined() ? gcmap.const_data_ptr<A>() : nullptr;
    dispatch_window(win_size, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      if (need_gx) {
        ssim_bwd_impl<K, true, T, A>(x.const_data_ptr<T>(), y.const_data_ptr<T>(), N * C, H, W,
                                     sigma, c1, c2, gsm.const_data_ptr<A>(),
                                     gcm.const_data_ptr<A>(), gs_map, gc_map, gx.data_ptr<T>(),
                                     gy.data_ptr<T>());
      } else {
        ssim_bwd_impl<K, false, T, A>(x.const_data_ptr<T>(), y.const_data_ptr<T>(), N * C, H, W,
                                      sigma, c1, c2, gsm.const_data_ptr<A>(),
                                      gcm.const_data_ptr<A>(), gs_map, gc_map, nullptr,
                                      gy.data_ptr<T>());
      }
    });
  });
  return {gx, gy};
}

}  // namespace
}  // namespace cpu
}  // namespace igd_fast

TORCH_LIBRARY_IMPL(igd_fast_C, CPU, m) {
  m.impl("ssim_scale", &igd_fast::cpu::ssim_scale_cpu);
  m.impl("ssim_scale_backward", &igd_fast::cpu::ssim_scale_backward_cpu);
}
