// CPU kernel of ms_ssim_fused (inference: every scale, the pools, the combination and
// the channel mean in one op), registered for igd_fast_C on the CPU. Built from the
// forward of one scale (ssim_forward.h), the pool (downsample.h) and the combination
// (combine.h); small planes (small_planes) run one image per task in L1-resident scratch,
// larger ones scale by scale across all threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/cpu/combine.h"
#include "ops/cpu/common.h"
#include "ops/cpu/downsample.h"
#include "ops/cpu/ssim_forward.h"
#include "ops/gaussian_window.h"

namespace igd_fast {
namespace cpu {
namespace {

// MS-SSIM values and (MAP) the channel-averaged per-pixel map in one op (inference):
// same arithmetic as ssim_scale + downsample (+ combine_maps + the mean over
// channels), which it replaces. Only the per-scale means and the N×1×H×W map are
// written.

// Sizes of every scale's input, checked against the window.
struct ScaleSizes {
  std::vector<int64_t> h, w;
  ScaleSizes(int64_t H, int64_t W, int64_t S, int64_t K) : h(S), w(S) {
    for (int64_t s = 0; s < S; ++s) {
      h[s] = s == 0 ? H : (h[s - 1] + 1) / 2;
      w[s] = s == 0 ? W : (w[s - 1] + 1) / 2;
      TORCH_CHECK(h[s] >= K && w[s] >= K, "ms_ssim_fused: scale ", s, " is ", h[s], "×",
                  w[s], ", smaller than the ", K, "×", K, " window");
    }
  }
};

// Software prefetch of n values from p: a 32×32 float plane is one 4 KiB page, and
// the hardware prefetcher stops at page boundaries, so every plane began with misses.
template <typename A>
inline void prefetch(const A* p, int64_t n) {
  for (int64_t q = 0; q < n; q += 64 / sizeof(A)) __builtin_prefetch(p + q);
}

// Small planes (small_planes: the local model's patches): one image per task, every scale
// (ssim_plane_flat), the pools and the combination in per-thread scratch that stays in L1.
template <int K, bool MAP, typename A>
void fused_map_per_image(const A* x, const A* y, int64_t N, int64_t C, int64_t H, int64_t W,
                         double sigma, double c1d, double c2d, const std::vector<double>& weights,
                         const ScaleSizes& sz, A* s_mean, A* c_mean, A* map) {
  const int64_t S = static_cast<int64_t>(weights.size()), r = K / 2, HW = H * W;
  const std::vector<A> win = gaussian_window<A>(K, sigma);
  const A c1 = static_cast<A>(c1d), c2 = static_cast<A>(c2d);
  const std::vector<int64_t>& hs = sz.h;
  const std::vector<int64_t>& ws = sz.w;
  std::vector<std::vector<int32_t>> valid(S);
  std::vector<Axis<A>> ax_h, ax_w;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t ho = hs[s] - K + 1, wo = ws[s] - K + 1, nv = (ho - 1) * ws[s] + wo;
    valid[s].assign(round_up(nv), 0);
    for (int64_t q = 0; q < nv; ++q) valid[s][q] = (q % ws[s]) < wo;
    ax_h.emplace_back(ho, r, H);
    ax_w.emplace_back(wo, r, W);
  }
  parallel_tasks(N, [&](int64_t begin, int64_t end) {
    const int64_t P = flat_stride(H, W);
    Scratch<A> buf(kFlatSlots * P), next(2 * P);
    std::vector<A> p0(2 * W + 2, A(0)), p1(2 * W + 2, A(0));
    std::vector<ScaleRows<A>> sc(S);
    CombineScratch<A> cs;
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t pl = n * C + c;
        const A* xs = x + pl * HW;
        const A* ys = y + pl * HW;
        const bool more = pl + 1 < end * C;  // this thread's next plane: prefetched below
        for (int64_t s = 0; s < S; ++s) {
          if (more) {  // a part per scale: all at once, the prefetches themselves stalled
            const int64_t q0 = HW * s / S, q1 = HW * (s + 1) / S;
            prefetch(x + (pl + 1) * HW + q0, q1 - q0);
            prefetch(y + (pl + 1) * HW + q0, q1 - q0);
          }
          const int64_t h = hs[s], w = ws[s], Ps = flat_stride(h, w);
          double ssum = 0, csum = 0;
          ssim_plane_flat<K, MAP, A>(xs, ys, h, w, win.data(), c1, c2, valid[s].data(),
                                     buf.data(), nullptr, nullptr, ssum, csum);
          const double npix = static_cast<double>((h - K + 1) * (w - K + 1));
          s_mean[pl * S + s] = static_cast<A>(ssum / npix);
          c_mean[pl * S + s] = static_cast<A>(csum / npix);
          // the last scale contributes its SSIM map, the others their cs maps
          if constexpr (MAP) {
            const A* m = buf.data() + (s == S - 1 ? kFlatSsim : kFlatCs) * Ps;
            resize_cols(m, w - K + 1, w, ax_h[s], ax_w[s], r, static_cast<A>(weights[s]), 0, H,
                        W, sc[s]);
          }
          if (s + 1 < S) {  // pool the plane copies in buf (x at 0, y at Ps) into next
            const int64_t ho = (h + 1) / 2, wo = (w + 1) / 2;
            const A* px = buf.data();
            const A* py = buf.data() + Ps;
            for (int64_t i = 0; i < ho; ++i) {
              downsample_plane_row<A, A>(px, h, w, i, p0.data(), p1.data(), next.data() + i * wo);
              downsample_plane_row<A, A>(py, h, w, i, p0.data(), p1.data(),
                                         next.data() + P + i * wo);
            }
            xs = next.data();
            ys = next.data() + P;
          }
        }
        if constexpr (MAP) combine_channel(sc, c, C, 0, H, W, cs, map + n * HW);
      }
    }
  });
}

