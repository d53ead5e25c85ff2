"""MNIST loader: the real idx files when available, and every error path on small synthetic files."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from al import data_common, data_mnist
from al.data_common import DataCorruptError, DataNotFoundError
from al.data_mnist import FILES, load_mnist
from conftest import idx_bytes, write_idx, write_mnist


@pytest.fixture
def no_default_data(isolated):
    """The empty default data root of the ``isolated`` fixture (conftest)."""
    return isolated / "repo_data"


def test_synthetic_files_load_scaled_with_a_channel_axis(tmp_path, no_default_data):
    folder = write_mnist(tmp_path / "mnist", x_train=np.full((6, 5, 5), 255), y_train=np.arange(6))
    data = load_mnist(folder, allow_download=False)
    assert data.x_train.shape == (6, 5, 5, 1) and data.x_test.shape == (4, 5, 5, 1)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert np.all(data.x_train == 1.0)
    assert data.y_train.tolist() == list(range(6))
    assert data.class_names == tuple(str(d) for d in range(10))
    assert str(folder) in data.source


def test_data_dir_is_searched_before_al_data_dir(tmp_path, no_default_data, monkeypatch):
    write_mnist(tmp_path / "env" / "mnist", n_train=3)
    monkeypatch.setenv("AL_DATA_DIR", str(tmp_path / "env"))
    assert len(load_mnist(write_mnist(tmp_path / "given", n_train=7), allow_download=False).x_train) == 7
    assert len(load_mnist(allow_download=False).x_train) == 3


def test_default_data_root_is_searched_last(tmp_path, no_default_data):
    write_mnist(no_default_data / "mnist", n_train=2)
    assert len(load_mnist(allow_download=False).x_train) == 2


def test_provenance_records_the_kind_of_copy_and_its_content_not_its_path(tmp_path, no_default_data):
    folder = write_mnist(tmp_path / "mnist")
    data = load_mnist(folder, allow_download=False)
    assert data.provenance() == {"origin": "MNIST idx files", "sha256": data.sha256,
                                 "n_train": 6, "n_test": 4}
    assert str(tmp_path) not in json.dumps(data.provenance())
    moved = load_mnist(shutil.copytree(folder, tmp_path / "elsewhere"), allow_download=False)
    assert moved.sha256 == data.sha256, "the same files in another folder are the same data"
    x_train = data_mnist.read_idx(folder / FILES["x_train"], 3).copy()
    x_train[0, 0, 0] ^= 1  # one pixel, one grey level
    write_idx(folder / FILES["x_train"], x_train)
    assert load_mnist(folder, allow_download=False).sha256 != data.sha256


# --------------------------------------------------------------------------- missing data
def test_empty_folder_without_download_lists_the_paths_tried(tmp_path, no_default_data):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        load_mnist(empty, allow_download=False)
    message = str(err.value)
    assert str(empty) in message
    assert str(no_default_data / "mnist") in message
    assert "download disabled" in message
    assert "train-images-idx3-ubyte.gz" in message


def test_not_found_error_is_a_file_not_found_error():
    assert issubclass(DataNotFoundError, FileNotFoundError)
    assert issubclass(DataCorruptError, ValueError)


def test_al_data_dir_is_listed_among_the_paths_tried(tmp_path, no_default_data, monkeypatch):
    monkeypatch.setenv("AL_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "env" / "mnist")):
        load_mnist(allow_download=False)


def test_folder_with_some_files_names_the_missing_ones(tmp_path, no_default_data):
    folder = write_mnist(tmp_path / "mnist")
    (folder / FILES["y_test"]).unlink()
    (folder / FILES["x_train"]).unlink()
    with pytest.raises(DataNotFoundError) as err:
        load_mnist(folder, allow_download=False)
    message = str(err.value)
    assert FILES["y_test"] in message and FILES["x_train"] in message
    assert FILES["y_train"] not in message.split("missing")[-1]


# --------------------------------------------------------------------------- corrupt data
def test_truncated_gzip_raises_data_corrupt_error(tmp_path, no_default_data):
    folder = write_mnist(tmp_path / "mnist", n_train=200, size=10)
    path = folder / FILES["x_train"]
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataCorruptError, match="truncated"):
        load_mnist(folder, allow_download=False)


def test_file_that_is_not_gzip_raises_data_corrupt_error(tmp_path, no_default_data):
    folder = write_mnist(tmp_path / "mnist")
    (folder / FILES["y_train"]).write_bytes(idx_bytes(np.arange(6) % 10))  # idx, but not gzipped
    with pytest.raises(DataCorruptError, match=FILES["y_train"]):
        load_mnist(folder, allow_download=False)


def test_idx_content_shorter_than_its_header_promises_raises(tmp_path, no_default_data):
    folder = write_mnist(tmp_path / "mnist")
    with gzip.open(folder / FILES["x_test"], "wb") as f:
        f.write(idx_bytes(np.zeros((4, 5, 5)))[:-7])
    with pytest.raises(DataCorruptError, match=r"shape \(4, 5, 5\)"):
        load_mnist(folder, allow_download=False)


def test_idx_with_trailing_bytes_raises(tmp_path, no_default_data):
    folder = write_mnist(tmp_path / "mnist")
    with gzip.open(folder / FILES["y_test"], "wb") as f:
        f.write(idx_bytes(np.arange(4)) + b"\x00\x01")
    with pytest.raises(DataCorruptError):
        load_mnist(folder, allow_download=False)


@pytest.mark.parametrize("key, magic", [("y_train", 2051), ("x_train", 2049), ("x_test", 0x12345678)])
def test_wrong_magic_number_raises_data_corrupt_error(tmp_path, no_default_data, key, magic):
    folder = write_mnist(tmp_path / "mnist")
    array = {"x_train": np.zeros((6, 5, 5)), "x_test": np.zeros((4, 5, 5)), "y_train": np.zeros(6)}[key]
    write_idx(folder / FILES[key], array, magic=magic)
    with pytest.raises(DataCorruptError, match="magic"):
        load_mnist(folder, allow_download=False)


def test_empty_gzip_raises_data_corrupt_error(tmp_path, no_default_data):
    folder = write_mnist(tmp_path / "mnist")
    with gzip.open(folder / FILES["y_train"], "wb"):
        pass
    with pytest.raises(DataCorruptError):
        load_mnist(folder, allow_download=False)


def test_image_and_label_count_mismatch_raises_data_corrupt_error(tmp_path, no_default_data):
    folder = write_mnist(tmp_path / "mnist", y_train=np.arange(5) % 10)  # 6 images, 5 labels
    with pytest.raises(DataCorruptError, match="6 samples but 5 labels"):
        load_mnist(folder, allow_download=False)


def test_label_out_of_range_raises_data_corrupt_error(tmp_path, no_default_data):
    folder = write_mnist(tmp_path / "mnist", y_test=np.array([0, 1, 2, 10]))
    with pytest.raises(DataCorruptError, match="0..9"):
        load_mnist(folder, allow_download=False)


def test_train_and_test_image_sizes_must_agree(tmp_path, no_default_data):
    folder = write_mnist(tmp_path / "mnist", x_test=np.zeros((4, 6, 6)))
    with pytest.raises(DataCorruptError, match="shape"):
        load_mnist(folder, allow_download=False)


# --------------------------------------------------------------------------- the real files
def al_data_mnist_dir() -> Path:
    """$AL_DATA_DIR/mnist; skips the test when AL_DATA_DIR is unset (CI sets it when data exists)."""
    root = os.environ.get("AL_DATA_DIR")
    if not root:
        pytest.skip("AL_DATA_DIR is not set: the real-data MNIST tests need $AL_DATA_DIR/mnist")
    root = Path(root).expanduser()
    return (root if root.is_absolute() else Path.cwd() / root) / "mnist"


def test_al_data_dir_holds_the_four_mnist_files():
    folder = al_data_mnist_dir()
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    assert not missing, f"AL_DATA_DIR is set but {folder} lacks {missing}"


@pytest.fixture(scope="module")
def real_mnist():
    """MNIST from $AL_DATA_DIR/mnist. Unset AL_DATA_DIR skips; set but missing fails."""
    folder = al_data_mnist_dir()
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    assert not missing, f"AL_DATA_DIR is set but {folder} lacks {missing}"
    return data_mnist.from_idx_dir(folder), folder


def test_real_mnist_is_found_through_al_data_dir(real_mnist, monkeypatch, tmp_path):
    _, folder = real_mnist
    monkeypatch.setattr(data_common, "DEFAULT_DATA_ROOT", tmp_path)  # must not fall back to data/
    assert data_common.candidate_dirs("mnist")[0] == folder
    data = load_mnist(allow_download=False)
    assert str(folder) in data.source


def test_real_mnist_provenance(real_mnist):
    data, folder = real_mnist
    provenance = data.provenance()
    assert provenance["origin"] == "MNIST idx files" and str(folder) not in json.dumps(provenance)
    assert provenance["n_train"] == 60000 and provenance["n_test"] == 10000
    assert len(provenance["sha256"]) == 64
    assert data_mnist.from_idx_dir(folder).sha256 == provenance["sha256"], "stable across loads"


def test_real_mnist_shapes_and_types(real_mnist):
    data, _ = real_mnist
    assert data.x_train.shape == (60000, 28, 28, 1) and data.x_test.shape == (10000, 28, 28, 1)
    assert data.y_train.shape == (60000,) and data.y_test.shape == (10000,)
    assert data.x_train.dtype == np.float32 and data.x_test.dtype == np.float32
    assert data.y_train.dtype == np.int64


def test_real_mnist_pixels_lie_in_unit_interval(real_mnist):
    data, _ = real_mnist
    for x in (data.x_train, data.x_test):
        assert x.min() == 0.0 and x.max() == 1.0


def test_real_mnist_class_counts_are_plausible(real_mnist):
    data, _ = real_mnist
    train, test = np.bincount(data.y_train), np.bincount(data.y_test)
    assert len(train) == 10 and len(test) == 10
    assert train.min() >= 5000 and train.max() <= 7000
    assert test.min() >= 800 and test.max() <= 1200
    assert set(np.unique(data.y_test)) == set(range(10))
