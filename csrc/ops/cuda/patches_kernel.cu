// CUDA patch kernels (schemas in csrc/ops/patches.cpp): fold patch maps into images and
// max-pool patch scores. Gather formulation: one thread per output pixel walks the
// patches covering it (at most ceil(size/stride)+1 per axis), so no atomics; neighbouring
// threads read neighbouring pixels of the same patch row (coalesced).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <string>
#include <tuple>

#include "ops/patches_geometry.h"

namespace igd_fast {
namespace {

constexpr int THREADS = 256;

template <typename scalar_t, typename acc_t, int MODE>
__global__ void fold_kernel(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst, PatchAxis ar,
                            PatchAxis ac, int64_t C, int64_t total) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t W = ac.length, H = ar.length, S = ar.size, P = ar.count * ac.count;
  const int64_t x = idx % W, y = (idx / W) % H, nc = idx / (H * W);
  const int64_t n = nc / C, c = nc % C;
  acc_t acc = MODE == static_cast<int>(FoldMode::kMax) ? -std::numeric_limits<acc_t>::infinity() : acc_t(0);
  int rows = 0, cols = 0;
  for (int64_t i = ar.first(y); i < ar.count; ++i) {
    const int64_t sr = ar.start(i);
    if (sr > y) break;
    ++rows;
    cols = 0;
    for (int64_t j = ac.first(x); j < ac.count; ++j) {
      const int64_t sc = ac.start(j);
      if (sc > x) break;
      ++cols;
      const acc_t v = static_cast<acc_t>(src[(((n * P + i * ac.count + j) * C + c) * S + (y - sr)) * S + (x - sc)]);
      if (MODE == static_cast<int>(FoldMode::kMax)) {
        acc = v > acc ? v : acc;
      } else {
        acc += v;
      }
    }
  }
  if (MODE == static_cast<int>(FoldMode::kMean)) acc /= static_cast<acc_t>(rows * cols);
  dst[idx] = static_cast<scalar_t>(acc);
}

template <typename scalar_t, typename acc_t>
__global__ void maxpool_kernel(const scalar_t* __restrict__ scores, scalar_t* __restrict__ dst, PatchAxis ar,
                               PatchAxis ac, int64_t total) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t W = ac.length, H = ar.length, P = ar.count * ac.count;
  const int64_t x = idx % W, y = (idx / W) % H, n = idx / (H * W);
  acc_t acc = -std::numeric_limits<acc_t>::infinity();
  for (int64_t i = ar.first(y); i < ar.count && ar.start(i) <= y; ++i)
    for (int64_t j = ac.first(x); j < ac.count && ac.start(j) <= x; ++j) {
      const acc_t v = static_cast<acc_t>(scores[n * P + i * ac.count + j]);
      acc = v > acc ? v : acc;
    }
  dst[idx] = static_cast<scalar_t>(acc);
}

// One block per image; ties keep the lower index, as torch.argmax.
template <typename scalar_t, typename acc_t>
__global__ void argmax_kernel(const scalar_t* __restrict__ scores, scalar_t* __restrict__ best_out,
                              int64_t* __restrict__ arg_out, int64_t P) {
  __shared__ acc_t best_s[THREADS];
  __shared__ int64_t arg_s[THREADS];
  const scalar_t* s = scores + static_cast<int64_t>(blockIdx.x) * P;
  acc_t best = -std::numeric_limits<acc_t>::infinity();
  int64_t arg = P;  // "none yet": loses every tie
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    const acc_t v = static_cast<acc_t>(s[p]);
    if (arg == P || v > best) {
      best = v;
      arg = p;
    }
  }
  best_s[threadIdx.x] = best;
  arg_s[threadIdx.x] = arg;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      const acc_t b = best_s[threadIdx.x + half];
      const int64_t ib = arg_s[threadIdx.x + half];
      const acc_t a = best_s[threadIdx.x];
      const int64_t ia = arg_s[threadIdx.x];
      if (ib != P && (ia == P || b > a || (b == a && ib < ia))) {
        best_s[threadIdx.x] = b;
        arg_s[threadIdx.x] = ib;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    arg_out[blockIdx.x] = arg_s[0];
    best_out[blockIdx.x] = s[arg_s[0]];
  }
}

