"""Tests of dualtensor.data: readers, safe extraction, downloads (loopback only), loading, batches."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import re
import stat
import subprocess
import sys
import tarfile
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from dualtensor import data
from dualtensor.data import cifar, datasets
from dualtensor.data.datasets import RemoteFile
from dualtensor.data.download import ChecksumError, DownloadError
from dualtensor.data.idx import IDXError, encode_idx, parse_idx

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def sha256(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets an empty cache directory."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DUALTENSOR_DATA", str(cache))
    return cache


# ----------------------------------------------------------------------------- loopback server

class _Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncated: dict[str, bytes] = {}
        self.unlimited: dict[str, bytes] = {}  # served without Content-Length (close-delimited)
        self.sent: dict[str, int] = {}  # bytes of an ``unlimited`` body written before the client left
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                if self.path in server.files:
                    body = server.files[self.path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path in server.truncated:  # promise more bytes than are sent
                    body = server.truncated[self.path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(2 * len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path in server.unlimited:
                    body, sent = server.unlimited[self.path], 0
                    try:
                        self.send_response(200)
                        self.end_headers()  # HTTP/1.0, no Content-Length: the body ends at close
                        for start in range(0, len(body), 1 << 16):
                            self.wfile.write(body[start:start + (1 << 16)])
                            self.wfile.flush()
                            sent += len(body[start:start + (1 << 16)])
                        self.close_connection = True
                    except (ConnectionError, OSError):
                        self.close_connection = True
                    finally:
                        server.sent[self.path] = sent
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ----------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a.idx.gz", "a.idx"])
def test_idx_round_trip(tmp_path, dtype, name):
    rng = np.random.default_rng(0)
    array = (rng.normal(size=(5, 3, 4)) * 50).astype(dtype)
    path = data.write_idx(tmp_path / name, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = data.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_idx_checksum_is_of_uncompressed_content(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    raw = encode_idx(labels)
    gz = data.write_idx(tmp_path / "l.gz", labels)
    plain = data.write_idx(tmp_path / "l", labels)
    for path in (gz, plain):
        np.testing.assert_array_equal(data.read_idx(path, sha256(raw)), labels)
        md5 = "md5:" + hashlib.md5(raw).hexdigest()
        np.testing.assert_array_equal(data.read_idx(path, md5), labels)
        with pytest.raises(ChecksumError, match="uncompressed content"):
            data.read_idx(path, sha256(raw + b"x"))


def test_idx_header_fields():
    raw = encode_idx(np.zeros((2, 3), np.uint8))
    assert raw[:4] == b"\x00\x00\x08\x02" and raw[4:12] == b"\x00\x00\x00\x02\x00\x00\x00\x03"
    assert len(raw) == 12 + 6


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x01" + b[1:], "magic"),
    (lambda b: b[:2] + b"\x07" + b[3:], "dtype code"),
    (lambda b: b[:3] + b"\x00" + b[4:], "zero dimensions"),
    (lambda b: b[:6], "truncated header"),
    (lambda b: b[:-1], "truncated payload"),
    (lambda b: b + b"\x00", "trailing"),
    (lambda b: b[:3], "too short"),
])
def test_idx_corrupt(mutate, message):
    raw = encode_idx(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    with pytest.raises(IDXError, match=message):
        parse_idx(mutate(raw))


def test_idx_corrupt_gzip(tmp_path):
    compressed = gzip.compress(encode_idx(np.arange(1000, dtype=np.int32)))
    path = tmp_path / "bad.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(IDXError, match="gzip"):
        data.read_idx(path)


# ----------------------------------------------------------------------------- CIFAR-10

def cifar_records(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
    return records.tobytes(), images, labels


def add_member(tar: tarfile.TarFile, name: str, payload: bytes = b"", **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(payload) if payload else None)


def make_cifar_archive(path: Path, n: int = 3, extra=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A tiny cifar-10-binary.tar.gz with ``n`` records per batch file; ``extra(tar)`` adds more."""
    contents = {}
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, cifar.BATCH_DIR, type=tarfile.DIRTYPE, mode=0o755)
        add_member(tar, f"{cifar.BATCH_DIR}/batches.meta.txt", b"airplane\n")
        for i, name in enumerate(cifar.BATCH_FILES):
            raw, images, labels = cifar_records(n, i)
            add_member(tar, f"{cifar.BATCH_DIR}/{name}", raw)
            contents[name] = (images, labels)
        if extra is not None:
            extra(tar)
    return contents


def test_cifar_record_layout():
    raw, images, labels = cifar_records(2, 0)
    x, y = cifar.parse_cifar_records(raw)
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.uint8
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    # record = label, then the 1024-byte red plane (row-major), green, blue
    assert raw[0] == labels[0] and raw[1 + 1024 + 32 * 2 + 5] == images[0, 1, 2, 5]


