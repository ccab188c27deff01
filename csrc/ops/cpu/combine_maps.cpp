// CPU kernel of combine_maps (per-scale maps -> per-pixel MS-SSIM), registered for
// igd_fast_C on the CPU. The combination itself is combine.h (shared with the fused map).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "ops/cpu/combine.h"
#include "ops/cpu/common.h"

namespace igd_fast {
namespace cpu {
namespace {

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

}  // namespace
}  // namespace cpu
}  // namespace igd_fast

TORCH_LIBRARY_IMPL(igd_fast_C, CPU, m) {
  m.impl("combine_maps", &igd_fast::cpu::combine_maps_cpu);
}
