"""Runs ``core.train`` in this process and makes a directory's file system full part-way
through a run (a script for tests/test_adversarial.py, not a test module):

    python tests/disk_full_train.py MODE DIR WHEN -- TRAIN FLAGS...

WHEN: ``end`` (once training is over: --save and the summary still to come) or ``epoch:N``
(before epoch N's metrics line and checkpoint are written). MODE ``fill``: DIR is a small file
system (a tmpfs) and a filler file takes its last byte; ``inject``: every write under DIR then
raises OSError(ENOSPC), for machines where no small file system can be mounted. The pre-flight
has passed by then, as when another program fills the disk during a run.
"""

import errno
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import checkpoint, rundir, session, train  # noqa: E402


def _fill(directory: Path) -> None:
    with open(directory / "filler", "wb", buffering=0) as fh:
        for size in (65536, 4096, 512, 64, 1):  # down to the last byte
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                pass


def _inject(directory: Path) -> None:
    root = str(directory.resolve())

    def under(path) -> bool:
        return str(Path(path).resolve()).startswith(root)

    def refuse(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    real_write, real_append = checkpoint.atomic_write, rundir.RunDir.append_metrics

    def atomic_write(path, write):
        return refuse(path) if under(path) else real_write(path, write)

    def append_metrics(self, record):
        return refuse(self.metrics_path) if under(self.path) else real_append(self, record)

    checkpoint.atomic_write = rundir.atomic_write = atomic_write
    rundir.RunDir.append_metrics = append_metrics


def main() -> int:
    mode, directory, when = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    argv = sys.argv[5:]
    trouble = (lambda: _fill(directory)) if mode == "fill" else (lambda: _inject(directory))
    if when == "end":
        real_train = session.TrainingSession.train

        def train_then_fill(self):
            real_train(self)
            trouble()

        session.TrainingSession.train = train_then_fill
    else:
        epoch = int(when.split(":")[1])
        real_on_epoch = session.TrainingSession.on_epoch

        def on_epoch(self, stats):
            if stats.epoch == epoch:
                trouble()
            real_on_epoch(self, stats)

        session.TrainingSession.on_epoch = on_epoch
    return train.run(argv)


if __name__ == "__main__":
    sys.exit(main())