@pytest.mark.parametrize("raw, message", [
    (b"", "multiple"), (b"\x00" * 3072, "multiple"), (b"\x0a" + b"\x00" * 3072, "label 10"),
])
def test_cifar_records_corrupt(raw, message):
    with pytest.raises(cifar.ArchiveError, match=message):
        cifar.parse_cifar_records(raw)


def test_cifar_extract_and_read(tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    contents = make_cifar_archive(archive)
    out = data.extract_cifar(archive, tmp_path / "dest")
    assert out == tmp_path / "dest" / cifar.BATCH_DIR
    assert leftovers(out) == sorted([*cifar.BATCH_FILES, cifar.SUMS_FILE])  # the needed members, no temp files
    assert cifar.verify_batches(out)
    (x_train, y_train), (x_test, y_test) = cifar.read_cifar_dir(out)
    assert x_train.shape == (15, 3, 32, 32) and y_train.shape == (15,)
    np.testing.assert_array_equal(x_train[3:6], contents["data_batch_2.bin"][0])
    np.testing.assert_array_equal(y_test, contents["test_batch.bin"][1])


@pytest.mark.parametrize("unsafe", [
    dict(name="/etc/evil.bin"),
    dict(name="cifar-10-batches-bin/../../evil.bin"),
    dict(name="../evil.bin"),
    dict(name="cifar-10-batches-bin/data_batch_1.bin", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
    dict(name="cifar-10-batches-bin/link", type=tarfile.LNKTYPE,
         linkname="cifar-10-batches-bin/test_batch.bin"),
    dict(name="cifar-10-batches-bin/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
    dict(name="cifar-10-batches-bin/fifo", type=tarfile.FIFOTYPE),
])
def test_cifar_unsafe_members_rejected(tmp_path, unsafe):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    attrs = dict(unsafe)
    name = attrs.pop("name")
    payload = b"x" if attrs.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else b""
    make_cifar_archive(archive, n=1, extra=lambda tar: add_member(tar, name, payload, **attrs))
    dest = tmp_path / "dest"
    with pytest.raises(data.UnsafeArchiveError):
        data.extract_cifar(archive, dest)
    assert leftovers(dest / cifar.BATCH_DIR) == []  # nothing extracted, no temp files
    assert not (tmp_path / "evil.bin").exists()


def test_cifar_archive_missing_member_and_garbage(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_member(tar, f"{cifar.BATCH_DIR}/data_batch_1.bin", cifar_records(1, 0)[0])
    with pytest.raises(cifar.ArchiveError, match="missing members"):
        data.extract_cifar(archive, tmp_path / "dest")
    assert leftovers(tmp_path / "dest" / cifar.BATCH_DIR) == []
    archive.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(cifar.ArchiveError, match="cannot read"):
        data.extract_cifar(archive, tmp_path / "dest")


def test_load_cifar10_from_archive(tmp_path, isolated_cache):
    make_cifar_archive(tmp_path / "cifar-10-binary.tar.gz", n=4)
    with pytest.raises(ChecksumError, match="not the official"):  # verify=True pins the archive
        data.load("cifar10", data_dir=tmp_path, download=False)
    s = data.load("cifar10", data_dir=tmp_path, download=False, verify=False, val_size=5)
    assert (len(s.train), len(s.val), len(s.test)) == (15, 5, 4)
    assert s.train.x.shape[1:] == (3, 32, 32) == s.input_shape and s.train.y.dtype == np.int64
    assert s.mean == datasets.SPECS["cifar10"].mean
    # extracted into the cache, which the next load finds directly
    assert leftovers(isolated_cache / "cifar10" / cifar.BATCH_DIR) == sorted([*cifar.BATCH_FILES, cifar.SUMS_FILE])
    (tmp_path / "cifar-10-binary.tar.gz").unlink()
    again = data.load("cifar10", download=False, verify=False, val_size=5)
    np.testing.assert_array_equal(again.test.x, s.test.x)


# ----------------------------------------------------------------------------- downloads

def test_parse_checksum():
    assert data.parse_checksum("SHA256:" + "AB" * 32) == ("sha256", "ab" * 32)
    assert data.parse_checksum("md5:" + "0" * 32) == ("md5", "0" * 32)
    for bad in ("ab" * 32, "sha1:" + "0" * 40, "sha256:abc", "md5:" + "g" * 32):
        with pytest.raises(ValueError):
            data.parse_checksum(bad)


def test_download_verifies_and_reuses(tmp_path, server):
    body = b"payload " * 1000
    server.files["/f.bin"] = body
    dest = tmp_path / "d" / "f.bin"
    assert data.download(server.url + "/f.bin", dest, sha256(body)) == dest
    assert dest.read_bytes() == body and leftovers(dest.parent) == ["f.bin"]
    # an existing verified file is kept without touching the network
    md5 = "md5:" + hashlib.md5(body).hexdigest()
    data.download(server.url + "/f.bin", dest, md5)
    assert server.requests == ["/f.bin"]


def test_download_mirror_fallback(tmp_path, server):
    body = b"second mirror"
    server.files["/m2/f.bin"] = body
    dest = tmp_path / "f.bin"
    data.download([server.url + "/m1/f.bin", server.url + "/m2/f.bin"], dest, sha256(body))
    assert dest.read_bytes() == body
    assert server.requests == ["/m1/f.bin", "/m2/f.bin"]


def test_download_checksum_mismatch_leaves_nothing(tmp_path, server):
    server.files["/f.bin"] = b"tampered"
    dest = tmp_path / "f.bin"
    with pytest.raises(ChecksumError, match="wrong checksum") as err:
        data.download(server.url + "/f.bin", dest, sha256(b"original"))
    assert hashlib.sha256(b"tampered").hexdigest() in str(err.value)
    assert leftovers(tmp_path) == []


def test_download_is_atomic(tmp_path, server):
    """A failed download neither leaves a partial file nor clobbers an existing one."""
    server.truncated["/f.bin"] = b"half of it"
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="incomplete"):
        data.download(server.url + "/f.bin", dest, sha256(b"half of it" * 2))
    assert leftovers(tmp_path) == []
    dest.write_bytes(b"old corrupt copy")
    with pytest.raises(DownloadError, match="404"):
        data.download(server.url + "/missing.bin", dest, sha256(b"good"))
    assert dest.read_bytes() == b"old corrupt copy" and leftovers(tmp_path) == ["f.bin"]


def test_download_rejects_non_http(tmp_path):
    (tmp_path / "src").write_bytes(b"x")
    with pytest.raises(ValueError, match="http"):
        data.download((tmp_path / "src").as_uri(), tmp_path / "dst", sha256(b"x"))


# ----------------------------------------------------------------------------- IDX datasets

def write_mnist_like(directory: Path, n_train: int = 30, n_test: int = 7, gz: bool = True
                     ) -> dict[str, bytes]:
    """Synthetic MNIST-layout files; returns name -> file bytes."""
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for stem, array in arrays.items():
        path = data.write_idx(directory / (stem + ".gz" if gz else stem), array)
        out[stem + ".gz"] = path.read_bytes()
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_data_dir(tmp_path, gz):
    write_mnist_like(tmp_path / "mnist", gz=gz)
    with pytest.raises(ChecksumError, match="official mnist release"):
        data.load("mnist", data_dir=tmp_path, download=False)
    s = data.load("mnist", data_dir=tmp_path, download=False, verify=False, val_size=10, seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (20, 10, 7)
    assert s.train.x.shape == (20, 1, 28, 28) and s.train.x.dtype == np.float32
    raw_train, _ = data.load_raw("mnist", data_dir=tmp_path, download=False, verify=False)
    keep, carved = data.split_indices(30, 10, 3)
    expected = (raw_train[0][carved] / np.float32(255) - np.float32(0.13066048)) / np.float32(0.3081078)
    np.testing.assert_allclose(s.val.x, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(s.train.y, raw_train[1][keep])


def test_missing_dataset_message(tmp_path, isolated_cache):
    with pytest.raises(FileNotFoundError) as err:
        data.load("mnist", data_dir=tmp_path / "here", download=False)
    assert isinstance(err.value, data.DatasetNotFoundError)
    message = str(err.value)
    assert "\n" not in message and f"into {tmp_path / 'here'};" in message
    for f in datasets.SPECS["mnist"].files:
        assert f.name in message
    assert f"from {datasets.SPECS['mnist'].mirrors[0]}" in message
    assert str(isolated_cache / "mnist") in message and "downloads are off" in message
    with pytest.raises(FileNotFoundError) as err:
        data.load("cifar10", download=False)
    assert f"into {isolated_cache / 'cifar10'};" in str(err.value)
    assert "cifar-10-binary.tar.gz" in str(err.value) and cifar.BATCH_DIR in str(err.value)


def test_download_failure_is_reported_as_missing(monkeypatch, server):
    spec = dataclasses.replace(datasets.SPECS["mnist"], mirrors=(server.url + "/none/",))
    monkeypatch.setitem(datasets.SPECS, "mnist", spec)
    with pytest.raises(data.DatasetNotFoundError, match="(?s)download failed.*404"):
        data.load("mnist")


def test_load_downloads_into_cache(tmp_path, monkeypatch, server, isolated_cache):
    files = write_mnist_like(tmp_path / "src", n_train=12, n_test=3)
    for name, body in files.items():
        server.files[f"/mirror/{name}"] = body
    spec = dataclasses.replace(
        datasets.SPECS["mnist"], mirrors=(server.url + "/down/", server.url + "/mirror/"),
        files=tuple(RemoteFile(name, sha256(body)) for name, body in files.items()))
    monkeypatch.setitem(datasets.SPECS, "mnist", spec)
    s = data.load("mnist", val_size=2, verify=False)
    assert (len(s.train), len(s.val), len(s.test)) == (10, 2, 3)
    assert leftovers(isolated_cache / "mnist") == sorted(files)
    count = len(server.requests)
    data.load("mnist", val_size=2, verify=False)  # now served from the cache
    assert len(server.requests) == count


# ----------------------------------------------------------------------------- digits, splits

def test_digits_shapes_normalisation_and_splits():
    s = data.load("digits")
    assert s.name == "digits" and s.num_classes == 10 and s.input_shape == (1, 8, 8)
    assert (len(s.train), len(s.val), len(s.test)) == (1258, 180, 359)
    for split in (s.train, s.val, s.test):
        x, y = split
        assert x.dtype == np.float32 and x.shape[1:] == (1, 8, 8) and y.dtype == np.int64
        assert y.min() >= 0 and y.max() <= 9
    # statistics come from the official training set (train + val), which they standardise
    full = np.concatenate([s.train.x, s.val.x])
    assert abs(float(full.mean())) < 1e-5 and abs(float(full.std()) - 1) < 1e-4
    unit = data.load("digits", normalize=False, dtype="float64")
    assert unit.train.x.dtype == np.float64 and unit.mean == (0.0,) and unit.std == (1.0,)
    assert unit.train.x.min() == 0 and unit.train.x.max() == 1
    np.testing.assert_allclose((unit.train.x - s.mean[0]) / s.std[0], s.train.x, atol=1e-5)
    # every image appears in exactly one split
    (x_train, _), (x_test, _) = data.load_raw("digits")
    assert len(x_train) + len(x_test) == 1797
    all_rows = np.concatenate([unit.train.x, unit.val.x, unit.test.x]).reshape(1797, -1) * 16
    raw_rows = np.concatenate([x_train, x_test]).reshape(1797, -1)
    assert sorted(map(bytes, all_rows.astype(np.uint8))) == sorted(map(bytes, raw_rows))


def test_split_determinism_and_limit():
    a, b, c = data.load("digits", seed=1), data.load("digits", seed=1), data.load("digits", seed=2)
    np.testing.assert_array_equal(a.val.x, b.val.x)
    np.testing.assert_array_equal(a.train.y, b.train.y)
    assert not np.array_equal(a.val.x, c.val.x)
    np.testing.assert_array_equal(a.test.x, c.test.x)  # the test set does not depend on the seed
    small = data.load("digits", seed=1, limit=100)
    assert len(small.train) == 100 and len(small.val) == 180
    np.testing.assert_array_equal(small.train.x, a.train.x[:100])
    assert small.mean == a.mean
    none = data.load("digits", val_size=0)
    assert len(none.val) == 0 and len(none.train) == 1438


def test_split_indices():
    keep, carved = data.split_indices(100, 30, 7)
    again = data.split_indices(100, 30, 7)
    np.testing.assert_array_equal(keep, again[0])
    np.testing.assert_array_equal(carved, again[1])
    assert len(carved) == 30 and np.all(np.diff(carved) > 0) and np.all(np.diff(keep) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([keep, carved])), np.arange(100))
    with pytest.raises(ValueError):
        data.split_indices(10, 11, 0)


def test_load_argument_errors():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="floating"):
        data.load("digits", dtype="int32")
    with pytest.raises(ValueError, match="val_size"):
        data.load("digits", val_size=5000)
    with pytest.raises(ValueError, match="limit"):
        data.load("digits", limit=0)
    assert data.get_spec("Fashion_MNIST").name == "fashion-mnist"
    assert data.get_spec("CIFAR-10").name == "cifar10"
    assert set(data.DATASETS) == {"digits", "mnist", "fashion-mnist", "cifar10"}


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian():
    assert DEBIAN_FASHION in data.search_dirs("fashion-mnist")
    s = data.load("fashion-mnist", download=False)  # verify=True: content checksums and counts
    assert (len(s.train), len(s.val), len(s.test)) == (50000, 10000, 10000)
    assert s.train.x.shape == (50000, 1, 28, 28) and s.test.y.dtype == np.int64
    assert np.bincount(s.test.y).tolist() == [1000] * 10
    # the conventional constants standardise the full training set
    full = np.concatenate([s.train.x, s.val.x])
    assert abs(float(full.mean())) < 1e-3 and abs(float(full.std()) - 1) < 1e-3


# ----------------------------------------------------------------------------- batches

def test_batches_determinism_coverage_and_resume():
    x = np.arange(103)
    y = x * 10
    b = data.batches(x, y, 10, seed=5, epoch=2)
    assert len(b) == 11
    first = [(xb.copy(), yb.copy()) for xb, yb in b]
    assert [len(xb) for xb, _ in first] == [10] * 10 + [3]
    for xb, yb in first:
        np.testing.assert_array_equal(yb, xb * 10)
    seen = np.concatenate([xb for xb, _ in first])
    np.testing.assert_array_equal(np.sort(seen), x)
    assert not np.array_equal(seen, x)
    # same (seed, epoch) -> same order, even from a fresh iterator (resumed run)
    again = np.concatenate([xb for xb, _ in data.batches(x, y, 10, seed=5, epoch=2)])
    np.testing.assert_array_equal(again, seen)
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in b]), seen)
    other_epoch = np.concatenate([xb for xb, _ in data.batches(x, y, 10, seed=5, epoch=3)])
    other_seed = np.concatenate([xb for xb, _ in data.batches(x, y, 10, seed=6, epoch=2)])
    assert not np.array_equal(other_epoch, seen) and not np.array_equal(other_seed, seen)
    np.testing.assert_array_equal(seen, data.epoch_order(103, 5, 2))


