// The Gaussian window of every C++ kernel (CPU and CUDA host code): normalised 1-D taps,
// the formula of igd_fast.config.gaussian_window (Python's one copy). Built in double with
// the same libm exp and summation order, then cast, so the taps match Python's exactly.
#pragma once
#include <cmath>
#include <vector>

namespace igd_fast {

template <typename A = double>
std::vector<A> gaussian_window(int k, double sigma) {
  const int r = k / 2;
  std::vector<double> g(k);
  double s = 0;
  for (int i = 0; i < k; ++i) {
    g[i] = std::exp(-double((i - r) * (i - r)) / (2.0 * sigma * sigma));
    s += g[i];
  }
  std::vector<A> out(k);
  for (int i = 0; i < k; ++i) out[i] = static_cast<A>(g[i] / s);
  return out;
}

}  // namespace igd_fast
