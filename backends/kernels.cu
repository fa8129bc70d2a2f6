// Every CUDA kernel of the GPU backends (CuPy and PyCUDA compile this one translation unit).
//
// Compiled twice, with -DREAL=float and with -DREAL=double, so both precisions come from the same
// source. Every __global__ is extern "C" so that CuPy (NVRTC) and PyCUDA (nvcc, no_extern_c=True)
// find the same unmangled names. Only this project's own headers are included, never system ones:
// NVRTC has none. The backends do not rely on an include path: backends/cuda_compile.py expands
// the quoted #includes below into one text before compiling (see its docstring for why).
//
// Layout rules (core/ops.py):
// * matrices are column-major; element (i, j) of a matrix with leading dimension ld is x[i + j*ld];
// * the GEMM honours leading dimensions (ld >= rows): any column-major view works, column slices
//   and flat views (ld == rows) as well as blocks of rows of a wider matrix (ld > rows);
// * the element-wise and reduction kernels treat their operands as rows*cols CONTIGUOUS elements.
//   They may: a column slice of a column-major matrix and a flat_views() view are contiguous. The
//   Python side checks contiguity before launching.
// * indices are 32-bit ints: every matrix must hold fewer than 2^31 elements (checked in Python).
// * no kernel is ever launched with zero blocks; the Python side skips empty work (and still
//   launches the GEMM when K == 0, which then writes beta*C).
//
// Reductions are deterministic (fixed order, no floating-point atomics), so two runs of the same
// step give bit-identical results.
//
// The GEMM kernels come from one table (gemm_kernels.cuh's GEMM_TILE_TABLE, which
// backends/gemm_plan.py reads): each tile's kernels, in the build of its precision only (the FP64
// tensor-core tiles in the double build, the TF32x3 ones in the float build). They all run the one
// mainloop of gemm.cuh (loader, pipeline, finish, epilogues) over a slab multiply: gemm_simt.cuh
// (FMAs), gemm_tc64.cuh (FP64 mma), gemm_tf32x3.cuh (TF32x3 mma), gemm_wgmma.cuh (TF32x3 wgmma,
// sm_90a).
//
// Each kernel has one entry in backends/op_table.py (its parameters, launch geometry, the op it
// serves); tests/test_cuda_compile.py checks that the two agree, build by build.

#include "common.cuh"
#include "gemm.cuh"
#include "gemm_simt.cuh"
#include "gemm_tc64.cuh"
#include "gemm_tf32x3.cuh"
#include "gemm_wgmma.cuh"
#include "gemm_kernels.cuh"
#include "elementwise.cuh"
#include "reductions.cuh"
#include "exact.cuh"
