"""MNIST loader: the four standard idx ``.gz`` files, or ``keras.datasets.mnist`` as fallback.

Looks in ``--data-dir``, ``$AL_DATA_DIR/mnist`` and ``data/mnist`` (see ``data_common``).
Files are parsed with their idx headers checked, so a truncated or foreign file raises
:class:`DataCorruptError` instead of yielding a silently wrong array.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from al.data_common import DataCorruptError, DataNotFoundError, Dataset, candidate_dirs, keras_download

FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = tuple(str(d) for d in range(10))
IDX_MAGIC = {1: 2049, 3: 2051}  # unsigned-byte idx files with 1 or 3 dimensions


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse a gzipped idx file of unsigned bytes, checking magic number and size."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataCorruptError(f"{path}: cannot decompress ({err}); the file is truncated or "
                               "not gzip. Delete it and download MNIST again.") from None
    header_len = 4 + 4 * ndim
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != IDX_MAGIC[ndim]:
        raise DataCorruptError(f"{path}: not an idx file with {ndim} dimension(s) "
                               f"(magic {magic}, expected {IDX_MAGIC[ndim]}).")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header_len + int(np.prod(shape))
    if len(raw) != expected:
        raise DataCorruptError(f"{path}: header promises shape {shape} ({expected} bytes) but "
                               f"the file holds {len(raw)} bytes; it is truncated or corrupt.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def from_idx_dir(folder: Path) -> Dataset:
    arrays = {k: read_idx(folder / name, 3 if k.startswith("x") else 1) for k, name in FILES.items()}
    return make_dataset(arrays, source=f"idx files in {folder}", origin="MNIST idx files")


def make_dataset(arrays: dict, source: str, origin: str) -> Dataset:
    """Scale images to [0, 1] float32 with a channel axis; labels to int64."""
    images = {k: (arrays[k].astype(np.float32) / 255.0)[..., None] for k in ("x_train", "x_test")}
    labels = {k: arrays[k].astype(np.int64) for k in ("y_train", "y_test")}
    return Dataset(**images, **labels, class_names=CLASS_NAMES, source=source, origin=origin)


def load_mnist(data_dir=None, allow_download: bool = True) -> Dataset:
    """Load MNIST (60,000 train, 10,000 test) as images of shape (28, 28, 1) in [0, 1].

    Raises
    ------
    DataNotFoundError
        when no folder holds the four files and the Keras download fails.
    DataCorruptError
        when a file is present but truncated or not MNIST.
    """
    tried = candidate_dirs("mnist", data_dir)
    for folder in tried:
        present = [name for name in FILES.values() if (folder / name).exists()]
        if len(present) == len(FILES):
            return from_idx_dir(folder)
        if present:
            missing = sorted(set(FILES.values()) - set(present))
            raise DataNotFoundError(f"{folder} holds only part of MNIST; missing {missing}.")
    if allow_download:
        arrays, tried_download = keras_download("mnist", tried)
        if arrays is not None:
            return make_dataset(arrays, source="keras.datasets.mnist", origin="keras.datasets.mnist")
    else:
        tried_download = "download disabled"
    raise DataNotFoundError(
        "MNIST not found. Looked for " + ", ".join(FILES.values()) + " in:\n  "
        + "\n  ".join(map(str, tried)) + f"\nand {tried_download}.\n"
        "Get the data: with internet, rerun (Keras downloads it), or place the four idx .gz files "
        "(http://yann.lecun.com/exdb/mnist/ or any mirror) in data/mnist/, or point "
        "--data-dir / AL_DATA_DIR at a folder that holds them."
    )
