"""Builds igd_fast._C from csrc/: C++ (CPU) always, CUDA when torch and nvcc allow.

Install with ``pip install --no-build-isolation -e .`` into an environment that already
has torch: an isolated build would fetch a second, multi-GB torch just to compile.

Packages: igd_fast/ and its subpackages, plus the top-level kernels/ (the Triton sources)
installed as igd_fast.kernels (a package-dir mapping; scripts/check_install_layout.sh
checks both the editable and the plain install).

Environment switches:
  IGD_FAST_CUDA=1   force the CUDA part (needs nvcc; no GPU needed to compile)
  IGD_FAST_CUDA=0   never build it
  IGD_FAST_PORTABLE=1  no -march=native (for wheels that travel between CPUs)
  IGD_FAST_EXT=0    no compiled extension at all (pure Python: the torch and triton
                    backends; what scripts/check_install_layout.sh installs, in seconds)
"""

import glob
import os

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    flag = os.environ.get("IGD_FAST_CUDA")
    if flag is not None:
        return flag not in ("0", "")
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _extension():
    cpp = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cu = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    cxx = ["-O3", "-fopenmp", "-std=c++20"]
    if os.environ.get("IGD_FAST_PORTABLE", "0") in ("0", ""):
        cxx += ["-march=native", "-mprefer-vector-width=512"]
    args = {"cxx": cxx}
    include = [os.path.join(ROOT, "csrc")]
    if _want_cuda() and cu:
        import torch

        # torch's CUDA headers want cusparse.h etc. from the pip-installed CUDA libraries.
        for pattern in ("nvidia/cu*/include", "nvidia/*/include"):
            for d in glob.glob(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), pattern)):
                include.append(d)
        args["cxx"].append("-DIGD_FAST_WITH_CUDA")
        args["nvcc"] = ["-O3", "-DIGD_FAST_WITH_CUDA", "--use_fast_math", "-lineinfo", "-std=c++20"]
        return cpp_extension.CUDAExtension(
            "igd_fast._C", cpp + cu, include_dirs=include, extra_compile_args=args,
            extra_link_args=["-fopenmp"],
        )
    return cpp_extension.CppExtension(
        "igd_fast._C", cpp, include_dirs=include, extra_compile_args=args, extra_link_args=["-fopenmp"]
    )


def _packages() -> list[str]:
    return [*find_packages(include=["igd_fast", "igd_fast.*"]), "igd_fast.kernels"]


setup(
    packages=_packages(),
    package_dir={"igd_fast.kernels": "kernels"},
    ext_modules=[] if os.environ.get("IGD_FAST_EXT") == "0" else [_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
