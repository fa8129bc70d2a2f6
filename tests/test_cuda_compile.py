"""backends/kernels.cu compiles with nvcc for both precisions and defines exactly the kernels that
backends/cuda_source.py launches.

Needs nvcc, not a GPU (CI has nvcc at /usr/local/cuda/bin): without nvcc the compile tests skip.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from backends import cuda_source as cs

DTYPES = ["float32", "float64"]


def _nvcc() -> str:
    nvcc = cs.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin")
    return nvcc


def _declared_kernels(source: str) -> set[str]:
    """Kernel names kernels.cu declares: plain extern "C" kernels and DEFINE_GEMM expansions."""
    plain = re.findall(r'extern "C" __global__ void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(',
                       source)
    gemm = re.findall(r"^DEFINE_GEMM\((\w+), (\w+),", source, flags=re.MULTILINE)
    # the DEFINE_GEMM macro body itself matches the first pattern with its attribute as the "name"
    plain = {name for name in plain if name != "__launch_bounds__"}
    return plain | {f"gemm_{tile}_{ops}" for tile, ops in gemm}


def test_kernel_table_matches_source():
    declared = _declared_kernels(cs.read_source())
    assert declared == set(cs.KERNEL_NAMES), (
        f"only in kernels.cu: {sorted(declared - set(cs.KERNEL_NAMES))}; "
        f"only in cuda_source: {sorted(set(cs.KERNEL_NAMES) - declared)}")


def test_signatures_use_known_kinds():
    for name, signature in cs.KERNEL_SIGNATURES.items():
        assert set(signature) <= {"P", "i", "r"}, name
    assert cs.pycuda_format("PPir", "float32") == "PPif"
    assert cs.pycuda_format("PPir", "float64") == "PPid"


@pytest.mark.parametrize("dtype", DTYPES)
def test_nvcc_compiles_object(dtype, tmp_path):
    """The plain `nvcc -c -DREAL=...` build, warnings as errors (default target architecture)."""
    nvcc = _nvcc()
    out = tmp_path / f"kernels_{dtype}.o"
    cmd = [nvcc, "-c", *cs.compile_options(dtype), "-Werror", "all-warnings", str(cs.KERNELS_CU),
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert out.stat().st_size > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_hopper_cubin_exports_unmangled_names(dtype, tmp_path):
    """For sm_90 (H100/H200), every launched kernel is in the cubin under its extern "C" name."""
    nvcc = _nvcc()
    out = tmp_path / f"kernels_{dtype}.cubin"
    cmd = [nvcc, "-cubin", "-arch=sm_90", *cs.compile_options(dtype), str(cs.KERNELS_CU),
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    blob = out.read_bytes()
    missing = [name for name in cs.KERNEL_NAMES if f".text.{name}\0".encode() not in blob]
    assert not missing, f"kernels missing from the cubin (mangled?): {missing}"


def test_source_refuses_build_without_real(tmp_path):
    nvcc = _nvcc()
    proc = subprocess.run([nvcc, "-c", str(cs.KERNELS_CU), "-o", str(tmp_path / "k.o")],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "REAL" in proc.stderr
