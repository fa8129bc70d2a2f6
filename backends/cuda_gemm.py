"""The GEMM, the fused GEMMs and the --gemm mode of the GPU backends (CudaBackend inherits them
from ``CudaGemms``).

Their launches are planned by backends/gemm_plan.py (kernel, grid, block, sizes: per shape, tile
forcing, split-K, --gemm mode and device) once per operand layout and cached, so a training step
only looks them up. A plan's launcher takes the operands and scalars; the sizes (m, n, k and the
leading dimensions) and, for a split kernel, the split-K workspaces are fixed in it, by name.

Pure Python: importing this module imports no GPU library.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backends import gemm_plan
from backends.cuda_dispatch import kernel_launcher

#: plans cached per backend before the cache starts over (evaluation sweeps over many shapes)
MAX_PLANS = 4096


class CudaGemms:
    """gemm and the fused GEMMs (core.ops FUSED_OPS), and the --gemm mode, for CudaBackend: it
    provides ``_ld``, ``_layout``, ``_contiguous``, ``_reject``, ``dtype``, the device
    (``_num_sms``, ``_capability``, ``_gemm_tc64``) and ``_gemm_plans``, the cache (key ->
    (launch, grid, block) or None)."""

    #: force one GEMM tile of gemm_plan.GEMM_TILES (tests, tuning); None picks per shape
    gemm_tile: str | None = None
    #: force S blocks per GEMM tile over K (split-K; tests, tuning) where the tile has a split
    #: kernel and the workspace fits (else S = 1); None picks per shape (gemm_plan.pick_gemm_split)
    gemm_split: int | None = None
    #: --gemm: "simt" (IEEE in the run's precision: FP32 FMA, FP64 tensor cores) or "tf32x3" (float32 on sm_80+: the tensor-core kernels of
    #: gemm_tf32x3.cuh); set through set_gemm_mode, part of every GEMM plan's key
    gemm_modes = gemm_plan.GEMM_MODES
    gemm_mode: str = "simt"

    def set_gemm_mode(self, mode: str) -> None:
        if mode not in gemm_plan.GEMM_MODES:
            raise ValueError(f"unknown GEMM mode {mode!r} (choose from "
                             f"{', '.join(gemm_plan.GEMM_MODES)})")
        if mode == "tf32x3":
            if self.dtype != np.float32:
                raise ValueError(f"tf32x3 is a float32 GEMM; this backend computes in "
                                 f"{self.dtype.name} (use --dtype float32, or --gemm simt)")
            need = gemm_plan.GEMM_X3_MIN_CAPABILITY
            if tuple(self._capability) < need:
                have = ".".join(map(str, self._capability))
                raise ValueError(f"tf32x3 needs TF32 tensor cores (compute capability "
                                 f"{need[0]}.{need[1]} or newer); this GPU has {have}")
        self.gemm_mode = mode

    def gemm(self, a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
        layout = self._layout
        key = (a.shape, layout(a), a.dtype, b.shape, layout(b), b.dtype,
               c.shape, layout(c), c.dtype, trans_a, trans_b, self.gemm_tile, self.gemm_split,
               self.gemm_mode)
        plan = self._cached_plan(key, self._plan_gemm, a, b, c, trans_a, trans_b)
        if plan is not None:
            launch, grid, block = plan
            launch(grid, block, a, b, c, alpha, beta)

    def gemm_bias_sigmoid(self, a, b, bias, out):
        self._fused_gemm("gemm_bias_sigmoid", a, b, out, bias)

    def gemm_sigmoid_backward(self, a, b, act, out):
        self._fused_gemm("gemm_sigmoid_backward", a, b, out, act)

    def gemm_with_bias_grad(self, a, b, out):
        self._fused_gemm("gemm_with_bias_grad", a, b, out)

    # ----------------------------------------------------------------- planning
    def _cached_plan(self, key, planner, *operands):
        """The plan cached under `key`, else planner(*operands), cached (an error caches
        nothing)."""
        try:
            return self._gemm_plans[key]
        except KeyError:
            if len(self._gemm_plans) > MAX_PLANS:
                self._gemm_plans.clear()
            plan = self._gemm_plans[key] = planner(*operands)
            return plan

    def _plan(self, a, b, out, trans_a, trans_b, variant=None):
        """gemm_plan's plan for these operands (None: C is empty) and the sizes it fixes by name:
        the leading dimensions, read first (they check that each operand is a matrix of the
        dtype), and the plan's m, n, k."""
        lds = {"lda": self._ld(a), "ldb": self._ld(b), "ldc": self._ld(out)}
        plan = gemm_plan.plan_gemm(a.shape, b.shape, out.shape, trans_a, trans_b, self._num_sms,
                                   self.gemm_tile, variant, self.gemm_split, self.gemm_mode,
                                   tc64=self._gemm_tc64, wgmma=self._gemm_wgmma)
        if plan is None:
            return None, lds
        return plan, {"m": plan.m, "n": plan.n, "k": plan.k, **lds}

    def _plan_launcher(self, plan, sizes: dict[str, Any]):
        """(launch, grid, block) of a plan: its kernel with the sizes fixed (and, for a split
        kernel, the split-K workspaces: kernel_launcher fixes every workspace parameter)."""
        return kernel_launcher(self, plan.kernel, fixed=sizes), plan.grid, plan.block

    def _plan_gemm(self, a, b, c, trans_a, trans_b):
        plan, sizes = self._plan(a, b, c, trans_a, trans_b)
        return None if plan is None else self._plan_launcher(plan, sizes)

    # The fused GEMMs: the GEMM tiles with an epilogue, planned like the GEMM (gemm_plan
    # .GEMM_VARIANTS: kernel per tile, the variant's transpose pair) and cached in the same
    # dictionary, keyed by the op's name and every operand's shape, layout and dtype.
    def _fused_gemm(self, op, a, b, out, extra=None):
        """Launch the planned fused GEMM ``op``; `extra`: its operand besides a, b, out."""
        layout = self._layout
        key = (op, a.shape, layout(a), a.dtype, b.shape, layout(b), b.dtype,
               out.shape, layout(out), out.dtype,
               None if extra is None else (extra.shape, layout(extra), extra.dtype),
               self.gemm_tile, self.gemm_split, self.gemm_mode)
        plan = self._cached_plan(key, self._plan_fused, op, a, b, out, extra)
        if plan is not None:
            launch, grid, block = plan
            if extra is None:
                launch(grid, block, a, b, out)
            else:
                launch(grid, block, a, b, out, extra)

    def _plan_fused(self, op, a, b, out, extra):
        variant = gemm_plan.GEMM_VARIANTS[op]
        plan, sizes = self._plan(a, b, out, variant.ops[0] == "t", variant.ops[1] == "t", variant)
        if op == "gemm_bias_sigmoid":
            if tuple(extra.shape) != (out.shape[0],):
                raise ValueError(f"bias of shape {tuple(extra.shape)} for {out.shape[0]} rows")
            if extra.dtype != self.dtype or not self._contiguous(extra):
                self._reject(extra, self.dtype)
        elif op == "gemm_sigmoid_backward":
            if tuple(extra.shape) != tuple(out.shape):
                raise ValueError(f"act of shape {tuple(extra.shape)} for out {tuple(out.shape)}")
            sizes["ld_act"] = self._ld(extra)  # GEMM_SIGMOID_BACKWARD_ARGS: ..., act, ldact
        if plan is None:
            return None
        return self._plan_launcher(plan, sizes)
