"""The datasets (digits, mnist, fashion-mnist, cifar10): where their files are, and loading.

Lookup order for the files of dataset ``NAME`` (the first directory holding all of them wins):

1. ``data_dir/NAME``, then ``data_dir`` itself (the ``data_dir`` argument, CLI ``--data-dir``);
2. the cache ``cache_dir()/NAME`` (env ``DUALTENSOR_DATA``, default ``~/.cache/dualtensor``);
3. system copies: ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``);
4. with ``download=True``, a download into the cache from the first working mirror, verified
   against a pinned checksum.

MNIST-like files may be gzipped or not. CIFAR-10 may be present as the extracted
``cifar-10-batches-bin/`` directory or as ``cifar-10-binary.tar.gz``, which is then verified
and safely extracted into the cache. ``digits`` ships inside scikit-learn and needs no files.

With ``verify=True`` (default) local files must match the official release: IDX files by the
checksum of their uncompressed content (so Debian's recompressed copies pass), the CIFAR-10
archive by its own checksum and the batches dualtensor extracted from it by the checksums it
recorded then (``SHA256SUMS``), and every dataset by its official sample counts.

Mirrors: each dataset has built-in mirrors; ``mirrors`` (CLI ``--mirror``) or the environment
variable ``DUALTENSOR_MIRRORS`` (base URLs separated by spaces or commas) replace them. A base URL
may contain ``{dataset}``, replaced by the dataset's name; the file name is appended. Checksums
and the release's file sizes are enforced whatever the mirror.
"""
from __future__ import annotations

import os
import sys
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from . import cifar
from .download import ChecksumError, DownloadError, check_file
from .download import download as fetch
from .errors import DataError
from .idx import IDXError, read_idx

Arrays = tuple[np.ndarray, np.ndarray]


MIRRORS_ENV = "DUALTENSOR_MIRRORS"


class DatasetNotFoundError(UsageError, FileNotFoundError):
    """A dataset's files are nowhere to be found and could not be downloaded."""


@dataclass(frozen=True)
class RemoteFile:
    """A file of a dataset release.

    ``checksum`` and ``size`` pin the file as served by the mirrors (a download stops past
    ``size`` bytes); ``content``, when known, pins its uncompressed content (used to verify local
    copies, gzipped or not).
    """

    name: str
    checksum: str
    content: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset. ``mean``/``std`` of ``None``: computed from the official
    training set (before the validation split)."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    train_size: int
    test_size: int
    default_val_size: int
    max_value: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    class_names: tuple[str, ...]
    files: tuple[RemoteFile, ...] = ()
    mirrors: tuple[str, ...] = ()
    system_dirs: tuple[str, ...] = ()


