// CPU patch kernels: fold patch maps into images and max-pool patch scores.
// Gather formulation: each task owns whole output rows, so no atomics; within a row
// every covering patch adds one contiguous run of `size` pixels (vectorisable).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "ops/patches_geometry.h"

namespace igd_fast {
namespace {

at::Tensor fold_patch_maps_cpu(const at::Tensor& patch_maps_in, int64_t height, int64_t width, int64_t size,
                               int64_t stride, std::string mode_name) {
  check_patch_grid(height, width, size, stride);
  const FoldMode mode = parse_fold_mode(mode_name);
  TORCH_CHECK(patch_maps_in.dim() == 4 && patch_maps_in.size(2) == size && patch_maps_in.size(3) == size,
              "fold_patch_maps: patch_maps must be (N*P)xCx", size, "x", size);
  const PatchAxis ar(height, size, stride), ac(width, size, stride);
  const int64_t P = ar.count * ac.count;
  TORCH_CHECK(patch_maps_in.size(0) % P == 0, "fold_patch_maps: ", patch_maps_in.size(0),
              " patches is not a multiple of the grid's ", P);
  const at::Tensor patch_maps = patch_maps_in.contiguous();
  const int64_t N = patch_maps.size(0) / P, C = patch_maps.size(1), S = size, W = width, H = height;
  at::Tensor out = at::empty({N, C, H, W}, patch_maps.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, patch_maps.scalar_type(), "fold_patch_maps_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = patch_maps.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    // 1 / (columns covering x), the separable half of the mean's divisor
    std::vector<acc_t> inv_cols(W, acc_t(0));
    for (int64_t j = 0; j < ac.count; ++j)
      for (int64_t v = 0; v < S; ++v) inv_cols[ac.start(j) + v] += acc_t(1);
    for (auto& v : inv_cols) v = acc_t(1) / v;

    // grain in rows of ~GRAIN_SIZE element operations: small folds run inline, unthreaded
    const int64_t row_work = W + ac.count * S;
    at::parallel_for(0, N * C * H, std::max<int64_t>(1, at::internal::GRAIN_SIZE / row_work),
                     [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(W);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t y = row % H, c = (row / H) % C, n = row / (H * C);
        const acc_t init = mode == FoldMode::kMax ? -std::numeric_limits<acc_t>::infinity() : acc_t(0);
        std::fill(acc.begin(), acc.end(), init);
        int64_t covering_rows = 0;
        for (int64_t i = ar.first(y); i < ar.count; ++i) {
          const int64_t st = ar.start(i);
          if (st > y) break;
          ++covering_rows;
          for (int64_t j = 0; j < ac.count; ++j) {
            const scalar_t* s = src + (((n * P + i * ac.count + j) * C + c) * S + (y - st)) * S;
            acc_t* a = acc.data() + ac.start(j);
            if (mode == FoldMode::kMax) {
              for (int64_t v = 0; v < S; ++v) a[v] = std::max(a[v], static_cast<acc_t>(s[v]));
            } else {
              for (int64_t v = 0; v < S; ++v) a[v] += static_cast<acc_t>(s[v]);
            }
          }
        }
        scalar_t* d = dst + row * W;
        if (mode == FoldMode::kMean) {
          const acc_t inv_r = acc_t(1) / static_cast<acc_t>(covering_rows);
          for (int64_t x = 0; x < W; ++x) d[x] = static_cast<scalar_t>(acc[x] * inv_r * inv_cols[x]);
        } else {
          for (int64_t x = 0; x < W; ++x) d[x] = static_cast<scalar_t>(acc[x]);
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> anomaly_map_cpu(const at::Tensor& scores_in, int64_t height,
                                                                int64_t width, int64_t size, int64_t stride) {
  check_patch_grid(height, width, size, stride);
  const PatchAxis ar(height, size, stride), ac(width, size, stride);
  const int64_t P = ar.count * ac.count;
  TORCH_CHECK(scores_in.dim() == 2 && scores_in.size(1) == P, "anomaly_map: scores must be Nx", P);
  const at::Tensor scores = scores_in.contiguous();
  const int64_t N = scores.size(0), S = size, H = height, W = width;
  at::Tensor pixel_map = at::empty({N, 1, H, W}, scores.options());
  at::Tensor image_score = at::empty({N}, scores.options());
  at::Tensor worst = at::empty({N}, scores.options().dtype(at::kLong));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "anomaly_map_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* s = scores.data_ptr<scalar_t>();
    scalar_t* d = pixel_map.data_ptr<scalar_t>();
    constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
    // max is separable: first over the rows covering y (per grid column), then over columns
    const int64_t row_work = W + ac.count * S;
    at::parallel_for(0, N * H, std::max<int64_t>(1, at::internal::GRAIN_SIZE / row_work),
                     [&](int64_t begin, int64_t end) {
      std::vector<acc_t> col_max(ac.count), acc(W);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t y = row % H, n = row / H;
        std::fill(col_max.begin(), col_max.end(), kNegInf);
        for (int64_t i = ar.first(y); i < ar.count && ar.start(i) <= y; ++i) {
          const scalar_t* si = s + n * P + i * ac.count;
          for (int64_t j = 0; j < ac.count; ++j) col_max[j] = std::max(col_max[j], static_cast<acc_t>(si[j]));
        }
        std::fill(acc.begin(), acc.end(), kNegInf);
        for (int64_t j = 0; j < ac.count; ++j) {
          acc_t* a = acc.data() + ac.start(j);
          const acc_t m = col_max[j];
          for (int64_t v = 0; v < S; ++v) a[v] = std::max(a[v], m);
        }
        scalar_t* dr = d + row * W;
        for (int64_t x = 0; x < W; ++x) dr[x] = static_cast<scalar_t>(acc[x]);
      }
    });
    scalar_t* best = image_score.data_ptr<scalar_t>();
    int64_t* arg = worst.data_ptr<int64_t>();
    at::parallel_for(0, N, std::max<int64_t>(1, at::internal::GRAIN_SIZE / P), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        int64_t k = 0;
        for (int64_t p = 1; p < P; ++p)  // strict '>': the first maximum wins, as torch.argmax
          if (static_cast<acc_t>(s[n * P + p]) > static_cast<acc_t>(s[n * P + k])) k = p;
        arg[n] = k;
        best[n] = s[n * P + k];
      }
    });
  });
  return {pixel_map, image_score, worst};
}

}  // namespace

TORCH_LIBRARY_IMPL(igd_fast_C, CPU, m) {
  m.impl("fold_patch_maps", &fold_patch_maps_cpu);
  m.impl("anomaly_map", &anomaly_map_cpu);
}

}  // namespace igd_fast
