// double instantiation of the SSIM launchers (see ssim_kernel.cuh).
#include "ssim_kernel.cuh"

namespace igd_fast {
namespace ssim_cuda {
IGD_SSIM_DECLARE(double, )
}  // namespace ssim_cuda
}  // namespace igd_fast
