// Shared by every CPU kernel of the SSIM family (namespace igd_fast::cpu):
//   acc_type, convert_row / store_row      dtypes of the statistics, row conversions
//   kLanes, round_up, Scratch, aligned,     whole-vector row buffers (no scalar tails)
//   copy_row, lane_mask
//   Plane                                   rows of an input plane, converted
//   tiles_per_plane, tile_range,            work split and dynamic scheduling
//   parallel_tasks
//   dispatch_window, check_pair             window size as a template parameter; checks
//   IGD_NO_CONTRACT                         no FMA contraction (exact cancellations)
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <utility>
#include <vector>

namespace igd_fast {
namespace cpu {

// Kernels that evaluate ssim_math.h compile without FMA contraction, so its exact
// cancellations hold (see there).
#define IGD_NO_CONTRACT __attribute__((optimize("fp-contract=off")))

// float32 statistics, float64 stays float64.
inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

template <typename T, typename A>
inline void convert_row(const T* src, A* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<A>(src[j]);
}

template <typename A, typename T>
inline void store_row(const A* src, T* dst, int64_t n) {
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

// Row tiling: one tile per plane when there are enough planes to feed the threads,
// otherwise split rows (not below min_rows per tile, halos make small tiles costly).
inline int64_t tiles_per_plane(int64_t planes, int64_t rows, int64_t min_rows) {
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  if (planes >= want) return 1;
  const int64_t by_threads = (want + planes - 1) / planes;
  const int64_t by_size = std::max<int64_t>(1, rows / min_rows);
  return std::max<int64_t>(1, std::min(by_threads, by_size));
}

inline std::pair<int64_t, int64_t> tile_range(int64_t rows, int64_t tiles, int64_t t) {
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

inline void check_pair(const at::Tensor& x, const at::Tensor& y, int64_t win_size, double sigma,
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

}  // namespace cpu
}  // namespace igd_fast
