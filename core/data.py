"""MNIST: read IDX files, find them, download them.

Where the data comes from, first match wins:
  1. the --data-dir flag (an error if it lacks the files: the user asked for that directory);
  2. the environment variable DPMLP_DATA_DIR (same rule);
  3. the user cache, platformdirs.user_cache_dir("dpmlp")/mnist (DPMLP_CACHE_DIR overrides it),
     which is where --download puts the files when no --data-dir is given;
  4. the subset bundled in core/data/ (first 10,000 train / 2,000 test images), with one log line.

Every problem with the files is a DataError (a UserError: one line, exit code 2) that names the
file at fault, because the fix is always the user's: a wrong path, a broken download, a wrong file.

No MPI or GPU import here: rank 0 and the tests load data on plain CPython + NumPy.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from core.errors import UserError


class DataError(UserError):
    """A missing, corrupt or wrong MNIST file; the message names the file (or directory)."""


# --- reading ------------------------------------------------------------------------------------

IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dims (count, rows, cols)
LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dim (count)
_EXPECTED_NDIM = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}
ROWS = COLS = 28

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
ALL_FILES = FILES["train"] + FILES["t10k"]

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The uncompressed content of `path`.

    gzip or not is decided by the magic bytes, not the suffix: people gunzip files and keep the
    name, and a server sending `Content-Encoding: gzip` gets its .gz transparently inflated by
    the HTTP client, leaving raw IDX bytes under a .gz name.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except EOFError:
        raise DataError(f"{path}: truncated gzip stream (incomplete download?)") from None
    except (zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: corrupt gzip stream: {e}") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one MNIST IDX file (.gz or raw).

    Images come back as uint8 (N, 784): one sample per row in C order, which is the same memory
    as the 784 x N column-major matrix the trainer works on. Labels come back as uint8 (N,).
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic not in _EXPECTED_NDIM:
        kind = sniff_file_type(raw)
        raise DataError(
            f"{path}: bad magic number {magic} (0x{magic:08x}: data type 0x{raw[2]:02x}, "
            f"{raw[3]} dims){'; it looks like ' + kind if kind else ''}; expected "
            f"{IMAGES_MAGIC} (images: 0x08 unsigned byte, 3 dims) "
            f"or {LABELS_MAGIC} (labels: 0x08 unsigned byte, 1 dim)"
        )
    # Both accepted magics already fix the data-type byte (0x08 = unsigned byte) and the number
    # of dimensions (the low byte), so the checks below are about the dimensions themselves.
    ndim = _EXPECTED_NDIM[magic]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"{path}: truncated header: needs {header_len} bytes, found {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    if ndim == 3 and dims[1:] != (ROWS, COLS):
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected {ROWS}x{COLS}")
    expected = math.prod(dims)  # Python ints: a garbage header cannot overflow
    found = len(raw) - header_len
    if found < expected:
        raise DataError(f"{path}: truncated: header says {expected} bytes, found {found}")
    if found > expected:
        raise DataError(
            f"{path}: {found - expected} trailing bytes: header says {expected} bytes, found {found}"
        )
    # copy(): frombuffer over `bytes` is read-only; callers get an ordinary writable array.
    arr = np.frombuffer(raw, dtype=np.uint8, offset=header_len).copy()
    if ndim == 1:
        if arr.size and arr.max() > 9:
            bad = int(np.argmax(arr > 9))
            raise DataError(f"{path}: label {arr[bad]} at index {bad} is outside 0..9")
        return arr
    return arr.reshape(dims[0], ROWS * COLS)


_SIGNATURES = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"PK\x03\x04", "a ZIP archive"),
    (b"\x93NUMPY", "a NumPy .npy file"), (b"%PDF", "a PDF document"), (b"BZh", "a bzip2 stream"),
    (b"\xfd7zXZ", "an xz stream"), (b"\x28\xb5\x2f\xfd", "a zstd stream"),
)


def sniff_file_type(raw: bytes) -> str | None:
    """What a file that is not IDX seems to be (for the error message), or None."""
    for signature, kind in _SIGNATURES:
        if raw.startswith(signature):
            return kind
    if len(raw) > 262 and raw[257:262] == b"ustar":
        return "a tar archive"
    head = raw[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page (an error page saved by a download?)"
    if head and all(32 <= c < 127 or c in (9, 10, 13) for c in raw[:512]):
        return "a text file"
    return None


def describe_idx(magic: int) -> str:
    if magic == IMAGES_MAGIC:
        return f"an MNIST images file (IDX magic {IMAGES_MAGIC}: N x 28 x 28 pixels)"
    return f"an MNIST labels file (IDX magic {LABELS_MAGIC}: N labels)"


def _find_file(directory: Path, gz_name: str) -> Path | None:
    """`name.gz`, or the gunzipped `name` (read_idx reads either)."""
    for candidate in (directory / gz_name, directory / gz_name[: -len(".gz")]):
        if candidate.is_file():
            return candidate
    return None


def load_split(directory: str | os.PathLike, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 784), labels (N,)) of the "train" or "t10k" split in `directory`."""
    if prefix not in FILES:
        raise ValueError(f"prefix must be 'train' or 't10k', not {prefix!r}")
    directory = Path(directory)
    img_name, lbl_name = FILES[prefix]
    # A missing file is reported under its canonical .gz name.
    img_path = _find_file(directory, img_name) or directory / img_name
    lbl_path = _find_file(directory, lbl_name) or directory / lbl_name
    images, labels = read_idx(img_path), read_idx(lbl_path)
    # Swapped or misnamed files parse fine on their own; catch them here.
    if images.ndim != 2:
        raise DataError(f"{img_path}: is {describe_idx(LABELS_MAGIC)}, expected "
                        f"{describe_idx(IMAGES_MAGIC)}; are the files swapped or misnamed?")
    if labels.ndim != 1:
        raise DataError(f"{lbl_path}: is {describe_idx(IMAGES_MAGIC)}, expected "
                        f"{describe_idx(LABELS_MAGIC)}; are the files swapped or misnamed?")
    if len(images) != len(labels):
        raise DataError(
            f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels"
        )
    if not len(images):
        raise DataError(f"{img_path}: holds no images (an IDX file of 0 images, with {lbl_path} "
                        f"of 0 labels); nothing to train on or test with")
    return images, labels