// Larger planes: the per-scale kernels across all threads (writing only the map the
// combination reads: cs below the last scale, SSIM at it), the pools, then the
// combination with the channel mean, all inside the op (no second map per scale, no
// N×C×H×W combined map, no round trips through Python between scales).
template <int K, bool MAP, typename A>
void fused_map_by_scale(const A* x, const A* y, int64_t N, int64_t C, int64_t H, int64_t W,
                        double sigma, double c1, double c2, const std::vector<double>& weights,
                        const ScaleSizes& sz, const at::TensorOptions& opts, A* s_mean, A* c_mean,
                        A* map) {
  const int64_t S = static_cast<int64_t>(weights.size()), P = N * C;
  std::vector<at::Tensor> maps;
  at::Tensor pooled;  // x then y of the current scale's input, when pooled
  std::vector<A> sm(P), cm(P);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t h = sz.h[s], w = sz.w[s];
    const bool last = s == S - 1;
    A* m = nullptr;
    if constexpr (MAP) {
      maps.push_back(at::empty({N, C, h - K + 1, w - K + 1}, opts));
      m = maps.back().data_ptr<A>();
    }
    ssim_fwd_impl<K, MAP, A, A>(x, y, P, h, w, sigma, c1, c2, sm.data(), cm.data(),
                                last ? m : nullptr, last ? nullptr : m);
    for (int64_t pl = 0; pl < P; ++pl) {
      s_mean[pl * S + s] = sm[pl];
      c_mean[pl * S + s] = cm[pl];
    }
    if (last) break;
    const int64_t hn = (h + 1) / 2, wn = (w + 1) / 2;
    at::Tensor next = at::empty({2, P, hn, wn}, opts);
    A* nx = next.data_ptr<A>();
    downsample_impl<A, A>(x, nx, P, h, w);
    downsample_impl<A, A>(y, nx + P * hn * wn, P, h, w);
    pooled = next;  // keeps x and y alive for the next scale
    x = nx;
    y = nx + P * hn * wn;
  }
  if constexpr (MAP) combine_impl<A>(maps, weights, N, C, H, W, K / 2, map);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ms_ssim_fused_cpu(
    const at::Tensor& x_in, const at::Tensor& y_in, int64_t win_size, double sigma, double c1,
    double c2, at::ArrayRef<double> weights, bool want_map) {
  check_pair(x_in, y_in, win_size, sigma, "ms_ssim_fused");
  TORCH_CHECK(!weights.empty(), "ms_ssim_fused: weights must hold at least one scale");
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  TORCH_CHECK(C >= 1, "ms_ssim_fused: x must have at least one channel");
  // fp16 / bf16 pool between scales in their own precision (the reference's
  // contract); this kernel pools in float, so it takes float32 / float64 only.
  const auto dt = x_in.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble,
              "ms_ssim_fused: x and y must be float32 or float64, got ", dt);
  const int64_t S = static_cast<int64_t>(weights.size());
  const ScaleSizes sz(H, W, S, win_size);
  const auto x = x_in.contiguous(), y = y_in.contiguous();
  const auto opts = x.options();
  at::Tensor s_mean = at::empty({N, C, S}, opts), c_mean = at::empty({N, C, S}, opts);
  at::Tensor map = want_map ? at::empty({N, 1, H, W}, opts) : at::empty({0}, opts);
  if (N == 0) return {s_mean, c_mean, map};
  const std::vector<double> w(weights.begin(), weights.end());
  AT_DISPATCH_FLOATING_TYPES(dt, "ms_ssim_fused", [&] {
    dispatch_window(win_size, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* yp = y.const_data_ptr<scalar_t>();
      scalar_t* sp = s_mean.data_ptr<scalar_t>();
      scalar_t* cp = c_mean.data_ptr<scalar_t>();
      scalar_t* mp = want_map ? map.data_ptr<scalar_t>() : nullptr;
      auto run = [&](auto map_c) {
        constexpr bool MAP = decltype(map_c)::value;
        if (small_planes(H, W)) {
          fused_map_per_image<K, MAP, scalar_t>(xp, yp, N, C, H, W, sigma, c1, c2, w, sz, sp, cp,
                                                mp);
        } else {
          fused_map_by_scale<K, MAP, scalar_t>(xp, yp, N, C, H, W, sigma, c1, c2, w, sz, opts, sp,
                                               cp, mp);
        }
      };
      if (want_map) {
        run(std::true_type{});
      } else {
        run(std::false_type{});
      }
    });
  });
  return {s_mean, c_mean, map};
}


}  // namespace
}  // namespace cpu
}  // namespace igd_fast

TORCH_LIBRARY_IMPL(igd_fast_C, CPU, m) {
  m.impl("ms_ssim_fused", &igd_fast::cpu::ms_ssim_fused_cpu);
}
