// c10::BFloat16 instantiation of the SSIM launchers (see ssim_kernel.cuh).
#include "ssim_kernel.cuh"

namespace igd_fast {
namespace ssim_cuda {
IGD_SSIM_DECLARE(c10::BFloat16, )
}  // namespace ssim_cuda
}  // namespace igd_fast
