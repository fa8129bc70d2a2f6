"""Benchmark: ``python -m core.bench`` (one process) or ``mpirun -n P python -m core.bench``.

For each backend: time per epoch and samples/s of the real training loop on a 60k-sample epoch,
with the epoch's FLOP-bound time at the device's peak for the row's mode and the share of it
reached (core/flop_bound.py), the GPU time of each kernel of a step, and GEMM GFLOP/s at the
model's shapes (CUDA events on a GPU). In the same run, the same MLP written with its strongest
peers where installed (core/bench_peers.py): cupy.matmul (cuBLAS), PyTorch eager and with one CUDA
graph per epoch, torch.compile with one CUDA graph per epoch, and JAX with the epoch in one jit, so
the ratios are measured side by side on one machine.
Under mpirun it adds the multi-rank rows: epoch time at P ranks and the share of each step spent
in the gradient exchange (the epoch timed again with the exchange switched off).

Figures are medians over the timed epochs (after one warm-up epoch). Results go to a JSON file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from core import bench_peers, flop_bound
from core.checkpoint import check_writable_target, why
from core.errors import UserError
from core.job import (Job, apply_gemm_mode, check_gemm_flags, device_for,
                      run_with_error_policy)
from core.model import CLASSES, INPUTS, ParamLayout, init_params
from core.ops import FUSED_OPS, GEMM_MODES
from core.buckets import DEFAULT_BUCKET_MB
from core.data_parallel import DataParallelTrainer, TrainConfig, scale_images
from core.scaling import predicted_exchange_us, probe_link
from core.startup import phase

phase("starting up")  # the imports are done: a signal from here on unwinds (core/startup.py)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (UserError: exit 2), as the CLI's."""

    def error(self, message):
        raise UserError(message)


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_list(text):
    """'256,1024': the values of --hidden/--batch, each a positive integer."""
    try:
        return [_positive(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got "
                                         f"{text!r}") from None


def _args(argv, prog=None):
    p = _Parser(prog=prog or "python -m core.bench", description=__doc__.splitlines()[0])
    p.add_argument("--backends", default=None,
                   help="comma-separated backends (default: every available GPU backend, or numpy)")
    p.add_argument("--hidden", default="256,1024,4096", type=_positive_list,
                   help="H values (256,1024,4096)")
    p.add_argument("--batch", default="800,3200", type=_positive_list, help="B values (800,3200)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--epochs", type=_positive, default=3,
                   help="timed epochs per row, after 1 warm-up (3)")
    p.add_argument("--samples", type=_positive, default=60000, help="samples per epoch (60000)")
    p.add_argument("--data-dir", default=None, help="MNIST directory (default: synthetic data)")
    p.add_argument("--comm", default="auto", help="communicator under mpirun (auto = mpi)")
    p.add_argument("--cuda-graphs", default="auto",
                   help="comma-separated --cuda-graphs settings to time, each a row (auto)")
    p.add_argument("--no-reference", action="store_true", help="skip the cuBLAS/PyTorch rows")
    p.add_argument("--json", default="bench.json", help="where to write the results (bench.json)")
    p.add_argument("--gemm", default="simt",
                   help="comma-separated --gemm settings to time, each a row (simt; tf32x3: GPU "
                        "backends, float32)")
    p.add_argument("--modes", default=None,
                   help="comma-separated training modes to time, each a row: float32, float64, "
                        "exact (--exact: float64, every product exact); default: --dtype's")
    p.add_argument("--bucket-mb", type=float, default=DEFAULT_BUCKET_MB,
                   help="gradient buckets of the hidden layer under mpirun, MiB (as the "
                        "trainer's --bucket-mb; 0: one sum after the layer)")
    p.add_argument("--gemm-split", type=int, default=None,
                   help="GPU backends: force S blocks per GEMM tile over K where a split kernel "
                        "exists (1: never split; default: the planner's pick)")
    p.add_argument("--fused-backward", action="store_true",
                   help="GPU backends: output_backward by its one-pass kernel (off by default "
                        "until it has passed the GPU suite), not the two fused GEMMs")
    return p.parse_args(argv)


def _data(args, dtype):
    if args.data_dir:
        from core.data import locate_and_load

        d = locate_and_load(args.data_dir, False, log=lambda *a: None)
        images, labels = d.train_images[:args.samples], d.train_labels[:args.samples]
        source = d.source
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.samples, INPUTS), dtype=np.uint8)
        labels = rng.integers(0, CLASSES, args.samples).astype(np.uint8)
        source = "synthetic"
    return scale_images(images, "unit", dtype), labels.astype(np.int32), source


