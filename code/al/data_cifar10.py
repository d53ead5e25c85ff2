"""CIFAR-10 loader: the standard ``cifar-10-batches-py`` folder, or ``keras.datasets.cifar10`` as fallback.

The folder is what ``cifar-10-python.tar.gz`` (https://www.cs.toronto.edu/~kriz/cifar.html)
unpacks to: five training batches ``data_batch_1`` .. ``data_batch_5`` (10,000 images each)
and ``test_batch`` (10,000), each a pickled dict with ``b"data"``, a uint8 array of shape
(n, 3072) (1024 red, then 1024 green, then 1024 blue values of a 32 x 32 image, row-major)
and ``b"labels"``, n class indices in 0..9. ``batches.meta`` (class names) is not needed.

Looks in ``--data-dir``, ``$AL_DATA_DIR/cifar10`` and ``data/cifar10`` (see ``data_common``),
in each either for the batch files themselves or for a ``cifar-10-batches-py`` folder
inside it, then tries the Keras download. The pickles are read with an unpickler that only
rebuilds dicts, lists, strings, numbers and numpy arrays, so a foreign pickle cannot run
code; a file that is not such a batch raises :class:`DataCorruptError` naming it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from al.data_common import DataCorruptError, DataNotFoundError, Dataset, candidate_dirs, keras_download

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
FILES = (*TRAIN_FILES, TEST_FILE)
SUBFOLDER = "cifar-10-batches-py"  # the folder the official archive unpacks to
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_VALUES = 32 * 32 * 3
DOWNLOAD_HINT = (
    "Get the data: with internet, rerun (Keras downloads it), or download cifar-10-python.tar.gz "
    "from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it (tar xzf) into data/cifar10/ "
    "(giving data/cifar10/cifar-10-batches-py/), or point --data-dir / AL_DATA_DIR at a folder "
    "that holds it.")

# What a CIFAR batch pickle may reference: numpy's array reconstruction (numpy 1 and 2 names;
# _frombuffer under pickle protocol 5), and _codecs.encode, with which Python 3 writes bytes
# under protocol 2. Nothing else is rebuilt.
_ALLOWED_GLOBALS = {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core")
    for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR-10 batch")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 32, 32, 3) uint8 and labels (n,) int64 of one batch file, its content checked."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError) as err:
        raise DataCorruptError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {err}); "
                               "the file is truncated or of another kind. Delete it and unpack "
                               "cifar-10-python.tar.gz again.") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataCorruptError(f"{path}: a CIFAR-10 batch is a dict with b'data' and b'labels', "
                               f"found {keys}.")
    data, labels = batch[b"data"], batch[b"labels"]
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != IMAGE_VALUES):
        shape = getattr(data, "shape", None)
        raise DataCorruptError(f"{path}: b'data' must be a uint8 array of shape (n, {IMAGE_VALUES}), found "
                               f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}; not CIFAR-10.")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataCorruptError(f"{path}: b'labels' must be a list of class indices.") from None
    if len(labels) != len(data):
        raise DataCorruptError(f"{path}: {len(data)} images but {len(labels)} labels; the file is corrupt.")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channels last, as Keras
    return images, labels


def from_batches_dir(folder: Path) -> Dataset:
    train = [read_batch(folder / name) for name in TRAIN_FILES]
    x_test, y_test = read_batch(folder / TEST_FILE)
    arrays = {"x_train": np.concatenate([x for x, _ in train]),
              "y_train": np.concatenate([y for _, y in train]), "x_test": x_test, "y_test": y_test}
    return make_dataset(arrays, source=f"CIFAR-10 python batches in {folder}",
                        origin="CIFAR-10 python batches")


def make_dataset(arrays: dict, source: str, origin: str) -> Dataset:
    """Scale images (n, 32, 32, 3) to [0, 1] float32; labels to int64 of shape (n,)."""
    images = {k: np.asarray(arrays[k], dtype=np.float32) / 255.0 for k in ("x_train", "x_test")}
    labels = {k: np.asarray(arrays[k], dtype=np.int64).reshape(-1) for k in ("y_train", "y_test")}
    return Dataset(**images, **labels, class_names=CLASS_NAMES, source=source, origin=origin)


def batches_folder(folder: Path) -> Path | None:
    """``folder`` itself or its ``cifar-10-batches-py`` subfolder, whichever holds batch files.

    Raises DataNotFoundError when one holds only part of the files (a partial copy).
    """
    for where in (folder, folder / SUBFOLDER):
        present = [name for name in FILES if (where / name).exists()]
        if len(present) == len(FILES):
            return where
        if present:
            missing = [name for name in FILES if name not in present]
            raise DataNotFoundError(f"{where} holds only part of CIFAR-10; missing {missing}. "
                                    + DOWNLOAD_HINT)
    return None


def load_cifar10(data_dir=None, allow_download: bool = True) -> Dataset:
    """Load CIFAR-10 (50,000 train, 10,000 test) as images of shape (32, 32, 3) in [0, 1].

    Raises
    ------
    DataNotFoundError
        when no folder holds the six batch files and the Keras download fails.
    DataCorruptError
        when a batch file is present but truncated or not CIFAR-10.
    """
    tried = candidate_dirs("cifar10", data_dir)
    for folder in tried:
        found = batches_folder(folder)
        if found is not None:
            return from_batches_dir(found)
    if allow_download:
        arrays, tried_download = keras_download("cifar10", tried, " 163 MB")
        if arrays is not None:
            return make_dataset(arrays, source="keras.datasets.cifar10", origin="keras.datasets.cifar10")
    else:
        tried_download = "download disabled"
    raise DataNotFoundError(
        "CIFAR-10 not found. Looked for " + ", ".join(FILES) + f" (or a {SUBFOLDER} folder holding them)"
        " in:\n  "
        + "\n  ".join(map(str, tried)) + f"\nand {tried_download}.\n" + DOWNLOAD_HINT
    )
