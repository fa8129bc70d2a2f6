"""The flags of ``python -m core.train``: each one's type check, default and help, and the rules
between flags (what --exact implies for --dtype, what --checkpoint-every needs).

A bad flag is a UserError (one line on stderr, exit 2; core/job.py prints it), never argparse's
usage dump.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from core import __version__
from core.buckets import DEFAULT_BUCKET_MB
from core.data_parallel import CUDA_GRAPH_CHOICES
from core.errors import UserError
from core.job import check_gemm_flags
from core.ops import GEMM_MODES
from core.progress import PROGRESS_CHOICES


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) printed by rank 0 only."""

    def error(self, message):
        raise UserError(message)


def _number(text, convert, what):
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def _positive_int(text):
    value = _number(text, int, "a positive integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text):
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _positive_float(text):
    value = _number(text, float, "a positive number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


#: --seed's range: what every tool reading config.json and checkpoints takes as an integer
MAX_SEED = 2**63 - 1


def _seed(text):
    value = _non_negative_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_SEED} (2**63 - 1), "
                                         f"got {text!r}")
    return value


def non_negative_seconds(text):
    """--collective-timeout's rule (also DPMLP_COLLECTIVE_TIMEOUT's, core/job.py)."""
    return _non_negative_float(text)


def _non_negative_float(text):
    value = _number(text, float, "a number >= 0")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = _Parser(prog=prog or "python -m core.train",
                description="Data-parallel training of a two-layer MLP on MNIST.")
    _model_flags(p.add_argument_group("model and optimisation (course flags)"))
    _execution_flags(p.add_argument_group("execution"))
    _data_flags(p.add_argument_group("data"))
    _output_flags(p.add_argument_group("output and checks"))
    return p


def _model_flags(group) -> None:
    group.add_argument("-n", "--hidden", type=_positive_int, default=256, help="hidden units (256)")
    group.add_argument("-r", "--reg", type=_non_negative_float, default=1e-5,
                       help="L2 regularisation strength (1e-5; the course used 1e-4)")
    group.add_argument("-l", "--lr", type=_positive_float, default=1.0, help="learning rate (1.0)")
    group.add_argument("-e", "--epochs", type=_positive_int, default=10, help="epochs (10)")
    group.add_argument("-b", "--batch-size", type=_positive_int, default=100,
                       help="global minibatch size, split over ranks (100)")
    group.add_argument("--seed", type=_seed, default=0,
                       help="seed of the initial weights (0)")
    group.add_argument("--dtype", choices=("float32", "float64"), default=None,
                       help="float32 (default) or float64 (the default with --exact)")
    group.add_argument("--exact", action="store_true",
                       help="bit-identical training on every backend and rank count: float64 with "
                            "exact products (Ozaki splitting; several times slower); prints the "
                            "parameters' SHA-256")
    group.add_argument("--scale", choices=("unit", "raw"), default="unit",
                       help="input pixels scaled to [0,1] (unit, default) or raw 0..255 as the "
                            "course")


def _execution_flags(group) -> None:
    group.add_argument("--backend", default=None,
                       help="compute backend (default: the best available; see --list-backends)")
    group.add_argument("--comm", default="auto",
                       help="communicator: auto (mpi under mpirun with >1 rank, else single), "
                            "or a name")
    group.add_argument("--cuda-aware-mpi", action="store_true",
                       help="hand device buffers to MPI directly (also DPMLP_CUDA_AWARE_MPI=1); "
                            "only for a CUDA-aware MPI: any other crashes. Default: stage through "
                            "host")
    group.add_argument("--collective-timeout", type=_non_negative_float, default=None,
                       metavar="SECONDS",
                       help="abort the job, naming the ranks that did not arrive, when a "
                            "collective takes longer (default 300; 0 = off; also "
                            "DPMLP_COLLECTIVE_TIMEOUT)")
    group.add_argument("--cuda-graphs", choices=CUDA_GRAPH_CHOICES, default="auto",
                       help="replay each epoch as one captured CUDA graph: auto (wherever it "
                            "works, else eager with one line saying why), on, off")
    group.add_argument("--gemm", choices=GEMM_MODES, default="simt",
                       help="GEMM algorithm: simt (default: IEEE arithmetic in the run's own "
                            "precision; on the GPU backends FP32 FMA kernels for float32, the FP64 "
                            "tensor cores for float64 on compute capability 8.0+) or tf32x3 (GPU "
                            "backends, float32, compute capability 8.0+: tensor cores with the "
                            "error-compensated three-product TF32 split, wgmma on Hopper; promises "
                            "a max-norm error at most twice simt's, not simt's bits)")
    group.add_argument("--bucket-mb", type=_non_negative_float, default=DEFAULT_BUCKET_MB,
                       metavar="MB",
                       help="gradient buckets of the hidden layer, MiB: each bucket's sum over "
                            "ranks starts while the next is computed (1; 0: one sum after the "
                            "whole layer). The bits do not depend on it")
    group.add_argument("--list-backends", action="store_true",
                       help="list backends and communicators with availability, then exit")


