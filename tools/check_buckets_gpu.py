"""Bucketed against unbucketed exchange on the GPU backends: the bits must not depend on
--bucket-mb. Two ranks share one GPU (--comm mpi, the gradient staged through pinned host memory;
NCCL refuses two ranks on one GPU).

    mpirun -n 2 python tools/check_buckets_gpu.py [--out DIR]

For each available GPU backend (cupy, pycuda), float32 and float64, trains the same case (H=1024,
so that 0.1 MiB buckets are one 128-column block each, 1 MiB two, 1000 MiB one bucket) once per
bucket size and compares the final parameters bit for bit with --bucket-mb 0 (the unbucketed
exchange: the same blocks, one sum after the layer). Also shows, as information, whether the
hidden layer in one GEMM (no blocks, as on one rank) gives the same bits. Writes DIR/buckets_gpu.json
(DIR: $OUT, else the current directory); exit 1 if a bucket size changed a bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from core import data  # noqa: E402
from core.data_parallel import DataParallelTrainer, TrainConfig, scale_images  # noqa: E402
from core.job import Job, device_for  # noqa: E402

BUCKETS = ("0", "0.1", "1", "1000", "unblocked")


def train(job, entry, dtype, bucket, x, y) -> str:
    backend = entry.cls(dtype, device_for(entry.cls, job.comm.local_rank))
    job.comm.bind_backend(backend)
    config = TrainConfig(hidden=1024, reg=1e-4, lr=0.1, epochs=2, batch_size=200, seed=0,
                         dtype=dtype)
    trainer = DataParallelTrainer(backend, job.comm, config, x.astype(dtype, order="F"), y,
                                  bucket_mb=0.0 if bucket == "unblocked" else float(bucket))
    if bucket == "unblocked":
        trainer.hidden_blocks = None
    trainer.train()
    flat = backend.to_host(trainer.model.flat_params)
    return hashlib.sha256(np.ascontiguousarray(flat).tobytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--backends", default="cupy,pycuda",
                    help="backends to check (cupy,pycuda; numpy for a dry run on the CPU)")
    args = ap.parse_args()
    job = Job.start("mpi")
    images, labels = data.load_split(data.BUNDLED_DIR, "train")
    x, y = scale_images(images[:2000], "unit", np.float64), labels[:2000].astype(np.int32)
    entries = [e for e in job.registry.backends() if e.available and e.name in args.backends.split(",")]
    results, ok = [], True
    for entry in entries:
        for dtype in ("float32", "float64"):
            hashes = {b: train(job, entry, dtype, b, x, y) for b in BUCKETS}
            same = {b: hashes[b] == hashes["0"] for b in BUCKETS}
            ok &= all(same[b] for b in BUCKETS if b != "unblocked")
            results.append({"backend": entry.name, "dtype": dtype, "hashes": hashes,
                            "equal_to_bucket_mb_0": same})
            job.say(f"{entry.name:7s} {dtype}: " + "  ".join(
                f"--bucket-mb {b}: {'same' if same[b] else 'DIFFERS'}" for b in BUCKETS[1:]),
                flush=True)
    if not entries:
        job.say(f"none of {args.backends} is available: nothing checked")
        ok = False
    if job.is_root:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "buckets_gpu.json").write_text(json.dumps(
            {"ranks": job.comm.size, "ok": ok, "runs": results}, indent=1))
        job.say(("PASS" if ok else "FAIL") + ": bucket sizes "
                + ("do not change" if ok else "changed") + " the parameters' bits"
                + " (unblocked: information only)")
    job.finish()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
