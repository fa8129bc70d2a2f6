"""Profile the kernels of eager training steps with Nsight Compute, on a GPU machine:

    ncu --profile-from-start off --section SpeedOfLight --section Occupancy --section LaunchStats \
        python tools/profile_step.py --backend pycuda --hidden 256 --batch 800

Builds one rank's trainer (synthetic data, CUDA graphs off), runs a warm-up step (kernel
compilation, GEMM plans), then opens the profiler (cudaProfilerStart) around ``--steps`` steps, so
that ncu sees exactly the kernels of those steps and nothing of the start-up. Without ncu it just
runs the steps. The figures it gives (duration, SM and memory throughput against the peaks,
achieved occupancy, grid) say what bounds each kernel; the README's Performance section quotes them.
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="pycuda")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=800)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=1)
    args = p.parse_args(argv)

    import cupy

    from core.data_parallel import DataParallelTrainer, TrainConfig, scale_images
    from core.job import device_for
    from core.model import CLASSES, INPUTS, init_params
    from core.plugins import Registry
    from comm.single import SingleCommunicator

    entry = Registry.load().backend(args.backend)
    backend = entry.cls(args.dtype, device_for(entry.cls, 0))
    comm = SingleCommunicator()
    comm.bind_backend(backend)
    rng = np.random.default_rng(0)
    x = scale_images(rng.integers(0, 256, (args.batch, INPUTS), dtype=np.uint8), "unit",
                     args.dtype)
    y = rng.integers(0, CLASSES, args.batch).astype(np.int32)
    config = TrainConfig(hidden=args.hidden, batch_size=args.batch, lr=0.1, reg=1e-4, epochs=1,
                         dtype=args.dtype)
    trainer = DataParallelTrainer(backend, comm, config, x, y,
                                  params=init_params(args.hidden, 0), cuda_graphs="off")
    trainer.step(0, args.batch)  # warm-up: compilation and plans stay outside the profile
    backend.synchronize()
    cupy.cuda.profiler.start()
    for _ in range(args.steps):
        trainer.step(0, args.batch)
    backend.synchronize()
    cupy.cuda.profiler.stop()
    print(f"profiled {args.steps} step(s): {args.backend} {args.dtype} H={args.hidden} "
          f"B={args.batch}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
