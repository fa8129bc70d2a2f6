"""Cut the small MNIST subset that ships inside the package (core/data/).

The subset lets the trainer and the tests run on a machine that has neither full MNIST nor a
network: the FIRST 10,000 training and FIRST 2,000 test images/labels, in file order, written as
standard gzip-compressed IDX files so that core.data reads them exactly like the full set.

Reproducible: the output bytes depend only on the input content. gzip gets mtime=0 and no file
name in its header (gzip.GzipFile with fileobj and filename=""), and level 9.

    python tools/make_subset.py [SOURCE_DIR] [--out core/data] [--train 10000] [--test 2000]

SOURCE_DIR defaults to $DPMLP_DATA_DIR, else ../shared/data/mnist beside the checkout.
"""

import argparse
import gzip
import io
import os
import struct
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SOURCE = os.environ.get("DPMLP_DATA_DIR") or os.path.join(REPO, "..", "shared", "data",
                                                                  "mnist")
DEFAULT_OUT = os.path.join(REPO, "core", "data")


def read_raw(path):
    """Uncompressed bytes of an IDX file (.gz or raw, told apart by the gzip magic)."""
    with open(path, "rb") as f:
        data = f.read()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def cut(raw, count):
    """First `count` items of an IDX byte string, with the header's item count rewritten."""
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise SystemExit(f"not a uint8 IDX file (magic bytes {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    if dims[0] < count:
        raise SystemExit(f"source holds only {dims[0]} items, asked for {count}")
    item = 1
    for d in dims[1:]:
        item *= d
    header = raw[:4] + struct.pack(f">{ndim}I", count, *dims[1:])
    start = 4 + 4 * ndim
    return header + raw[start : start + count * item]


def write_gz(path, raw):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return len(buf.getvalue())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", nargs="?", default=DEFAULT_SOURCE, help="directory with full MNIST")
    p.add_argument("--out", default=DEFAULT_OUT, help="output directory (default core/data)")
    p.add_argument("--train", type=int, default=10_000)
    p.add_argument("--test", type=int, default=2_000)
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    total = 0
    for prefix, count in (("train", a.train), ("t10k", a.test)):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            name = f"{prefix}-{kind}.gz"
            size = write_gz(os.path.join(a.out, name), cut(read_raw(os.path.join(a.source, name)), count))
            total += size
            print(f"{name}: {count} items, {size} bytes")
    print(f"total {total} bytes")
    if total > 4 * 1024 * 1024:
        print("warning: subset exceeds 4 MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
