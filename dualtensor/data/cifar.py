"""CIFAR-10 binary release: safe archive extraction and the record reader (never pickle).

``cifar-10-binary.tar.gz`` holds ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and
``test_batch.bin``; each record is one label byte followed by 3072 pixel bytes (1024 red, then
1024 green, then 1024 blue, each a 32x32 row-major plane), 10000 records per file.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from ..files import atomic_write_text, new_temp_file
from .download import ChecksumError, file_checksum
from .errors import DataError

BATCH_DIR = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
BATCH_FILES = TRAIN_FILES + (TEST_FILE,)
#: the sha256 of each batch file, written (``sha256sum`` format) when dualtensor extracts them from
#: the verified release archive, and checked whenever they are read
SUMS_FILE = "SHA256SUMS"
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32
NUM_CLASSES = 10


class ArchiveError(DataError):
    """An archive is malformed or lacks the expected members."""


class UnsafeArchiveError(ArchiveError):
    """An archive member could write outside the destination (absolute path, ``..``, link, device)."""


def parse_cifar_records(data: bytes, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Decode CIFAR-10 binary records into ``(images uint8 (N, 3, 32, 32), labels uint8 (N,))``."""
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise ArchiveError(f"{source}: {len(data)} bytes is not a positive multiple of the "
                           f"{RECORD_BYTES}-byte CIFAR-10 record")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].copy()
    if labels.max() >= NUM_CLASSES:
        raise ArchiveError(f"{source}: label {int(labels.max())} out of range 0..{NUM_CLASSES - 1}")
    images = records[:, 1:].reshape((-1,) + IMAGE_SHAPE).copy()
    return images, labels


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one ``*.bin`` batch file into ``(images uint8 (N, 3, 32, 32), labels uint8 (N,))``."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ArchiveError(f"{path}: cannot read ({e.strerror or e})") from None
    return parse_cifar_records(raw, str(path))


def read_cifar_dir(directory: str | os.PathLike) -> tuple[tuple[np.ndarray, np.ndarray],
                                                          tuple[np.ndarray, np.ndarray]]:
    """Read the five training batches and the test batch found in ``directory``."""
    directory = Path(directory)
    train = [read_cifar_batch(directory / name) for name in TRAIN_FILES]
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return (x_train, y_train), read_cifar_batch(directory / TEST_FILE)


def verify_batches(directory: str | os.PathLike) -> bool:
    """Check the batch files in ``directory`` against the :data:`SUMS_FILE` dualtensor wrote when it
    extracted them; False when there is none (a copy extracted by other means cannot be checked:
    the release publishes a checksum of the archive only). Raises :class:`ChecksumError`."""
    directory = Path(directory)
    try:
        lines = (directory / SUMS_FILE).read_text(encoding="ascii").splitlines()
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError) as e:
        raise ArchiveError(f"{directory / SUMS_FILE}: cannot read ({e})") from None
    recorded = {}
    for number, line in enumerate(lines, 1):
        digest, _, name = line.strip().partition(" ")
        if not line.strip():
            continue
        if len(digest) != 64 or not name.strip():
            raise ArchiveError(f"{directory / SUMS_FILE}: line {number} is not '<sha256>  <file name>'")
        recorded[name.strip().lstrip("*")] = digest.lower()
    for name in BATCH_FILES:
        path = directory / name
        expected = recorded.get(name, "").strip()
        actual = file_checksum(path, "sha256")
        if actual != expected:
            raise ChecksumError(f"{path}: sha256 {actual} differs from {expected or 'nothing'} recorded in "
                                f"{SUMS_FILE} when dualtensor extracted it from the verified archive; delete "
                                f"{directory} to extract it again")
    return True


def check_member(member: tarfile.TarInfo, dest: str | os.PathLike) -> None:
    """Raise :class:`UnsafeArchiveError` unless ``member`` is a plain file or directory whose
    relative path stays inside ``dest``; tarfile's ``data`` filter is applied too where available."""
    path = PurePosixPath(member.name)
    if member.name.startswith(("/", "\\")) or path.is_absolute():
        raise UnsafeArchiveError(f"archive member {member.name!r} has an absolute path")
    if ".." in path.parts or any(".." in part.split("\\") for part in path.parts):
        raise UnsafeArchiveError(f"archive member {member.name!r} contains '..'")
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "device or special file"
        raise UnsafeArchiveError(f"archive member {member.name!r} is a {kind}")
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        try:
            data_filter(member, os.fspath(dest))
        except tarfile.FilterError as e:
            raise UnsafeArchiveError(f"archive member {member.name!r} rejected: {e}") from e


def _member_path(name: str) -> str:
    """Member name with leading ``./`` removed, for matching."""
    return str(PurePosixPath(name))


def extract_cifar(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Extract only the six batch files of a CIFAR-10 binary archive into ``dest_dir/BATCH_DIR``.

    The whole archive is scanned in one streaming pass; any unsafe member (see
    :func:`check_member`) rejects the archive. Needed members are written to temporary files and
    renamed into place only after the scan succeeds, so nothing partial is left on failure; their
    sha256 go into :data:`SUMS_FILE` beside them (:func:`verify_batches`). Returns the directory
    holding the batch files.
    """
    out = Path(dest_dir) / BATCH_DIR
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArchiveError(f"cannot create {out} to extract {archive} into ({e.strerror or e})") from None
    wanted = {f"{BATCH_DIR}/{name}": name for name in BATCH_FILES}
    staged: dict[str, Path] = {}
    sums: dict[str, str] = {}
    try:
        try:
            with tarfile.open(archive, mode="r|*") as tar:
                for member in tar:
                    check_member(member, dest_dir)
                    name = _member_path(member.name)
                    if name not in wanted or not member.isfile():
                        continue
                    if name in staged:
                        raise ArchiveError(f"{archive}: member {name!r} appears twice")
                    if member.size == 0 or member.size % RECORD_BYTES:
                        raise ArchiveError(f"{archive}: member {name!r} has {member.size} bytes, "
                                           f"not a multiple of {RECORD_BYTES}")
                    source = tar.extractfile(member)
                    fd, staged[name] = new_temp_file(out, wanted[name], suffix=".part")
                    h = hashlib.sha256()
                    with os.fdopen(fd, "wb") as f, source:
                        while chunk := source.read(1 << 20):
                            h.update(chunk)
                            f.write(chunk)
                    sums[wanted[name]] = h.hexdigest()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
            raise ArchiveError(f"{archive}: cannot read archive ({type(e).__name__}: {e})") from e
        missing = sorted(set(wanted) - set(staged))
        if missing:
            raise ArchiveError(f"{archive}: missing members {', '.join(missing)}")
        for name, tmp in staged.items():
            os.replace(tmp, out / wanted[name])
        staged.clear()
        atomic_write_text(out / SUMS_FILE, "".join(f"{sums[n]}  {n}\n" for n in BATCH_FILES))
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return out
