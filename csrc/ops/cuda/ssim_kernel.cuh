// CUDA SSIM kernels: the filter engine, the per-pixel ops and their launchers, shared
// by ssim_kernel.cu (op wrappers) and ssim_inst_*.cu (one dtype each).
//
// Semantics are those of igd_fast/reference/ssim.py: separable normalised Gaussian
// window (ops/gaussian_window.h), *valid* filtering, statistics in float32
// (float64 stays float64; fp16/bf16 inputs accumulate in float32).
//
// One engine does every filtering pass (sep_filter_kernel):
//   * a block owns a tile of output columns (blockDim.x of them, one per thread) and
//     blockDim.y vertical strips of S output rows each;
//   * input rows are staged K at a time (with the K-1 halo columns) in shared memory;
//   * each thread forms the horizontal sums of its column for one input row from
//     shared memory, then scatters them into a ring of K per-output-row accumulators
//     held in registers (the ring index is a compile-time constant because the row
//     loop is unrolled by K), so the vertical pass costs no memory traffic at all;
//   * when an output row is complete the op's epilogue runs on its filtered moments.
// No filtered moment is ever written to global memory.
//
// Forward  = one launch: moments of (x, y, (x-y)², xy) -> SSIM / cs per pixel -> block
//            partial sums -> atomicAdd into the per-(n, c) means; maps only if asked.
// Backward = two launches: (1) the same moments, then the per-pixel gradients with
//            respect to the filtered moments (G_mu_y, G_var, G_cov[, G_mu_x]) written at
//            output size; (2) the adjoint (flipped-window, full-size) filter of those
//            maps fused with the product rule back to pixels, written in the input dtype.
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "ops/gaussian_window.h"
#include "ops/ssim_math.h"

namespace igd_fast {
namespace ssim_cuda {

constexpr int KMAX = 15;
constexpr int THREADS = 128;
constexpr int MAX_MAPS = 16;

template <typename acc_t>
struct Taps {
  acc_t w[KMAX];
};

// The window of ops/gaussian_window.h, flipped for the adjoint.
template <typename acc_t>
Taps<acc_t> make_taps(int k, double sigma, bool flip) {
  Taps<acc_t> t{};
  const std::vector<acc_t> g = gaussian_window<acc_t>(k, sigma);
  for (int i = 0; i < k; ++i) t.w[i] = g[flip ? k - 1 - i : i];
  return t;
}

// ------------------------------------------------------------------ async copies

// cp.async (sm_80+) global -> shared copy of BYTES with zero fill when !ok (src is then
// not read but must be a valid address). Older targets copy synchronously.
template <typename T>
__device__ __forceinline__ void copy_async_zfill(T* smem_dst, const T* gsrc, bool ok) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  const int n = ok ? static_cast<int>(sizeof(T)) : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(gsrc), "n"(sizeof(T)), "r"(n));
#else
  *smem_dst = ok ? *gsrc : T(0);
#endif
}

__device__ __forceinline__ void copy_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void copy_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// IGD_FAST_CUDA_ASYNC=1: stage input rows with double-buffered cp.async (fp32 data
// only; other dtypes always take the synchronous path). Off by default.
inline bool async_copy_enabled() {
  const char* e = std::getenv("IGD_FAST_CUDA_ASYNC");
  return e != nullptr && e[0] == '1';
}

// ------------------------------------------------------------------ the filter engine

