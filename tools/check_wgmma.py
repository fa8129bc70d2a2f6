"""GPU check of the wgmma TF32x3 tile (w128, backends/gemm_wgmma.cuh) on an H100 / H200.

Builds the float32 kernels.cu for sm_90a (the arch-specific target that has wgmma; the backends'
own builds are not, so this tool compiles its own module), then for the model's products

    z1   = W1 x        nn   M = H, N = B,   K = 784
    dW1  = dz1 x^T     nt   M = H, N = 784, K = B
    da1  = W2^T diff   tn   M = H, N = B,   K = 10
    [dW1 db1] = dz1 [x^T 1]   nt with the ones column (gemm_<tile>_nt_bias_grad)
    z1 + bias, sigmoid        nn (gemm_<tile>_nn_bias_sigmoid; its error is of sigmoid(z1 + b))

at H in (256, 1024, 4096), B in (800, 3200), and a few odd shapes for every transpose pair
(edges, leading dimensions larger than the rows), compares against a float64 NumPy product
(max |C - C64| / max |C64|): the new kernel (w128), the mma.sync TF32x3 twin (x128), the SIMT
FP32 tile (t128) and cupy.matmul in float32 (cuBLAS, TF32 off), and times them (CUDA events,
median of 20 after 3 warm-ups). Runs w128 twice on NaN-filled outputs and checks the two are
bitwise identical. Prints one table; with $OUT set, writes $OUT/check_wgmma.json.

Exit status 1 where a w128 error exceeds 2x the SIMT kernel's (flag x3-too: x128 exceeds it as
well; for the edge rows the bound is 2x the larger of the SIMT and x128 errors), where reruns
differ, or where a shape failed; 0 otherwise.

    python tools/check_wgmma.py            # every shape
    python tools/check_wgmma.py --quick    # one shape of each product (H = 1024, B = 800)
    python tools/check_wgmma.py --tiles w128,w64,w64/5,w128/2   # and their split-K kernels
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("CUPY_TF32", "0")  # cupy.matmul in FP32 (cuBLAS without TF32)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from backends import cuda_compile, gemm_plan  # noqa: E402
from core.bench import gpu_seconds  # noqa: E402
from core.model import INPUTS  # noqa: E402

ARCH = "sm_90a"
BASE_TILES = ("x128", "t128")  # the wgmma tiles' mma.sync twin and the SIMT tile
PROBE = r"""
extern "C" __global__ void wgmma_probe(int* out)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    out[0] = __CUDA_ARCH__;
#else
    out[0] = -1;
