// CPU (C++/OpenMP) kernels of the SSIM family: ssim_scale_fwd, ssim_scale_bwd,
// combine_maps, downsample(_bwd). Semantics: igd_fast/reference/ssim.py (the contract).
//
// Forward, per (n, c) plane and tile of output rows: each input row is filtered
// horizontally once into a ring of K rows × 5 moments; each output row is then one
// vertical pass over the ring fused with the SSIM/cs formula and the mean. No
// full-size moment tensors are written. Backward recomputes the moments the same
// way, forms the per-pixel moment gradients of one output row, applies the
// horizontal adjoint filter into a second ring and finishes each input row with the
// vertical adjoint as soon as every output row touching it is done.
// Window size K is a template parameter so the tap loops unroll and the pixel
// loops vectorise. combine_maps works in the log domain, one exp per output pixel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "ops/cpu/ssim_fast_math.h"

namespace igd_fast {
namespace {

// float32 statistics, float64 stays float64.
at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Same formula as MSSSIMConfig.window() / reference.gaussian_window: built in
// double, normalised, then cast.
template <typename A>
std::vector<A> gaussian_window(int k, double sigma) {
  const int r = k / 2;
  std::vector<double> g(k);
  double s = 0;
  for (int i = 0; i < k; ++i) {
    g[i] = std::exp(-double((i - r) * (i - r)) / (2.0 * sigma * sigma));
    s += g[i];
  }
  std::vector<A> out(k);
  for (int i = 0; i < k; ++i) out[i] = static_cast<A>(g[i] / s);
  return out;
}

template <typename T, typename A>
void convert_row(const T* src, A* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<A>(src[j]);
}

template <typename A, typename T>
void store_row(const A* src, T* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<T>(src[j]);
}

// A plane of input type T read as rows of A: fp32/f64 rows in place, fp16/bf16 rows
// converted into a scratch row.
template <typename T, typename A>
struct Plane {
  const T* p;
  int64_t W;
  const A* row(int64_t i, A* scratch) const {
    if constexpr (std::is_same_v<T, A>) {
      (void)scratch;
      return p + i * W;
    } else {
      convert_row<T, A>(p + i * W, scratch, W);
      return scratch;
    }
  }
};

// Horizontal pass of one input row: the five moments (x, y, x², y², xy) filtered
// to Wo = W - K + 1 columns, written to out[0..5*Wo).
template <int K, typename A>
inline void hpass_moments(const A* __restrict x, const A* __restrict y, A* __restrict prod,
                          int64_t W, const A* __restrict win, A* __restrict out) {
  A* __restrict xx = prod;
  A* __restrict yy = prod + W;
  A* __restrict xy = prod + 2 * W;
#pragma omp simd
  for (int64_t j = 0; j < W; ++j) {
    xx[j] = x[j] * x[j];
    yy[j] = y[j] * y[j];
    xy[j] = x[j] * y[j];
  }
  A w[K];
  for (int t = 0; t < K; ++t) w[t] = win[t];
  const int64_t Wo = W - K + 1;
  A* __restrict o0 = out;
  A* __restrict o1 = out + Wo;
  A* __restrict o2 = out + 2 * Wo;
  A* __restrict o3 = out + 3 * Wo;
  A* __restrict o4 = out + 4 * Wo;
#pragma omp simd
  for (int64_t j = 0; j < Wo; ++j) {
    A a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0;
#pragma GCC unroll 16
    for (int t = 0; t < K; ++t) {
      a0 += w[t] * x[j + t];
      a1 += w[t] * y[j + t];
      a2 += w[t] * xx[j + t];
      a3 += w[t] * yy[j + t];
      a4 += w[t] * xy[j + t];
    }
    o0[j] = a0;
    o1[j] = a1;
    o2[j] = a2;
    o3[j] = a3;
    o4[j] = a4;
  }
}

// Vertical pass over K ring rows for one output row, fused with SSIM / cs and the
// row sums. rows[t] points at the 5 moment rows of input row p + t.
// The SSIM formula is compiled without FMA contraction: the variances E[x²] - mu²
// then cancel exactly as in the reference (e.g. to 0 for a 1×1 window); the filter
// taps use explicit fma.
#define IGD_NO_CONTRACT __attribute__((optimize("fp-contract=off")))

template <int K, bool MAPS, typename A>
IGD_NO_CONTRACT void vpass_ssim(const A* const* rows, int64_t Wo, const A* __restrict win, A c1, A c2,
                       A* __restrict srow, A* __restrict crow, double& ssum, double& csum) {
  const A* r[K];
  A w[K];
  for (int t = 0; t < K; ++t) {
    r[t] = rows[t];
    w[t] = win[t];
  }
  A s_acc = 0, c_acc = 0;
#pragma omp simd reduction(+ : s_acc, c_acc)
  for (int64_t j = 0; j < Wo; ++j) {
    A mx = 0, my = 0, exx = 0, eyy = 0, exy = 0;
#pragma GCC unroll 16
    for (int t = 0; t < K; ++t) {
      mx = std::fma(w[t], r[t][j], mx);
      my = std::fma(w[t], r[t][Wo + j], my);
      exx = std::fma(w[t], r[t][2 * Wo + j], exx);
      eyy = std::fma(w[t], r[t][3 * Wo + j], eyy);
      exy = std::fma(w[t], r[t][4 * Wo + j], exy);
    }
    const A sxx = exx - mx * mx;
    const A syy = eyy - my * my;
    const A sxy = exy - mx * my;
    const A a1 = A(2) * mx * my + c1, b1 = mx * mx + my * my + c1;
    const A a2 = A(2) * sxy + c2, b2 = sxx + syy + c2;
    // One division instead of two (divisions bound the small-window loops).
    const A inv = A(1) / (b1 * b2);
    const A cs = a2 * b1 * inv;
    const A s = a1 * a2 * inv;
    if constexpr (MAPS) {
      srow[j] = s;
      crow[j] = cs;
    }
    s_acc += s;
    c_acc += cs;
  }
  ssum += s_acc;
  csum += c_acc;
}

// Two consecutive output rows from K + 1 ring rows (rows[0..K]): each ring row is
// loaded once for both. Per pixel the same operations as vpass_ssim.
template <int K, bool MAPS, typename A>
IGD_NO_CONTRACT void vpass_ssim2(const A* const* rows, int64_t Wo, const A* __restrict win, A c1,
                                 A c2, A* __restrict srow, A* __restrict crow, double& ssum,
                                 double& csum) {
  const A* r[K + 1];
  A w[K];
  for (int t = 0; t <= K; ++t) r[t] = rows[t];
  for (int t = 0; t < K; ++t) w[t] = win[t];
  A s_acc0 = 0, c_acc0 = 0, s_acc1 = 0, c_acc1 = 0;
#pragma omp simd reduction(+ : s_acc0, c_acc0, s_acc1, c_acc1)
  for (int64_t j = 0; j < Wo; ++j) {
    A m[2][5] = {{0, 0, 0, 0, 0}, {0, 0, 0, 0, 0}};
#pragma GCC unroll 16
    for (int t = 0; t <= K; ++t) {
      const A v0 = r[t][j], v1 = r[t][Wo + j], v2 = r[t][2 * Wo + j], v3 = r[t][3 * Wo + j],
              v4 = r[t][4 * Wo + j];
      if (t < K) {
        m[0][0] = std::fma(w[t], v0, m[0][0]);
        m[0][1] = std::fma(w[t], v1, m[0][1]);
        m[0][2] = std::fma(w[t], v2, m[0][2]);
        m[0][3] = std::fma(w[t], v3, m[0][3]);
        m[0][4] = std::fma(w[t], v4, m[0][4]);
      }
      if (t > 0) {
        m[1][0] = std::fma(w[t - 1], v0, m[1][0]);
        m[1][1] = std::fma(w[t - 1], v1, m[1][1]);
        m[1][2] = std::fma(w[t - 1], v2, m[1][2]);
        m[1][3] = std::fma(w[t - 1], v3, m[1][3]);
        m[1][4] = std::fma(w[t - 1], v4, m[1][4]);
      }
    }
    A so[2], co[2];
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const A mx = m[h][0], my = m[h][1], exx = m[h][2], eyy = m[h][3], exy = m[h][4];
      const A sxx = exx - mx * mx;
      const A syy = eyy - my * my;
      const A sxy = exy - mx * my;
      const A a1 = A(2) * mx * my + c1, b1 = mx * mx + my * my + c1;
      const A a2 = A(2) * sxy + c2, b2 = sxx + syy + c2;
      const A inv = A(1) / (b1 * b2);
      co[h] = a2 * b1 * inv;
      so[h] = a1 * a2 * inv;
    }
    if constexpr (MAPS) {
      srow[j] = so[0];
      crow[j] = co[0];
      srow[Wo + j] = so[1];
      crow[Wo + j] = co[1];
    }
    s_acc0 += so[0];
    c_acc0 += co[0];
    s_acc1 += so[1];
    c_acc1 += co[1];
  }
  ssum += s_acc0;
  csum += c_acc0;
  ssum += s_acc1;
  csum += c_acc1;
}

// Row tiling: one tile per plane when there are enough planes to feed the threads,
// otherwise split rows (not below min_rows per tile, halos make small tiles costly).
int64_t tiles_per_plane(int64_t planes, int64_t rows, int64_t min_rows) {
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  if (planes >= want) return 1;
  const int64_t by_threads = (want + planes - 1) / planes;
  const int64_t by_size = std::max<int64_t>(1, rows / min_rows);
  return std::max<int64_t>(1, std::min(by_threads, by_size));
}

std::pair<int64_t, int64_t> tile_range(int64_t rows, int64_t tiles, int64_t t) {
  return {rows * t / tiles, rows * (t + 1) / tiles};
}

// Dynamic scheduling over tasks [0, n): each thread claims blocks from a shared
// counter and runs body(begin, end) on them. at::parallel_for alone splits the range
// statically, so one preempted thread (a shared machine) stalls the whole call.
template <typename F>
void parallel_tasks(int64_t n, const F& body) {
  if (n <= 0) return;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1 || at::in_parallel_region()) {
    body(int64_t(0), n);
    return;
  }
  const int64_t block = std::max<int64_t>(1, n / (threads * 8));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t b = next.fetch_add(block); b < n; b = next.fetch_add(block)) {
      body(b, std::min(n, b + block));
    }
  });
}