// Op interface:
//   NIN values loaded per input pixel, NQ quantities filtered (expand: NIN -> NQ),
//   emit(plane, oy, ox, moments[NQ], r0, r1) per output pixel, REDUCE: block sums of
//   r0/r1 handed to finish(plane, s0, s1); src(c, plane, gy, gx) points at input c
//   (of type src_t) for the asynchronous path, which runs only when src_t == acc_t.
template <typename acc_t, int K, typename Op, bool ASYNC>
__global__ void __launch_bounds__(THREADS)
    sep_filter_kernel(const Op op, const Taps<acc_t> taps, int in_h, int in_w, int out_h, int out_w,
                      int off, int S, int tiles_x, int tiles_y) {
  constexpr int NIN = Op::NIN;
  // the asynchronous path copies raw elements: input type == accumulation type only
  constexpr bool CAN_ASYNC = ASYNC && std::is_same_v<typename Op::src_t, acc_t>;
  constexpr int NQ = Op::NQ;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* sm = reinterpret_cast<acc_t*>(smem_raw);

  const int twx = blockDim.x;
  const int ty = blockDim.y;
  const int pw = twx + K - 1;
  const int tid = threadIdx.y * twx + threadIdx.x;
  const int nthreads = twx * ty;

  long long b = blockIdx.x;
  const int tile_x = static_cast<int>(b % tiles_x);
  b /= tiles_x;
  const int tile_y = static_cast<int>(b % tiles_y);
  const long long plane = b / tiles_y;

  const int col0 = tile_x * twx;
  const int row0 = tile_y * ty * S;
  const int strip_row0 = row0 + threadIdx.y * S;
  const int ox = col0 + threadIdx.x;
  const bool col_ok = ox < out_w;

  acc_t ring[K][NQ];
#pragma unroll
  for (int i = 0; i < K; ++i)
#pragma unroll
    for (int q = 0; q < NQ; ++q) ring[i][q] = acc_t(0);
  acc_t r0 = acc_t(0), r1 = acc_t(0);

  const int n_in = S + K - 1;  // a multiple of K (see choose_geometry)
  const int ngroups = n_in / K;
  const size_t stage = static_cast<size_t>(ty) * NIN * K * pw;  // elements of one buffer
  constexpr bool use_async = CAN_ASYNC;

  // Stage input rows base..base+K-1 of every strip (with the halo columns) into buf:
  // rows (strip s, row u) over threadIdx.y, columns over threadIdx.x (coalesced).
  auto stage_rows = [&](int base, acc_t* buf) {
#pragma unroll 2
    for (int row = threadIdx.y; row < ty * K; row += ty) {
      const int s = row / K;
      const int u = row - s * K;
      const int gy = row0 + s * S + base + u + off;
      const bool row_ok = gy >= 0 && gy < in_h;
      acc_t* dst = buf + (static_cast<size_t>(s) * NIN * K + u) * pw;
      for (int j = threadIdx.x; j < pw; j += twx) {
        const int gx = col0 + j + off;
        const bool ok = row_ok && gx >= 0 && gx < in_w;
        if constexpr (CAN_ASYNC) {
#pragma unroll
          for (int c = 0; c < NIN; ++c) {
            const acc_t* src = ok ? op.src(c, plane, gy, gx) : op.src(c, plane, 0, 0);
            copy_async_zfill(dst + static_cast<size_t>(c) * K * pw + j, src, ok);
          }
        } else {
          acc_t v[NIN];
          if (ok) {
            op.load(plane, gy, gx, v);
          } else {
#pragma unroll
            for (int c = 0; c < NIN; ++c) v[c] = acc_t(0);
          }
#pragma unroll
          for (int c = 0; c < NIN; ++c) dst[static_cast<size_t>(c) * K * pw + j] = v[c];
        }
      }
    }
  };

  if constexpr (use_async) {
    stage_rows(0, sm);
    copy_async_commit();
  }
  for (int g = 0; g < ngroups; ++g) {
    const int base = g * K;
    const acc_t* cur;
    if constexpr (use_async) {
      // the next group streams in while this one is computed
      if (g + 1 < ngroups) {
        stage_rows(base + K, sm + ((g + 1) & 1) * stage);
        copy_async_commit();
        copy_async_wait<1>();
      } else {
        copy_async_wait<0>();
      }
      __syncthreads();
      cur = sm + (g & 1) * stage;
    } else {
      __syncthreads();
      stage_rows(base, sm);
      __syncthreads();
      cur = sm;
    }
    const acc_t* mine = cur + static_cast<size_t>(threadIdx.y) * NIN * K * pw + threadIdx.x;
#pragma unroll
    for (int u = 0; u < K; ++u) {
      acc_t h[NQ];
#pragma unroll
      for (int q = 0; q < NQ; ++q) h[q] = acc_t(0);
#pragma unroll
      for (int t = 0; t < K; ++t) {
        acc_t v[NIN];
#pragma unroll
        for (int c = 0; c < NIN; ++c) v[c] = mine[(c * K + u) * pw + t];
        acc_t qv[NQ];
        Op::expand(v, qv);
#pragma unroll
        for (int q = 0; q < NQ; ++q) h[q] = fma(taps.w[t], qv[q], h[q]);
      }
      // input row base+u feeds output row base+u-i with weight w[i]
#pragma unroll
      for (int i = 0; i < K; ++i) {
        const int slot = (u - i + K) % K;
#pragma unroll
        for (int q = 0; q < NQ; ++q) ring[slot][q] = fma(taps.w[i], h[q], ring[slot][q]);
      }
      const int done = (u + 1) % K;  // output row base+u-(K-1) is complete
      const int o = base + u - (K - 1);
      const int oy = strip_row0 + o;
      if (o >= 0 && col_ok && oy < out_h) op.emit(plane, oy, ox, ring[done], r0, r1);
#pragma unroll
      for (int q = 0; q < NQ; ++q) ring[done][q] = acc_t(0);
    }
    if constexpr (use_async) __syncthreads();  // this buffer is refilled two groups later
  }

  if constexpr (Op::REDUCE) {
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) {
      r0 += __shfl_down_sync(0xffffffffu, r0, d);
      r1 += __shfl_down_sync(0xffffffffu, r1, d);
    }
    __syncthreads();  // the staging buffer is reused for the warp partials
    acc_t* red = sm;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    if (lane == 0) {
      red[2 * warp] = r0;
      red[2 * warp + 1] = r1;
    }
    __syncthreads();
    if (tid == 0) {
      acc_t s0 = acc_t(0), s1 = acc_t(0);
      for (int w = 0; w < (nthreads + 31) / 32; ++w) {
        s0 += red[2 * w];
        s1 += red[2 * w + 1];
      }
      op.finish(plane, s0, s1);
    }
  }
}

