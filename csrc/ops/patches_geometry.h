// Patch-grid geometry shared by the CPU and CUDA kernels; mirrors igd_fast.PatchGrid:
// along an axis, start(i) = min(i * stride, length - size) for i < count.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

#ifdef __CUDACC__
#define IGD_HD __host__ __device__ __forceinline__
#else
#define IGD_HD inline
#endif

namespace igd_fast {

struct PatchAxis {
  int64_t length, size, stride, count;

  IGD_HD PatchAxis(int64_t length_, int64_t size_, int64_t stride_)
      : length(length_), size(size_), stride(stride_),
        count((length_ - size_ + stride_ - 1) / stride_ + 1) {}

  IGD_HD int64_t start(int64_t i) const {
    const int64_t s = i * stride, last = length - size;
    return s < last ? s : last;
  }

  // First patch index that can cover pixel p: the patches before it end at or before p.
  // From there on every patch covers p until one starts after p (starts are sorted).
  IGD_HD int64_t first(int64_t p) const { return p < size ? 0 : (p - size) / stride + 1; }
};

enum class FoldMode { kMean = 0, kSum = 1, kMax = 2 };

inline FoldMode parse_fold_mode(const std::string& mode) {
  if (mode == "mean") return FoldMode::kMean;
  if (mode == "sum") return FoldMode::kSum;
  if (mode == "max") return FoldMode::kMax;
  TORCH_CHECK(false, "fold_patch_maps: mode must be 'mean', 'sum' or 'max', got '", mode, "'");
}

// The kernels rely on every pixel being covered (stride <= size) and on one patch fitting.
inline void check_patch_grid(int64_t height, int64_t width, int64_t size, int64_t stride) {
  TORCH_CHECK(size >= 1 && stride >= 1 && stride <= size, "patch grid: need 1 <= stride <= size, got size ",
              size, ", stride ", stride);
  TORCH_CHECK(height >= size && width >= size, "patch grid: image of ", height, "x", width,
              " is smaller than one ", size, "x", size, " patch");
}

}  // namespace igd_fast
