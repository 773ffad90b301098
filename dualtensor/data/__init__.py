"""Datasets and minibatches for dualtensor's experiments.

``load(name, ...)`` returns normalised (N, C, H, W) float images with int64 labels split into
train/val/test (see :func:`load` and the lookup order in :mod:`dualtensor.data.datasets`);
``batches(x, y, batch_size, seed=..., epoch=...)`` iterates over them in a reproducible order.
Readers never unpickle: IDX (MNIST, Fashion-MNIST) and the CIFAR-10 binary release only.
"""
from .batching import Batches, batches, epoch_order
from .cifar import ArchiveError, UnsafeArchiveError, extract_cifar, read_cifar_batch
from .datasets import (
                       DATASETS,
                       DatasetNotFoundError,
                       DatasetSpec,
                       Split,
                       Splits,
                       cache_dir,
                       get_spec,
                       load,
                       load_raw,
                       mirror_bases,
                       search_dirs,
                       split_indices,
)
from .download import ChecksumError, DownloadError, download, file_checksum, parse_checksum
from .errors import DataError
from .idx import IDXError, read_idx, write_idx

__all__ = [
    "DATASETS", "ArchiveError", "Batches", "ChecksumError", "DataError", "DatasetNotFoundError", "DatasetSpec",
    "DownloadError", "IDXError", "Split", "Splits", "UnsafeArchiveError", "batches", "cache_dir",
    "download", "epoch_order", "extract_cifar", "file_checksum", "get_spec", "load", "load_raw",
    "mirror_bases", "parse_checksum", "read_cifar_batch", "read_idx", "search_dirs", "split_indices", "write_idx",
]