# --- locating -----------------------------------------------------------------------------------


@dataclass
class MnistData:
    train_images: np.ndarray  # uint8 (N, 784)
    train_labels: np.ndarray  # uint8 (N,)
    test_images: np.ndarray  # uint8 (M, 784)
    test_labels: np.ndarray  # uint8 (M,)
    source: str  # the directory the files were read from
    is_subset: bool  # True for the bundled 10,000/2,000 subset


BUNDLED_DIR = Path(__file__).resolve().parent / "data"


def cache_dir() -> Path:
    """Where --download puts MNIST when no --data-dir is given (DPMLP_CACHE_DIR overrides it)."""
    override = os.environ.get("DPMLP_CACHE_DIR")
    if override:
        return Path(override)
    import platformdirs  # only needed here; keeps `import core.data` light

    return Path(platformdirs.user_cache_dir("dpmlp")) / "mnist"


def _missing(directory: Path) -> list[str]:
    return [name for name in ALL_FILES if _find_file(directory, name) is None]


def _load_dir(directory: Path, is_subset: bool = False) -> MnistData:
    tr_x, tr_y = load_split(directory, "train")
    te_x, te_y = load_split(directory, "t10k")
    return MnistData(tr_x, tr_y, te_x, te_y, source=str(directory), is_subset=is_subset)


def locate_and_load(
    data_dir: str | None, download: bool, log: Callable[[str], None] = print
) -> MnistData:
    """Find MNIST (see the module docstring for the order), downloading it first if asked."""
    if download:
        dest = Path(data_dir) if data_dir else cache_dir()
        download_mnist(dest, log=log)
        return _load_dir(dest)

    # A directory the user named explicitly must hold the data; falling back silently to
    # something else would train on data they did not ask for.
    explicit = [(data_dir, "--data-dir"), (os.environ.get("DPMLP_DATA_DIR"), "DPMLP_DATA_DIR")]
    for where, what in explicit:
        if where:
            directory = Path(where)
            if not directory.exists():
                raise DataError(f"{what} {directory} does not exist; add --download to fetch "
                                f"MNIST into it")
            if not directory.is_dir():
                raise DataError(f"{what} {directory} is a file, not a directory (give the "
                                f"directory holding the four MNIST files)")
            missing = _missing(directory)
            if missing:
                raise DataError(
                    f"{directory} ({what}) lacks MNIST file(s) {', '.join(missing)}; "
                    f"add --download to fetch them there"
                )
            return _load_dir(directory)

    cache = cache_dir()
    if not _missing(cache):
        return _load_dir(cache)

    data = _load_dir(BUNDLED_DIR, is_subset=True)
    log(
        f"MNIST not found; using the bundled subset ({len(data.train_images)} train / "
        f"{len(data.test_images)} test images) from {BUNDLED_DIR}. For full MNIST pass "
        f"--download (saves to {cache}) or --data-dir DIR."
    )
    return data


# --- downloading --------------------------------------------------------------------------------

DEFAULT_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

# MD5 of the UNCOMPRESSED content (docs/spec.md, "Data format"): a mirror may recompress the .gz
# (the train-images .gz of the copy this project was developed against is one: its .gz MD5 is
# e3fc4e8c..., not the standard f68b3c2d...), or an HTTP client may inflate it, and the pixels are
# still right. How these were obtained: the other three .gz files of that copy have the standard
# .gz MD5s, and `zcat FILE | md5sum` of each gave its content's.
STANDARD_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}


def content_md5(path: str | os.PathLike) -> str:
    """MD5 hex digest of the uncompressed content of `path` (gzip told apart by magic bytes)."""
    return hashlib.md5(_read_bytes(Path(path))).hexdigest()