#endif
}
"""


def log(*args):
    print(*args, flush=True)


# ------------------------------------------------------------------------------------ building
def _nvrtc_cubin(source: str, options: tuple[str, ...]) -> bytes:
    try:
        from cupy_backends.cuda.libs import nvrtc
    except ImportError:  # older CuPy
        from cupy.cuda import nvrtc
    prog = nvrtc.createProgram(source, "kernels.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(prog, options)
        except Exception as exc:
            raise RuntimeError(f"NVRTC failed ({exc}):\n{nvrtc.getProgramLog(prog)}") from exc
        return nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)


def _nvcc_cubin(source: str, options: tuple[str, ...]) -> bytes:
    nvcc = cuda_compile.find_nvcc()
    if nvcc is None:
        raise RuntimeError("no nvcc")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "k.cu", Path(tmp) / "k.cubin"
        src.write_text(source)
        cmd = [nvcc, "-cubin", f"-arch={ARCH}", *options, str(src), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)}\n{proc.stderr}")
        return out.read_bytes()


def build(cupy, source: str):
    """(module loader, how): a cubin of `source` for sm_90a, by NVRTC directly, else nvcc, else
    cupy.RawModule with an -arch option; the probe kernel proves the target has wgmma."""
    base = cuda_compile.compile_options(np.float32)
    tries = [
        ("nvrtc --gpu-architecture=sm_90a",
         lambda src: _nvrtc_cubin(src, base + (f"--gpu-architecture={ARCH}",))),
        ("nvcc -arch=sm_90a", lambda src: _nvcc_cubin(src, base)),
    ]
    errors = []
    for how, compile_ in tries:
        try:
            t0 = time.perf_counter()
            out = cupy.zeros(1, dtype=np.int32)  # (the context exists before a module loads)
            probe = cupy.cuda.function.Module()
            probe.load(compile_(PROBE))
            probe.get_function("wgmma_probe")((1,), (1,), (out,))
            arch = int(cupy.asnumpy(out)[0])
            if arch < 0:
                raise RuntimeError("the probe says the build has no sm_90a features")
            module = cupy.cuda.function.Module()
            module.load(compile_(source))
            log(f"built kernels.cu (float32) by {how} in {time.perf_counter() - t0:.1f} s; "
                f"probe __CUDA_ARCH__ = {arch} with __CUDA_ARCH_FEAT_SM90_ALL")
            return module, how
        except Exception as exc:  # try the next way
            errors.append(f"{how}: {exc}")
            log(f"build by {how} failed: {str(exc)[:6000]}")
    # last resort: RawModule, whose own -arch may or may not be overridden by ours
    try:
        opts = base + (f"--gpu-architecture={ARCH}",)
        probe = cupy.RawModule(code=PROBE, options=opts)
        out = cupy.zeros(1, dtype=np.int32)
        probe.get_function("wgmma_probe")((1,), (1,), (out,))
        if int(cupy.asnumpy(out)[0]) < 0:
            raise RuntimeError("RawModule's build has no sm_90a features")
        module = cupy.RawModule(code=source, options=opts)
        return module, "cupy.RawModule " + " ".join(opts)
    except Exception as exc:
        errors.append(f"RawModule: {exc}")
    raise RuntimeError("no sm_90a build:\n" + "\n".join(errors))


# ------------------------------------------------------------------------------------ products
def products(quick: bool):
    """(label, kind, ta, tb, m, n, k, lda_pad, ldb_pad): kind "gemm", "bias_grad", "bias_sigmoid"."""
    hs, bs = ((1024,), (800,)) if quick else ((256, 1024, 4096), (800, 3200))
    out = []
    for h in hs:
        for b in bs:
            out.append((f"z1 H={h} B={b}", "gemm", False, False, h, b, INPUTS, 0, 0))
            out.append((f"dW1 H={h} B={b}", "gemm", False, True, h, INPUTS, b, 0, 0))
            out.append((f"da1 H={h} B={b}", "gemm", True, False, h, b, 10, 0, 0))
            if not quick and h != 1024:
                continue
            out.append((f"[dW1 db1] H={h} B={b}", "bias_grad", False, True, h, INPUTS + 1, b, 0, 0))
            out.append((f"sig(z1+b) H={h} B={b}", "bias_sigmoid", False, False, h, b, INPUTS, 0, 0))
    # edges: sizes off every tile multiple, padded leading dimensions, every transpose pair
    for ta in (False, True):
        for tb in (False, True):
            out.append((f"edge {'t' if ta else 'n'}{'t' if tb else 'n'} 201x150x37",
                        "gemm", ta, tb, 201, 150, 37, 3, 5))
    out.append(("edge nn 1x1x1", "gemm", False, False, 1, 1, 1, 0, 0))
    out.append(("edge nt 130x129x1000 ones", "bias_grad", False, True, 130, 129, 1000, 2, 1))
    return out


def kernel_name(tile: str, kind: str, ta: bool, tb: bool) -> str:
    name = gemm_plan.gemm_kernel_name(tile, ta, tb)
    return name + {"gemm": "", "bias_grad": "_bias_grad", "bias_sigmoid": "_bias_sigmoid"}[kind]


class Case:
    """One product's operands on the host (float32, column-major, padded leading dimensions) and
    the device, and its float64 reference."""

    def __init__(self, cupy, kind, ta, tb, m, n, k, lda_pad, ldb_pad, rng):
        self.cp, self.kind, self.ta, self.tb, self.m, self.n, self.k = cupy, kind, ta, tb, m, n, k
        nb = n - 1 if kind == "bias_grad" else n  # op(B)'s own columns (the ones column is virtual)
        a_rows, a_cols = (k, m) if ta else (m, k)
        b_rows, b_cols = (nb, k) if tb else (k, nb)
        self.lda, self.ldb = a_rows + lda_pad, b_rows + ldb_pad
        # model-like data: activations in [0, 1), signed weights and gradients
        a_full = rng.standard_normal((self.lda, a_cols)).astype(np.float32)
        b_full = rng.random((self.ldb, b_cols)).astype(np.float32)
        self.a_host = np.asfortranarray(a_full)
        self.b_host = np.asfortranarray(b_full)
        a = self.a_host[:a_rows].astype(np.float64)
        b = self.b_host[:b_rows].astype(np.float64)
        op_a = a.T if ta else a
        op_b = b.T if tb else b
        if kind == "bias_grad":
            op_b = np.concatenate([op_b, np.ones((k, 1))], axis=1)
        ref = op_a @ op_b
        self.bias_host = None
        if kind == "bias_sigmoid":
            self.bias_host = rng.standard_normal(m).astype(np.float32)
            ref = 1.0 / (1.0 + np.exp(-(ref + self.bias_host.astype(np.float64)[:, None])))
        self.ref = ref
        self.scale = float(np.max(np.abs(ref))) if ref.size else 1.0
        self.a = cupy.asfortranarray(cupy.asarray(self.a_host))
        self.b = cupy.asfortranarray(cupy.asarray(self.b_host))
        self.bias = None if self.bias_host is None else cupy.asarray(self.bias_host)
        self.flops = 2.0 * m * n * k

    def new_c(self):
        c = self.cp.empty((self.m, self.n), dtype=np.float32, order="F")
        c.fill(np.nan)  # beta = 0 and the fused epilogues never read C
        return c

    def args(self, c):
        i32 = np.int32
        core = (self.a, self.b, c, i32(self.m), i32(self.n), i32(self.k), i32(self.lda),
                i32(self.ldb), i32(self.m))
        if self.kind == "gemm":
            return core + (np.float32(1.0), np.float32(0.0))
        if self.kind == "bias_sigmoid":
            return core + (self.bias,)
        return core

    def error(self, c_host) -> float:
        if not np.all(np.isfinite(c_host)):
            return math.inf
        return float(np.max(np.abs(c_host.astype(np.float64) - self.ref))) / max(self.scale, 1e-300)

    def cublas(self):
        """cupy.matmul in float32 of the same op(A) op(B) (and the epilogue), or None."""
        cp = self.cp
        a = self.a[: (self.k if self.ta else self.m)]
        b = self.b[: ((self.n - 1 if self.kind == "bias_grad" else self.n) if self.tb else self.k)]
        op_a = a.T if self.ta else a
        op_b = b.T if self.tb else b
        if self.kind == "bias_grad":
            # the bias column as cuBLAS would get it: op(B) with a ones column appended
            op_b = cp.concatenate([op_b, cp.ones((self.k, 1), dtype=np.float32)], axis=1)
        c = cp.matmul(op_a, op_b)
        if self.kind == "bias_sigmoid":
            c = 1.0 / (1.0 + cp.exp(-(c + self.bias[:, None])))
        return c


def diagnose(got, ref) -> dict:
    """Where a result is wrong: how many elements, which rows mod 128 and columns mod 128 (the
    tile), mod 16 and mod 8 (the warp's rows, the n8 blocks), a few samples."""
    bad = ~np.isclose(got.astype(np.float64), ref, rtol=1e-3, atol=1e-3 * max(np.max(np.abs(ref)), 1e-30))
    rows, cols = np.nonzero(bad)
    out = {"bad": int(bad.sum()), "of": int(bad.size), "nan": int(np.isnan(got).sum())}
    for name, idx in (("rows", rows), ("cols", cols)):
        for mod in (128, 16, 8):
            vals, counts = np.unique(idx % mod, return_counts=True)
            out[f"{name} mod {mod}"] = dict(zip(map(int, vals[:32]), map(int, counts[:32])))
    out["samples (row, col, got, ref)"] = [(int(r), int(c), float(got[r, c]), float(ref[r, c]))
                                           for r, c in list(zip(rows, cols))[:8]]
    return out


def time_it(cupy, fn, reps=20) -> float:
    """Median of `reps` CUDA-event timings of one fn() (core.bench.gpu_seconds), microseconds."""
    return 1e6 * gpu_seconds(fn, cupy.cuda.get_current_stream().ptr, repeats=reps, calls=1)


#: tile -> (BM, BN, threads, dynamic shared bytes) of the variant tiles named on the command line
#: (--tiles NAME:BMxBNxTHREADS[xDYN_SMEM])
GEOMETRY: dict[str, tuple[int, int, int]] = {}


def _table_geometry(tile):
    t = gemm_plan.GEMM_TILE_TABLE[tile]
    return t.bm, t.bn, t.threads, t.dyn_smem


def tile_split(tile: str) -> tuple[str, int]:
    """(tile, S) of a --tiles entry: NAME, or NAME/S for its split-K kernel S blocks a tile."""
    name, _, split = tile.partition("/")
    return name, int(split or 1)


def _with_workspaces(fn, workspaces, grid, block, args, **kw):
    return fn(grid, block, tuple(args) + workspaces, **kw)


def check_case(cupy, module, spec, rng, wtiles):
    label, kind, ta, tb, m, n, k, lda_pad, ldb_pad = spec
    case = Case(cupy, kind, ta, tb, m, n, k, lda_pad, ldb_pad, rng)
    row = {"label": label, "kind": kind, "ops": f"{'t' if ta else 'n'}{'t' if tb else 'n'}",
           "m": m, "n": n, "k": k, "lda": case.lda, "ldb": case.ldb, "kernels": {}}
    results = {}
    for tile in (*wtiles, *BASE_TILES):
        base, split = tile_split(tile)
        name = kernel_name(base, kind, ta, tb) + ("_split" if split > 1 else "")
        try:
            fn = module.get_function(name)
        except Exception:  # (a split tile on a pair without a split kernel: tn, tt)
            if split == 1:
                raise
            row["kernels"][tile] = {"kernel": name, "skipped": True}
            continue
        bm, bn, threads, dyn = GEOMETRY.get(base) or _table_geometry(base if base in gemm_plan.GEMM_TILE_TABLE else "w128")
        grid, block = (math.ceil(m / bm), math.ceil(n / bn), split), (threads, 1, 1)
        if split > 1:  # the split kernels' workspaces: partial tiles, a zeroed ticket per tile
            tiles = grid[0] * grid[1]
            ws = cupy.empty(split * tiles * bm * bn, dtype=np.float32)
            tickets = cupy.zeros(tiles, dtype=np.int32)
            fn = functools.partial(_with_workspaces, fn, (ws, tickets))
        if dyn:
            drv = cupy.cuda.driver
            drv.funcSetAttribute(fn.ptr, getattr(
                drv, "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES", 8), dyn)
            fn = functools.partial(fn, shared_mem=dyn)
        c = case.new_c()
        fn(grid, block, case.args(c))
        cupy.cuda.Device().synchronize()
        c_host = results[tile] = cupy.asnumpy(c)
        entry = {"kernel": name, "error": case.error(c_host)}
        if tile in wtiles:
            if entry["error"] > 1e-3:  # grossly wrong: where, to tell a layout mistake
                entry["diagnosis"] = diagnose(c_host, case.ref)
                log(f"  {tile} wrong in {label}: {entry['diagnosis']}")
            c2 = case.new_c()
            fn(grid, block, case.args(c2))
            cupy.cuda.Device().synchronize()
            entry["rerun_identical"] = bool(np.array_equal(c_host.view(np.uint32),
                                                           cupy.asnumpy(c2).view(np.uint32)))
        entry["us"] = time_it(cupy, lambda: fn(grid, block, case.args(c)))
        row["kernels"][tile] = entry
    try:
        c = case.cublas()
        entry = {"kernel": "cupy.matmul fp32", "error": case.error(cupy.asnumpy(c)),
                 "us": time_it(cupy, case.cublas)}
    except Exception as exc:
        entry = {"kernel": "cupy.matmul fp32", "error": None, "us": None, "failed": repr(exc)}
    row["kernels"]["cublas"] = entry
    row["flops"] = case.flops
    simt, x3 = (row["kernels"][t]["error"] for t in ("t128", "x128"))
    # the model's products: each wgmma tile within 2x the SIMT kernel's error; the edge cases
    # (which check the loads, transposes and zero fill, at sizes where TF32x3's dropped a_small
    # b_small term can outweigh FP32's rounding) within 2x the larger of the SIMT and x128 errors
    bound = 2 * (max(simt, x3) if label.startswith("edge") else simt)
    row["x128_also_over"] = bool(x3 > 2 * simt)
    wtiles = [t for t in wtiles if not row["kernels"][t].get("skipped")]
    for tile in wtiles:
        entry = row["kernels"][tile]
        w = entry["error"]
        entry["over_simt"] = w / simt if simt else (0.0 if w == 0 else math.inf)
        entry["accuracy_ok"] = bool(w <= bound)
        entry["bitwise_equal_x128"] = bool(np.array_equal(results[tile].view(np.uint32),
                                                          results["x128"].view(np.uint32)))
    row["accuracy_ok"] = all(row["kernels"][t]["accuracy_ok"] for t in wtiles)
    row["deterministic"] = all(row["kernels"][t]["rerun_identical"] for t in wtiles)
    return row


def fmt_row(row, wtiles) -> str:
    k = row["kernels"]

    def e(t):
        v = k[t].get("error")
        return "   fail  " if v is None else f"{v:9.2e}"

    def us(t):
        v = k[t].get("us")
        return "    -   " if v is None else f"{v:8.1f}"

    parts = [f"{row['label']:<26} {row['ops']}"]
    for t in wtiles:
        if k[t].get("skipped"):
            parts.append(f"{t}: (no split kernel)")
            continue
        flags = ("" if k[t]["accuracy_ok"] else " BAD") + ("" if k[t]["rerun_identical"] else " NONDET")
        flags += " =x3" if k[t]["bitwise_equal_x128"] else ""
        parts.append(f"{t}: {e(t)} {k[t]['over_simt']:5.2f}x {us(t)}us{flags}")
    parts.append(f"x128 {e('x128')} {us('x128')} | t128 {e('t128')} {us('t128')} | "
                 f"cuBLAS {e('cublas')} {us('cublas')}")
    return " | ".join(parts)


HEADER = ("product ops | per wgmma tile: error, error / SIMT error, time | x128 (mma.sync TF32x3) | "
          "t128 (SIMT FP32) | cuBLAS SGEMM")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one shape of each product")
    parser.add_argument("--tiles", default="w128",
                        help="comma-separated wgmma tiles to check (default w128); NAME/S: "
                             "its split-K kernels, S blocks a tile over K; a tile not in the "
                             "table comes from --extra, named NAME:BMxBNxTHREADS")
    parser.add_argument("--extra", type=Path,
                        help="CUDA source appended to kernels.cu (variant tiles: typedefs and "
                             "GEMM_TILE_KERNELS rows)")
    args = parser.parse_args(argv)

    wtiles = []
    for item in filter(None, args.tiles.split(",")):
        name, _, geometry = item.partition(":")
        if geometry:
            values = [int(v) for v in geometry.split("x")]
            GEOMETRY[name] = tuple(values + [0] * (4 - len(values)))
        wtiles.append(name)
    wtiles = tuple(wtiles)
    import cupy

    dev = cupy.cuda.Device()
    dev.use()
    cupy.zeros(1, dtype=np.float32)  # the context
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    log(f"device {dev.id}: {name}, compute capability {dev.compute_capability}, "
        f"{props['multiProcessorCount']} SMs; cupy {cupy.__version__}, numpy {np.__version__}, "
        f"CUPY_TF32={os.environ.get('CUPY_TF32')}")
    result = {"device": name, "cc": dev.compute_capability, "cupy": cupy.__version__,
              "rows": [], "failures": []}
    status = 0
    if dev.compute_capability != "90":
        log("not a compute capability 9.0 GPU: wgmma.mma_async (sm_90a) does not run here")
        result["failures"].append("not sm_90")
        status = 1
    else:
        try:
            source = cuda_compile.read_source() + (args.extra.read_text() if args.extra else "")
            module, how = build(cupy, source)
            result["build"] = how
        except Exception:
            log(traceback.format_exc())
            result["failures"].append("build: " + traceback.format_exc())
            module = None
            status = 1
        if module is not None:
            rng = np.random.default_rng(20261207)
            log("errors: max |C - C64| / max |C64|; times: median of 20, microseconds; "
                "TF/s w: the w128 kernel's 2MNK / time")
            log(HEADER)
            for spec in products(args.quick):
                try:
                    row = check_case(cupy, module, spec, rng, wtiles)
                except Exception:
                    tb = traceback.format_exc()
                    log(f"{spec[0]:<26} FAILED\n{tb}")
                    result["failures"].append(f"{spec[0]}: {tb}")
                    status = 1
                    try:  # a trap or fault leaves the context unusable: stop there
                        cupy.cuda.Device().synchronize()
                    except Exception:
                        log("the CUDA context is broken (a trap or a fault): stopping")
                        break
                    continue
                result["rows"].append(row)
                log(fmt_row(row, wtiles))
                if not (row["accuracy_ok"] and row["deterministic"]):
                    status = 1
    bad = [r["label"] for r in result["rows"] if not r["accuracy_ok"]]
    nondet = [r["label"] for r in result["rows"] if not r["deterministic"]]
    log(f"\nrows {len(result['rows'])}, accuracy over 2x SIMT: {bad or 'none'}, "
        f"reruns differing: {nondet or 'none'}, failures: {len(result['failures'])}")
    result["status"] = status
    out = os.environ.get("OUT")
    if out:
        path = Path(out) / "check_wgmma.json"
        path.write_text(json.dumps(result, indent=1, default=str))
        log(f"wrote {path}")
    log("PASS" if status == 0 else "FAIL")
    return status


if __name__ == "__main__":
    sys.exit(main())