def test_batches_drop_last_and_no_shuffle():
    x = np.arange(25).reshape(25, 1)
    y = np.arange(25)
    b = data.batches(x, y, 8, drop_last=True, seed=0)
    assert len(b) == 3 and [len(yb) for _, yb in b] == [8, 8, 8]
    plain = data.batches(x, y, 8, shuffle=False)
    assert len(plain) == 4
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in plain]), y)
    assert len(data.batches(x, y, 5, drop_last=True)) == len(data.batches(x, y, 5)) == 5
    with pytest.raises(ValueError):
        data.batches(x, y[:3], 8)
    with pytest.raises(ValueError):
        data.batches(x, y, 0)
    with pytest.raises(ValueError):
        data.batches(x, y, 8, device="tpu")


def test_import_is_lazy():
    code = ("import sys, dualtensor.data; "
            "print('cupy' in sys.modules, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["False", "False"]


def test_batches_gpu_device_uses_backend(monkeypatch):
    """device='gpu' hands every batch to dualtensor.backend.to_device (faked: no GPU needed)."""
    import dualtensor.backend as backend

    calls = []
    monkeypatch.setattr(backend, "to_device", lambda a, device: calls.append(device) or a)
    x, y = np.arange(10.0).reshape(10, 1), np.arange(10)
    out = list(data.batches(x, y, 4, device="gpu"))
    assert len(out) == 3 and calls == ["gpu"] * 6


# ----------------------------------------------------------------------------- mirrors, size caps, batch sums, modes

def assert_one_line(error: BaseException) -> str:
    """The message of a data error: one line, and no hint to turn verification off."""
    message = str(error)
    assert "\n" not in message and "verify=False" not in message, message
    return message


def serve_mnist_like(tmp_path: Path, server: _Server, prefixes, n_train: int = 12, n_test: int = 3
                     ) -> dict[str, bytes]:
    """Synthetic MNIST files served under each of ``prefixes`` ("/m/", ...); returns name -> bytes."""
    files = write_mnist_like(tmp_path / "src", n_train=n_train, n_test=n_test)
    for prefix in prefixes:
        for name, body in files.items():
            server.files[prefix + name] = body
    return files


def patch_mnist(monkeypatch, server: _Server, files: dict[str, bytes], **changes) -> datasets.DatasetSpec:
    """Point the mnist spec at synthetic ``files``; its built-in mirror must never be used."""
    spec = dataclasses.replace(
        datasets.SPECS["mnist"], mirrors=(server.url + "/builtin-must-not-be-used/",),
        files=tuple(RemoteFile(name, sha256(body)) for name, body in files.items()), **changes)
    monkeypatch.setitem(datasets.SPECS, "mnist", spec)
    return spec


def prefixes_of(requests: list[str]) -> set[str]:
    return {r.rsplit("/", 1)[0] + "/" for r in requests}


def test_mirror_override_replaces_builtin(tmp_path, monkeypatch, server, isolated_cache):
    monkeypatch.delenv(datasets.MIRRORS_ENV, raising=False)
    files = serve_mnist_like(tmp_path, server, ["/m/", "/builtin-must-not-be-used/"])
    patch_mnist(monkeypatch, server, files)
    s = data.load("mnist", mirrors=[server.url + "/m/"], verify=False, val_size=2)
    assert (len(s.train), len(s.val), len(s.test)) == (10, 2, 3)
    assert sorted(server.requests) == sorted(f"/m/{name}" for name in files)
    assert leftovers(isolated_cache / "mnist") == sorted(files)
    for name, body in files.items():
        assert (isolated_cache / "mnist" / name).read_bytes() == body
    # a single string is one base URL, too
    assert data.mirror_bases(datasets.SPECS["mnist"], server.url + "/m/") == (server.url + "/m/",)


def test_mirror_override_still_enforces_checksums(tmp_path, monkeypatch, server, isolated_cache):
    monkeypatch.delenv(datasets.MIRRORS_ENV, raising=False)
    files = write_mnist_like(tmp_path / "src", n_train=12, n_test=3)
    for name, body in files.items():
        server.files[f"/m/{name}"] = body + b"tampered"  # the mirror serves other bytes
    patch_mnist(monkeypatch, server, files)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load("mnist", mirrors=[server.url + "/m/"], verify=False, val_size=2)
    message = assert_one_line(err.value)
    assert "checksum" in message
    assert server.requests and prefixes_of(server.requests) == {"/m/"}
    assert leftovers(isolated_cache / "mnist") == []  # nothing saved, no temporary left


def test_mirrors_from_environment(tmp_path, monkeypatch, server, isolated_cache):
    files = serve_mnist_like(tmp_path, server, ["/e/", "/m/", "/builtin-must-not-be-used/"])
    patch_mnist(monkeypatch, server, files)
    # spaces and commas both separate; the first base fails (404), the second serves
    monkeypatch.setenv(datasets.MIRRORS_ENV, f"{server.url}/down/, {server.url}/e/")
    assert data.mirror_bases(datasets.SPECS["mnist"]) == (server.url + "/down/", server.url + "/e/")
    s = data.load("mnist", verify=False, val_size=2)
    assert len(s.test) == 3
    first = sorted(files)[0]
    assert server.requests[:2] in [[f"/down/{n}", f"/e/{n}"] for n in files]
    assert prefixes_of(server.requests) == {"/down/", "/e/"}
    assert {r for r in server.requests if r.startswith("/e/")} == {f"/e/{n}" for n in files}
    assert (isolated_cache / "mnist" / first).read_bytes() == files[first]

    # the mirrors argument wins over the variable
    monkeypatch.setenv("DUALTENSOR_DATA", str(tmp_path / "cache2"))
    server.requests.clear()
    monkeypatch.setenv(datasets.MIRRORS_ENV, f"{server.url}/e/")
    data.load("mnist", mirrors=[server.url + "/m/"], verify=False, val_size=2)
    assert sorted(server.requests) == sorted(f"/m/{n}" for n in files)

    # a blank variable means the built-in mirrors
    monkeypatch.setenv(datasets.MIRRORS_ENV, "  ")
    assert data.mirror_bases(datasets.SPECS["mnist"]) == (server.url + "/builtin-must-not-be-used/",)


def test_mirror_dataset_placeholder_and_missing_slash(tmp_path, monkeypatch, server, isolated_cache):
    monkeypatch.delenv(datasets.MIRRORS_ENV, raising=False)
    files = serve_mnist_like(tmp_path, server, ["/mnist/", "/m/"])
    patch_mnist(monkeypatch, server, files)
    spec = datasets.SPECS["mnist"]
    assert data.mirror_bases(spec, [server.url + "/{dataset}/x"]) == (server.url + "/mnist/x/",)
    data.load("mnist", mirrors=[server.url + "/{dataset}/"], verify=False, val_size=2)
    assert sorted(server.requests) == sorted(f"/mnist/{n}" for n in files)

    monkeypatch.setenv("DUALTENSOR_DATA", str(tmp_path / "cache2"))
    server.requests.clear()
    s = data.load("mnist", mirrors=[server.url + "/m"], verify=False, val_size=2)  # no trailing slash
    assert len(s.train) == 10
    assert sorted(server.requests) == sorted(f"/m/{n}" for n in files)


@pytest.mark.parametrize("base", ["ftp://x/", "file:///tmp/", "/just/a/path/"])
def test_mirror_must_be_http(tmp_path, monkeypatch, server, base):
    files = serve_mnist_like(tmp_path, server, ["/m/"])
    patch_mnist(monkeypatch, server, files)
    monkeypatch.delenv(datasets.MIRRORS_ENV, raising=False)
    with pytest.raises(data.DataError) as err:
        data.load("mnist", mirrors=[server.url + "/m/", base], verify=False, val_size=2)
    assert base in assert_one_line(err.value)
    monkeypatch.setenv(datasets.MIRRORS_ENV, f"{server.url}/m/ {base}")
    with pytest.raises(data.DataError) as err:
        data.load("mnist", verify=False, val_size=2)
    message = assert_one_line(err.value)
    assert base in message and datasets.MIRRORS_ENV in message
    assert server.requests == []  # rejected before any download


def test_cli_mirror_option(tmp_path, monkeypatch, server, isolated_cache):
    from dualtensor.__main__ import main

    monkeypatch.delenv(datasets.MIRRORS_ENV, raising=False)
    files = serve_mnist_like(tmp_path, server, ["/m/"], n_train=12, n_test=4)
    spec = dataclasses.replace(
        datasets.SPECS["mnist"], mirrors=(server.url + "/builtin-must-not-be-used/",),
        files=tuple(RemoteFile(name, sha256(body)) for name, body in files.items()),  # content None
        train_size=12, test_size=4, default_val_size=2)
    monkeypatch.setitem(datasets.SPECS, "mnist", spec)
    code = main(["train", "--dataset", "mnist", "--mirror", server.url + "/m/", "--val-size", "2",
                 "--limit", "8", "--batch-size", "4", "--epochs", "1", "--width", "8", "--k", "2", "--quiet",
                 "--threads", "1", "--out", str(tmp_path / "run")])
    assert code == 0
    assert sorted(server.requests) == sorted(f"/m/{n}" for n in files)
    assert leftovers(isolated_cache / "mnist") == sorted(files)


def test_download_size_cap_announced(tmp_path, server):
    body = b"0123456789" * 100
    server.files["/big.bin"] = body
    server.files["/ok/big.bin"] = body
    dest = tmp_path / "d" / "big.bin"
    with pytest.raises(DownloadError) as err:
        data.download(server.url + "/big.bin", dest, sha256(body), max_bytes=999)
    message = assert_one_line(err.value)
    assert "1000" in message and "999" in message
    assert leftovers(dest.parent) == []
    # exactly the cap is fine
    assert data.download(server.url + "/ok/big.bin", dest, sha256(body), max_bytes=1000).read_bytes() == body


def test_download_size_cap_unannounced(tmp_path, server):
    small = b"fits under the cap"
    server.unlimited["/small.bin"] = small
    dest = tmp_path / "d" / "f.bin"
    # a close-delimited body within the cap downloads normally
    assert data.download(server.url + "/small.bin", dest, sha256(small), max_bytes=100).read_bytes() == small
    dest.unlink()

    huge = bytes(range(256)) * (48 << 12)  # 48 MiB, no Content-Length
    server.unlimited["/huge.bin"] = huge
    with pytest.raises(DownloadError) as err:
        data.download(server.url + "/huge.bin", dest, sha256(huge), max_bytes=1000)
    message = assert_one_line(err.value)
    assert "1000" in message
    assert leftovers(dest.parent) == []
    for _ in range(200):  # the handler records what it wrote once the client hung up
        if "/huge.bin" in server.sent:
            break
        threading.Event().wait(0.025)
    assert server.sent.get("/huge.bin", len(huge)) < len(huge) // 2  # stopped early, did not read it all

    # the next mirror is tried after a mirror that sends too much
    server.requests.clear()
    server.files["/ok/f.bin"] = small
    data.download([server.url + "/huge.bin", server.url + "/ok/f.bin"], dest, sha256(small), max_bytes=100)
    assert dest.read_bytes() == small and server.requests == ["/huge.bin", "/ok/f.bin"]
    assert leftovers(dest.parent) == ["f.bin"]


def test_load_enforces_release_size(tmp_path, monkeypatch, server, isolated_cache):
    monkeypatch.delenv(datasets.MIRRORS_ENV, raising=False)
    files = serve_mnist_like(tmp_path, server, ["/m/"])
    cap = 17
    assert all(len(body) > cap for body in files.values())
    spec = dataclasses.replace(
        datasets.SPECS["mnist"], mirrors=(server.url + "/m/",),
        files=tuple(RemoteFile(name, sha256(body), size=cap) for name, body in files.items()))
    monkeypatch.setitem(datasets.SPECS, "mnist", spec)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load("mnist", verify=False, val_size=2)
    message = assert_one_line(err.value)
    reason = message.split("download failed:", 1)[1]
    assert re.search(rf"(?<![\d.:]){cap}(?!\d)", reason) and "bytes" in reason
    assert leftovers(isolated_cache / "mnist") == []


def cifar_spec_for(monkeypatch, n: int) -> None:
    """Let verify=True accept ``n`` records per synthetic batch file (the official counts are 50000/10000)."""
    spec = dataclasses.replace(datasets.SPECS["cifar10"], train_size=5 * n, test_size=n)
    monkeypatch.setitem(datasets.SPECS, "cifar10", spec)


def test_cifar_cached_batches_are_checked(tmp_path, monkeypatch, isolated_cache):
    make_cifar_archive(tmp_path / "cifar-10-binary.tar.gz", n=4)
    data.load("cifar10", data_dir=tmp_path, download=False, verify=False, val_size=5)
    (tmp_path / "cifar-10-binary.tar.gz").unlink()
    cifar_spec_for(monkeypatch, 4)
    batches = isolated_cache / "cifar10" / cifar.BATCH_DIR
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recorded sums: checked, no warning
        s = data.load("cifar10", download=False, val_size=5)
    assert (len(s.train), len(s.test)) == (15, 4)

    victim = batches / "data_batch_3.bin"
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0x01
    victim.write_bytes(bytes(raw))
    with pytest.raises(data.ChecksumError) as err:
        data.load("cifar10", download=False, val_size=5)
    message = assert_one_line(err.value)
    assert "data_batch_3.bin" in message
    assert all(f"{name}" not in message for name in cifar.BATCH_FILES if name != "data_batch_3.bin")
    # verify=False still reads it
    assert len(data.load("cifar10", download=False, verify=False, val_size=5).train) == 15


def test_cifar_hand_made_batches_warn(tmp_path, monkeypatch):
    folder = tmp_path / "hand" / cifar.BATCH_DIR
    folder.mkdir(parents=True)
    for i, name in enumerate(cifar.BATCH_FILES):
        (folder / name).write_bytes(cifar_records(2, i)[0])
    cifar_spec_for(monkeypatch, 2)
    with pytest.warns(UserWarning, match="cannot be checked"):
        s = data.load("cifar10", data_dir=tmp_path / "hand", download=False, val_size=3)
    assert (len(s.train), len(s.val), len(s.test)) == (7, 3, 2)
    np.testing.assert_array_equal(s.test.y, cifar_records(2, 5)[2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verify=False: no check, no warning
        data.load("cifar10", data_dir=tmp_path / "hand", download=False, verify=False, val_size=3)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_umask(tmp_path, server, isolated_cache, umask, mode):
    body = b"some release file"
    server.files["/f.bin"] = body
    make_cifar_archive(tmp_path / "cifar-10-binary.tar.gz", n=1)
    old = os.umask(umask)
    try:
        dest = data.download(server.url + "/f.bin", tmp_path / "dl" / "f.bin", sha256(body))
        data.load("cifar10", data_dir=tmp_path, download=False, verify=False, val_size=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(dest).st_mode) == mode
    batches = isolated_cache / "cifar10" / cifar.BATCH_DIR
    written = [batches / name for name in (*cifar.BATCH_FILES, cifar.SUMS_FILE)]
    assert {p.name: oct(stat.S_IMODE(os.stat(p).st_mode)) for p in written} == {p.name: oct(mode) for p in written}


@pytest.mark.parametrize("sums", ["deadbeef\n", "not a line at all\n", "\xff\n"], ids=["short", "garbage", "binary"])
def test_a_damaged_sha256sums_is_a_data_error(tmp_path, isolated_cache, monkeypatch, sums):
    make_cifar_archive(tmp_path / "cifar-10-binary.tar.gz", n=4)
    data.load("cifar10", data_dir=tmp_path, download=False, verify=False, val_size=5)
    batches = isolated_cache / "cifar10" / cifar.BATCH_DIR
    (batches / cifar.SUMS_FILE).write_bytes(sums.encode("latin-1"))
    cifar_spec_for(monkeypatch, 4)
    with pytest.raises(data.DataError) as err:
        data.load("cifar10", download=False, val_size=5)
    assert cifar.SUMS_FILE in str(err.value) and "\n" not in str(err.value)


def test_an_unusable_cache_folder_is_a_clear_error(tmp_path, monkeypatch, server):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("DUALTENSOR_DATA", str(tmp_path / "afile"))
    spec = dataclasses.replace(datasets.SPECS["mnist"], mirrors=(server.url + "/m/",))
    monkeypatch.setitem(datasets.SPECS, "mnist", spec)
    with pytest.raises(data.DatasetNotFoundError, match="DUALTENSOR_DATA") as err:
        data.load("mnist")
    assert "\n" not in str(err.value) and server.requests == []
