// CUDA implementations of the SSIM kernels (schemas in csrc/ops/ssim.cpp).
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
//
// Layout: ssim_kernel.cuh holds the engine, the ops and their launchers; each dtype's
// launchers are compiled in their own unit (ssim_inst_{f32,f64,f16,bf16}.cu) so the
// build runs in parallel; this file holds the op wrappers, combine_maps and the
// registration. IGD_FAST_CUDA_ASYNC=1 selects, for fp32 data, a variant that stages
// input rows with double-buffered cp.async copies (off by default).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "ssim_kernel.cuh"

namespace igd_fast {
namespace ssim_cuda {
namespace {

void check_pair(const at::Tensor& x, const at::Tensor& y, int64_t win_size) {
  TORCH_CHECK(x.is_cuda() && y.is_cuda(), "ssim (cuda): x and y must be CUDA tensors");
  TORCH_CHECK(x.dim() == 4 && x.sizes() == y.sizes(), "ssim (cuda): x and y must be N×C×H×W of one shape");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "ssim (cuda): x and y must share a dtype");
  TORCH_CHECK(x.device() == y.device(), "ssim (cuda): x and y must be on one device");
  TORCH_CHECK(win_size >= 1 && win_size <= KMAX && win_size % 2 == 1,
              "ssim (cuda): win_size must be odd and in [1, 15]");
  TORCH_CHECK(x.size(2) >= win_size && x.size(3) >= win_size,
              "ssim (cuda): image smaller than the window");
}

at::ScalarType acc_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ssim_scale_cuda(
    const at::Tensor& x_in, const at::Tensor& y_in, int64_t win_size, double sigma, double c1, double c2,
    bool want_maps) {
  check_pair(x_in, y_in, win_size);
  c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto y = y_in.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int k = static_cast<int>(win_size);
  const int ho = static_cast<int>(h) - k + 1, wo = static_cast<int>(w) - k + 1;
  const auto opts = x.options().dtype(acc_type_of(x.scalar_type()));
  auto s_mean = at::zeros({n, c}, opts);
  auto cs_mean = at::zeros({n, c}, opts);
  at::Tensor s_map = want_maps ? at::empty({n, c, ho, wo}, opts) : at::empty({0}, opts);
  at::Tensor cs_map = want_maps ? at::empty({n, c, ho, wo}, opts) : at::empty({0}, opts);
  if (n * c == 0) return {s_mean, cs_mean, s_map, cs_map};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ssim_scale_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    ssim_fwd_launch<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), n * c, static_cast<int>(h),
                              static_cast<int>(w), k, sigma, c1, c2, s_mean.data_ptr<acc_t>(),
                              cs_mean.data_ptr<acc_t>(), want_maps ? s_map.data_ptr<acc_t>() : nullptr,
                              want_maps ? cs_map.data_ptr<acc_t>() : nullptr);
  });
  return {s_mean, cs_mean, s_map, cs_map};
}

std::tuple<at::Tensor, at::Tensor> ssim_scale_backward_cuda(const at::Tensor& x_in, const at::Tensor& y_in,
                                                       int64_t win_size, double sigma, double c1,
                                                       double c2, const at::Tensor& g_s_mean_in,
                                                       const at::Tensor& g_cs_mean_in,
                                                       const at::Tensor& g_s_map_in,
                                                       const at::Tensor& g_cs_map_in, bool need_gx) {
  check_pair(x_in, y_in, win_size);
  c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto y = y_in.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int k = static_cast<int>(win_size);
  const int ho = static_cast<int>(h) - k + 1, wo = static_cast<int>(w) - k + 1;
  const auto acc = acc_type_of(x.scalar_type());
  const auto opts = x.options().dtype(acc);
  const int64_t planes = n * c;
  TORCH_CHECK(g_s_mean_in.numel() == planes && g_cs_mean_in.numel() == planes,
              "ssim_scale_backward (cuda): g_ssim_mean and g_cs_mean must be N×C");
  const auto g_s_mean = g_s_mean_in.to(opts).contiguous();
  const auto g_cs_mean = g_cs_mean_in.to(opts).contiguous();
  const int64_t map_numel = planes * ho * wo;
  at::Tensor g_s_map, g_cs_map;
  if (g_s_map_in.numel()) {
    TORCH_CHECK(g_s_map_in.numel() == map_numel, "ssim_scale_backward (cuda): g_ssim_map has the wrong size");
    g_s_map = g_s_map_in.to(opts).contiguous();
  }
  if (g_cs_map_in.numel()) {
    TORCH_CHECK(g_cs_map_in.numel() == map_numel, "ssim_scale_backward (cuda): g_cs_map has the wrong size");
    g_cs_map = g_cs_map_in.to(opts).contiguous();
  }
  auto gy = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto gx = need_gx ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  if (planes == 0) return {gx, gy};
  auto ws = at::empty({need_gx ? 4 : 3, planes, ho, wo}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ssim_scale_backward_cuda", [&] {
    using acc_t = acc_of<scalar_t>;
    ssim_bwd_launch<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), planes, static_cast<int>(h),
                              static_cast<int>(w), k, sigma, c1, c2, g_s_mean.data_ptr<acc_t>(),
                              g_cs_mean.data_ptr<acc_t>(), g_s_map.defined() ? g_s_map.data_ptr<acc_t>() : nullptr,
                              g_cs_map.defined() ? g_cs_map.data_ptr<acc_t>() : nullptr, ws.data_ptr<acc_t>(),
                              need_gx ? gx.data_ptr<scalar_t>() : nullptr, gy.data_ptr<scalar_t>());
  });
  return {gx, gy};
}

