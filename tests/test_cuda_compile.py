"""backends/kernels.cu compiles with nvcc for both precisions, and each build defines exactly its
kernels of backends/op_table.py (cuda_compile.kernel_names: the GEMM tiles of one precision are in
its build only), each with the parameters its entry declares; gemm_plan reads the GEMM kernel
table of gemm_kernels.cuh as its macros expand it.

Needs nvcc, not a GPU (CI has nvcc at /usr/local/cuda/bin): without nvcc the compile tests skip;
the table checks parse the sources and always run.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from backends import cuda_compile, gemm_plan, op_table
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


def _macro_bodies(source: str) -> dict[str, str]:
    """Name -> body (continuation lines joined) of every #define."""
    return {name: body.replace("\\\n", " ") for name, body in
            re.findall(r"#define (\w+)(?:\([^)]*\))?((?:[^\n]*\\\n)*[^\n]*)", source)}


def declared_kernels(source: str, dtype: str) -> dict[str, list[str]]:
    """Kernel name -> C types of its parameters in the build for `dtype`: the plain extern "C"
    kernels, and the GEMM kernels of gemm_kernels.cuh's table (the rows of this build, each with
    its families' GEMM_KERNEL lines: gemm_<tile>_<ops><suffix> with the parameters of the line's
    GEMM<SUFFIX>_ARGS macro, which may name other *_ARGS macros, expanded here)."""
    kernels = {}
    plain = r'^extern "C" __global__ void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)'
    for name, params in re.findall(plain, source, flags=re.MULTILINE):
        kernels[name] = [_c_type(p) for p in params.split(",")]
    bodies = _macro_bodies(source)

    def expand(macro: str) -> list[str]:
        types = []
        for part in bodies[macro].split(","):
            part = part.strip()
            types += expand(part) if part in bodies else [_c_type(part)]
        return types

    rows, families = gemm_plan.read_kernel_table(source)
    for row in rows.values():
        if row.build in ("any", cuda_compile.REAL_CTYPE[dtype]):
            for family in row.families:
                for line in families[family]:
                    kernels[f"gemm_{row.tile}_{line.ops}{line.suffix}"] = expand(line.args)
    return kernels


def test_source_is_kernels_cu_with_its_headers_expanded():
    source = cuda_compile.read_source()
    assert not re.search(r"^\s*#\s*include", source, flags=re.MULTILINE)
    for header in cuda_compile.HEADERS:
        assert f'#line 1 "{header}"' in source
        assert (cuda_compile.SOURCE_DIR / header).is_file()
    included = re.findall(r'#include "([^"]+)"', cuda_compile.KERNELS_CU.read_text())
    assert tuple(included) == cuda_compile.HEADERS


def test_kernel_table_is_read_as_the_preprocessor_expands_it():
    """gemm_plan reads gemm_kernels.cuh's table the way its macros expand it: every row, every
    GEMM_KERNEL line of every family, the flag columns naming the families GEMM_TILE_KERNELS
    adds, each row's tile type defined, each build a -DREAL or any."""
    source = cuda_compile.read_source()
    bodies = _macro_bodies(source)
    rows, families = gemm_plan.read_kernel_table(source)
    assert len(rows) == bodies["GEMM_TILE_TABLE"].count("X(") > 0
    assert set(families) == {"base", "short_k", "split"}
    for family, lines in families.items():
        assert len(lines) == bodies[f"GEMM_{family.upper()}_KERNELS"].count("GEMM_KERNEL(") > 0
        assert all(line.args == f"GEMM{line.suffix.upper()}_ARGS" for line in lines), family
    assert re.search(r"#define GEMM_TILE_KERNELS\(tile, build, bm, bn, threads, short_k, split, "
                     r"dyn_smem\)", source)
    assert "GemmTileDynamicSmem<GemmTile_##tile>::value == dyn_smem" in bodies["GEMM_TILE_KERNELS"]
    expansion = " ".join(bodies["GEMM_TILE_KERNELS"].split())
    assert "GEMM_BASE_KERNELS(tile) GEMM_IF_##short_k(GEMM_SHORT_K_KERNELS(tile))" in expansion
    assert "GEMM_IF_##split(GEMM_SPLIT_KERNELS(tile))" in expansion
    assert "GEMM_TILE_TABLE(GEMM_TILE_KERNELS)" in source
    for row in rows.values():
        assert row.build in {"any", *cuda_compile.REAL_CTYPE.values()}, row
        assert re.search(rf"\bGemmTile_{row.tile};", source), f"no GemmTile_{row.tile}"
    assert rows == gemm_plan.GEMM_TILE_TABLE and families == gemm_plan.GEMM_KERNEL_FAMILIES


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_table_matches_source(dtype):
    """The kernels each build defines are those its backends fetch (cuda_compile.kernel_names:
    the op table's, less the GEMM kernels of the other precision's tiles)."""
    declared = declared_kernels(cuda_compile.read_source(), dtype)
    table = set(cuda_compile.kernel_names(dtype))
    assert set(declared) == table, (
        f"only in the .cu sources: {sorted(set(declared) - table)}; "
        f"only in op_table: {sorted(table - set(declared))}")


