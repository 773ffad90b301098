"""Checksummed, atomic downloads with the standard library.

A checksum is written ``"sha256:<hex>"`` or ``"md5:<hex>"``. A download streams into a temporary
file in the destination's directory and is renamed onto the destination (``os.replace``) only
once its checksum matches, so an interrupted or corrupt download never leaves a partial file.
A size cap (``max_bytes``) stops a server that sends more than the release's size.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import UsageError
from ..files import new_temp_file, stale_temporaries
from .errors import DataError

_HEX_LENGTHS = {"sha256": 64, "md5": 32}
_CHUNK = 1 << 20
_STALE_PART_S = 600.0  # a partial download untouched this long was left by a killed process


class ChecksumError(DataError):
    """A file's content does not match its pinned checksum."""


class DownloadError(UsageError, OSError):
    """No mirror delivered the file (network failure, HTTP error, too large, ...)."""


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"sha256:<hex>"`` / ``"md5:<hex>"`` into ``(algorithm, lowercase hex digest)``."""
    algorithm, sep, digest = checksum.partition(":")
    algorithm, digest = algorithm.strip().lower(), digest.strip().lower()
    if not sep or algorithm not in _HEX_LENGTHS:
        raise ValueError(f"checksum must look like 'sha256:<hex>' or 'md5:<hex>', got {checksum!r}")
    if len(digest) != _HEX_LENGTHS[algorithm] or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"malformed {algorithm} digest in checksum {checksum!r}")
    return algorithm, digest


def _hasher(algorithm: str) -> Any:
    if algorithm == "md5":  # integrity check against published MD5s, not a security use
        return hashlib.md5(usedforsecurity=False)
    return hashlib.new(algorithm)


def bytes_checksum(data: bytes, algorithm: str = "sha256") -> str:
    """Hex digest of ``data``."""
    h = _hasher(algorithm)
    h.update(data)
    return h.hexdigest()


def stream_checksum(stream: BinaryIO, algorithm: str = "sha256") -> str:
    """Hex digest of everything left in a binary stream."""
    h = _hasher(algorithm)
    while chunk := stream.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def file_checksum(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    with open(path, "rb") as f:
        return stream_checksum(f, algorithm)


def check_bytes(data: bytes, checksum: str, what: str) -> None:
    """Raise :class:`ChecksumError` naming ``what`` unless ``data`` matches ``checksum``."""
    algorithm, expected = parse_checksum(checksum)
    actual = bytes_checksum(data, algorithm)
    if actual != expected:
        raise ChecksumError(f"{what}: {algorithm} is {actual}, expected {expected}")


def check_file(path: str | os.PathLike, checksum: str) -> None:
    """Raise :class:`ChecksumError` unless the file at ``path`` matches ``checksum``."""
    algorithm, expected = parse_checksum(checksum)
    actual = file_checksum(path, algorithm)
    if actual != expected:
        raise ChecksumError(f"{path}: {algorithm} is {actual}, expected {expected}")


def download(urls: str | Sequence[str], dest: str | os.PathLike, checksum: str, *,
             timeout: float = 60.0, max_bytes: int | None = None) -> Path:
    """Download the first working URL of ``urls`` to ``dest`` and verify ``checksum``.

    An existing ``dest`` with the right checksum is kept without any network access. Mirrors are
    tried in order; a mirror that fails, serves wrong bytes or more than ``max_bytes`` is skipped.
    Only http(s) URLs are accepted. Raises :class:`ChecksumError` when every mirror served wrong
    bytes, otherwise :class:`DownloadError` listing each mirror's failure (one line). No temporary
    file is left behind.
    """
    url_list = [urls] if isinstance(urls, str) else list(urls)
    if not url_list:
        raise ValueError("download: no URL given")
    for url in url_list:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"download: only http(s) URLs are allowed, got {url!r}")
    algorithm, expected = parse_checksum(checksum)
    dest = Path(dest)
    if dest.is_file() and file_checksum(dest, algorithm) == expected:
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the folder {dest.parent} for {dest.name} ({e.strerror or e}); "
                            "set DUALTENSOR_DATA to a writable folder") from None
    for stale in stale_temporaries(dest.parent, {dest.name}, suffix=".part", older_than=_STALE_PART_S):
        stale.unlink(missing_ok=True)  # left by a killed download (a live one writes every second)
    failures: list[str] = []
    all_checksum = True
    for url in url_list:
        try:
            _fetch_verified(url, dest, algorithm, expected, timeout, max_bytes)
            return dest
        except ChecksumError as e:
            failures.append(f"{url}: {e}")
        except (OSError, http.client.HTTPException) as e:
            all_checksum = False
            failures.append(f"{url}: {type(e).__name__}: {e}")
    detail = "; ".join(failures)
    if all_checksum:
        raise ChecksumError(f"{dest.name}: every mirror served a file with the wrong checksum "
                            f"(nothing was saved): {detail}")
    raise DownloadError(f"could not download {dest.name}: {detail}")


def _fetch_verified(url: str, dest: Path, algorithm: str, expected: str, timeout: float,
                    max_bytes: int | None) -> None:
    """Stream ``url`` to a temporary file beside ``dest``; rename it onto ``dest`` if it verifies."""
    fd, tmp = new_temp_file(dest.parent, dest.name, suffix=".part")
    try:
        h = _hasher(algorithm)
        size = 0
        request = urllib.request.Request(url, headers={"User-Agent": "dualtensor-data"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if max_bytes is not None and length is not None and length.isdigit() and int(length) > max_bytes:
                raise DownloadError(f"announces {length} bytes, more than the {max_bytes} of the release")
            while chunk := resp.read(_CHUNK):
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise DownloadError(f"sent more than the {max_bytes} bytes of the release; stopped")
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if length is not None and length.isdigit() and int(length) != size:
            raise DownloadError(f"incomplete transfer: received {size} of {length} bytes")
        actual = h.hexdigest()
        if actual != expected:
            raise ChecksumError(f"{algorithm} of the {size} bytes received is {actual}, "
                                f"expected {expected}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
