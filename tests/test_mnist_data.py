"""core.data: IDX reading and validation, the search order, the bundled subset, downloads.

Bad files are built in tmp_path from small synthetic arrays; downloads go to a local HTTP server on
127.0.0.1 serving the bundled subset. Needs no GPU, no network and no full MNIST (except the one
full-MNIST test, which skips without it: see conftest's locator).
"""

import gzip
import hashlib
import http.server
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from core import data
from core.data import DataError
from core.errors import UserError

NAMES = data.ALL_FILES
rng = np.random.default_rng(0)


# --- helpers ------------------------------------------------------------------------------------


def idx_images(images, magic=2051, rows=28, cols=28):
    images = np.asarray(images, dtype=np.uint8)
    return struct.pack(">IIII", magic, len(images), rows, cols) + images.tobytes()


def idx_labels(labels, magic=2049):
    labels = np.asarray(labels, dtype=np.uint8)
    return struct.pack(">II", magic, len(labels)) + labels.tobytes()


def some_images(n):
    return rng.integers(0, 256, size=(n, 784), dtype=np.uint8)


def some_labels(n):
    return rng.integers(0, 10, size=n, dtype=np.uint8)


def write_mnist_dir(directory, n_train, n_test):
    """A directory holding four valid gz IDX files with n_train / n_test samples."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        img, lbl = data.FILES[prefix]
        (directory / img).write_bytes(gzip.compress(idx_images(some_images(n))))
        (directory / lbl).write_bytes(gzip.compress(idx_labels(some_labels(n))))
    return directory


def assert_data_error(fn, *args, names=()):
    """fn(*args) raises DataError whose one-line message contains every string in `names`."""
    with pytest.raises(DataError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for name in names:
        assert str(name) in msg, msg
    assert isinstance(info.value, UserError) and info.value.exit_code == 2
    return msg


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No test sees the real DPMLP_* variables or the real user cache."""
    monkeypatch.delenv("DPMLP_DATA_DIR", raising=False)
    monkeypatch.delenv("DPMLP_MNIST_MIRRORS", raising=False)
    monkeypatch.setenv("DPMLP_CACHE_DIR", str(tmp_path / "empty-cache"))
    # The local test server must not be reached through a proxy.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# --- read_idx: good files -----------------------------------------------------------------------


def test_images_layout_and_raw_equals_gz(tmp_path):
    images = some_images(5)
    raw = tmp_path / "imgs-raw"
    gz = tmp_path / "imgs.gz"
    raw.write_bytes(idx_images(images))
    gz.write_bytes(gzip.compress(idx_images(images)))
    a, b = data.read_idx(raw), data.read_idx(gz)
    assert a.dtype == np.uint8 and a.shape == (5, 784) and a.flags.c_contiguous
    np.testing.assert_array_equal(a, images)
    np.testing.assert_array_equal(a, b)
    # Pixel (row r, col c) of sample i sits at [i, 28 r + c]; the same buffer read column-major
    # as 784 x N is the trainer's matrix with one sample per column.
    img3 = images.reshape(5, 28, 28)
    assert a[3, 28 * 7 + 11] == img3[3, 7, 11]
    np.testing.assert_array_equal(a.reshape(-1).reshape(784, 5, order="F")[:, 2], images[2])
    a[0, 0] = 1  # writable