def test_every_kernel_is_in_a_build():
    built = {name for dtype in DTYPES for name in cuda_compile.kernel_names(dtype)}
    assert built == set(op_table.KERNEL_NAMES)
    # per-precision tiles: the FP64 tensor-core ones in float64, the TF32x3 ones (mma.sync x*,
    # wgmma w*) in float32 only
    only32 = set(cuda_compile.kernel_names("float32")) - set(cuda_compile.kernel_names("float64"))
    only64 = set(cuda_compile.kernel_names("float64")) - set(cuda_compile.kernel_names("float32"))
    assert only32 and all(re.match(r"gemm_[xw]\d+_", k) for k in only32)
    assert any(k.startswith("gemm_w") for k in only32) and any(k.startswith("gemm_x") for k in only32)
    assert only64 and all(re.match(r"gemm_tc\d+_", k) for k in only64)


@pytest.mark.parametrize("kernel", op_table.KERNEL_NAMES)
def test_kernel_parameters_match_source(kernel):
    """The entry's parameters are the kernel's, in number and kind (pointer of the right type,
    int, real), in the build that has it."""
    dtype = next(d for d in DTYPES if kernel in cuda_compile.kernel_names(d))
    c_types = declared_kernels(cuda_compile.read_source(), dtype)[kernel]
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
    """kernels.cu built in place (nvcc finds the headers next to it), for sm_90 (H100/H200): the
    cubin holds exactly the build's kernels (cuda_compile.kernel_names), each under its extern "C"
    name."""
    nvcc = nvcc_or_skip()
    out = tmp_path / f"kernels_{dtype}.cubin"
    cmd = [nvcc, "-cubin", "-arch=sm_90", *cuda_compile.compile_options(dtype),
           str(cuda_compile.KERNELS_CU), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    compiled = {name.decode() for name in re.findall(rb"\.text\.(\w+)\0", out.read_bytes())}
    built = set(cuda_compile.kernel_names(dtype))
    assert not built - compiled, f"kernels missing from the cubin (mangled?): {built - compiled}"
    # and nothing the build cannot launch: no other kernel (nor any non-inlined function)
    assert not compiled - built, f"compiled, but no launch of this build: {compiled - built}"


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


def test_output_backward_constants_match_source():
    """output_backward's hidden units per block, block size, most chunks and split workspaces are
    #defines in reductions.cuh and constants in op_table.py (geometry, split rule, workspace)."""
    source = cuda_compile.read_source()
    defines = {name: int(value) for name, value in
               re.findall(r"^#define (OB_\w+) (\d+)\s*$", source, flags=re.MULTILINE)}
    assert defines == {"OB_ROWS": op_table.BACKWARD_ROWS,
                       "OB_THREADS": op_table.BACKWARD_THREADS,
                       "OB_MAX_SPLIT": op_table.BACKWARD_MAX_SPLIT,
                       "OB_MAX_TICKETS": op_table.BACKWARD_MAX_TICKETS,
                       "OB_MAX_SLOTS": op_table.BACKWARD_MAX_SLOTS}
    assert op_table.BACKWARD_ROWS == 32  # a warp's lanes, one unit each
    assert op_table.WORKSPACE["backward_tickets"][0] == op_table.BACKWARD_MAX_TICKETS


# ------------------------------------------------------------------ the arch-specific build
def test_hopper_builds_for_sm_90a_and_others_for_the_default():
    """Compute capability 9.0 gets the arch-specific target (wgmma lives there), spelled as NVRTC
    and nvcc take it; every other device the compilers' default (no option)."""
    assert cuda_compile.build_arch((9, 0)) == "sm_90a"
    assert cuda_compile.arch_options("sm_90a") == ("--gpu-architecture=sm_90a",)
    for cc in ((8, 0), (8, 9), (7, 5), (10, 0), (12, 0)):
        assert cuda_compile.build_arch(cc) is None
        assert cuda_compile.arch_options(cuda_compile.build_arch(cc)) == ()


@pytest.mark.skipif(cuda_compile.find_nvcc() is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch, expect_wgmma", [("sm_90a", True), ("sm_90", False),
                                                ("sm_80", False)])
def test_feature_probe_tells_an_sm_90a_build(tmp_path, arch, expect_wgmma):
    """The probe compiled for each target: only sm_90a's PTX stores 1 as the wgmma flag (the
    backends plan the wgmma kernels from what it reads, never from the target they asked for)."""
    src = tmp_path / "probe.cu"
    src.write_text(cuda_compile.FEATURE_PROBE)
    out = tmp_path / "probe.ptx"
    subprocess.run([cuda_compile.find_nvcc(), "-ptx", f"-arch={arch}", str(src), "-o", str(out)],
                   check=True, capture_output=True)
    ptx = out.read_text()
    # out[1] = flag: a constant moved into a register, stored 4 bytes in
    flag = re.search(r"mov\.u32\s+(%r\d+),\s*(\d+);\s*st\.global\.u32\s+\[%rd\d+\+4\],\s*\1;", ptx)
    assert flag and flag.group(2) == ("1" if expect_wgmma else "0"), ptx


def test_gemm_path_names_the_instruction():
    """The start-up line: wgmma only where the build has it and the mode is tf32x3."""
    assert "wgmma" in cuda_compile.gemm_path("float32", (9, 0), True, "tf32x3")
    assert "mma.sync" in cuda_compile.gemm_path("float32", (9, 0), False, "tf32x3")
    assert "FP32 FMA" in cuda_compile.gemm_path("float32", (9, 0), True, "simt")
    assert "FP64 tensor cores" in cuda_compile.gemm_path("float64", (8, 0), False, "simt")
    assert "FP64 FMA" in cuda_compile.gemm_path("float64", (7, 5), False, "simt")