// ------------------------------------------------------------------ combine_maps

template <typename acc_t>
struct MapSet {
  const acc_t* ptr[MAX_MAPS];
  int h[MAX_MAPS];
  int w[MAX_MAPS];
  acc_t weight[MAX_MAPS];
  int count;
};

// prod_j relu(U_j(m_j))^w_j with U_j = replicate-pad by r, then bilinear
// (align_corners=False, as F.interpolate) to out_h×out_w.
template <typename acc_t>
__global__ void combine_maps_kernel(const MapSet<acc_t> maps, acc_t* __restrict__ out, long long total,
                                    int out_h, int out_w, int r) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int ox = static_cast<int>(i % out_w);
  const int oy = static_cast<int>((i / out_w) % out_h);
  const long long plane = i / (static_cast<long long>(out_w) * out_h);
  acc_t prod = acc_t(1);
  for (int j = 0; j < maps.count; ++j) {
    const int mh = maps.h[j], mw = maps.w[j];
    const int ph = mh + 2 * r, pw = mw + 2 * r;  // padded size
    const acc_t* m = maps.ptr[j] + plane * mh * mw;
    acc_t v;
    if (ph == out_h && pw == out_w) {
      const int sy = min(max(oy - r, 0), mh - 1), sx = min(max(ox - r, 0), mw - 1);
      v = m[sy * mw + sx];
    } else {
      const acc_t scale_y = static_cast<acc_t>(ph) / static_cast<acc_t>(out_h);
      const acc_t scale_x = static_cast<acc_t>(pw) / static_cast<acc_t>(out_w);
      acc_t fy = scale_y * (static_cast<acc_t>(oy) + acc_t(0.5)) - acc_t(0.5);
      acc_t fx = scale_x * (static_cast<acc_t>(ox) + acc_t(0.5)) - acc_t(0.5);
      fy = fy < acc_t(0) ? acc_t(0) : fy;
      fx = fx < acc_t(0) ? acc_t(0) : fx;
      const int y0 = static_cast<int>(fy), x0 = static_cast<int>(fx);
      const int y1 = y0 + (y0 < ph - 1 ? 1 : 0), x1 = x0 + (x0 < pw - 1 ? 1 : 0);
      const acc_t ly = fy - y0, lx = fx - x0;
      const acc_t hy = acc_t(1) - ly, hx = acc_t(1) - lx;
      // padded coordinate p -> map coordinate clamp(p - r)
      const int my0 = min(max(y0 - r, 0), mh - 1), my1 = min(max(y1 - r, 0), mh - 1);
      const int mx0 = min(max(x0 - r, 0), mw - 1), mx1 = min(max(x1 - r, 0), mw - 1);
      v = hy * (hx * m[my0 * mw + mx0] + lx * m[my0 * mw + mx1]) +
          ly * (hx * m[my1 * mw + mx0] + lx * m[my1 * mw + mx1]);
    }
    prod *= v > acc_t(0) ? pow(v, maps.weight[j]) : acc_t(0);
  }
  out[i] = prod;
}

at::Tensor combine_maps_cuda(at::TensorList maps_in, at::ArrayRef<double> weights, int64_t out_h,
                             int64_t out_w, int64_t win_size) {
  TORCH_CHECK(!maps_in.empty(), "combine_maps (cuda): no maps");
  TORCH_CHECK(maps_in.size() == weights.size(), "combine_maps (cuda): one weight per map");
  TORCH_CHECK(static_cast<int>(maps_in.size()) <= MAX_MAPS, "combine_maps (cuda): at most 16 maps");
  c10::cuda::CUDAGuard guard(maps_in[0].device());
  const auto dt = maps_in[0].scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<at::Tensor> maps;
  for (const auto& m : maps_in) {
    TORCH_CHECK(m.is_cuda() && m.dim() == 4, "combine_maps (cuda): maps must be N×C×h×w CUDA tensors");
    TORCH_CHECK(m.size(0) == maps_in[0].size(0) && m.size(1) == maps_in[0].size(1),
                "combine_maps (cuda): maps must share N and C");
    maps.push_back(m.to(dt).contiguous());
  }
  const int64_t n = maps[0].size(0), c = maps[0].size(1);
  auto out = at::empty({n, c, out_h, out_w}, maps[0].options());
  const long long total = n * c * out_h * out_w;
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(dt, "combine_maps_cuda", [&] {
    MapSet<scalar_t> set{};
    set.count = static_cast<int>(maps.size());
    for (int j = 0; j < set.count; ++j) {
      set.ptr[j] = maps[j].data_ptr<scalar_t>();
      set.h[j] = static_cast<int>(maps[j].size(2));
      set.w[j] = static_cast<int>(maps[j].size(3));
      set.weight[j] = static_cast<scalar_t>(weights[j]);
    }
    const int threads = 256;
    const long long blocks = (total + threads - 1) / threads;
    combine_maps_kernel<scalar_t><<<static_cast<unsigned>(blocks), threads, 0,
                                    at::cuda::getCurrentCUDAStream()>>>(
        set, out.data_ptr<scalar_t>(), total, static_cast<int>(out_h), static_cast<int>(out_w),
        static_cast<int>(win_size / 2));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace ssim_cuda
}  // namespace igd_fast

TORCH_LIBRARY_IMPL(igd_fast_C, CUDA, m) {
  m.impl("ssim_scale", &igd_fast::ssim_cuda::ssim_scale_cuda);
  m.impl("ssim_scale_backward", &igd_fast::ssim_cuda::ssim_scale_backward_cuda);
  m.impl("combine_maps", &igd_fast::ssim_cuda::combine_maps_cuda);
}
