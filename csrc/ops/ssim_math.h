// SSIM from the filtered moments of one pixel, and its gradient: the one copy of the
// formula in C++, used by the CPU (ops/cpu/) and CUDA (ops/cuda/) kernels. Python's copies
// are reference/ssim.py (the contract) and kernels/ssim.py (Triton).
//
// Four moments per pixel: mx = E[x], my = E[y], edd = E[(x - y)²], exy = E[xy]. The
// reference's variance sum sxx + syy equals (E[d²] - (mx - my)²) + 2 sxy: one moment
// fewer than (x, y, x², y², xy), and it cancels exactly where the reference does
// (1×1 window, x == y).
//
// Holds: ssim_terms (luminance and contrast-structure fractions), ssim_and_cs (both
// values, one division), ssim_moment_grads (map gradients -> gradients w.r.t. mu_x,
// mu_y, E[x²] + E[y²] and E[xy]).
#pragma once

#if defined(__CUDACC__)
#define IGD_SSIM_FN __host__ __device__ __forceinline__
#else
// Host code compiles without FMA contraction (callers too, IGD_NO_CONTRACT) so the
// cancellations above stay exact.
#define IGD_SSIM_FN inline __attribute__((optimize("fp-contract=off")))
#endif

namespace igd_fast {

// Outputs through references to named scalars, no structs: inside the CPU's simd loops an
// aggregate temporary became a per-lane stack array and the loop fell back to scalar code.

// lum = a1 / b1, cs = a2 / b2, SSIM = lum * cs.
template <typename A>
IGD_SSIM_FN void ssim_terms(A mx, A my, A edd, A exy, A c1, A c2, A& a1, A& b1, A& a2, A& b2) {
  const A md = mx - my;
  const A sxy = exy - mx * my;
  a1 = A(2) * mx * my + c1;
  b1 = mx * mx + my * my + c1;
  a2 = A(2) * sxy + c2;
  b2 = (edd - md * md) + a2;
}

// SSIM and cs of one pixel; one division instead of two (divisions bound the small-window
// loops).
template <typename A>
IGD_SSIM_FN void ssim_and_cs(A mx, A my, A edd, A exy, A c1, A c2, A& s, A& cs) {
  A a1, b1, a2, b2;
  ssim_terms(mx, my, edd, exy, c1, c2, a1, b1, a2, b2);
  const A inv = A(1) / (b1 * b2);
  cs = a2 * b1 * inv;
  s = a1 * a2 * inv;
}

// Gradients w.r.t. the moments (reference ssim_scale_backward) from the per-pixel
// gradients gs of the SSIM map and gc of the cs map: g_var = d/d(E[x²] + E[y²]),
// g_cov = d/dE[xy], g_mu_y, and g_mu_x (GX only; untouched otherwise).
template <bool GX, typename A>
IGD_SSIM_FN void ssim_moment_grads(A mx, A my, A edd, A exy, A c1, A c2, A gs, A gc, A& g_var,
                                   A& g_cov, A& g_mu_y, A& g_mu_x) {
  A a1, b1, a2, b2;
  ssim_terms(mx, my, edd, exy, c1, c2, a1, b1, a2, b2);
  const A ib1 = A(1) / b1, ib2 = A(1) / b2;
  const A lum = a1 * ib1, cs = a2 * ib2;
  const A g_lum = gs * cs;
  const A g_cs = gs * lum + gc;
  g_var = -g_cs * cs * ib2;
  g_cov = A(2) * g_cs * ib2;
  g_mu_y = A(2) * g_lum * (mx - lum * my) * ib1 - A(2) * g_var * my - g_cov * mx;
  if constexpr (GX) g_mu_x = A(2) * g_lum * (my - lum * mx) * ib1 - A(2) * g_var * mx - g_cov * my;
}

}  // namespace igd_fast