// ------------------------------------------------------------------ forward

// Small planes (whole plane in L1): both passes run over the plane as one flat
// array with row stride W, so there is no per-row loop overhead. Flat hpass index
// q = i*W + j reads q + t (columns j >= Wo mix two rows and are never used); flat
// vpass index q = p*W + j reads q + t*W. Same per-pixel operation order as the row
// kernels above. buf: 8*H*W + 2*H*W values.
template <int K, bool MAPS, typename A>
IGD_NO_CONTRACT void ssim_plane_flat(const A* __restrict x, const A* __restrict y, int64_t H,
                                     int64_t W, const A* __restrict win, A c1, A c2,
                                     const unsigned char* __restrict valid, A* __restrict buf,
                                     A* __restrict s_map, A* __restrict c_map, double& ssum,
                                     double& csum) {
  const int64_t HW = H * W, Ho = H - K + 1, Wo = W - K + 1;
  A* __restrict xx = buf;
  A* __restrict yy = buf + HW;
  A* __restrict xy = buf + 2 * HW;
  A* __restrict m0 = buf + 3 * HW;
  A* __restrict m1 = buf + 4 * HW;
  A* __restrict m2 = buf + 5 * HW;
  A* __restrict m3 = buf + 6 * HW;
  A* __restrict m4 = buf + 7 * HW;
  A* __restrict st = buf + 8 * HW;
  A* __restrict ct = buf + 9 * HW;
  A w[K];
  for (int t = 0; t < K; ++t) w[t] = win[t];
#pragma omp simd
  for (int64_t j = 0; j < HW; ++j) {
    xx[j] = x[j] * x[j];
    yy[j] = y[j] * y[j];
    xy[j] = x[j] * y[j];
  }
  const int64_t nh = HW - K + 1;
#pragma omp simd
  for (int64_t j = 0; j < nh; ++j) {
    A a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0;
#pragma GCC unroll 16
    for (int t = 0; t < K; ++t) {
      a0 = std::fma(w[t], x[j + t], a0);
      a1 = std::fma(w[t], y[j + t], a1);
      a2 = std::fma(w[t], xx[j + t], a2);
      a3 = std::fma(w[t], yy[j + t], a3);
      a4 = std::fma(w[t], xy[j + t], a4);
    }
    m0[j] = a0;
    m1[j] = a1;
    m2[j] = a2;
    m3[j] = a3;
    m4[j] = a4;
  }
  const int64_t nv = (Ho - 1) * W + Wo;
#pragma omp simd
  for (int64_t j = 0; j < nv; ++j) {
    A mx = 0, my = 0, exx = 0, eyy = 0, exy = 0;
#pragma GCC unroll 16
    for (int t = 0; t < K; ++t) {
      mx = std::fma(w[t], m0[j + t * W], mx);
      my = std::fma(w[t], m1[j + t * W], my);
      exx = std::fma(w[t], m2[j + t * W], exx);
      eyy = std::fma(w[t], m3[j + t * W], eyy);
      exy = std::fma(w[t], m4[j + t * W], exy);
    }
    const A sxx = exx - mx * mx;
    const A syy = eyy - my * my;
    const A sxy = exy - mx * my;
    const A a1 = A(2) * mx * my + c1, b1 = mx * mx + my * my + c1;
    const A a2 = A(2) * sxy + c2, b2 = sxx + syy + c2;
    const A inv = A(1) / (b1 * b2);
    const A cs = a2 * b1 * inv;
    const A s = a1 * a2 * inv;
    st[j] = s;
    ct[j] = cs;
  }
  (void)valid;
  for (int64_t p = 0; p < Ho; ++p) {
    const A* __restrict sr = st + p * W;
    const A* __restrict cr = ct + p * W;
    A s_acc = 0, c_acc = 0;
#pragma omp simd reduction(+ : s_acc, c_acc)
    for (int64_t j = 0; j < Wo; ++j) {
      s_acc += sr[j];
      c_acc += cr[j];
    }
    ssum += s_acc;
    csum += c_acc;
    if constexpr (MAPS) {
      std::copy(sr, sr + Wo, s_map + p * Wo);
      std::copy(cr, cr + Wo, c_map + p * Wo);
    }
  }
}

