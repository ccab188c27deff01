// CPU kernels of downsample (the 2×2 pool between scales, downsample.h) and
// downsample_backward (its adjoint), registered for igd_fast_C on the CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <type_traits>

#include "ops/cpu/common.h"
#include "ops/cpu/downsample.h"

namespace igd_fast {
namespace cpu {
namespace {

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
at::Tensor downsample_backward_cpu(const at::Tensor& g_in, int64_t H, int64_t W) {
  TORCH_CHECK(g_in.dim() == 4 && g_in.size(2) == (H + 1) / 2 && g_in.size(3) == (W + 1) / 2,
              "downsample_backward: grad must be N×C×", (H + 1) / 2, "×", (W + 1) / 2, " for a ", H,
              "×", W, " input, got ", g_in.sizes());
  TORCH_CHECK(at::isFloatingType(g_in.scalar_type()) && g_in.device().is_cpu(),
              "downsample_backward: grad must be a floating CPU tensor");
  const auto g = g_in.contiguous();
  const int64_t N = g.size(0), C = g.size(1), ho = g.size(2), wo = g.size(3);
  const int64_t ph = H % 2, pw = W % 2;
  at::Tensor out = at::empty({N, C, H, W}, g.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "downsample_backward", [&] {
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

}  // namespace
}  // namespace cpu
}  // namespace igd_fast

TORCH_LIBRARY_IMPL(igd_fast_C, CPU, m) {
  m.impl("downsample", &igd_fast::cpu::downsample_cpu);
  m.impl("downsample_backward", &igd_fast::cpu::downsample_backward_cpu);
}
