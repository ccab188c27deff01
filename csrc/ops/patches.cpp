// Schemas of the patch kernels (namespace igd_fast_C). Backends register
// implementations with TORCH_LIBRARY_IMPL(igd_fast_C, CPU|CUDA, m).
// The grid travels as scalars: start(i) = min(i*stride, length - size) (patches_geometry.h).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(igd_fast_C, m) {
  // (N*P)xCxSxS patch maps -> NxCxHxW; mode: "mean" | "sum" | "max".
  m.def(
      "fold_patch_maps(Tensor patch_maps, int height, int width, int size, int stride, str mode) "
      "-> Tensor");
  // NxP patch scores -> (Nx1xHxW max over covering patches, N max score, N first argmax).
  m.def("anomaly_map(Tensor scores, int height, int width, int size, int stride) -> (Tensor, Tensor, Tensor)");
}
