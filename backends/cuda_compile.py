"""The CUDA source of the GPU backends and how it is compiled: backends/kernels.cu with its headers
expanded into one text, the compiler options per dtype, and where nvcc is.

Pure Python (NumPy at most): importing this module never touches a GPU library.

Why the headers are expanded here instead of passing an include path (``-I``) to the compilers:
both backends cache compiled modules under a key made of the source TEXT and the options (CuPy's
kernel cache, for NVRTC; PyCUDA's, for nvcc). With ``-I`` a change to a header alone would leave
kernels.cu's text, and so the key, unchanged and load a stale binary; with the headers expanded,
any change to any of them is a new text. The expanded text also needs no file system at compile
time, which matters to PyCUDA, whose SourceModule runs nvcc in a temporary directory. ``#line``
directives keep the compilers' messages pointing at the header and line they come from.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from pathlib import Path

import numpy as np

SOURCE_DIR = Path(__file__).parent
KERNELS_CU = SOURCE_DIR / "kernels.cu"
#: the headers kernels.cu is made of, in the order it includes them
HEADERS = ("common.cuh", "gemm.cuh", "gemm_simt.cuh", "gemm_tc64.cuh", "gemm_tf32x3.cuh",
           "gemm_wgmma.cuh", "gemm_kernels.cuh", "elementwise.cuh", "reductions.cuh", "exact.cuh")

#: C type that -DREAL names for each supported dtype
REAL_CTYPE = {"float32": "float", "float64": "double"}

# a quoted #include of one of this project's headers, alone on its line
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)


def _expand(path: Path, seen: set[str]) -> str:
    """The text of `path` with each quoted #include replaced by that header's expanded text (each
    header once: the headers carry include guards too, for a direct nvcc build)."""
    text = path.read_text(encoding="utf-8")
    pieces, pos = [], 0
    for match in _INCLUDE.finditer(text):
        name = match.group(1)
        header = path.parent / name
        if not header.is_file():
            raise FileNotFoundError(f"{path.name} includes {name!r}, which is not in {path.parent}")
        pieces.append(text[pos:match.start()])
        if name not in seen:
            seen.add(name)
            resume = text.count("\n", 0, match.end()) + 2  # the line after the #include
            pieces.append(f'#line 1 "{name}"\n{_expand(header, seen)}\n'
                          f'#line {resume} "{path.name}"')
        pos = match.end()
    pieces.append(text[pos:])
    return "".join(pieces)


@functools.lru_cache(maxsize=1)
def read_source() -> str:
    """kernels.cu with its headers expanded: the one text both backends compile (read once)."""
    return _expand(KERNELS_CU, set())


def real_ctype(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in REAL_CTYPE:
        raise ValueError(f"kernels.cu is built for float32 or float64, not {name}")
    return REAL_CTYPE[name]


def compile_options(dtype) -> tuple[str, ...]:
    """Compiler options of kernels.cu, the same for NVRTC and nvcc: the precision, and
    -ftz=true (single-precision subnormal results flushed to zero), which CuPy always passes to
    NVRTC and which cannot be turned off there (cupy/cupy#9576); nvcc gets it too, so that both
    builds compute the same bits."""
    return (f"-DREAL={real_ctype(dtype)}", "-ftz=true")


#: compute capability -> the arch-specific target both backends build kernels.cu for on a device
#: of it, because kernels.cu uses that target's own features there (gemm_wgmma.cuh: wgmma.mma_async
#: exists in sm_90a builds only, not in sm_90 ones). Any other device gets the compilers' own
#: choice for it (CuPy: sm_<cc> by NVRTC; PyCUDA: nvcc's -arch for the current device).
ARCH_SPECIFIC: dict[tuple[int, int], str] = {(9, 0): "sm_90a"}


def build_arch(capability) -> str | None:
    """The arch-specific target of the build for a device of `capability`, or None (default)."""
    return ARCH_SPECIFIC.get(tuple(capability)) if capability else None


def arch_options(arch: str | None) -> tuple[str, ...]:
    """NVRTC's option for target `arch` (nvcc takes the same spelling as -arch=...)."""
    return (f"--gpu-architecture={arch}",) if arch else ()


#: A one-kernel module compiled with the same options as kernels.cu: what the build it stands for
#: has, read at start-up, so a backend plans the wgmma kernels only where they run (however the
#: compiler combined its target options with ours). out[0]: __CUDA_ARCH__; out[1]: 1 where the
#: build has wgmma (gemm_wgmma.cuh's DPMLP_HAS_WGMMA condition).
FEATURE_PROBE = r"""
extern "C" __global__ void build_features(int* out)
{
#if defined(__CUDA_ARCH__)
    out[0] = __CUDA_ARCH__;
#if __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    out[1] = 1;
#else
    out[1] = 0;
#endif
#endif
}
"""


def gemm_path(dtype, capability, wgmma: bool, mode: str) -> str:
    """The one line a GPU backend says at start-up about its GEMM kernels: which instruction the
    build for this device multiplies with, in the run's --gemm mode."""
    cc = ".".join(map(str, capability))
    if mode == "tf32x3":
        if wgmma:
            return f"GEMM: TF32x3 on wgmma.mma_async (sm_90a build, compute capability {cc})"
        return f"GEMM: TF32x3 on mma.sync (compute capability {cc})"
    if np.dtype(dtype) == np.float64 and tuple(capability) >= (8, 0):
        return f"GEMM: FP64 tensor cores, mma.sync (compute capability {cc})"
    name = "FP64" if np.dtype(dtype) == np.float64 else "FP32"
    return f"GEMM: {name} FMA, SIMT (compute capability {cc})"


def kernel_names(dtype) -> tuple[str, ...]:
    """The kernels of the op table that the build for `dtype` defines, in the table's order: all
    but the GEMM kernels of the other precision's tiles (gemm_plan.gemm_kernels_for). The
    backends fetch exactly these from the compiled module."""
    from backends import gemm_plan, op_table  # (they import this module)

    elsewhere = set(gemm_plan.GEMM_KERNEL_BUILD) - set(
        gemm_plan.gemm_kernels_for(np.dtype(dtype).name))
    return tuple(name for name in op_table.KERNEL_NAMES if name not in elsewhere)


def find_nvcc() -> str | None:
    """Path of nvcc: $PATH first, then $CUDA_HOME/bin, then /usr/local/cuda/bin; None if absent."""
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidate = Path(home) / "bin" / "nvcc"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return None
