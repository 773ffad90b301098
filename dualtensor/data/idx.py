"""Reader and writer for the IDX format of MNIST and Fashion-MNIST, gzipped or raw.

Layout: two zero bytes, a dtype code, the number of dimensions ``ndim``, then ``ndim`` big-endian
uint32 sizes and the big-endian payload in C order. Every field is validated, so a corrupt or
truncated file raises :class:`IDXError` instead of yielding a wrong array.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .download import check_bytes
from .errors import DataError

# IDX dtype code -> big-endian numpy dtype
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXError(DataError):
    """A file is not a well-formed IDX file."""


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file into a native-endian array."""
    if len(data) < 4:
        raise IDXError(f"{source}: too short for an IDX header ({len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise IDXError(f"{source}: bad magic number 0x{data[:4].hex()} (an IDX file starts with "
                       "two zero bytes)")
    if code not in IDX_DTYPES:
        raise IDXError(f"{source}: unknown IDX dtype code 0x{code:02x}")
    if ndim == 0:
        raise IDXError(f"{source}: IDX header declares zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{source}: truncated header (needs {header} bytes, file has {len(data)})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise IDXError(f"{source}: truncated payload: shape {shape} of {dtype.name} needs "
                       f"{expected} bytes, found {got}")
    if got > expected:
        raise IDXError(f"{source}: {got - expected} unexpected trailing bytes after the payload "
                       f"of shape {shape}")
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def read_idx_bytes(path: str | os.PathLike) -> bytes:
    """The uncompressed bytes of an IDX file; gzip is detected from the content, not the name."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise IDXError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise IDXError(f"{path}: corrupt or truncated gzip data ({e})") from e


def read_idx(path: str | os.PathLike, checksum: str | None = None) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a native-endian array.

    ``checksum`` (``"sha256:..."`` or ``"md5:..."``), if given, is checked against the
    *uncompressed* content, so a file matches whether or not it is gzipped or recompressed.
    Raises :class:`IDXError` for a malformed file and ``ChecksumError`` for a mismatch.
    """
    data = read_idx_bytes(path)
    if checksum is not None:
        check_bytes(data, checksum, f"{path} (uncompressed content)")
    return parse_idx(data, str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (dtype must be one of :data:`IDX_DTYPES`)."""
    array = np.asarray(array)
    matches = [(code, dtype) for code, dtype in IDX_DTYPES.items()
               if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize]
    if not matches:
        raise TypeError(f"encode_idx: dtype {array.dtype} has no IDX code")
    code, dtype = matches[0]
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"encode_idx: IDX supports 1 to 255 dimensions, got {array.ndim}")
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzip it when ``compress`` (default: name ends in ``.gz``)."""
    path = Path(path)
    data = encode_idx(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