// ------------------------------------------------------------------ the ops

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_xy(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                                        long long plane, int h, int w, int gy, int gx, acc_t v[2]) {
  const long long p = (plane * h + gy) * w + gx;
  v[0] = static_cast<acc_t>(x[p]);
  v[1] = static_cast<acc_t>(y[p]);
}

// The four filtered quantities of ops/ssim_math.h: x, y, (x - y)², xy.
template <typename acc_t>
__device__ __forceinline__ void expand_moments(const acc_t v[2], acc_t q[4]) {
  const acc_t d = v[0] - v[1];
  q[0] = v[0];
  q[1] = v[1];
  q[2] = d * d;
  q[3] = v[0] * v[1];
}

// What the forward and the backward's first pass share: the inputs x, y of one scale,
// their four moments per pixel, the output size and the constants.
template <typename scalar_t, typename acc_t>
struct ScaleInputs {
  static constexpr int NIN = 2, NQ = 4;
  using src_t = scalar_t;
  const scalar_t* x;
  const scalar_t* y;
  int h, w, out_h, out_w;
  acc_t c1, c2, inv_npix;

  __device__ __forceinline__ void load(long long plane, int gy, int gx, acc_t v[2]) const {
    load_xy(x, y, plane, h, w, gy, gx, v);
  }
  __device__ __forceinline__ const scalar_t* src(int c, long long plane, int gy, int gx) const {
    return (c == 0 ? x : y) + (plane * h + gy) * w + gx;
  }
  __device__ __forceinline__ static void expand(const acc_t v[2], acc_t q[4]) { expand_moments(v, q); }
};

template <typename scalar_t, typename acc_t>
ScaleInputs<scalar_t, acc_t> scale_inputs(const scalar_t* x, const scalar_t* y, int h, int w, int k,
                                          double c1, double c2) {
  const int ho = h - k + 1, wo = w - k + 1;
  return {x, y, h, w, ho, wo, static_cast<acc_t>(c1), static_cast<acc_t>(c2),
          static_cast<acc_t>(1.0 / (static_cast<double>(ho) * wo))};
}

