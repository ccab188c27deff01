// Schemas of the SSIM kernels (namespace igd_fast_C). Backends register
// implementations with TORCH_LIBRARY_IMPL(igd_fast_C, CPU|CUDA, m).
// Contract (see ARCHITECTURE.md): per-scale fused SSIM forward/backward, and the
// combination of per-scale maps into the full-resolution MS-SSIM map.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(igd_fast_C, m) {
  m.def(
      "ssim_scale(Tensor x, Tensor y, int win_size, float sigma, float c1, float c2, "
      "bool want_maps) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "ssim_scale_backward(Tensor x, Tensor y, int win_size, float sigma, float c1, float c2, "
      "Tensor g_ssim_mean, Tensor g_cs_mean, Tensor g_ssim_map, Tensor g_cs_map, bool need_gx) "
      "-> (Tensor, Tensor)");
  m.def("combine_maps(Tensor[] maps, float[] weights, int out_h, int out_w, int win_size) -> Tensor");
  // 2×2 average pool between scales (reference.ssim.downsample) and its backward.
  m.def("downsample(Tensor x) -> Tensor");
  m.def("downsample_backward(Tensor grad, int h, int w) -> Tensor");
  // Inference (CPU): every scale, the pooling and (want_map) the combination and the
  // mean over channels in one op -> (ssim means N×C×S, cs means N×C×S, channel-mean
  // map N×1×H×W or empty(0)).
  m.def(
      "ms_ssim_fused(Tensor x, Tensor y, int win_size, float sigma, float c1, float c2, "
      "float[] weights, bool want_map) -> (Tensor, Tensor, Tensor)");
}