template <int K, bool MAPS, typename T, typename A>
void ssim_fwd_impl(const T* x, const T* y, int64_t planes, int64_t H, int64_t W, double sigma,
                   double c1d, double c2d, A* s_mean, A* c_mean, A* s_map, A* c_map) {
  const int64_t Ho = H - K + 1, Wo = W - K + 1;
  const std::vector<A> win = gaussian_window<A>(K, sigma);
  const A c1 = static_cast<A>(c1d), c2 = static_cast<A>(c2d);
  if constexpr (std::is_same_v<T, A>) {
    if (W <= 64 && H * W <= 4096 && planes >= 4 * static_cast<int64_t>(at::get_num_threads())) {
      std::vector<unsigned char> valid(H * W);
      for (int64_t q = 0; q < H * W; ++q) valid[q] = (q % W) < Wo;
      const double npix = static_cast<double>(Ho * Wo);
      parallel_tasks(planes, [&](int64_t begin, int64_t end) {
        std::vector<A> buf(10 * H * W + 64);
        for (int64_t pl = begin; pl < end; ++pl) {
          double ssum = 0, csum = 0;
          ssim_plane_flat<K, MAPS, A>(x + pl * H * W, y + pl * H * W, H, W, win.data(), c1, c2,
                                      valid.data(), buf.data(),
                                      MAPS ? s_map + pl * Ho * Wo : nullptr,
                                      MAPS ? c_map + pl * Ho * Wo : nullptr, ssum, csum);
          s_mean[pl] = static_cast<A>(ssum / npix);
          c_mean[pl] = static_cast<A>(csum / npix);
        }
      });
      return;
    }
  }
  const int64_t tiles = tiles_per_plane(planes, Ho, 16);
  std::vector<double> partial(planes * tiles * 2, 0.0);

  parallel_tasks(planes * tiles, [&](int64_t begin, int64_t end) {
    constexpr int R = K + 1;  // ring slots: two output rows per vertical sweep
    std::vector<A> xbuf(W), ybuf(W), prod(3 * W), ring(R * 5 * Wo);
    const A* rows[R];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pl = task / tiles, tl = task % tiles;
      const auto [p0, p1] = tile_range(Ho, tiles, tl);
      const Plane<T, A> px{x + pl * H * W, W}, py{y + pl * H * W, W};
      double ssum = 0, csum = 0;
      for (int64_t i = p0; i < p1 + K - 1; ++i) {
        hpass_moments<K, A>(px.row(i, xbuf.data()), py.row(i, ybuf.data()), prod.data(), W,
                            win.data(), ring.data() + (i % R) * 5 * Wo);
        const int64_t p = i - K + 1;
        if (p < p0) continue;
        if ((p - p0) % 2 == 1) {  // rows p - 1 and p
          for (int t = 0; t < R; ++t) rows[t] = ring.data() + ((p - 1 + t) % R) * 5 * Wo;
          A* srow = MAPS ? s_map + (pl * Ho + p - 1) * Wo : nullptr;
          A* crow = MAPS ? c_map + (pl * Ho + p - 1) * Wo : nullptr;
          vpass_ssim2<K, MAPS, A>(rows, Wo, win.data(), c1, c2, srow, crow, ssum, csum);
        } else if (p == p1 - 1) {  // last row of an odd count
          for (int t = 0; t < K; ++t) rows[t] = ring.data() + ((p + t) % R) * 5 * Wo;
          A* srow = MAPS ? s_map + (pl * Ho + p) * Wo : nullptr;
          A* crow = MAPS ? c_map + (pl * Ho + p) * Wo : nullptr;
          vpass_ssim<K, MAPS, A>(rows, Wo, win.data(), c1, c2, srow, crow, ssum, csum);
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

template <typename F>
void dispatch_window(int64_t k, F&& f) {
  switch (k) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 9: return f(std::integral_constant<int, 9>{});
    case 11: return f(std::integral_constant<int, 11>{});
    case 13: return f(std::integral_constant<int, 13>{});
    case 15: return f(std::integral_constant<int, 15>{});
    default: TORCH_CHECK(false, "win_size must be odd and in [1, 15], got ", k);
  }
}

void check_pair(const at::Tensor& x, const at::Tensor& y, int64_t win_size, double sigma,
                const char* op) {
  TORCH_CHECK(x.defined() && y.defined(), op, ": x and y must be defined tensors");
  TORCH_CHECK(x.dim() == 4, op, ": x must be a 4-D N×C×H×W tensor, got shape ", x.sizes());
  TORCH_CHECK(x.sizes() == y.sizes(), op, ": x and y must have the same shape, got ",
              x.sizes(), " and ", y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), op, ": x and y must have the same dtype, got ",
              x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x and y must be floating, got ",
              x.scalar_type());
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu(), op,
              ": the CPU kernel needs CPU tensors, got ", x.device(), " and ", y.device());
  TORCH_CHECK(win_size >= 1 && win_size <= 15 && win_size % 2 == 1, op,
              ": win_size must be odd and in [1, 15], got ", win_size);
  TORCH_CHECK(sigma > 0, op, ": sigma must be > 0, got ", sigma);
  TORCH_CHECK(x.size(2) >= win_size && x.size(3) >= win_size, op, ": image of ", x.size(2), "×",
              x.size(3), " is smaller than the ", win_size, "×", win_size, " window");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ssim_scale_fwd_cpu(
    const at::Tensor& x_in, const at::Tensor& y_in, int64_t win_size, double sigma, double c1,
    double c2, bool want_maps) {
  check_pair(x_in, y_in, win_size, sigma, "ssim_scale_fwd");
  const auto x = x_in.contiguous(), y = y_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H - win_size + 1, Wo = W - win_size + 1;
  const auto opts = x.options().dtype(acc_type(x.scalar_type()));
  at::Tensor s_mean = at::empty({N, C}, opts), c_mean = at::empty({N, C}, opts);
  at::Tensor s_map = want_maps ? at::empty({N, C, Ho, Wo}, opts) : at::empty({0}, opts);
  at::Tensor c_map = want_maps ? at::empty({N, C, Ho, Wo}, opts) : at::empty({0}, opts);
  if (N * C == 0) return {s_mean, c_mean, s_map, c_map};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ssim_scale_fwd", [&] {
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

// Per output row: the moment gradients (reference ssim_scale_bwd) into zero-padded
// rows gp[m] (K-1 zeros each side), m = 0 var, 1 cov, 2 mu_y, 3 mu_x.
template <int K, bool GX, typename A>
IGD_NO_CONTRACT void grad_row(const A* const* rows, int64_t Wo, const A* __restrict win, A c1, A c2,
                     A gs0, A gc0, const A* __restrict gsmap, const A* __restrict gcmap,
                     A* __restrict gvar, A* __restrict gcov, A* __restrict gmuy,
                     A* __restrict gmux) {
  const A* r[K];
  A w[K];
  for (int t = 0; t < K; ++t) {
    r[t] = rows[t];
    w[t] = win[t];
  }
#pragma omp simd
  for (int64_t j = 0; j < Wo; ++j) {
    A mx = 0, my = 0, exx = 0, eyy = 0, exy = 0;
#pragma GCC unroll 16
    for (int t = 0; t < K; ++t) {
      mx = std::fma(w[t], r[t][j], mx);
      my = std::fma(w[t], r[t][Wo + j], my);
      exx = std::fma(w[t], r[t][2 * Wo + j], exx);
      eyy = std::fma(w[t], r[t][3 * Wo + j], eyy);
      exy = std::fma(w[t], r[t][4 * Wo + j], exy);
    }
    const A sxx = exx - mx * mx;
    const A syy = eyy - my * my;
    const A sxy = exy - mx * my;
    const A a1 = A(2) * mx * my + c1, b1 = mx * mx + my * my + c1;
    const A a2 = A(2) * sxy + c2, b2 = sxx + syy + c2;
    const A ib1 = A(1) / b1, ib2 = A(1) / b2;
    const A lum = a1 * ib1, cs = a2 * ib2;
    const A gs = gs0 + (gsmap ? gsmap[j] : A(0));
    const A gc = gc0 + (gcmap ? gcmap[j] : A(0));
    const A g_lum = gs * cs;
    const A g_cs = gs * lum + gc;
    const A g_var = -g_cs * cs * ib2;
    const A g_cov = A(2) * g_cs * ib2;
    gvar[j] = g_var;
    gcov[j] = g_cov;
    gmuy[j] = A(2) * g_lum * (mx - lum * my) * ib1 - A(2) * g_var * my - g_cov * mx;
    if constexpr (GX) gmux[j] = A(2) * g_lum * (my - lum * mx) * ib1 - A(2) * g_var * mx - g_cov * my;
  }
}

// Horizontal adjoint (full correlation with the reversed window): padded Wo + 2(K-1)
// values -> W values.
template <int K, typename A>
inline void hadjoint(const A* __restrict gp, int64_t W, const A* __restrict win,
                     A* __restrict out) {
  A wr[K];
  for (int t = 0; t < K; ++t) wr[t] = win[K - 1 - t];
#pragma omp simd
  for (int64_t j = 0; j < W; ++j) {
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
  const int64_t Ho = H - K + 1, Wo = W - K + 1, Wp = W + K - 1;
  const std::vector<A> win = gaussian_window<A>(K, sigma);
  const A c1 = static_cast<A>(c1d), c2 = static_cast<A>(c2d);
  const A npix = static_cast<A>(Ho * Wo);
  const int64_t tiles = tiles_per_plane(planes, H, std::max<int64_t>(16, 4 * K));

  parallel_tasks(planes * tiles, [&](int64_t begin, int64_t end) {
    std::vector<A> xbuf(W), ybuf(W), prod(3 * W), ring(K * 5 * Wo);
    std::vector<A> gp(NG * Wp), gring(K * NG * W), zero(NG * W, A(0)), out(2 * W);
    const A* rows[K];
    const A* grows[K];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pl = task / tiles, tl = task % tiles;
      const auto [i0, i1] = tile_range(H, tiles, tl);
      if (i0 >= i1) continue;
      const Plane<T, A> px{x + pl * H * W, W}, py{y + pl * H * W, W};
      const A gs0 = g_s_mean[pl] / npix, gc0 = g_c_mean[pl] / npix;
      const int64_t p0 = std::max<int64_t>(0, i0 - K + 1), p1 = std::min(Ho, i1);
      std::fill(gp.begin(), gp.end(), A(0));

      // Input row i is final once Gh rows i-K+1..i (within [0, Ho)) exist.
      auto finish_row = [&](int64_t i) {
        for (int t = 0; t < K; ++t) {
          const int64_t p = i - t;  // weight win[t] = win[i - p]
          grows[t] = (p >= 0 && p < Ho) ? gring.data() + (p % K) * NG * W : zero.data();
        }
        A wk[K];
        for (int t = 0; t < K; ++t) wk[t] = win[t];
        const A* xr = px.row(i, xbuf.data());
        const A* yr = py.row(i, ybuf.data());
        A* oy = out.data();
        A* ox = out.data() + W;
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) {
          A avar = 0, acov = 0, amuy = 0, amux = 0;
#pragma GCC unroll 16
          for (int t = 0; t < K; ++t) {
            avar += wk[t] * grows[t][j];
            acov += wk[t] * grows[t][W + j];
            amuy += wk[t] * grows[t][2 * W + j];
            if constexpr (GX) amux += wk[t] * grows[t][3 * W + j];
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
        hpass_moments<K, A>(px.row(i, xbuf.data()), py.row(i, ybuf.data()), prod.data(), W,
                            win.data(), ring.data() + (i % K) * 5 * Wo);
        const int64_t p = i - K + 1;
        if (p < p0) continue;
        for (int t = 0; t < K; ++t) rows[t] = ring.data() + ((p + t) % K) * 5 * Wo;
        const int64_t off = (pl * Ho + p) * Wo;
        A* g = gp.data() + (K - 1);
        grad_row<K, GX, A>(rows, Wo, win.data(), c1, c2, gs0, gc0,
                           g_s_map ? g_s_map + off : nullptr, g_c_map ? g_c_map + off : nullptr,
                           g, g + Wp, g + 2 * Wp, GX ? g + 3 * Wp : nullptr);
        A* gh = gring.data() + (p % K) * NG * W;
        for (int m = 0; m < NG; ++m) hadjoint<K, A>(gp.data() + m * Wp, W, win.data(), gh + m * W);
        if (p >= i0) finish_row(p);
      }
      for (int64_t i = std::max(i0, p1); i < i1; ++i) finish_row(i);
    }
  });
}

at::Tensor plane_param(const at::Tensor& g, int64_t N, int64_t C, at::ScalarType dt,
                       const char* name) {
  TORCH_CHECK(g.defined() && g.numel() == N * C, "ssim_scale_bwd: ", name,
              " must hold N×C = ", N * C, " values, got shape ", g.sizes());
  TORCH_CHECK(g.device().is_cpu(), "ssim_scale_bwd: ", name, " must be on the CPU");
  return g.to(dt).contiguous();
}

at::Tensor map_param(const at::Tensor& g, int64_t N, int64_t C, int64_t Ho, int64_t Wo,
                     at::ScalarType dt, const char* name) {
  if (!g.defined() || g.numel() == 0) return at::Tensor();
  TORCH_CHECK(g.dim() == 4 && g.size(0) == N && g.size(1) == C && g.size(2) == Ho &&
                  g.size(3) == Wo,
              "ssim_scale_bwd: ", name, " must be empty or of shape [", N, ", ", C, ", ", Ho,
              ", ", Wo, "], got ", g.sizes());
  TORCH_CHECK(g.device().is_cpu(), "ssim_scale_bwd: ", name, " must be on the CPU");
  return g.to(dt).contiguous();
}

std::tuple<at::Tensor, at::Tensor> ssim_scale_bwd_cpu(
    const at::Tensor& x_in, const at::Tensor& y_in, int64_t win_size, double sigma, double c1,
    double c2, const at::Tensor& g_ssim_mean, const at::Tensor& g_cs_mean,
    const at::Tensor& g_ssim_map, const at::Tensor& g_cs_map, bool need_gx) {
  check_pair(x_in, y_in, win_size, sigma, "ssim_scale_bwd");
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ssim_scale_bwd", [&] {
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

// ------------------------------------------------------------------ combine_maps

// One axis of "replicate-pad by r, then bilinear (align_corners=False) to n_out":
// for each output index, the two source indices in the unpadded map and the weight
// of the second (PyTorch's upsample_bilinear2d source-index rule).
template <typename A>
struct Axis {
  std::vector<int32_t> i0, i1;
  std::vector<A> l1;
  bool identity;  // no resize: only the replicate padding
  Axis(int64_t n_in, int64_t r, int64_t n_out)
      : i0(n_out), i1(n_out), l1(n_out), identity(n_in + 2 * r == n_out) {
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
      l1[o] = lam;
    }
  }
};

// float: the vectorisable versions; float64 keeps libm accuracy.
inline float log_acc(float acc, float w, float v) { return add_log_or_neg_inf(acc, w, v); }
inline double log_acc(double acc, double w, double v) {
  return v > 0 ? acc + w * std::log(v) : -std::numeric_limits<double>::infinity();
}
inline float exp_of(float v) { return fast_expf(v); }
inline double exp_of(double v) { return std::exp(v); }

template <typename A>
void combine_impl(const std::vector<at::Tensor>& maps, const std::vector<double>& weights,
                  int64_t planes, int64_t out_h, int64_t out_w, int64_t r, A* out) {
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
  const int64_t max_rows = (out_h + tiles - 1) / tiles;
  parallel_tasks(planes * tiles, [&](int64_t begin, int64_t end) {
    std::vector<A> acc(max_rows * out_w), val(max_rows * out_w), hbuf;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pl = task / tiles, tl = task % tiles;
      const auto [o0, o1] = tile_range(out_h, tiles, tl);
      if (o0 >= o1) continue;
      const int64_t n = (o1 - o0) * out_w;
      // prod_s relu(v_s)^w_s = exp(sum_s w_s log v_s), 0 once some v_s <= 0 (or NaN).
      A* __restrict a = acc.data();
      A* __restrict u = val.data();
      std::fill(a, a + n, A(0));
      for (size_t s = 0; s < M; ++s) {
        const Axis<A>& ah = ax_h[s];
        const Axis<A>& aw = ax_w[s];
        const A* m = base[s] + pl * mh[s] * mw[s];
        // Horizontal pass first (PyTorch's order), on the few source rows this tile
        // reads: the column gathers then run on the coarse rows only.
        const int64_t r0 = ah.i0[o0], rows = ah.i1[o1 - 1] - r0 + 1;
        hbuf.resize(rows * out_w);
        for (int64_t i = 0; i < rows; ++i) {
          const A* __restrict src = m + (r0 + i) * mw[s];
          A* __restrict dst = hbuf.data() + i * out_w;
          if (aw.identity) {  // replicate padding only
            std::fill(dst, dst + r, src[0]);
            std::copy(src, src + mw[s], dst + r);
            std::fill(dst + r + mw[s], dst + out_w, src[mw[s] - 1]);
          } else {
            const int32_t* __restrict c0 = aw.i0.data();
            const int32_t* __restrict c1 = aw.i1.data();
            const A* __restrict l1 = aw.l1.data();
#pragma omp simd
            for (int64_t j = 0; j < out_w; ++j) dst[j] = (A(1) - l1[j]) * src[c0[j]] + l1[j] * src[c1[j]];
          }
        }
        for (int64_t oy = o0; oy < o1; ++oy) {
          const A* __restrict ra = hbuf.data() + (ah.i0[oy] - r0) * out_w;
          const A* __restrict rb = hbuf.data() + (ah.i1[oy] - r0) * out_w;
          const A lb = ah.l1[oy], la = A(1) - lb;
          A* __restrict ur = u + (oy - o0) * out_w;
#pragma omp simd
          for (int64_t j = 0; j < out_w; ++j) ur[j] = la * ra[j] + lb * rb[j];
        }
        const A wt = static_cast<A>(weights[s]);
#pragma omp simd
        for (int64_t q = 0; q < n; ++q) a[q] = log_acc(a[q], wt, u[q]);
      }
      A* __restrict o = out + (pl * out_h + o0) * out_w;
#pragma omp simd
      for (int64_t q = 0; q < n; ++q) o[q] = exp_of(a[q]);
    }
  });
}

at::Tensor combine_maps_cpu(at::TensorList maps_in, at::ArrayRef<double> weights, int64_t out_h,
                            int64_t out_w, int64_t win_size) {
  TORCH_CHECK(!maps_in.empty(), "combine_maps: maps must hold at least one scale");
  TORCH_CHECK(maps_in.size() == weights.size(), "combine_maps: got ", maps_in.size(),
              " maps but ", weights.size(), " weights");
  TORCH_CHECK(win_size >= 1 && win_size % 2 == 1, "combine_maps: win_size must be odd, got ",
              win_size);
  TORCH_CHECK(out_h >= 1 && out_w >= 1, "combine_maps: output size must be positive, got ", out_h,
              "×", out_w);
  const at::Tensor& m0 = maps_in[0];
  TORCH_CHECK(m0.dim() == 4, "combine_maps: maps must be 4-D N×C×h×w, got shape ", m0.sizes());
  const int64_t N = m0.size(0), C = m0.size(1);
  const auto dt = acc_type(m0.scalar_type());
  std::vector<at::Tensor> maps;
  for (size_t s = 0; s < maps_in.size(); ++s) {
    const at::Tensor& m = maps_in[s];
    TORCH_CHECK(m.dim() == 4 && m.size(0) == N && m.size(1) == C, "combine_maps: map ", s,
                " must be of shape [", N, ", ", C, ", h, w], got ", m.sizes());
    TORCH_CHECK(m.size(2) >= 1 && m.size(3) >= 1, "combine_maps: map ", s, " is empty: ",
                m.sizes());
    TORCH_CHECK(m.device().is_cpu(), "combine_maps: map ", s, " must be on the CPU, got ",
                m.device());
    TORCH_CHECK(at::isFloatingType(m.scalar_type()), "combine_maps: map ", s,
                " must be floating, got ", m.scalar_type());
    maps.push_back(m.to(dt).contiguous());
  }
  at::Tensor out = at::empty({N, C, out_h, out_w}, m0.options().dtype(dt));
  if (N * C == 0) return out;
  const std::vector<double> w(weights.begin(), weights.end());
  if (dt == at::kDouble) {
    combine_impl<double>(maps, w, N * C, out_h, out_w, win_size / 2, out.data_ptr<double>());
  } else {
    combine_impl<float>(maps, w, N * C, out_h, out_w, win_size / 2, out.data_ptr<float>());
  }
  // The reference's product keeps the maps' dtype.
  return m0.scalar_type() == dt ? out : out.to(m0.scalar_type());
}

// ------------------------------------------------------------------ downsample

// reference.ssim.downsample: 2×2 average pool, odd sizes zero-padded by one in front
// (avg_pool2d with padding = size % 2, zeros counted). Sums in avg_pool2d's order.
template <typename T, typename A>
void downsample_impl(const T* x, T* out, int64_t planes, int64_t H, int64_t W) {
  const int64_t ho = (H + 1) / 2, wo = (W + 1) / 2, ph = H % 2, pw = W % 2;
  if constexpr (std::is_same_v<T, A>) {
    if (ph == 0 && pw == 0) {  // no padding: read the rows in place
      parallel_tasks(planes * ho, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const A* __restrict a = x + 2 * task * W;  // rows 2i, 2i+1 of plane task / ho
          const A* __restrict b = a + W;
          A* __restrict o = out + task * wo;
#pragma omp simd
          for (int64_t j = 0; j < wo; ++j) {
            o[j] = (((a[2 * j] + a[2 * j + 1]) + b[2 * j]) + b[2 * j + 1]) / A(4);
          }
        }
      });
      return;
    }
  }
  parallel_tasks(planes * ho, [&](int64_t begin, int64_t end) {
    std::vector<A> p0(2 * wo, A(0)), p1(2 * wo, A(0));  // rows with the front padding
    for (int64_t task = begin; task < end; ++task) {
      const int64_t pl = task / ho, i = task % ho;
      const int64_t r1 = 2 * i + 1 - ph, r0 = r1 - 1;  // r1 < H always; r0 may be -1
      const T* xp = x + pl * H * W;
      for (int64_t c = 0; c < W; ++c) {
        p0[pw + c] = r0 >= 0 ? static_cast<A>(xp[r0 * W + c]) : A(0);
        p1[pw + c] = static_cast<A>(xp[r1 * W + c]);
      }
      T* o = out + (pl * ho + i) * wo;
      const A* __restrict a = p0.data();
      const A* __restrict b = p1.data();
      for (int64_t j = 0; j < wo; ++j) {
        o[j] = static_cast<T>((((a[2 * j] + a[2 * j + 1]) + b[2 * j]) + b[2 * j + 1]) / A(4));
      }
    }
  });
}

at::Tensor downsample_cpu(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 4, "downsample: x must be a 4-D N×C×H×W tensor, got shape ",
              x_in.sizes());
  TORCH_CHECK(at::isFloatingType(x_in.scalar_type()), "downsample: x must be floating, got ",
              x_in.scalar_type());
  TORCH_CHECK(x_in.device().is_cpu(), "downsample: the CPU kernel needs a CPU tensor");
  TORCH_CHECK(x_in.size(2) >= 1 && x_in.size(3) >= 1, "downsample: empty image ", x_in.sizes());
  const auto x = x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor out = at::empty({N, C, (H + 1) / 2, (W + 1) / 2}, x.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "downsample", [&] {
    using A = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    downsample_impl<scalar_t, A>(x.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N * C,
                                 H, W);
  });
  return out;
}

// Each input pixel lies in exactly one pooling window: gx = g[window] / 4.
at::Tensor downsample_bwd_cpu(const at::Tensor& g_in, int64_t H, int64_t W) {
  TORCH_CHECK(g_in.dim() == 4 && g_in.size(2) == (H + 1) / 2 && g_in.size(3) == (W + 1) / 2,
              "downsample_bwd: grad must be N×C×", (H + 1) / 2, "×", (W + 1) / 2, " for a ", H,
              "×", W, " input, got ", g_in.sizes());
  TORCH_CHECK(at::isFloatingType(g_in.scalar_type()) && g_in.device().is_cpu(),
              "downsample_bwd: grad must be a floating CPU tensor");
  const auto g = g_in.contiguous();
  const int64_t N = g.size(0), C = g.size(1), ho = g.size(2), wo = g.size(3);
  const int64_t ph = H % 2, pw = W % 2;
  at::Tensor out = at::empty({N, C, H, W}, g.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "downsample_bwd", [&] {
    using T = scalar_t;
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const T* gp = g.const_data_ptr<T>();
    T* op = out.data_ptr<T>();
    parallel_tasks(N * C * H, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t pl = task / H, r = task % H;
        const T* grow = gp + (pl * ho + (r + ph) / 2) * wo;
        T* o = op + (pl * H + r) * W;
        for (int64_t c = 0; c < W; ++c) o[c] = static_cast<T>(static_cast<A>(grow[(c + pw) / 2]) / A(4));
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace igd_fast

TORCH_LIBRARY_IMPL(igd_fast_C, CPU, m) {
  m.impl("ssim_scale_fwd", &igd_fast::ssim_scale_fwd_cpu);
  m.impl("ssim_scale_bwd", &igd_fast::ssim_scale_bwd_cpu);
  m.impl("combine_maps", &igd_fast::combine_maps_cpu);
  m.impl("downsample", &igd_fast::downsample_cpu);
  m.impl("downsample_bwd", &igd_fast::downsample_bwd_cpu);
}