# Checksums. Downloads: sha256 and size of the served files, from TensorFlow Datasets' url_checksums
# (mnist.txt, fashion_mnist.txt, cifar10.txt), whose sizes match the official releases.
# Uncompressed contents: MNIST by the widely published MD5s of the raw IDX files; Fashion-MNIST by
# sha256 computed from Debian's dataset-fashion-mnist files, whose uncompressed MD5s equal the
# published ones (f4a8712d..., 9018921c..., 8181f547..., 15d48437...).
_MNIST_FILES = (
    RemoteFile("train-images-idx3-ubyte.gz",
               "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
               "md5:6bbc9ace898e44ae57da46a324031adb", 9912422),
    RemoteFile("train-labels-idx1-ubyte.gz",
               "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
               "md5:a25bea736e30d166cdddb491f175f624", 28881),
    RemoteFile("t10k-images-idx3-ubyte.gz",
               "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
               "md5:2646ac647ad5339dbf082846283269ea", 1648877),
    RemoteFile("t10k-labels-idx1-ubyte.gz",
               "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
               "md5:27ae3e4e09519cfbb04c329615203637", 4542),
)
_FASHION_FILES = (
    RemoteFile("train-images-idx3-ubyte.gz",
               "sha256:3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
               "sha256:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 26421880),
    RemoteFile("train-labels-idx1-ubyte.gz",
               "sha256:a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
               "sha256:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 29515),
    RemoteFile("t10k-images-idx3-ubyte.gz",
               "sha256:346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
               "sha256:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 4422102),
    RemoteFile("t10k-labels-idx1-ubyte.gz",
               "sha256:67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
               "sha256:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 5148),
)
_CIFAR10_ARCHIVE = RemoteFile(
    "cifar-10-binary.tar.gz",
    "sha256:c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", size=170052171)

_DIGIT_NAMES = tuple(str(i) for i in range(10))
DIGITS_TEST_FRACTION = 0.2
DIGITS_VAL_FRACTION = 0.1
_DIGITS_TEST_SEED = 0
_DIGITS_SIZE = 1797
_DIGITS_TEST = round(DIGITS_TEST_FRACTION * _DIGITS_SIZE)

SPECS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        "digits", 10, (1, 8, 8), _DIGITS_SIZE - _DIGITS_TEST, _DIGITS_TEST,
        round(DIGITS_VAL_FRACTION * _DIGITS_SIZE), 16, None, None, _DIGIT_NAMES),
    "mnist": DatasetSpec(
        "mnist", 10, (1, 28, 28), 60000, 10000, 10000, 255, (0.13066048,), (0.30810780,),
        _DIGIT_NAMES, _MNIST_FILES,
        ("https://ossci-datasets.s3.amazonaws.com/mnist/",
         "https://storage.googleapis.com/cvdf-datasets/mnist/")),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", 10, (1, 28, 28), 60000, 10000, 10000, 255, (0.28604060,), (0.35302424,),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"), _FASHION_FILES,
        ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
         "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
        ("/usr/share/datasets/fashion-mnist",)),
    "cifar10": DatasetSpec(
        "cifar10", 10, (3, 32, 32), 50000, 10000, 10000, 255,
        (0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (_CIFAR10_ARCHIVE,), ("https://www.cs.toronto.edu/~kriz/",)),
}
DATASETS: tuple[str, ...] = tuple(SPECS)
_ALIASES = {"cifar-10": "cifar10", "fashion": "fashion-mnist", "fmnist": "fashion-mnist"}


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name`` (case-insensitive; ``_`` and ``-`` are equivalent)."""
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return SPECS[key]


def cache_dir() -> Path:
    """The download cache: ``$DUALTENSOR_DATA`` if set, else ``~/.cache/dualtensor``."""
    env = os.environ.get("DUALTENSOR_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dualtensor"


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The directories searched for dataset ``name``, in lookup order."""
    spec = get_spec(name)
    dirs: list[Path] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        dirs += [root / spec.name, root]
    dirs.append(cache_dir() / spec.name)
    dirs += [Path(d) for d in spec.system_dirs]
    return list(dict.fromkeys(dirs))


def _idx_path(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.exists():  # a directory or unreadable file is reported by the reader
            return candidate
    return None


def _find_idx(spec: DatasetSpec, dirs: list[Path]) -> list[Path] | None:
    for d in dirs:
        paths = [_idx_path(d, f.name) for f in spec.files]
        if all(p is not None for p in paths):
            return paths  # type: ignore[return-value]
    return None


def _find_cifar_batches(dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / cifar.BATCH_DIR, d):
            if all((candidate / f).exists() for f in cifar.BATCH_FILES):
                return candidate
    return None


def mirror_bases(spec: DatasetSpec, mirrors: Any = None) -> tuple[str, ...]:
    """The base URLs downloads of ``spec`` try, in order: ``mirrors`` if given, else the environment
    variable :data:`MIRRORS_ENV`, else the built-in ones; ``{dataset}`` is replaced by the name."""
    source, given = "--mirror", mirrors
    if given is None and os.environ.get(MIRRORS_ENV, "").strip():
        source, given = MIRRORS_ENV, os.environ[MIRRORS_ENV].replace(",", " ").split()
    if given is None:
        return spec.mirrors
    bases = []
    for base in ([given] if isinstance(given, str) else list(given)):
        if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
            raise DataError(f"{source}: {base!r} is not an http(s) URL")
        base = base.replace("{dataset}", spec.name)
        bases.append(base if base.endswith("/") else base + "/")
    return tuple(bases)


def _not_found(spec: DatasetSpec, dirs: list[Path], data_dir: Any, reason: str) -> DatasetNotFoundError:
    target = Path(data_dir).expanduser() if data_dir is not None else cache_dir() / spec.name
    what = ", ".join(f.name for f in spec.files)
    if spec.name == "cifar10":
        what += f" (or its extracted {cifar.BATCH_DIR}/)"
    hint = (f"; on Debian/Ubuntu `apt-get install dataset-fashion-mnist` provides them in {spec.system_dirs[0]}"
            if spec.system_dirs else "")
    return DatasetNotFoundError(f"dataset {spec.name!r} not found (searched {', '.join(map(str, dirs))}); put "
                                f"{what} from {spec.mirrors[0]} into {target}{hint}; not downloaded: {reason}")


def _download_all(spec: DatasetSpec, files: tuple[RemoteFile, ...], dirs: list[Path], data_dir: Any,
                  mirrors: Any) -> None:
    target = cache_dir() / spec.name
    bases = mirror_bases(spec, mirrors)
    try:
        for f in files:
            print(f"dualtensor: downloading {f.name} ({spec.name}) into {target}", file=sys.stderr)
            fetch([m + f.name for m in bases], target / f.name, f.checksum, max_bytes=f.size)
    except (DownloadError, ChecksumError) as e:
        raise _not_found(spec, dirs, data_dir, f"download failed: {e}") from e


def _official(e: ChecksumError, spec: DatasetSpec) -> ChecksumError:
    return ChecksumError(f"{e}: not the official {spec.name} release; replace the file with the release's")


def _load_idx(spec: DatasetSpec, data_dir: Any, download: bool, verify: bool, mirrors: Any
              ) -> tuple[Arrays, Arrays]:
    dirs = search_dirs(spec.name, data_dir)
    paths = _find_idx(spec, dirs)
    if paths is None:
        if not download:
            raise _not_found(spec, dirs, data_dir, "downloads are off")
        target = cache_dir() / spec.name
        _download_all(spec, tuple(f for f in spec.files if _idx_path(target, f.name) is None),
                      dirs, data_dir, mirrors)
        paths = _find_idx(spec, [target])
        assert paths is not None
    arrays = []
    for f, path in zip(spec.files, paths, strict=True):
        try:
            arrays.append(read_idx(path, f.content if verify else None))
        except ChecksumError as e:
            raise _official(e, spec) from None
    x_train, y_train, x_test, y_test = arrays
    return (_as_images(spec, x_train, paths[0]), y_train), (_as_images(spec, x_test, paths[2]), y_test)


def _as_images(spec: DatasetSpec, images: np.ndarray, path: Path) -> np.ndarray:
    if images.ndim != 3 or images.shape[1:] != spec.input_shape[1:]:
        raise IDXError(f"{path}: expected images of shape (N, {spec.input_shape[1]}, "
                       f"{spec.input_shape[2]}), got {images.shape}")
    return images[:, None]


def _load_cifar10(spec: DatasetSpec, data_dir: Any, download: bool, verify: bool, mirrors: Any
                  ) -> tuple[Arrays, Arrays]:
    dirs = search_dirs(spec.name, data_dir)
    batches = _find_cifar_batches(dirs)
    if batches is not None:
        checked = verify and cifar.verify_batches(batches)
        arrays = cifar.read_cifar_dir(batches)
        if verify and not checked:
            warnings.warn(f"{batches}: CIFAR-10 batches not extracted by dualtensor, so they cannot be checked "
                          f"against the release (only its archive has a published checksum)", stacklevel=3)
        return arrays
    archive_spec = spec.files[0]
    archive = next((d / archive_spec.name for d in dirs if (d / archive_spec.name).is_file()), None)
    if archive is not None:
        if verify:
            try:
                check_file(archive, archive_spec.checksum)
            except ChecksumError as e:
                raise _official(e, spec) from None
    elif download:
        _download_all(spec, spec.files, dirs, data_dir, mirrors)
        archive = cache_dir() / spec.name / archive_spec.name
    else:
        raise _not_found(spec, dirs, data_dir, "downloads are off")
    print(f"dualtensor: extracting {archive} into {cache_dir() / spec.name}", file=sys.stderr)
    return cifar.read_cifar_dir(cifar.extract_cifar(archive, cache_dir() / spec.name))


def _load_digits() -> tuple[Arrays, Arrays]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from e
    bunch = load_digits()
    images = np.asarray(bunch.images)
    if images.min() < 0 or images.max() > 16 or not np.array_equal(images, np.round(images)):
        raise ValueError("scikit-learn digits: expected integer pixels in 0..16")
    x = images.astype(np.uint8)[:, None]
    y = np.asarray(bunch.target).astype(np.uint8)
    train_idx, test_idx = split_indices(len(y), _DIGITS_TEST, _DIGITS_TEST_SEED)
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


def load_raw(name: str, data_dir: str | os.PathLike | None = None, download: bool = True,
             verify: bool = True, mirrors: Any = None) -> tuple[Arrays, Arrays]:
    """The official train and test sets as ``((x_train, y_train), (x_test, y_test))``.

    Images are uint8 shaped (N, C, H, W), labels uint8. For ``digits`` the "official" test set
    is a fixed 20% of the 1797 images (seed 0, independent of any training seed). ``mirrors``:
    base URLs replacing the built-in ones (see the module docstring).
    Raises :class:`DatasetNotFoundError` (a ``FileNotFoundError``) saying which files to put where,
    and a :class:`DataError` for a file that is unreadable, malformed or not the release.
    """
    spec = get_spec(name)
    if spec.name == "digits":
        train, test = _load_digits()
    elif spec.name == "cifar10":
        train, test = _load_cifar10(spec, data_dir, download, verify, mirrors)
    else:
        train, test = _load_idx(spec, data_dir, download, verify, mirrors)
    for split, (x, y), size in (("train", train, spec.train_size), ("test", test, spec.test_size)):
        if x.shape[1:] != spec.input_shape or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{spec.name} {split} set: {len(x)} images of shape {x.shape[1:]} and labels of shape "
                            f"{y.shape} do not match (N, {', '.join(map(str, spec.input_shape))}) and (N,)")
        if len(y) and int(y.max()) >= spec.num_classes:
            raise DataError(f"{spec.name} {split} set: label {int(y.max())} out of range 0..{spec.num_classes - 1}")
        if verify and len(y) != size:
            raise DataError(f"{spec.name} {split} set: {len(y)} samples, the official release has {size}")
    return train, test


def split_indices(n: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Carve ``n_val`` of ``n`` samples: ``(kept, carved)`` sorted index arrays.

    ``carved`` is the first ``n_val`` entries of ``np.random.default_rng(seed).permutation(n)``;
    both keep the original sample order, so the split depends on ``seed`` only.
    """
    if not 0 <= n_val <= n:
        raise ValueError(f"cannot carve {n_val} samples out of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass(frozen=True, eq=False)
class Split:
    """Images ``x`` (N, C, H, W) and int64 labels ``y`` (N,); unpacks as ``x, y = split``."""

    x: np.ndarray
    y: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.x, self.y))

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"Split(x={self.x.dtype}{self.x.shape}, y={self.y.dtype}{self.y.shape})"


@dataclass(frozen=True, eq=False)
class Splits:
    """A loaded dataset: ``train``/``val``/``test`` splits plus metadata.

    ``mean``/``std`` are the per-channel constants that were applied (0 and 1 when not
    normalised): ``x = (pixels / max_value - mean) / std``.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load(name: str, data_dir: str | os.PathLike | None = None, download: bool = True,
         val_size: int | None = None, seed: int = 0, dtype: Any = "float32",
         limit: int | None = None, normalize: bool = True, verify: bool = True, mirrors: Any = None) -> Splits:
    """Load ``name`` (one of :data:`DATASETS`) as normalised float images and int64 labels.

    * Splits: the official test set; a validation set of ``val_size`` samples carved from the
      official training set with :func:`split_indices` (``seed``), the rest is ``train``. Default
      ``val_size``: 10000 (mnist, fashion-mnist, cifar10 - the paper's convention) and 10% of the
      1797 images (180) for digits, whose test set is a fixed 20% (359).
    * ``limit``: keep only the first ``limit`` training samples (quick runs); val/test unchanged.
    * Normalisation: pixels / max_value (255; 16 for digits) into [0, 1], then per-channel
      ``(x - mean) / std``. mnist, fashion-mnist and cifar10 use the conventional constants
      (statistics of the full official training set); digits has none, so its statistics are
      computed the same way, from its whole training set (train + val, 1438 images), which keeps
      them independent of ``seed`` and ``limit``. ``normalize=False`` stops at [0, 1].
    * ``dtype``: floating dtype of the images (float32 default, or float64).
    * ``data_dir``, ``download``, ``verify``, ``mirrors``: see the module docstring and :func:`load_raw`.
    """
    spec = get_spec(name)
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"load: dtype must be a floating dtype, got {dtype}")
    if limit is not None and limit < 1:
        raise ValueError(f"load: limit must be a positive int, got {limit}")
    (x_train, y_train), (x_test, y_test) = load_raw(spec.name, data_dir, download, verify, mirrors)
    n_val = spec.default_val_size if val_size is None else int(val_size)
    if not 0 <= n_val < len(y_train):
        raise ValueError(f"load: val_size must be in [0, {len(y_train)}), got {n_val}")
    train_idx, val_idx = split_indices(len(y_train), n_val, seed)

    channels = spec.input_shape[0]
    if not normalize:
        mean, std = (0.0,) * channels, (1.0,) * channels
    elif spec.mean is not None and spec.std is not None:
        mean, std = spec.mean, spec.std
    else:
        pixels = x_train.astype(np.float64) / spec.max_value
        mean = tuple(float(v) for v in pixels.mean(axis=(0, 2, 3)))
        std = tuple(float(v) for v in pixels.std(axis=(0, 2, 3)))
    if limit is not None:
        train_idx = train_idx[:limit]

    shape = (1, channels, 1, 1)
    mean_arr = np.asarray(mean, dtype).reshape(shape)
    std_arr = np.asarray(std, dtype).reshape(shape)

    def prepare(x: np.ndarray, y: np.ndarray) -> Split:
        xf = x.astype(dtype)
        xf /= dtype.type(spec.max_value)
        if normalize:
            xf -= mean_arr
            xf /= std_arr
        return Split(xf, y.astype(np.int64))

    return Splits(
        name=spec.name, num_classes=spec.num_classes, input_shape=spec.input_shape,
        class_names=spec.class_names,
        train=prepare(x_train[train_idx], y_train[train_idx]),
        val=prepare(x_train[val_idx], y_train[val_idx]),
        test=prepare(x_test, y_test), mean=tuple(mean), std=tuple(std))