class _NoExchange:
    """Stands in for GradientExchange to time an epoch's compute alone."""

    mode = "off"

    def start(self):
        pass

    def start_span(self, lo, hi):
        pass

    def finish(self):
        pass


def time_epochs(trainer, epochs: int) -> list[float]:
    trainer.train_epoch()  # warm-up: kernel compilation, caches
    times = []
    for _ in range(epochs):
        trainer.comm.barrier()
        began = time.perf_counter()
        trainer.train_epoch()  # ends synchronised (loss read back)
        times.append(time.perf_counter() - began)
    # every rank reports the slowest rank's time: that is the job's time
    return [float(t) for t in _max_over_ranks(trainer.comm, times)]


def _max_over_ranks(comm, values):
    gathered = comm.allgather(list(values))
    return np.max(np.array(gathered), axis=0)


MODES = ("float32", "float64", "exact")


def _backend(backend_cls, dtype, device, gemm="simt"):
    backend = backend_cls(dtype, device)
    apply_gemm_mode(backend, gemm)
    return backend


def _label(name, gemm):
    return name if gemm == "simt" else f"{name} {gemm}"


def bench_training(backend_cls, comm, args, x, y, hidden, batch, graphs="auto",
                   gemm="simt", mode=None) -> dict:
    """One row: the median epoch of the training loop; ``mode`` float32, float64 or exact
    (--exact, float64), by default --dtype's; ``gemm`` the --gemm setting."""
    mode = mode or args.dtype
    exact = mode == "exact"
    dtype = "float64" if exact else mode
    backend = _backend(backend_cls, dtype, device_for(backend_cls, comm.local_rank), gemm)
    comm.bind_backend(backend)
    config = TrainConfig(hidden=hidden, batch_size=batch, lr=0.1, reg=1e-4, epochs=1,
                         dtype=dtype)
    trainer = DataParallelTrainer(backend, comm, config, x.astype(dtype, order="F", copy=False),
                                  y, params=init_params(hidden, 0), cuda_graphs=graphs,
                                  exact=exact, bucket_mb=getattr(args, "bucket_mb", DEFAULT_BUCKET_MB))
    total = statistics.median(time_epochs(trainer, args.epochs))
    row = {"backend": _label(backend_cls.name, gemm) + (" +graph" if trainer.use_graphs else ""),
           "gemm": gemm, "mode": mode, "comm": comm.name, "ranks": comm.size, "H": hidden,
           "B": batch, "samples": int(x.shape[1]), "on_host": backend.host_resident,
           "epoch_ms": 1e3 * total, "samples_per_s": x.shape[1] / total,
           "exchange": trainer.exchange.mode, "cuda_graphs": trainer.use_graphs}
    path = getattr(backend, "gemm_path", None)  # the GPU backends: which GEMM instruction
    if path is not None:
        row["gemm_path"] = path()
    if comm.size > 1:
        trainer.exchange = _NoExchange()
        trainer._epoch_graph = None  # captured with the exchange: capture again without it
        compute = statistics.median(time_epochs(trainer, args.epochs))
        row["compute_ms"] = 1e3 * compute
        row["comm_share"] = max(0.0, (total - compute) / total)
        row["step_comm_us"] = 1e6 * max(0.0, total - compute) / -(-x.shape[1] // batch)
        _add_model(row, comm, backend, args, x.shape[1])
    return row


# ---------------------------------------------------------------------------- kernels of a step
#: the ops a training step may call (the fused ones on our GPU backends): each launches kernels
STEP_OPS = FUSED_OPS + ("gemm", "fill", "axpy", "bias_sigmoid", "add_bias", "softmax",
                        "sigmoid_backward", "reduce_cols", "softmax_xent_backward", "nll_sum")


def _timed(rt, stream, calls: list, name: str, method):
    """``method`` with CUDA events recorded around it on ``stream``, (name, start, stop)
    appended to ``calls``; an op made of timed ops (a fused op's default) leaves its parts as
    the rows instead."""
    def call(*a, **k):
        before = len(calls)
        start, stop = rt.eventCreate(), rt.eventCreate()
        rt.eventRecord(start, stream)
        method(*a, **k)
        rt.eventRecord(stop, stream)
        if len(calls) == before:
            calls.append((name, start, stop))
        else:
            rt.eventDestroy(start)
            rt.eventDestroy(stop)
    return call


def step_kernel_times(backend_cls, comm, args, x, y, hidden, batch, repeats=20,
                      gemm="simt") -> list[dict]:
    """GPU time of each op of one eager training step (one rank: ``comm`` of size 1), by CUDA
    events recorded on the backend's stream around every op call: the median over ``repeats``
    steps, in the step's order.
    Needs CuPy for the events (the runtime API: PyCUDA's stream is a stream of the same primary
    context); [] without it or for a host backend."""
    try:
        import cupy
    except ImportError:
        return []
    backend = _backend(backend_cls, args.dtype, device_for(backend_cls, 0), gemm)
    if backend.host_resident:
        return []
    rt = cupy.cuda.runtime
    config = TrainConfig(hidden=hidden, batch_size=batch, lr=0.1, reg=1e-4, epochs=1,
                         dtype=args.dtype)
    trainer = DataParallelTrainer(backend, comm, config, x[:, :batch], y[:batch],
                                  params=init_params(hidden, 0), cuda_graphs="off")
    calls: list[tuple[str, int, int]] = []  # (op, start event, stop event) in call order
    stream = backend.stream_handle()

    untimed_gemm = backend.gemm
    for name in STEP_OPS:
        setattr(backend, name, _timed(rt, stream, calls, name, getattr(backend, name)))
    trainer.step(0, batch)  # warm-up: plans and first launches
    busy = [backend.zeros((4096, 4096)) for _ in range(3)]
    backend.synchronize()
    calls.clear()
    # Keep the GPU busy (a few large products) while Python queues the timed steps, so that
    # every kernel is queued before the GPU reaches it and the events time the kernels, not the
    # host's launches.
    for _ in range(4):
        untimed_gemm(busy[0], busy[1], busy[2])
    for _ in range(repeats):
        trainer.step(0, batch)
    backend.synchronize()
    per_step = len(calls) // repeats
    rows = []
    for i in range(per_step):
        times = [rt.eventElapsedTime(calls[r * per_step + i][1], calls[r * per_step + i][2])
                 for r in range(repeats)]
        rows.append({"backend": _label(backend_cls.name, gemm), "gemm": gemm, "H": hidden,
                     "B": batch, "index": i,
                     "op": calls[i][0], "us": 1e3 * statistics.median(times)})
    for _, start, stop in calls:
        rt.eventDestroy(start)
        rt.eventDestroy(stop)
    return rows


# ---------------------------------------------------------------------------- GEMM GFLOP/s
def model_gemm_shapes(hidden: int, n: int):
    """(name, M, N, K, trans_a, trans_b) of the GEMMs of one training step on n samples."""
    return [(g.name, g.m, g.n, g.k, g.trans_a, g.trans_b) for g in ParamLayout(hidden).gemm_shapes(n)]


def median_seconds(run, repeats: int) -> float:
    """Median wall time of ``run()`` (which must end synchronised) over ``repeats`` calls, after
    one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def gpu_seconds(run, stream: int, repeats: int = 20, calls: int = 10) -> float | None:
    """Median GPU seconds of one ``run()`` (which only queues work on ``stream``, a CUDA stream
    handle) by CUDA events: each of ``repeats`` timings spans ``calls`` back-to-back calls (the
    launch gaps hidden wherever a kernel outlasts a launch), after two untimed calls. None
    without CuPy (whose runtime API records the events)."""
    try:
        import cupy
    except ImportError:
        return None
    rt = cupy.cuda.runtime
    for _ in range(2):
        run()
    start, stop = rt.eventCreate(), rt.eventCreate()
    times = []
    try:
        for _ in range(repeats):
            rt.eventRecord(start, stream)
            for _ in range(calls):
                run()
            rt.eventRecord(stop, stream)
            rt.eventSynchronize(stop)
            times.append(rt.eventElapsedTime(start, stop) / 1e3 / calls)
    finally:
        rt.eventDestroy(start)
        rt.eventDestroy(stop)
    return statistics.median(times)


def _gemm_row(backend_name, name, m, n, k, seconds) -> dict:
    return {"backend": backend_name, "gemm": name, "M": m, "N": n, "K": k,
            "us": 1e6 * seconds, "gflops": 2 * m * n * k / seconds / 1e9}


def _operands(backend, m, n, k, ta, tb, rng):
    a = rng.standard_normal((k, m) if ta else (m, k))
    b = rng.standard_normal((n, k) if tb else (k, n))
    return backend.from_host(a), backend.from_host(b), backend.zeros((m, n))


def bench_gemm(backend, shapes, repeats=20) -> list[dict]:
    """Time of one gemm per model shape: GPU time by CUDA events on a GPU backend (gpu_seconds),
    wall time otherwise."""
    rng = np.random.default_rng(1)
    rows = []
    for name, m, n, k, ta, tb in shapes:
        a, b, c = _operands(backend, m, n, k, ta, tb, rng)

        def queue():
            backend.gemm(a, b, c, trans_a=ta, trans_b=tb)

        def run():
            queue()
            backend.synchronize()
        seconds = None if backend.host_resident else gpu_seconds(queue, backend.stream_handle(),
                                                                 repeats)
        rows.append(_gemm_row(_label(backend.name, backend.gemm_mode), name, m, n, k,
                              seconds or median_seconds(run, repeats)))
    return rows


# ---------------------------------------------------------------------------- references
def reference_rows(args, x, y, hidden, batch, say, unavailable: set) -> list[dict]:
    """The same MLP written with other frameworks (core/bench_peers.py): cuBLAS through CuPy,
    PyTorch eager and with the epoch in one CUDA graph, torch.compile with the epoch in one CUDA
    graph, JAX with the epoch in one jit. A peer whose library is absent (or has no CUDA) is
    noted once and joins ``unavailable``; one that fails (compiling, capturing, running) is one
    line naming it and the error, and the bench goes on."""
    rows = []
    for name, make in bench_peers.PEERS:
        if name in unavailable:
            continue
        try:
            peer = make(args.dtype, x, y, hidden, batch)
            t = median_seconds(peer.run, args.epochs)
        except ImportError as exc:
            unavailable.add(name)
            say(f"dpmlp bench: note: no {name} rows: {_first_line(exc)}")
            continue
        except Exception as exc:  # noqa: BLE001 - a peer's failure is its row's, not the bench's
            say(f"dpmlp bench: note: {name} failed at H={hidden} B={batch}: "
                f"{type(exc).__name__}: {_first_line(exc)}")
            continue
        rows.append({"backend": name, "gemm": "-", "mode": args.dtype, "comm": "-", "ranks": 1,
                     "H": hidden, "B": batch, "samples": int(x.shape[1]), "on_host": False,
                     "epoch_ms": 1e3 * t, "samples_per_s": x.shape[1] / t, "exchange": "-"})
    return rows


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "(no message)"


# ---------------------------------------------------------------------------- main
def main(argv=None, prog=None) -> int:
    args = _args(argv, prog)
    check_writable_target("--json", args.json, "file")
    job = Job.start(args.comm)
    comm, say = job.comm, job.say
    entries, runs, gemm_settings = _chosen_runs(args, job.registry, say)
    modes = args.modes.split(",") if args.modes else [args.dtype]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise UserError(f"--modes: {', '.join(bad)} is none of {', '.join(MODES)}")
    # the data in float64 when a row needs it (float32 rows take a rounded copy)
    dtype = np.float64 if set(modes) & {"float64", "exact"} else np.dtype(args.dtype).type
    x, y, source = _data(args, dtype)
    hiddens, batches = args.hidden, args.batch
    say(f"dpmlp bench: {', '.join(e.name for e in entries)}; comm {comm.name} x{comm.size}; "
        f"{args.dtype}; {x.shape[1]} samples/epoch ({source}); median of {args.epochs} epochs")
    peaks = flop_bound.device_peaks()
    say(_fmt_peaks(peaks))
    # A throwaway row first: GPU clocks ramp up and kernels load on first use, which would
    # otherwise be charged to whichever row happens to come first.
    for entry in entries:
        bench_training(entry.cls, comm, argparse.Namespace(**{**vars(args), "epochs": 1}), x, y,
                       hiddens[0], batches[0])
    training = _training_rows(args, comm, say, runs, modes, x, y, hiddens, batches, peaks)
    kernels, gemms = [], []
    if comm.size == 1:
        kernels = _kernel_rows(args, comm, say, runs, x, y, hiddens, batches)
        gemms = _gemm_rows(args, say, runs, hiddens, batches[0])
    if comm.rank == 0:
        try:
            with open(args.json, "w") as fh:
                json.dump({"machine": _machine(), "dtype": args.dtype, "gemm_modes": gemm_settings,
                           "peaks": peaks.as_json() if peaks else None,
                           "samples": int(x.shape[1]),
                           "data": source, "training": training, "gemm": gemms,
                           "step_kernels": kernels}, fh, indent=1)
        except OSError as exc:
            raise UserError(f"--json {args.json}: cannot write: {why(exc)}") from None
        say(f"\nwrote {args.json}")
    job.finish()
    return 0


def _chosen_runs(args, registry, say):
    """The backends (--backends, else every available GPU backend, else numpy), the (entry,
    gemm) pairs to time (a --gemm setting a backend lacks is no row of it: a note says so), and
    the --gemm settings; --gemm-split and --fused-backward set on the CUDA backends."""
    entries = [e for e in registry.backends() if e.available]
    if args.backends:
        entries = [registry.backend(name, "--backends") for name in args.backends.split(",")]
    elif any(e.name != "numpy" for e in entries):
        entries = [e for e in entries if e.name != "numpy"]
    gemm_settings = args.gemm.split(",")
    for gemm in gemm_settings:
        if gemm not in GEMM_MODES:
            raise UserError(f"--gemm {gemm}: choose from {', '.join(GEMM_MODES)}")
        check_gemm_flags(gemm, args.dtype)
    runs = [(e, g) for e in entries for g in gemm_settings
            if g in getattr(e.cls, "gemm_modes", ("simt",))]
    for entry in entries:
        for gemm in gemm_settings:
            if (entry, gemm) not in runs:
                say(f"dpmlp bench: note: backend {entry.name} has no --gemm {gemm}; no such rows")
    if args.gemm_split is not None:
        for entry in entries:
            if hasattr(entry.cls, "gemm_split"):  # the CUDA backends (CudaBackend.gemm_split)
                entry.cls.gemm_split = args.gemm_split
    if args.fused_backward:
        for entry in entries:
            if hasattr(entry.cls, "fused_output_backward"):  # the CUDA backends
                entry.cls.fused_output_backward = True
    return entries, runs, gemm_settings


def _training_rows(args, comm, say, runs, modes, x, y, hiddens, batches, peaks) -> list[dict]:
    """An epoch-time row per shape, backend, --gemm, mode and --cuda-graphs setting, then (one
    rank) the peers' rows of the shape; each with its FLOP bound at ``peaks``, printed as it is
    measured."""
    rows, unavailable = [], set()
    for hidden in hiddens:
        for batch in batches:
            for entry, gemm in runs:
                for mode in modes:
                    if gemm != "simt" and mode != "float32":
                        continue  # TF32x3 is a float32 GEMM
                    for graphs in args.cuda_graphs.split(","):
                        rows.append(_with_bound(bench_training(
                            entry.cls, comm, args, x, y, hidden, batch, graphs, gemm, mode), peaks))
                        say(_fmt_training(rows[-1]), flush=True)
            if comm.size == 1 and not args.no_reference:
                for row in reference_rows(args, x, y, hidden, batch, say, unavailable):
                    rows.append(_with_bound(row, peaks))
                    say(_fmt_training(row), flush=True)
    return rows


def _kernel_rows(args, comm, say, runs, x, y, hiddens, batches) -> list[dict]:
    """The GPU time of each kernel of one eager step, per backend and shape, printed as a table."""
    kernels = []
    for entry, gemm in runs:
        for hidden in hiddens:
            for batch in batches:
                kernels += step_kernel_times(entry.cls, comm, args, x, y, hidden, batch,
                                             gemm=gemm)
    if kernels:
        say("\nKernels of one eager training step (CUDA events, median of 20 steps, us)")
        for (name, hidden, batch), group in itertools.groupby(
                kernels, key=lambda r: (r["backend"], r["H"], r["B"])):
            group = list(group)
            say(f"{name:15s} H={hidden:5d} B={batch:5d}  total {sum(r['us'] for r in group):7.1f}"
                "  " + ", ".join(f"{r['op']} {r['us']:.1f}" for r in group))
    return kernels


def _gemm_rows(args, say, runs, hiddens, n) -> list[dict]:
    """Each GEMM of the model at n samples, per backend and H (and cuBLAS's), printed as a table."""
    gemms = []
    for entry, gemm in runs:
        backend = _backend(entry.cls, args.dtype, device_for(entry.cls, 0), gemm)
        for hidden in hiddens:
            gemms += bench_gemm(backend, model_gemm_shapes(hidden, n))
    if not args.no_reference:
        gemms += _cupy_gemm_rows(args.dtype, hiddens, n)
    say("\nGEMM at the model's shapes (n = B on one rank; GPU time by CUDA events, median of "
        "20 timings of 10 back-to-back calls; wall time for host backends)")
    say(f"{'backend':22s} {'gemm':15s} {'M':>5s} {'N':>5s} {'K':>5s} {'us':>9s} {'GFLOP/s':>9s}")
    for r in gemms:
        say(f"{r['backend']:22s} {r['gemm']:15s} {r['M']:5d} {r['N']:5d} {r['K']:5d} "
            f"{r['us']:9.1f} {r['gflops']:9.1f}")
    return gemms


def _cupy_gemm_rows(dtype, hiddens, n):
    try:
        import cupy as cp
    except ImportError:
        return []
    rows, rng = [], np.random.default_rng(1)
    for hidden in hiddens:
        for name, m, nn, k, ta, tb in model_gemm_shapes(hidden, n):
            a = cp.asarray(rng.standard_normal((k, m) if ta else (m, k)), dtype=dtype, order="F")
            b = cp.asarray(rng.standard_normal((nn, k) if tb else (k, nn)), dtype=dtype, order="F")
            op_a, op_b = (a.T if ta else a), (b.T if tb else b)
            seconds = gpu_seconds(lambda: cp.matmul(op_a, op_b),
                                  cp.cuda.get_current_stream().ptr)
            rows.append(_gemm_row("cupy.matmul (cuBLAS)", name, m, nn, k, seconds))
    return rows


def _add_model(row, comm, backend, args, samples) -> None:
    """The exchange's cost model (core/scaling.py) for this row's P, with the link's latency and
    bandwidth probed here, beside the measured exchange."""
    link = probe_link(comm, backend)
    mb = getattr(args, "bucket_mb", DEFAULT_BUCKET_MB)
    row.update(samples=samples, link_alpha_us=1e6 * link.alpha, link_gb_s=link.bandwidth / 1e9)
    row["model_comm_us"] = predicted_exchange_us(row, link, mb, backend.dtype.itemsize)


def _with_bound(row, peaks) -> dict:
    """``row`` with its FLOP, FLOP-bound time at ``peaks`` and the share reached (flop_bound)."""
    row.update(flop_bound.bound_fields(row["mode"], row["gemm"], row["on_host"], row["samples"],
                                       row["H"], row["ranks"], row["epoch_ms"] / 1e3, peaks))
    return row


def _fmt_peaks(peaks) -> str:
    if peaks is None:
        return "dpmlp bench: no GPU: no FLOP bound (bound -)"
    rates = ", ".join(f"{name} {'unknown' if rate is None else f'{rate / 1e12:g}'}"
                      for name, rate in (("FP32 FMA", peaks.fp32), ("FP64", peaks.fp64),
                                         ("TF32 tensor", peaks.tf32)))
    return (f"dpmlp bench: peaks of {peaks.device} ({peaks.source}): {rates} TFLOP/s; bound = "
            f"{flop_bound.FLOP_PER_SAMPLE_PER_HIDDEN} H FLOP a sample at the mode's peak")


def _fmt_training(r) -> str:
    extra = ""
    if "comm_share" in r:
        extra = (f"  compute {r['compute_ms']:8.1f} ms  comm {100 * r['comm_share']:5.1f}%"
                 f"  ({r['step_comm_us']:.0f} us/step)")
    if "model_comm_us" in r:
        extra += (f"  model {r['model_comm_us']:.0f} us/step (ring, alpha "
                  f"{r['link_alpha_us']:.1f} us, {r['link_gb_s']:.2f} GB/s probed)")
    return (f"{r['backend']:22s} {r.get('mode', ''):8s} {r['comm']:6s} P={r['ranks']}  H={r['H']:5d} B={r['B']:5d}  "
            f"epoch {r['epoch_ms']:8.1f} ms  {r['samples_per_s']:10.0f} samples/s"
            f"{flop_bound.fmt_bound(r) if 'flop' in r else ''}{extra}")


def _machine() -> dict:
    info = {"host": platform.node(), "python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        import cupy as cp

        info["gpu"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        info["gpus"] = cp.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - no GPU: a CPU-only run
        pass
    return info


def run(argv=None) -> int:
    """main() with the job's error policy (core/job.py): a user's mistake is one line, exit 2."""
    return run_with_error_policy(lambda: main(argv))


if __name__ == "__main__":
    sys.exit(run())