template <typename scalar_t, typename acc_t>
struct FwdOp : ScaleInputs<scalar_t, acc_t> {
  static constexpr bool REDUCE = true;
  acc_t* s_sum;
  acc_t* cs_sum;
  acc_t* s_map;  // null unless want_maps
  acc_t* cs_map;

  __device__ __forceinline__ void emit(long long plane, int oy, int ox, const acc_t m[4], acc_t& r0,
                                       acc_t& r1) const {
    acc_t s, cs;
    ssim_and_cs(m[0], m[1], m[2], m[3], this->c1, this->c2, s, cs);
    r0 += s;
    r1 += cs;
    if (s_map != nullptr) {
      const long long p = (plane * this->out_h + oy) * this->out_w + ox;
      s_map[p] = s;
      cs_map[p] = cs;
    }
  }
  __device__ __forceinline__ void finish(long long plane, acc_t s0, acc_t s1) const {
    atomicAdd(s_sum + plane, s0 * this->inv_npix);
    atomicAdd(cs_sum + plane, s1 * this->inv_npix);
  }
};

// Backward, pass 1: gradients of the pooled/mapped outputs with respect to the filtered
// moments, per output pixel (as reference ssim_scale_backward).
template <typename scalar_t, typename acc_t>
struct GradMomentsOp : ScaleInputs<scalar_t, acc_t> {
  static constexpr bool REDUCE = false;
  const acc_t* g_s_mean;
  const acc_t* g_cs_mean;
  const acc_t* g_s_map;  // may be null (= 0)
  const acc_t* g_cs_map;
  acc_t* ws;             // [4][planes][out_h][out_w]: G_mu_y, G_var, G_cov, G_mu_x
  long long ws_stride;   // planes * out_h * out_w
  bool need_gx;

  __device__ __forceinline__ void emit(long long plane, int oy, int ox, const acc_t m[4], acc_t&,
                                       acc_t&) const {
    const long long p = (plane * this->out_h + oy) * this->out_w + ox;
    acc_t gs = g_s_mean[plane] * this->inv_npix;
    acc_t gc = g_cs_mean[plane] * this->inv_npix;
    if (g_s_map != nullptr) gs += g_s_map[p];
    if (g_cs_map != nullptr) gc += g_cs_map[p];
    acc_t g_var, g_cov, g_mu_y, g_mu_x;
    ssim_moment_grads<true>(m[0], m[1], m[2], m[3], this->c1, this->c2, gs, gc, g_var, g_cov, g_mu_y, g_mu_x);
    ws[p] = g_mu_y;
    ws[ws_stride + p] = g_var;
    ws[2 * ws_stride + p] = g_cov;
    if (need_gx) ws[3 * ws_stride + p] = g_mu_x;
  }
  __device__ __forceinline__ void finish(long long, acc_t, acc_t) const {}
};

// Backward, pass 2: adjoint filter of the moment gradients (full-size output, flipped
// window, input offset -(K-1)) and the product rule:
//   gy = W^T G_mu_y + 2 y W^T G_var + x W^T G_cov,  gx = W^T G_mu_x + 2 x W^T G_var + y W^T G_cov.
template <typename scalar_t, typename acc_t, bool NEED_GX>
struct AdjointOp {
  static constexpr int NIN = NEED_GX ? 4 : 3, NQ = NIN;
  static constexpr bool REDUCE = false;
  using src_t = acc_t;
  const acc_t* ws;
  long long ws_stride;
  int gh, gw;  // size of the gradient maps (the op's input domain)
  const scalar_t* x;
  const scalar_t* y;
  int h, w;
  scalar_t* gx;
  scalar_t* gy;