def _mirror_list(mirrors: Iterable[str] | None) -> list[str]:
    if mirrors is None:
        env = os.environ.get("DPMLP_MNIST_MIRRORS", "")
        mirrors = [m.strip() for m in env.split(",") if m.strip()] or DEFAULT_MIRRORS
    return [m if m.endswith("/") else m + "/" for m in mirrors]


def _verify(path: Path, name: str, checksums: dict[str, str]) -> str | None:
    """None if `path` is a good copy of `name`, else why not.

    Files without a checksum entry are checked for structure only (read_idx).
    """
    try:
        if name in checksums:
            got = content_md5(path)
            if got != checksums[name]:
                return f"MD5 of content {got} != expected {checksums[name]}"
        else:
            read_idx(path)
    except DataError as e:
        return str(e)
    return None


#: requests' (connect, read) timeouts in seconds: an unreachable mirror fails fast, a slow one
#: still gets to send its file.
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 60.0


def short_reason(exc: BaseException) -> str:
    """A few words on why one mirror failed (requests' messages run to several hundred chars)."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"HTTP {status}" + (f" {response.reason}" if getattr(response, "reason", "") else "")
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    lowered = text.lower()
    if name == "ConnectTimeout" or "connecttimeout" in lowered:
        return f"no connection within {CONNECT_TIMEOUT:g} s"
    if name == "ReadTimeout" or "read timed out" in lowered:
        return f"no data for {READ_TIMEOUT:g} s"
    for needle, words in (("name or service not known", "host not found"),
                          ("nodename nor servname", "host not found"),
                          ("temporary failure in name resolution", "host not found (DNS)"),
                          ("failed to resolve", "host not found"),
                          ("connection refused", "connection refused"),
                          ("network is unreachable", "network unreachable"),
                          ("certificate verify failed", "TLS certificate rejected"),
                          ("connection reset", "connection reset")):
        if needle in lowered:
            return words
    return f"{name}: {text[:80]}{'...' if len(text) > 80 else ''}"


def _create_dirs(dest: Path) -> list[Path]:
    """mkdir -p dest; returns the directories created (deepest last), to undo on failure."""
    created, probe = [], dest.absolute()
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{dest}: cannot create download directory: {e.strerror or e}") from None
    return list(reversed(created))


def _remove_if_empty(created: list[Path]) -> None:
    for directory in reversed(created):  # deepest first
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (or gone): leave it and its parents


def download_mnist(
    dest_dir: str | os.PathLike,
    mirrors: Iterable[str] | None = None,
    checksums: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
) -> Path:
    """Download the four MNIST files into `dest_dir`, skipping those already there and valid.

    Mirrors are tried in order (`mirrors`, else $DPMLP_MNIST_MIRRORS, comma-separated, else
    DEFAULT_MIRRORS); `checksums` replaces STANDARD_MD5. Each file is fetched to a hidden
    temporary name in dest_dir, verified, then os.replace()d into place: an interrupted or bad
    download never appears under the final name and is deleted. A mirror that cannot be reached
    fails within CONNECT_TIMEOUT seconds and is reported in one short line as it fails.
    `progress` draws a byte-count bar on stderr (default: when stderr is a terminal). When the
    download fails, directories it created and left empty are removed.
    """
    import pooch  # the HTTP side (requests, redirects, streaming) is pooch's, not ours

    dest = Path(dest_dir)
    urls = _mirror_list(mirrors)
    checksums = STANDARD_MD5 if checksums is None else checksums
    if progress is None:
        progress = _isatty(sys.stderr)
    created = _create_dirs(dest)
    downloader = pooch.HTTPDownloader(progressbar=bool(progress), chunk_size=1 << 20,
                                      timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
    try:
        for name in ALL_FILES:
            _download_one(dest, name, urls, checksums, downloader, log)
    except BaseException:
        _remove_if_empty(created)
        raise
    return dest


def _download_one(dest, name, urls, checksums, downloader, log) -> None:
    final = dest / name
    if final.is_file():
        problem = _verify(final, name, checksums)
        if problem is None:
            return
        log(f"{final}: present but bad ({problem}); downloading it again")
    failures = []
    for number, base in enumerate(urls, 1):
        url = base + name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest)
        os.close(fd)
        try:
            log(f"downloading {url}")
            try:
                downloader(url, tmp, None)
                problem = _verify(Path(tmp), name, checksums)
            except Exception as e:  # any failure of one mirror (HTTP, DNS, TLS, timeout)
                problem = short_reason(e)
            else:
                if problem is not None:
                    problem = problem.replace(tmp, "download")
            if problem is None:
                os.replace(tmp, final)
                return
            failures.append(f"{base} ({problem})")
            log(f"{url}: failed ({problem})"
                + ("; trying the next mirror" if number < len(urls) else ""))
        finally:
            # Runs on success too (tmp is gone then), on a bad mirror, and on Ctrl-C.
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DataError(f"{final}: download failed from every mirror: {'; '.join(failures)}")


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