def test_labels_raw_equals_gz_and_suffix_is_ignored(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    # gzip content under a raw name and raw content under a .gz name: magic bytes decide.
    gz_named_raw = tmp_path / "labels-raw-content.gz"
    raw_named_gz = tmp_path / "labels-gz-content"
    gz_named_raw.write_bytes(idx_labels(labels))
    raw_named_gz.write_bytes(gzip.compress(idx_labels(labels)))
    for p in (gz_named_raw, raw_named_gz):
        got = data.read_idx(p)
        assert got.dtype == np.uint8 and got.shape == (10,)
        np.testing.assert_array_equal(got, labels)


def test_zero_samples_is_not_an_error(tmp_path):
    p = tmp_path / "empty-idx"
    p.write_bytes(idx_images(np.zeros((0, 784))))
    assert data.read_idx(p).shape == (0, 784)


# --- read_idx: bad files ------------------------------------------------------------------------

GOOD_IMAGES = idx_images(some_images(3))
GOOD_LABELS = idx_labels([1, 2, 3])


def _flip_middle(b):
    b = bytearray(b)
    for i in range(len(b) // 3, len(b) // 3 + 16):
        b[i] ^= 0xFF
    return bytes(b)


BAD = {
    "bad-magic": (struct.pack(">I", 2052) + GOOD_IMAGES[4:], "bad magic number 2052"),
    "float-data-type": (struct.pack(">I", 0x0D03) + GOOD_IMAGES[4:], "data type 0x0d, 3 dims"),
    "labels-2-dims": (struct.pack(">I", 0x0802) + GOOD_LABELS[4:], "data type 0x08, 2 dims"),
    "wrong-dims": (idx_images(np.zeros((3, 28 * 27)), rows=28, cols=27), "28x27"),
    "truncated": (GOOD_IMAGES[:-5], "truncated: header says 2352 bytes, found 2347"),
    "trailing": (GOOD_IMAGES + b"\0\0", "2 trailing bytes"),
    "truncated-labels": (GOOD_LABELS[:-1], "truncated: header says 3 bytes, found 2"),
    "truncated-header": (GOOD_IMAGES[:12], "truncated header"),
    "empty": (b"", "too short"),
    "label-10": (idx_labels([0, 9, 10, 1]), "label 10 at index 2"),
    "label-255": (idx_labels([255]), "outside 0..9"),
    "corrupt-gzip": (_flip_middle(gzip.compress(GOOD_IMAGES, mtime=0)), "gzip"),
    "truncated-gzip": (gzip.compress(GOOD_IMAGES, mtime=0)[:-20], "truncated gzip"),
    "gzip-bad-crc": (gzip.compress(GOOD_LABELS)[:-8] + b"\0" * 8, "corrupt gzip"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_raises_data_error_naming_it(tmp_path, case):
    content, expect = BAD[case]
    p = tmp_path / f"{case}-idx-ubyte.gz"
    p.write_bytes(content)
    assert_data_error(data.read_idx, p, names=[p, expect])


def test_missing_file(tmp_path):
    p = tmp_path / "nope" / "train-images-idx3-ubyte.gz"
    assert_data_error(data.read_idx, p, names=[p, "not found"])


def test_directory_instead_of_file(tmp_path):
    assert_data_error(data.read_idx, tmp_path, names=[tmp_path])


# --- load_split -----------------------------------------------------------------------------------


def test_load_split_count_mismatch_names_both_files(tmp_path):
    img, lbl = tmp_path / data.FILES["train"][0], tmp_path / data.FILES["train"][1]
    img.write_bytes(gzip.compress(idx_images(some_images(3))))
    lbl.write_bytes(gzip.compress(idx_labels(some_labels(4))))
    assert_data_error(data.load_split, tmp_path, "train", names=[img, lbl, "3 images", "4 labels"])


def test_load_split_swapped_files(tmp_path):
    img, lbl = tmp_path / data.FILES["t10k"][0], tmp_path / data.FILES["t10k"][1]
    img.write_bytes(gzip.compress(idx_labels(some_labels(3))))
    lbl.write_bytes(gzip.compress(idx_images(some_images(3))))
    msg = assert_data_error(data.load_split, tmp_path, "t10k",
                            names=[img, "is an MNIST labels file", "expected an MNIST images file"])
    assert "swapped" in msg


@pytest.mark.parametrize("content,kind", [
    (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "an HTML page"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "a PNG image"),
    (b"PK\x03\x04" + bytes(100), "a ZIP archive"),
    (b"just,some,csv\n1,2,3\n", "a text file"),
])
def test_non_idx_file_names_its_type(tmp_path, content, kind):
    p = tmp_path / data.FILES["train"][0]
    p.write_bytes(content)
    assert_data_error(data.read_idx, p, names=[p, "bad magic number", kind])


def test_load_split_missing_label_file(tmp_path):
    (tmp_path / data.FILES["train"][0]).write_bytes(idx_images(some_images(2)))
    assert_data_error(data.load_split, tmp_path, "train", names=[tmp_path / data.FILES["train"][1]])


def test_load_split_reads_gunzipped_names(tmp_path):
    images, labels = some_images(4), some_labels(4)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_images(images))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_labels(labels))
    x, y = data.load_split(tmp_path, "train")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


# --- the bundled subset ---------------------------------------------------------------------------


def test_bundled_subset_loads():
    tr_x, tr_y = data.load_split(data.BUNDLED_DIR, "train")
    te_x, te_y = data.load_split(data.BUNDLED_DIR, "t10k")
    assert tr_x.shape == (10_000, 784) and tr_y.shape == (10_000,)
    assert te_x.shape == (2_000, 784) and te_y.shape == (2_000,)
    for y in (tr_y, te_y):
        assert y.max() <= 9 and set(np.unique(y)) == set(range(10))
    # Real digits, not zeros: MNIST pixels average about 33.
    assert 25 < tr_x.mean() < 40 and tr_x.max() == 255
    # The first training label of MNIST is 5, the first test label 7.
    assert tr_y[0] == 5 and te_y[0] == 7
    total = sum((data.BUNDLED_DIR / n).stat().st_size for n in NAMES)
    assert total <= 4 * 1024 * 1024


# --- search order -------------------------------------------------------------------------------


@pytest.fixture
def three_dirs(tmp_path, monkeypatch):
    """--data-dir (3/1 samples), DPMLP_DATA_DIR (4/2) and the cache (5/3), all valid."""
    flag = write_mnist_dir(tmp_path / "flag", 3, 1)
    env = write_mnist_dir(tmp_path / "env", 4, 2)
    cache = write_mnist_dir(tmp_path / "cache", 5, 3)
    monkeypatch.setenv("DPMLP_DATA_DIR", str(env))
    monkeypatch.setenv("DPMLP_CACHE_DIR", str(cache))
    return flag, env, cache


def load_quiet(data_dir, download=False):
    logged = []
    d = data.locate_and_load(data_dir, download, log=logged.append)
    return d, logged


def test_order_data_dir_first(three_dirs):
    flag, _, _ = three_dirs
    d, logged = load_quiet(str(flag))
    assert (len(d.train_images), len(d.test_images)) == (3, 1)
    assert d.source == str(flag) and not d.is_subset and logged == []


def test_order_env_var_second(three_dirs):
    _, env, _ = three_dirs
    d, logged = load_quiet(None)
    assert (len(d.train_images), len(d.test_images)) == (4, 2)
    assert d.source == str(env) and not d.is_subset and logged == []


def test_order_cache_third(three_dirs, monkeypatch):
    _, _, cache = three_dirs
    monkeypatch.delenv("DPMLP_DATA_DIR")
    d, logged = load_quiet(None)
    assert (len(d.train_images), len(d.test_images)) == (5, 3)
    assert d.source == str(cache) and not d.is_subset and logged == []


def test_order_bundled_subset_last_with_one_log_line(tmp_path, monkeypatch):
    # A cache holding only some of the files is not used.
    partial = write_mnist_dir(tmp_path / "partial-cache", 2, 2)
    (partial / data.FILES["t10k"][1]).unlink()
    monkeypatch.setenv("DPMLP_CACHE_DIR", str(partial))
    d, logged = load_quiet(None)
    assert d.is_subset and d.source == str(data.BUNDLED_DIR)
    assert (len(d.train_images), len(d.test_images)) == (10_000, 2_000)
    assert len(logged) == 1 and "\n" not in logged[0]
    msg = logged[0]
    assert "bundled subset" in msg and "10000 train / 2000 test" in msg
    assert "--download" in msg and "--data-dir" in msg


def test_data_dir_without_files_is_an_error(tmp_path):
    empty = tmp_path / "no-mnist-here"
    empty.mkdir()
    assert_data_error(load_quiet, str(empty), names=[empty, "--download"])
    assert_data_error(load_quiet, str(tmp_path / "does-not-exist"),
                      names=["--data-dir", "does not exist", "--download"])
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_data_error(load_quiet, str(a_file), names=["--data-dir", a_file, "not a directory"])


def test_env_dir_without_files_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DPMLP_DATA_DIR", str(tmp_path))
    assert_data_error(load_quiet, None, names=[tmp_path, "DPMLP_DATA_DIR"])


def test_corrupt_file_in_data_dir_is_not_skipped(tmp_path):
    d = write_mnist_dir(tmp_path / "d", 3, 3)
    bad = d / data.FILES["t10k"][0]
    bad.write_bytes(bad.read_bytes()[:-30])
    assert_data_error(load_quiet, str(d), names=[bad])


def test_default_cache_dir_uses_platformdirs(monkeypatch):
    import platformdirs

    monkeypatch.delenv("DPMLP_CACHE_DIR")
    assert data.cache_dir() == Path(platformdirs.user_cache_dir("dpmlp")) / "mnist"


# --- download ---------------------------------------------------------------------------------------


BUNDLED = {n: (data.BUNDLED_DIR / n).read_bytes() for n in NAMES}
BUNDLED_MD5 = {n: hashlib.md5(gzip.decompress(b)).hexdigest() for n, b in BUNDLED.items()}


def _corrupted(gz_bytes):
    """A valid gzip of content that differs from the original in one pixel."""
    raw = bytearray(gzip.decompress(gz_bytes))
    raw[-1] ^= 0x01
    return gzip.compress(bytes(raw))


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.hits.append(self.path)
        body = self.server.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    """Mirrors on 127.0.0.1: /good/ serves the bundled subset, /bad/ a corrupted t10k-labels,
    /gunzipped/ raw IDX bytes under the .gz names, anything else 404."""
    pytest.importorskip("pooch", reason="pooch (a declared dependency) is not installed here")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.hits = []
    srv.routes = {}
    for n, b in BUNDLED.items():
        srv.routes[f"/good/{n}"] = b
        srv.routes[f"/bad/{n}"] = _corrupted(b) if n == "t10k-labels-idx1-ubyte.gz" else b
        srv.routes[f"/gunzipped/{n}"] = gzip.decompress(b)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def download(dest, mirrors, server, checksums=BUNDLED_MD5):
    server.hits.clear()
    logged = []
    data.download_mnist(dest, [server.base + m for m in mirrors], checksums, log=logged.append)
    return logged


def test_download_success(tmp_path, server):
    dest = tmp_path / "dl"
    download(dest, ["/good/"], server)
    assert sorted(os.listdir(dest)) == sorted(NAMES)
    for n in NAMES:
        assert (dest / n).read_bytes() == BUNDLED[n]
    d = data._load_dir(dest)
    assert len(d.train_images) == 10_000 and len(d.test_labels) == 2_000


def test_download_first_mirror_404_then_second(tmp_path, server):
    dest = tmp_path / "dl"
    download(dest, ["/missing/", "/good/"], server)
    assert sorted(os.listdir(dest)) == sorted(NAMES)
    assert f"/missing/{NAMES[0]}" in server.hits and f"/good/{NAMES[0]}" in server.hits


def test_download_verifies_uncompressed_content(tmp_path, server):
    # A mirror (or an HTTP client) may hand over inflated bytes: same content, same MD5.
    dest = tmp_path / "dl"
    download(dest, ["/gunzipped/"], server)
    assert data.content_md5(dest / NAMES[0]) == BUNDLED_MD5[NAMES[0]]
    assert data.read_idx(dest / NAMES[0]).shape == (10_000, 784)


def test_download_corrupted_mirror_leaves_nothing(tmp_path, server):
    dest = tmp_path / "dl"
    bad = "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DataError) as info:
        download(dest, ["/bad/", "/missing/"], server)
    msg = str(info.value)
    assert "\n" not in msg and bad in msg and "/bad/" in msg and "/missing/" in msg
    assert "MD5" in msg
    # The three good files are in place; the bad one is in dest under no name at all.
    assert sorted(os.listdir(dest)) == sorted(n for n in NAMES if n != bad)


def test_download_corrupted_mirror_then_good_one(tmp_path, server):
    dest = tmp_path / "dl"
    download(dest, ["/bad/", "/good/"], server)
    assert sorted(os.listdir(dest)) == sorted(NAMES)
    assert (dest / "t10k-labels-idx1-ubyte.gz").read_bytes() == BUNDLED["t10k-labels-idx1-ubyte.gz"]


def test_download_skips_valid_files_and_replaces_bad_ones(tmp_path, server):
    dest = tmp_path / "dl"
    download(dest, ["/good/"], server)
    assert len(server.hits) == 4
    download(dest, ["/good/"], server)
    assert server.hits == []
    # A present but broken file is fetched again, and only that one.
    (dest / NAMES[1]).write_bytes(b"junk")
    logged = download(dest, ["/good/"], server)
    assert server.hits == [f"/good/{NAMES[1]}"]
    assert (dest / NAMES[1]).read_bytes() == BUNDLED[NAMES[1]]
    assert any("present but bad" in line for line in logged)


def test_interrupted_download_leaves_no_file(tmp_path, server, monkeypatch):
    import pooch

    def half_then_interrupt(self, url, output_file, pooch_, check_only=False):
        with open(output_file, "wb") as f:
            f.write(b"\x1f\x8b partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", half_then_interrupt)
    dest = tmp_path / "dl"
    with pytest.raises(KeyboardInterrupt):
        download(dest, ["/good/"], server)
    assert not dest.exists()  # created by the download, left empty: removed


def test_mirrors_from_env_and_locate_and_load_download(tmp_path, server, monkeypatch):
    monkeypatch.setenv("DPMLP_MNIST_MIRRORS", f"{server.base}/missing, {server.base}/good/")
    monkeypatch.setattr(data, "STANDARD_MD5", BUNDLED_MD5)
    # With --data-dir: the files go there.
    target = tmp_path / "target"
    d, _ = load_quiet(str(target), download=True)
    assert d.source == str(target) and not d.is_subset and len(d.train_images) == 10_000
    assert sorted(os.listdir(target)) == sorted(NAMES)
    # Without: into the cache, which a later plain run then finds.
    cache = tmp_path / "cache"
    monkeypatch.setenv("DPMLP_CACHE_DIR", str(cache))
    d, _ = load_quiet(None, download=True)
    assert d.source == str(cache) and sorted(os.listdir(cache)) == sorted(NAMES)
    d, logged = load_quiet(None)
    assert d.source == str(cache) and not d.is_subset and logged == []


def test_all_mirrors_fail_names_file_and_mirrors(tmp_path, server):
    dest = tmp_path / "dl"
    with pytest.raises(DataError) as info:
        download(dest, ["/nothing-1/", "/nothing-2/"], server)
    msg = str(info.value)
    assert "\n" not in msg and NAMES[0] in msg
    assert "/nothing-1/" in msg and "/nothing-2/" in msg and "404" in msg
    assert not dest.exists()


def test_failed_download_leaves_no_empty_directories_but_keeps_existing_ones(tmp_path, server):
    deep = tmp_path / "a" / "b" / "c"
    with pytest.raises(DataError):
        download(deep, ["/nothing/"], server)
    assert os.listdir(tmp_path) == []  # a/b/c all created by it, all removed
    existing = tmp_path / "mine"
    existing.mkdir()
    with pytest.raises(DataError):
        download(existing, ["/nothing/"], server)
    assert existing.is_dir() and os.listdir(existing) == []


def test_each_failed_mirror_is_one_short_line(tmp_path, server):
    logged = download(tmp_path / "dl", ["/missing/", "/good/"], server)
    failed = [line for line in logged if "failed" in line]
    assert len(failed) == len(NAMES)
    for name, line in zip(NAMES, failed):
        assert line == f"{server.base}/missing/{name}: failed (HTTP 404 Not Found); trying the next mirror"


def test_unreachable_mirror_fails_fast_in_one_short_line(tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logged = []
    began = time.monotonic()
    with pytest.raises(DataError) as info:
        data.download_mnist(tmp_path / "dl", [f"http://127.0.0.1:{port}/"], BUNDLED_MD5,
                            log=logged.append)
    assert time.monotonic() - began < 30
    assert "connection refused" in str(info.value) and len(str(info.value)) < 300
    assert logged[-1] == f"http://127.0.0.1:{port}/{NAMES[0]}: failed (connection refused)"


def test_download_uses_a_short_connect_timeout(tmp_path, monkeypatch):
    import pooch

    seen = {}

    class Recorder:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def __call__(self, url, output_file, pooch_):
            raise RuntimeError("stop here")

    monkeypatch.setattr(pooch, "HTTPDownloader", Recorder)
    with pytest.raises(DataError):
        data.download_mnist(tmp_path / "dl", ["http://127.0.0.1:9/"], log=lambda s: None,
                            progress=False)
    assert seen["timeout"] == (data.CONNECT_TIMEOUT, data.READ_TIMEOUT)
    assert data.CONNECT_TIMEOUT <= 15 and seen["progressbar"] is False


def test_download_progress_bar_on_request(tmp_path, server, capfd):
    server.hits.clear()
    data.download_mnist(tmp_path / "dl", [server.base + "/good/"], BUNDLED_MD5,
                        log=lambda s: None, progress=True)
    assert "100%" in capfd.readouterr().err


@pytest.mark.parametrize("exc_name,text,expect", [
    ("ConnectTimeout", "HTTPSConnectionPool(host='x', port=443): Max retries exceeded ... "
     "(Caused by ConnectTimeoutError(...))", "no connection within"),
    ("ConnectionError", "HTTPSConnectionPool(host='nosuch.invalid', port=443): Max retries "
     "exceeded (Caused by NameResolutionError: Failed to resolve 'nosuch.invalid' ([Errno -2] "
     "Name or service not known))", "host not found"),
    ("ReadTimeout", "HTTPSConnectionPool: Read timed out. (read timeout=60)", "no data for"),
])
def test_short_reason(exc_name, text, expect):
    exc = type(exc_name, (Exception,), {})(text)
    assert data.short_reason(exc).startswith(expect)


# --- full MNIST, where available ------------------------------------------------------------------


def test_full_mnist(full_mnist_dir):
    directory = full_mnist_dir
    tr_x, tr_y = data.load_split(directory, "train")
    te_x, te_y = data.load_split(directory, "t10k")
    assert tr_x.shape == (60_000, 784) and tr_y.shape == (60_000,)
    assert te_x.shape == (10_000, 784) and te_y.shape == (10_000,)
    for n in NAMES:
        path = data._find_file(directory, n)
        assert data.content_md5(path) == data.STANDARD_MD5[n], n
    # The bundled subset is the head of full MNIST.
    sub_x, sub_y = data.load_split(data.BUNDLED_DIR, "train")
    np.testing.assert_array_equal(sub_x, tr_x[:10_000])
    np.testing.assert_array_equal(sub_y, tr_y[:10_000])