unsigned blocks_for(int64_t total) { return static_cast<unsigned>((total + THREADS - 1) / THREADS); }

at::Tensor fold_patch_maps_cuda(const at::Tensor& patch_maps_in, int64_t height, int64_t width, int64_t size,
                                int64_t stride, std::string mode_name) {
  check_patch_grid(height, width, size, stride);
  const FoldMode mode = parse_fold_mode(mode_name);
  TORCH_CHECK(patch_maps_in.dim() == 4 && patch_maps_in.size(2) == size && patch_maps_in.size(3) == size,
              "fold_patch_maps: patch_maps must be (N*P)xCx", size, "x", size);
  const PatchAxis ar(height, size, stride), ac(width, size, stride);
  const int64_t P = ar.count * ac.count;
  TORCH_CHECK(patch_maps_in.size(0) % P == 0, "fold_patch_maps: ", patch_maps_in.size(0),
              " patches is not a multiple of the grid's ", P);
  const c10::cuda::CUDAGuard guard(patch_maps_in.device());
  const at::Tensor patch_maps = patch_maps_in.contiguous();
  const int64_t N = patch_maps.size(0) / P, C = patch_maps.size(1);
  at::Tensor out = at::empty({N, C, height, width}, patch_maps.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, patch_maps.scalar_type(), "fold_patch_maps_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = patch_maps.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    switch (mode) {
      case FoldMode::kMean:
        fold_kernel<scalar_t, acc_t, 0><<<blocks_for(total), THREADS, 0, stream>>>(src, dst, ar, ac, C, total);
        break;
      case FoldMode::kSum:
        fold_kernel<scalar_t, acc_t, 1><<<blocks_for(total), THREADS, 0, stream>>>(src, dst, ar, ac, C, total);
        break;
      case FoldMode::kMax:
        fold_kernel<scalar_t, acc_t, 2><<<blocks_for(total), THREADS, 0, stream>>>(src, dst, ar, ac, C, total);
        break;
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> anomaly_map_cuda(const at::Tensor& scores_in, int64_t height,
                                                                 int64_t width, int64_t size, int64_t stride) {
  check_patch_grid(height, width, size, stride);
  const PatchAxis ar(height, size, stride), ac(width, size, stride);
  const int64_t P = ar.count * ac.count;
  TORCH_CHECK(scores_in.dim() == 2 && scores_in.size(1) == P, "anomaly_map: scores must be Nx", P);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const int64_t N = scores.size(0);
  at::Tensor pixel_map = at::empty({N, 1, height, width}, scores.options());
  at::Tensor image_score = at::empty({N}, scores.options());
  at::Tensor worst = at::empty({N}, scores.options().dtype(at::kLong));
  if (N == 0) return {pixel_map, image_score, worst};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "anomaly_map_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t total = pixel_map.numel();
    maxpool_kernel<scalar_t, acc_t><<<blocks_for(total), THREADS, 0, stream>>>(
        scores.data_ptr<scalar_t>(), pixel_map.data_ptr<scalar_t>(), ar, ac, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    argmax_kernel<scalar_t, acc_t><<<static_cast<unsigned>(N), THREADS, 0, stream>>>(
        scores.data_ptr<scalar_t>(), image_score.data_ptr<scalar_t>(), worst.data_ptr<int64_t>(), P);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {pixel_map, image_score, worst};
}

}  // namespace

TORCH_LIBRARY_IMPL(igd_fast_C, CUDA, m) {
  m.impl("fold_patch_maps", &fold_patch_maps_cuda);
  m.impl("anomaly_map", &anomaly_map_cuda);
}

}  // namespace igd_fast
