"""Shared pieces of the dataset loaders: where to look for data, and the errors they raise.

Every loader looks, in this order, in ``--data-dir``, ``$AL_DATA_DIR/<dataset>`` and
``<repo>/data/<dataset>``, and only then tries to download. Paths resolve from the
repository, never from the working directory, so scripts behave the same when run from
the repository root or from inside ``code/``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

# Imported first by every module: silence TensorFlow's C++ start-up chatter before it loads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # level 2 still prints harmless graph-rewrite E lines per fit

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_ROOT = REPO_ROOT / "data"


class DataNotFoundError(FileNotFoundError):
    """No usable copy of a dataset was found (message lists the paths tried)."""


class DataCorruptError(ValueError):
    """A dataset file exists but cannot be read or has the wrong content."""


@dataclass(frozen=True)
class Dataset:
    """A train pool and a held-out test set, with class names.

    ``x_*`` are float32 arrays (samples first), ``y_*`` int64 class indices in
    ``range(len(class_names))``; ``source`` says where the data came from (with paths, for
    people) and ``origin`` what kind of copy it is, without paths (e.g. "PhysioNet mitdb
    records"), for the run files' provenance.

    ``x_base``, ``y_base`` (optional): samples labeled *before* the run, from elsewhere (for
    patient adaptation: the other patients' beats). The loop adds them to every training set;
    they are never in the pool, never selected and not counted in the label budget.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str
    origin: str = "unknown"
    x_base: np.ndarray | None = None
    y_base: np.ndarray | None = None

    @property
    def has_base(self) -> bool:
        return self.y_base is not None

    def __post_init__(self):
        n_classes = len(self.class_names)
        if (self.x_base is None) != (self.y_base is None):
            raise ValueError("x_base and y_base come together: give both or neither")
        for split in ("train", "test", *(("base",) if self.has_base else ())):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(x) != len(y):
                raise DataCorruptError(
                    f"{self.source}: {split} has {len(x)} samples but {len(y)} labels; "
                    "the dataset files do not belong together, re-download them."
                )
            if len(y) and (y.min() < 0 or y.max() >= n_classes):
                raise DataCorruptError(
                    f"{self.source}: {split} labels must lie in 0..{n_classes - 1}, "
                    f"found {y.min()}..{y.max()}; the label file is corrupt or of another dataset."
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataCorruptError(
                f"{self.source}: train samples have shape {self.x_train.shape[1:]} but test samples "
                f"{self.x_test.shape[1:]}; the files are of different datasets."
            )
        if self.has_base and self.x_base.shape[1:] != self.x_train.shape[1:]:
            raise DataCorruptError(f"{self.source}: base samples have shape {self.x_base.shape[1:]} but "
                                   f"train samples {self.x_train.shape[1:]}")

    @cached_property
    def sha256(self) -> str:
        """Content hash of the arrays actually used (shapes, dtypes, bytes) and the class names."""
        digest = hashlib.sha256(repr(self.class_names).encode())
        base = (self.x_base, self.y_base) if self.has_base else ()  # absent: the hash it always had
        for array in (self.x_train, self.y_train, self.x_test, self.y_test, *base):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.data)
        return digest.hexdigest()

    def provenance(self) -> dict:
        """What a run file records about its data: the kind of copy and the content hash."""
        return {"origin": self.origin, "sha256": self.sha256,
                "n_train": int(len(self.y_train)), "n_test": int(len(self.y_test)),
                **({"n_base": int(len(self.y_base))} if self.has_base else {})}


def hold_out_dev(data: Dataset, size: int, seed: int = 0) -> tuple[Dataset, tuple[np.ndarray, np.ndarray]]:
    """Carve a fixed development split of ``size`` samples out of the training pool.

    Stratified by class and seeded (``train_test_split(random_state=seed)``), so the same
    data and size always give the same split. Returns the dataset whose pool no longer holds
    the development samples, and the development samples ``(x_dev, y_dev)``. The test set is
    untouched. ``size`` 0 returns the data unchanged and an empty development split.
    """
    from sklearn.model_selection import train_test_split
    if size <= 0:
        return data, (data.x_train[:0], data.y_train[:0])
    if size >= len(data.y_train):
        raise ValueError(f"dev_size {size} must be smaller than the pool ({len(data.y_train)} samples)")
    keep, dev = train_test_split(np.arange(len(data.y_train)), test_size=size, random_state=seed,
                                 stratify=data.y_train)
    keep, dev = np.sort(keep), np.sort(dev)
    pool = Dataset(data.x_train[keep], data.y_train[keep], data.x_test, data.y_test, data.class_names,
                   source=f"{data.source}; {size} samples held out as the development split (seed {seed})",
                   origin=f"{data.origin}; development split of {size} (seed {seed}) held out",
                   x_base=data.x_base, y_base=data.y_base)
    return pool, (data.x_train[dev], data.y_train[dev])


EVALUATION_SETS = ("test", "dev")


def protocol_split(data: Dataset, config: dict) -> Dataset:
    """The data a protocol run sees: the pool without the development split.

    ``config["evaluate_on"]`` says what each step is scored on: ``"test"`` (the default, the
    reported evaluation) or ``"dev"``, where the development split replaces the test set.
    ``"dev"`` is for choosing a strategy's settings (for example TypiClust's embedding) by
    the protocol itself without looking at the test set; its runs record the swap in their
    data provenance, so they can never be mixed with test-set runs in one folder.
    """
    pool, (x_dev, y_dev) = hold_out_dev(data, config["dev_size"])
    where = config.get("evaluate_on", "test")
    if where not in EVALUATION_SETS:
        raise ValueError(f"--evaluate-on must be one of {EVALUATION_SETS}, got {where!r}")
    if where == "test":
        return pool
    if config["dev_size"] <= 0:
        raise ValueError("--evaluate-on dev needs a development split: pass --dev-size N with N > 0")
    return Dataset(pool.x_train, pool.y_train, x_dev, y_dev, pool.class_names,
                   source=f"{pool.source}; evaluated on the development split, not the test set",
                   origin=f"{pool.origin}; evaluated on the development split, not the test set",
                   x_base=pool.x_base, y_base=pool.y_base)


def candidate_dirs(dataset: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories to search for ``dataset``, in priority order."""
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir).expanduser())
    env_root = os.environ.get("AL_DATA_DIR")
    if env_root:
        env_root = Path(env_root).expanduser()
        if not env_root.is_absolute():
            env_root = (Path.cwd() / env_root)
        dirs.append(env_root / dataset)
    dirs.append(DEFAULT_DATA_ROOT / dataset)
    return dirs


def keras_download(name: str, tried: list[Path], size_note: str = "") -> tuple[dict | None, str]:
    """The last resort of a loader: ``keras.datasets.<name>.load_data()`` as arrays
    (``x_train, y_train, x_test, y_test``), or (None, why it failed)."""
    print(f"{name} files not found in " + ", ".join(map(str, tried))
          + f"; trying keras.datasets.{name}.load_data() (downloads{size_note} once to ~/.keras/datasets)")
    try:
        import keras
        (xtr, ytr), (xte, yte) = getattr(keras.datasets, name).load_data()
    except Exception as err:  # network errors come in many types
        return None, f"keras.datasets.{name}.load_data() failed: {err}"
    return {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}, ""


def resolve_repo_path(path: str | os.PathLike) -> Path:
    """A relative path means relative to the repository root, not the working directory."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def shown_path(path: str | os.PathLike) -> str:
    """``path`` relative to the repository root when it lies inside it, else as it is (for reports)."""
    path = Path(path)
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)