  __device__ __forceinline__ const acc_t* src(int i, long long plane, int r, int c) const {
    return ws + i * ws_stride + (plane * gh + r) * gw + c;
  }
  __device__ __forceinline__ void load(long long plane, int r, int c, acc_t v[NIN]) const {
    const long long p = (plane * gh + r) * gw + c;
#pragma unroll
    for (int i = 0; i < NIN; ++i) v[i] = ws[i * ws_stride + p];
  }
  __device__ __forceinline__ static void expand(const acc_t v[NIN], acc_t q[NQ]) {
#pragma unroll
    for (int i = 0; i < NIN; ++i) q[i] = v[i];
  }
  __device__ __forceinline__ void emit(long long plane, int oy, int ox, const acc_t m[NQ], acc_t&,
                                       acc_t&) const {
    const long long p = (plane * h + oy) * w + ox;
    const acc_t xv = static_cast<acc_t>(x[p]);
    const acc_t yv = static_cast<acc_t>(y[p]);
    gy[p] = static_cast<scalar_t>(m[0] + acc_t(2) * yv * m[1] + xv * m[2]);
    if constexpr (NEED_GX) gx[p] = static_cast<scalar_t>(m[3] + acc_t(2) * xv * m[1] + yv * m[2]);
  }
  __device__ __forceinline__ void finish(long long, acc_t, acc_t) const {}
};

// ------------------------------------------------------------------ launching

struct Geometry {
  int twx, ty, S, tiles_x, tiles_y;
};

// Output columns per block (one per thread) and strip height: S + K - 1 is a multiple
// of K so that the row loop is whole groups of K.
inline Geometry choose_geometry(int out_h, int out_w, int k) {
  Geometry g{};
  g.twx = out_w <= 32 ? 32 : (out_w <= 64 ? 64 : 128);
  g.ty = THREADS / g.twx;
  const int per_strip = (out_h + g.ty - 1) / g.ty;
  const int target = std::max(1, std::min(32, per_strip));
  g.S = k * ((target + k - 1 + k - 1) / k) - (k - 1);
  g.tiles_x = (out_w + g.twx - 1) / g.twx;
  g.tiles_y = (out_h + g.ty * g.S - 1) / (g.ty * g.S);
  return g;
}

