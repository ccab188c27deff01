// Python module igd_fast._C: the ops register themselves through TORCH_LIBRARY_*;
// this file only gives the module an init function and build facts.
#include <torch/extension.h>

bool igd_fast_has_cuda() {
#ifdef IGD_FAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("has_cuda", &igd_fast_has_cuda, "whether this build holds the CUDA kernels");
  m.def("num_threads", []() { return at::get_num_threads(); });
}