def _data_flags(group) -> None:
    group.add_argument("--data-dir", default=None, help="directory with the four MNIST IDX files")
    group.add_argument("--download", action="store_true", help="download MNIST if missing")
    group.add_argument("--train-size", type=_positive_int, default=None,
                       help="train on the first N training images (default: all not held out)")
    group.add_argument("--val-size", type=_non_negative_int, default=None,
                       help="validation images held out from the END of the training file "
                            "(default 10%%: 6000 of MNIST's 60000)")


def _output_flags(group) -> None:
    group.add_argument("--save", default=None, metavar="PATH.npz",
                       help="write the final W1, b1, W2, b2 (rank 0, atomically)")
    group.add_argument("--verify", nargs="?", const="lockstep", choices=("lockstep", "final"),
                       default=None,
                       help="check every step against a float64 NumPy reference run beside the "
                            "training (lockstep, the default; exit 4 naming the step, parameter "
                            "and element on failure), or compare the final parameters with the "
                            "reference trained from the seed (final: information for long runs)")
    group.add_argument("--verify-every", type=_positive_int, default=1, metavar="K",
                       help="with --verify: check every K-th step only (1)")
    group.add_argument("--run-dir", default=None, metavar="DIR",
                       help="write config.json, metrics.jsonl and checkpoints/ there (rank 0)")
    group.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="N",
                       help="checkpoint every N epochs and at the end (needs --run-dir); an "
                            "interrupted run with --run-dir always leaves a checkpoint")
    group.add_argument("--resume", default=None, metavar="PATH",
                       help="continue from a checkpoint file or a run directory's latest "
                            "checkpoint (a run directory is also the --run-dir)")
    group.add_argument("--overwrite", action="store_true",
                       help="replace the run in --run-dir DIR when it stopped before its first "
                            "checkpoint (a run with checkpoints is never replaced)")
    group.add_argument("--quiet", action="store_true",
                       help="print only the summary line and errors")
    group.add_argument("--progress", choices=PROGRESS_CHOICES, default="auto",
                       help="auto (a bar on a terminal, under mpirun the launcher's; else one "
                            "line an epoch), bar, lines, none")
    group.add_argument("--version", action="version", version=f"dpmlp {__version__}")


#: a negative number given as a flag's value: -1, -1.5, -.5, -1e-5, -inf, -nan
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.I)


def attach_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``-r -1e-5`` as ``-r=-1e-5``: argparse takes a value that starts with '-' for a flag
    (and says "expected one argument"); joined, the flag's own rule judges the value."""
    takes_value = {opt for action in parser._actions if action.nargs is None
                   for opt in action.option_strings}
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return out + argv[i:]
        if token in takes_value and i + 1 < len(argv) and _NEGATIVE_NUMBER.match(argv[i + 1]):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def parse_flags(argv=None, prog: str | None = None) -> argparse.Namespace:
    """The parsed flags, --dtype's default filled in: float64 with --exact, else float32."""
    parser = build_parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(attach_negative_values(parser, argv))
    if args.dtype is None:
        args.dtype = "float64" if args.exact else "float32"
    elif args.exact and args.dtype != "float64":
        raise UserError(f"--exact: trains in float64; drop --dtype {args.dtype}")
    return args


def check_run_flags(args: argparse.Namespace) -> None:
    """The rules between the flags of a training run (--list-backends needs none of them): a run
    directory given to --resume goes on in itself, --checkpoint-every needs --run-dir, --gemm
    must suit --dtype."""
    if args.resume and args.run_dir is None and os.path.isdir(args.resume):
        args.run_dir = args.resume
    if args.checkpoint_every and not args.run_dir:
        raise UserError("--checkpoint-every: needs --run-dir DIR (where the checkpoints go)")
    if args.overwrite and (not args.run_dir or args.resume):
        raise UserError("--overwrite: replaces the run of --run-dir DIR, so it needs --run-dir "
                        "and no --resume")
    check_gemm_flags(args.gemm, args.dtype)