template <typename acc_t, int K, typename Op, bool ASYNC>
void launch_kernel(const Op& op, const Taps<acc_t>& taps, int in_h, int in_w, int out_h, int out_w, int off,
                   long long planes) {
  const Geometry g = choose_geometry(out_h, out_w, K);
  const size_t smem = (ASYNC ? 2 : 1) * static_cast<size_t>(g.ty) * Op::NIN * K * (g.twx + K - 1) *
                      sizeof(acc_t);
  auto kernel = sep_filter_kernel<acc_t, K, Op, ASYNC>;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
  const long long blocks = planes * g.tiles_x * g.tiles_y;
  TORCH_CHECK(blocks < (1LL << 31), "ssim: too many tiles for one launch");
  dim3 block(g.twx, g.ty);
  kernel<<<static_cast<unsigned>(blocks), block, smem, at::cuda::getCurrentCUDAStream()>>>(
      op, taps, in_h, in_w, out_h, out_w, off, g.S, g.tiles_x, g.tiles_y);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The cp.async variant exists for fp32 data only (IGD_FAST_CUDA_ASYNC=1).
template <typename acc_t, int K, typename Op>
void launch_k(const Op& op, const Taps<acc_t>& taps, int in_h, int in_w, int out_h, int out_w, int off,
              long long planes) {
  if constexpr (std::is_same_v<acc_t, float> && std::is_same_v<typename Op::src_t, float>) {
    if (async_copy_enabled()) {
      launch_kernel<acc_t, K, Op, true>(op, taps, in_h, in_w, out_h, out_w, off, planes);
      return;
    }
  }
  launch_kernel<acc_t, K, Op, false>(op, taps, in_h, in_w, out_h, out_w, off, planes);
}

template <typename acc_t, typename Op>
void launch(int k, const Op& op, const Taps<acc_t>& taps, int in_h, int in_w, int out_h, int out_w,
            int off, long long planes) {
  switch (k) {
#define IGD_CASE(KK)                                                                   \
  case KK:                                                                             \
    launch_k<acc_t, KK, Op>(op, taps, in_h, in_w, out_h, out_w, off, planes); \
    break;
    IGD_CASE(1)
    IGD_CASE(3)
    IGD_CASE(5)
    IGD_CASE(7)
    IGD_CASE(9)
    IGD_CASE(11)
    IGD_CASE(13)
    IGD_CASE(15)
#undef IGD_CASE
    default:
      TORCH_CHECK(false, "ssim: win_size must be odd and in [1, 15], got ", k);
  }
}

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Forward of one scale: per-plane means (zeroed by the caller) and optional maps.
template <typename scalar_t>
void ssim_fwd_launch(const scalar_t* x, const scalar_t* y, long long planes, int h, int w, int k,
                     double sigma, double c1, double c2, acc_of<scalar_t>* s_sum, acc_of<scalar_t>* cs_sum,
                     acc_of<scalar_t>* s_map, acc_of<scalar_t>* cs_map) {
  using acc_t = acc_of<scalar_t>;
  const FwdOp<scalar_t, acc_t> op{scale_inputs<scalar_t, acc_t>(x, y, h, w, k, c1, c2), s_sum, cs_sum, s_map,
                                  cs_map};
  launch<acc_t>(k, op, make_taps<acc_t>(k, sigma, false), h, w, op.out_h, op.out_w, 0, planes);
}

// Backward of one scale: moment gradients into ws ([3|4][planes][ho][wo]), then the
// adjoint filter into gy (and gx when not null).
template <typename scalar_t>
void ssim_bwd_launch(const scalar_t* x, const scalar_t* y, long long planes, int h, int w, int k,
                     double sigma, double c1, double c2, const acc_of<scalar_t>* g_s_mean,
                     const acc_of<scalar_t>* g_cs_mean, const acc_of<scalar_t>* g_s_map,
                     const acc_of<scalar_t>* g_cs_map, acc_of<scalar_t>* ws, scalar_t* gx, scalar_t* gy) {
  using acc_t = acc_of<scalar_t>;
  const int ho = h - k + 1, wo = w - k + 1;
  const long long map_numel = planes * ho * wo;
  const GradMomentsOp<scalar_t, acc_t> gop{scale_inputs<scalar_t, acc_t>(x, y, h, w, k, c1, c2),
                                           g_s_mean, g_cs_mean, g_s_map, g_cs_map, ws, map_numel,
                                           gx != nullptr};
  launch<acc_t>(k, gop, make_taps<acc_t>(k, sigma, false), h, w, ho, wo, 0, planes);
  const auto flipped = make_taps<acc_t>(k, sigma, true);
  if (gx != nullptr) {
    AdjointOp<scalar_t, acc_t, true> aop{ws, map_numel, ho, wo, x, y, h, w, gx, gy};
    launch<acc_t>(k, aop, flipped, ho, wo, h, w, -(k - 1), planes);
  } else {
    AdjointOp<scalar_t, acc_t, false> aop{ws, map_numel, ho, wo, x, y, h, w, nullptr, gy};
    launch<acc_t>(k, aop, flipped, ho, wo, h, w, -(k - 1), planes);
  }
}

#define IGD_SSIM_DECLARE(T, EXTERN)                                                                   \
  EXTERN template void ssim_fwd_launch<T>(const T*, const T*, long long, int, int, int, double, double, \
                                          double, acc_of<T>*, acc_of<T>*, acc_of<T>*, acc_of<T>*);     \
  EXTERN template void ssim_bwd_launch<T>(const T*, const T*, long long, int, int, int, double, double, \
                                          double, const acc_of<T>*, const acc_of<T>*, const acc_of<T>*, \
                                          const acc_of<T>*, acc_of<T>*, T*, T*);

// Each dtype is instantiated in its own translation unit (ssim_inst_*.cu) so that
// the builds run in parallel.
IGD_SSIM_DECLARE(float, extern)
IGD_SSIM_DECLARE(double, extern)
IGD_SSIM_DECLARE(c10::Half, extern)
IGD_SSIM_DECLARE(c10::BFloat16, extern)

}  // namespace ssim_cuda
}  // namespace igd_fast
