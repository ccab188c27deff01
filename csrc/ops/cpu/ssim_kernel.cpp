// CPU (C++/OpenMP) kernels of the SSIM family: ssim_scale_fwd, ssim_scale_bwd,
// combine_maps, downsample(_bwd). Semantics: igd_fast/reference/ssim.py (the contract).
//
// Forward, per (n, c) plane and tile of output rows: each input row is filtered
// horizontally once into a ring of K+1 rows × 4 moments; each pair of output rows is one
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
#include <cstdlib>
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

// The row kernels loop over whole vectors: every row buffer is padded to a multiple
// of kLanes columns (zeros past the data), so no scalar tail remains (at 246 output
// columns a 16-lane loop otherwise ends in 6 scalar iterations of a 44-FMA body).
// Padding lanes compute finite garbage that is masked out of stores and sums.
constexpr int64_t kLanes = 16;
inline int64_t round_up(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// Zero-filled, 64-byte aligned scratch: with kLanes-aligned rows the compiler knows
// every row start is aligned (__builtin_assume_aligned) and peels no scalar prologue.
template <typename A>
class Scratch {
 public:
  explicit Scratch(int64_t n)
      : p_(static_cast<A*>(std::aligned_alloc(64, (round_up(n) * sizeof(A) + 63) / 64 * 64))) {
    TORCH_CHECK(p_ != nullptr, "igd_fast: out of memory for a ", n, "-value scratch buffer");
    std::fill(p_, p_ + round_up(n), A(0));
  }
  ~Scratch() { std::free(p_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  A* data() { return p_; }

 private:
  A* p_;
};

template <typename A>
inline A* aligned(A* p) {
  return static_cast<A*>(__builtin_assume_aligned(p, 64));
}

// dst[0..n) = src[0..n) in whole vectors (the last one overlapping): a memcpy call
// per short map row cost more than the row's SSIM.
template <typename A>
__attribute__((optimize("no-tree-loop-distribute-patterns"))) inline void copy_row(
    const A* __restrict src, A* __restrict dst, int64_t n) {
  if (n < kLanes) {
    for (int64_t j = 0; j < n; ++j) dst[j] = src[j];
    return;
  }
  auto block = [&](int64_t j) {
#pragma GCC unroll 16
    for (int l = 0; l < kLanes; ++l) dst[j + l] = src[j + l];
  };
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) block(j);
  if (j < n) block(n - kLanes);
}

// lane_mask()[j] = 1 for j < n, else 0, for j < round_up(n). Padding lanes are
// selected away with a loaded mask: a `j < n` test in the loop made GCC split it
// into a vector part and a scalar part.
inline const int32_t* lane_mask(std::vector<int32_t>& buf, int64_t n) {
  buf.assign(round_up(n), 0);
  std::fill(buf.begin(), buf.begin() + n, 1);
  return buf.data();
}

// Padded widths of the row path for a W-wide plane and a K-wide window.
struct RowGeom {
  int64_t Wv;  // output (moment / map) rows
  int64_t Wg;  // input-resolution rows of the backward
  int64_t Wi;  // input rows: read by the K taps of Wv outputs and by Wg-wide loops
  RowGeom(int64_t W, int K)
      : Wv(round_up(W - K + 1)), Wg(round_up(W)), Wi(round_up(std::max(Wv + K - 1, Wg))) {}
};

// A plane of input type T read as rows of A, copied (converted) into a padded row
// whose tail stays zero: all W columns, or n columns from column c0.
template <typename T, typename A>
struct Plane {
  const T* p;
  int64_t W;
  const A* row(int64_t i, A* padded) const { return row(i, padded, 0, W); }
  const A* row(int64_t i, A* padded, int64_t c0, int64_t n) const {
    convert_row<T, A>(p + i * W + c0, padded, n);
    return padded;
  }
};

// Column strips of at most kStripCols output columns keep the forward's ring
// (K+1 rows × 4 moments × strip) in L1.
constexpr int64_t kStripCols = 128;

// The kernels filter four moments per pixel, x, y, d² and xy with d = x - y (see
// ssim_pixel), stored as kMoments rows.
constexpr int kMoments = 4;

// SSIM and cs of one pixel from its filtered moments mx, my, E[d²], E[xy]. The
// reference's variance sum sxx + syy equals (E[d²] - (mx - my)²) + 2 sxy: one moment
// fewer, and it cancels exactly where the reference does (1×1 window, x == y).
// Compiled without FMA contraction (the callers too), so those cancellations stay exact.
#define IGD_NO_CONTRACT __attribute__((optimize("fp-contract=off")))

template <typename A>
IGD_NO_CONTRACT inline void ssim_pixel(A mx, A my, A edd, A exy, A c1, A c2, A& s, A& cs) {
  const A md = mx - my;
  const A sxy = exy - mx * my;
  const A a1 = A(2) * mx * my + c1, b1 = mx * mx + my * my + c1;
  const A a2 = A(2) * sxy + c2, b2 = (edd - md * md) + a2;
  // One division instead of two (divisions bound the small-window loops).
  const A inv = A(1) / (b1 * b2);
  cs = a2 * b1 * inv;
  s = a1 * a2 * inv;
}

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
    ssim_pixel(mx0, my0, dd0, xy0, c1, c2, s0, cs0);
    if constexpr (NR == 2) ssim_pixel(mx1, my1, dd1, xy1, c1, c2, s1, cs1);
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
    ssim_pixel(mx, my, edd, exy, c1, c2, sv, cv);
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
    if (W <= 64 && H * W <= 4096 && planes >= 4 * static_cast<int64_t>(at::get_num_threads())) {
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
    // as ssim_pixel; the gradient is taken w.r.t. E[x²] + E[y²] (var) and E[xy] (cov)
    const A md = mx - my;
    const A sxy = exy - mx * my;
    const A a1 = A(2) * mx * my + c1, b1 = mx * mx + my * my + c1;
    const A a2 = A(2) * sxy + c2, b2 = (edd - md * md) + a2;
    const A ib1 = A(1) / b1, ib2 = A(1) / b2;
    const A lum = a1 * ib1, cs = a2 * ib2;
    const A in = valid[j] != 0 ? A(1) : A(0);
    const A gs = in * (gs0 + gsmap[j]);
    const A gc = in * (gc0 + gcmap[j]);
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
    combine_impl<double>(maps, w, N * C, 1, out_h, out_w, win_size / 2, out.data_ptr<double>());
  } else {
    combine_impl<float>(maps, w, N * C, 1, out_h, out_w, win_size / 2, out.data_ptr<float>());
  }
  // The reference's product keeps the maps' dtype.
  return m0.scalar_type() == dt ? out : out.to(m0.scalar_type());
}

// ------------------------------------------------------------------ downsample

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
        const T* __restrict grow = gp + (pl * ho + (r + ph) / 2) * wo;
        T* __restrict o = op + (pl * H + r) * W;
        if (pw == 0) {  // column pairs: a vectorisable loop (x / 4 == x * 0.25 exactly)
          _Pragma("omp simd") for (int64_t j = 0; j < wo; ++j) {
            const T v = static_cast<T>(static_cast<A>(grow[j]) * A(0.25));
            o[2 * j] = v;
            o[2 * j + 1] = v;
          }
        } else {
          for (int64_t c = 0; c < W; ++c) o[c] = static_cast<T>(static_cast<A>(grow[(c + pw) / 2]) / A(4));
        }
      }
    });
  });
  return out;
}

// ------------------------------------------------------------------ fused map

// MS-SSIM values and (MAP) the channel-averaged per-pixel map in one op (inference):
// same arithmetic as ssim_scale_fwd + downsample (+ combine_maps + the mean over
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

// Small planes (the flat path's size limit, the local model's patches): one image per
// task, every scale (ssim_plane_flat), the pools and the combination in per-thread
// scratch that stays in L1.
bool small_planes(int64_t H, int64_t W) { return W <= 64 && H * W <= 4096; }

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
}  // namespace igd_fast

TORCH_LIBRARY_IMPL(igd_fast_C, CPU, m) {
  m.impl("ssim_scale_fwd", &igd_fast::ssim_scale_fwd_cpu);
  m.impl("ssim_scale_bwd", &igd_fast::ssim_scale_bwd_cpu);
  m.impl("combine_maps", &igd_fast::combine_maps_cpu);
  m.impl("downsample", &igd_fast::downsample_cpu);
  m.impl("downsample_bwd", &igd_fast::downsample_bwd_cpu);
  m.impl("ms_ssim_fused", &igd_fast::ms_ssim_fused_cpu);
}
