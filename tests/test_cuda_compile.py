"""backends/kernels.cu compiles with nvcc for both precisions, and defines exactly the kernels of
backends/op_table.py, each with the parameters its entry declares.

Needs nvcc, not a GPU (CI has nvcc at /usr/local/cuda/bin): without nvcc the compile tests skip;
the table checks parse the sources and always run.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from backends import cuda_compile, op_table
from backends.op_table import (Array, Counter, IntArg, Labels, LeadingDim, Matrix, RealArg, Size,
                               Workspace)
from gpu_helpers import nvcc_or_skip

DTYPES = ["float32", "float64"]

# a C parameter declaration -> the op-table parameter classes it may be declared as
_C_KINDS = {"int*": (Labels, Counter), "real*": (Array, Matrix, Workspace),
            "int": (Size, LeadingDim, IntArg), "real": (RealArg,)}


def _c_type(declaration: str) -> str:
    """'const real* __restrict__ x' -> 'real*'; 'int n' -> 'int'."""
    words = declaration.replace("*", " * ").split()
    base = next(w for w in words if w in ("int", "real"))
    return base + ("*" if "*" in words else "")


def declared_kernels(source: str) -> dict[str, list[str]]:
    """Kernel name -> C types of its parameters, for the plain extern "C" kernels and the
    DEFINE_GEMM<_VARIANT> expansions: DEFINE_GEMM_<VARIANT>(tile, ops, ...) defines
    gemm_<tile>_<ops>_<variant> with the parameters of the macro GEMM_<VARIANT>_ARGS (which may
    name other *_ARGS macros, expanded here)."""
    kernels = {}
    plain = r'extern "C" __global__ void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)'
    for name, params in re.findall(plain, source):
        if name == "__launch_bounds__":  # DEFINE_GEMM's own body: the macro, not a kernel
            continue
        kernels[name] = [_c_type(p) for p in params.split(",")]
    bodies = {name: body.replace("\\\n", " ") for name, body in
              re.findall(r"#define (GEMM\w*_ARGS)((?:[^\n]*\\\n)*[^\n]*)", source)}

    def expand(macro: str) -> list[str]:
        types = []
        for part in bodies[macro].split(","):
            part = part.strip()
            types += expand(part) if part in bodies else [_c_type(part)]
        return types

    for variant, tile, ops in re.findall(r"^DEFINE_GEMM(\w*)\((\w+), (\w+),", source,
                                         flags=re.MULTILINE):
        kernels[f"gemm_{tile}_{ops}{variant.lower()}"] = expand(f"GEMM{variant}_ARGS")
    return kernels


def test_source_is_kernels_cu_with_its_headers_expanded():
    source = cuda_compile.read_source()
    assert not re.search(r"^\s*#\s*include", source, flags=re.MULTILINE)
    for header in cuda_compile.HEADERS:
        assert f'#line 1 "{header}"' in source
        assert (cuda_compile.SOURCE_DIR / header).is_file()
    included = re.findall(r'#include "([^"]+)"', cuda_compile.KERNELS_CU.read_text())
    assert tuple(included) == cuda_compile.HEADERS


def test_kernel_table_matches_source():
    declared = declared_kernels(cuda_compile.read_source())
    table = set(op_table.KERNEL_NAMES)
    assert set(declared) == table, (
        f"only in the .cu sources: {sorted(set(declared) - table)}; "
        f"only in op_table: {sorted(table - set(declared))}")


@pytest.mark.parametrize("kernel", op_table.KERNEL_NAMES)
def test_kernel_parameters_match_source(kernel):
    """The entry's parameters are the kernel's, in number and kind (pointer of the right type,
    int, real)."""
    c_types = declared_kernels(cuda_compile.read_source())[kernel]
    params = op_table.KERNELS[kernel].parameters
    assert len(params) == len(c_types), (
        f"{kernel}: table {len(params)} params, source {len(c_types)}")
    for pos, (param, c_type) in enumerate(zip(params, c_types)):
        assert isinstance(param, _C_KINDS[c_type]), \
            f"{kernel} parameter {pos}: {param} vs C {c_type}"


def test_signatures_use_known_kinds():
    for name, signature in op_table.KERNEL_SIGNATURES.items():
        assert set(signature) <= {"P", "i", "r"}, name
    assert op_table.pycuda_format("PPir", "float32") == "PPif"
    assert op_table.pycuda_format("PPir", "float64") == "PPid"


@pytest.mark.parametrize("dtype", DTYPES)
def test_nvcc_compiles_object(dtype, tmp_path):
    """What the backends compile (the expanded source, from a directory without the headers, as
    PyCUDA does): the plain `nvcc -c -DREAL=...` build, warnings as errors."""
    nvcc = nvcc_or_skip()
    src = tmp_path / "kernels.cu"
    src.write_text(cuda_compile.read_source())
    out = tmp_path / f"kernels_{dtype}.o"
    cmd = [nvcc, "-c", *cuda_compile.compile_options(dtype), "-Werror", "all-warnings", str(src),
           "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert out.stat().st_size > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_hopper_cubin_exports_unmangled_names(dtype, tmp_path):
    """kernels.cu built in place (nvcc finds the headers next to it), for sm_90 (H100/H200): every
    launched kernel is in the cubin under its extern "C" name."""
    nvcc = nvcc_or_skip()
    out = tmp_path / f"kernels_{dtype}.cubin"
    cmd = [nvcc, "-cubin", "-arch=sm_90", *cuda_compile.compile_options(dtype),
           str(cuda_compile.KERNELS_CU), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    blob = out.read_bytes()
    missing = [name for name in op_table.KERNEL_NAMES if f".text.{name}\0".encode() not in blob]
    assert not missing, f"kernels missing from the cubin (mangled?): {missing}"


def test_source_refuses_build_without_real(tmp_path):
    nvcc = nvcc_or_skip()
    proc = subprocess.run([nvcc, "-c", str(cuda_compile.KERNELS_CU), "-o", str(tmp_path / "k.o")],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "REAL" in proc.stderr


def test_compiler_messages_name_the_header(tmp_path):
    """The #line directives of the expanded source: an error points at the header it is in."""
    nvcc = nvcc_or_skip()
    src = tmp_path / "kernels.cu"
    src.write_text(cuda_compile.read_source())
    proc = subprocess.run([nvcc, "-c", str(src), "-o", str(tmp_path / "k.o")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert "common.cuh" in proc.stderr and "REAL" in proc.stderr


def test_output_layer_constants_match_source():
    """The fused output layer's block size, columns per block, classes and partial-loss slots are
    #defines in reductions.cuh and constants in op_table.py (geometry, shape rule, workspace)."""
    source = cuda_compile.read_source()
    defines = {name: int(value) for name, value in
               re.findall(r"^#define (OL_\w+) (\d+)\s*$", source, flags=re.MULTILINE)}
    assert defines == {"OL_THREADS": op_table.OUTPUT_THREADS,
                       "OL_COLS_FLOAT": op_table.OUTPUT_COLS[4],
                       "OL_COLS_DOUBLE": op_table.OUTPUT_COLS[8],
                       "OL_MAX_CLASSES": op_table.OUTPUT_MAX_CLASSES,
                       "OL_MAX_BLOCKS": op_table.OUTPUT_MAX_BLOCKS}
    assert op_table.WORKSPACE["output_partials"][0] == op_table.OUTPUT_MAX_BLOCKS
    assert op_table.OUTPUT_THREADS % 32 == 0 and op_table.OUTPUT_THREADS <= 1024
