"""Tests of the MIT-BIH loader (code/al/data_mitbih.py).

Real-data tests read the mitdb records under ``$AL_DATA_DIR/mitbih``: they are skipped
when AL_DATA_DIR is not set, and fail when it is set but the records are missing or
broken. The full build runs once per module, into a temporary cache.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from al import data_mitbih
from al.data_common import DataCorruptError, DataNotFoundError
from al.data_mitbih import BEAT_LENGTH, CLASS_NAMES, DS1, DS2, PACED, build_beats, load_mitbih
from conftest import write_csv

# AAMI classes of the annotation symbols, written out independently of the module.
AAMI_CLASS = {**dict.fromkeys("NLRej", 0), **dict.fromkeys("AaJS", 1),
              **dict.fromkeys("VE", 2), "F": 3, **dict.fromkeys("/fQ", 4)}
# AAMI beat totals over all 48 mitdb records (see /work/shared/data/mitbih/SOURCE.txt).
AAMI_TOTALS = {"N": 90631, "S": 2781, "V": 7236, "F": 803, "Q": 8043}
ALL_RECORDS = sorted(DS1 + DS2 + PACED)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def records_dir():
    """The real mitdb records: skip without AL_DATA_DIR, fail if it lacks them."""
    root = os.environ.get("AL_DATA_DIR")
    if not root:
        pytest.skip("AL_DATA_DIR is not set; real MIT-BIH data tests skipped")
    records = data_mitbih._records_dir(Path(root).expanduser() / "mitbih")
    if records is None:
        pytest.fail(f"AL_DATA_DIR={root} is set but holds no mitdb records in mitbih/mitdb/")
    missing = [f"{record}{ext}" for record in ALL_RECORDS for ext in (".hea", ".dat", ".atr")
               if not (records / f"{record}{ext}").is_file()]
    if missing:
        pytest.fail(f"AL_DATA_DIR={root} is set but {records} lacks {len(missing)} files, "
                    f"e.g. {missing[:5]}")
    return records


@pytest.fixture(scope="module")
def full_build(records_dir, tmp_path_factory):
    """The cache dir after one full build, and the intra dataset that build gave."""
    cache_dir = tmp_path_factory.mktemp("mitbih_cache")
    dataset = load_mitbih(data_dir=records_dir, cache_dir=cache_dir, download=False)
    return cache_dir, dataset


@pytest.fixture
def cached_beats(full_build):
    """x, y, record ids of the full build, read back from its cache file."""
    cache_dir, _ = full_build
    (cache_path,) = cache_dir.glob(f"mitbih_beats_{data_mitbih.RECIPE_HASH}.npz")
    with np.load(cache_path) as cache:
        return cache["x"], cache["y"], cache["record_ids"]


def write_synthetic_record(directory, name, beat_samples, symbols, n_samples, fs=360):
    """A two-lead record with MLII second (as in record 114) and a flat V5 first.

    MLII is a cosine with a 0.8 s period peaking at the beats spaced 0.8 s apart, so a
    builder that read V5 instead would give all-zero beats (a flat window).
    """
    t = np.arange(n_samples) / fs
    signal = np.stack([np.full(n_samples, 0.1), np.cos(2 * np.pi * t / 0.8)], axis=1)
    wfdb.wrsamp(name, fs=fs, units=["mV", "mV"], sig_name=["V5", "MLII"], p_signal=signal,
                fmt=["16", "16"], write_dir=str(directory))
    wfdb.wrann(name, "atr", sample=np.asarray(beat_samples), symbol=list(symbols),
               write_dir=str(directory))
    return directory / name


def nonzero_length(x):
    """Index after the last nonzero sample of each beat (0 for an all-zero beat)."""
    return np.where(x.any(axis=1), x.shape[1] - np.argmax(x[:, ::-1] != 0, axis=1), 0)


# ----------------------------------------------------------------------------- beat builder


def test_synthetic_record_beats_follow_recipe(tmp_path):
    # 30 beats every 288 samples = 0.8 s = 100 samples at 125 Hz, so 1.2 T = 120 samples.
    beats = np.arange(1, 31) * 288
    symbols = ["N", "V", "A", "F", "/"] * 6
    n_samples = beats[-1] + 100  # the last beat is cut by the record end
    prefix = write_synthetic_record(tmp_path, "900", np.r_[5, beats], ["+"] + symbols, n_samples)

    x, y = build_beats(prefix)

    assert x.shape == (30, BEAT_LENGTH) and x.dtype == np.float32 and y.dtype == np.int64
    assert y.tolist() == [AAMI_CLASS[s] for s in symbols]  # the '+' rhythm note is no beat
    assert x.min() >= 0 and x.max() <= 1
    assert x[:, 0].min() > 0.9  # beats start at the cosine peak, so MLII was read, not V5
    lengths = nonzero_length(x)
    # Beats at 1200 and 2400 overrun their 10 s window (1250 samples) and still span 120.
    assert (lengths[:-1] == 120).all() and (x[:-1, 120:] == 0).all()
    resampled_length = math.ceil(n_samples * 125 / 360)
    assert lengths[-1] == resampled_length - round(beats[-1] * 125 / 360)


def test_window_with_one_beat_uses_record_median_rr(tmp_path):
    # Window 0 (0-10 s) has beats every 0.8 s; window 1 has a single beat at 12 s.
    beats = np.r_[np.arange(1, 12) * 288, 12 * 360]
    prefix = write_synthetic_record(tmp_path, "901", beats, ["N"] * len(beats), 15 * 360)

    x, _ = build_beats(prefix)

    record_median_rr = np.median(np.diff(np.round(beats * 125 / 360)))
    assert nonzero_length(x)[-1] == round(1.2 * record_median_rr)


def test_real_record_beats(records_dir):
    x, y = build_beats(records_dir / "100")

    annotation = wfdb.rdann(str(records_dir / "100"), "atr")
    beat_symbols = [s for s in annotation.symbol if s in AAMI_CLASS]
    assert x.shape == (len(beat_symbols), BEAT_LENGTH)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() >= 0 and x.max() <= 1
    assert y.tolist() == [AAMI_CLASS[s] for s in beat_symbols]
    # Record 100 beats at ~75 bpm, so each beat spans ~1.2 * 100 samples, then zeros.
    beat_samples = annotation.sample[[s in AAMI_CLASS for s in annotation.symbol]]
    median_rr = np.median(np.diff(beat_samples)) * 125 / 360
    assert abs(np.median(nonzero_length(x)) - 1.2 * median_rr) <= 3
    assert (x[:, 130:] == 0).all()


@pytest.mark.parametrize("missing", [".atr", ".dat", ".hea"])
def test_record_with_missing_file_is_reported(records_dir, tmp_path, missing):
    for ext in {".hea", ".dat", ".atr"} - {missing}:
        shutil.copy(records_dir / f"100{ext}", tmp_path)
    with pytest.raises(DataCorruptError, match=rf"100\{missing}.*missing"):
        build_beats(tmp_path / "100")


def test_unreadable_record_is_reported(tmp_path):
    (tmp_path / "100.hea").write_text("this is not a wfdb header\n")
    with pytest.raises(DataCorruptError, match="cannot be read"):
        build_beats(tmp_path / "100")


# ----------------------------------------------------------------------------- full build


def test_full_build_matches_aami_totals(full_build):
    _, dataset = full_build
    counts = np.bincount(np.r_[dataset.y_train, dataset.y_test], minlength=len(CLASS_NAMES))
    for name, count in zip(CLASS_NAMES, counts):
        assert abs(count - AAMI_TOTALS[name]) <= 0.005 * AAMI_TOTALS[name], (name, count)
    assert dataset.x_train.dtype == np.float32 and dataset.x_train.shape[1:] == (BEAT_LENGTH,)
    assert dataset.class_names == CLASS_NAMES


def test_records_provenance_names_recipe_and_split_not_paths(full_build, records_dir):
    cache_dir, intra = full_build
    inter = load_mitbih(data_dir=records_dir, split="inter", cache_dir=cache_dir, download=False)
    for data in (intra, inter):
        provenance = data.provenance()
        recipe = f"PhysioNet mitdb records, beat recipe {data_mitbih.RECIPE_HASH}"
        assert provenance["origin"].startswith(recipe)
        assert str(records_dir) not in provenance["origin"] and str(cache_dir) not in provenance["origin"]
        assert provenance["n_train"] == len(data.y_train) and provenance["n_test"] == len(data.y_test)
    assert "intra-patient split, seed 0" in intra.origin and "inter-patient" in inter.origin
    assert intra.sha256 != inter.sha256


def test_cache_is_reused(full_build, records_dir, monkeypatch):
    cache_dir, first = full_build

    def fail_build(*args, **kwargs):
        raise AssertionError("the beats were rebuilt although they were cached")

    monkeypatch.setattr(data_mitbih, "build_all_beats", fail_build)
    # The parent directory holds the records in mitdb/: the usual $AL_DATA_DIR/mitbih layout.
    again = load_mitbih(data_dir=records_dir.parent, cache_dir=cache_dir, download=False)
    assert np.array_equal(again.y_train, first.y_train)
    assert data_mitbih.RECIPE_HASH in again.source and str(records_dir) in again.source


def test_broken_record_in_records_dir_fails_load(records_dir, tmp_path):
    # All record files but 100.atr, linked rather than copied to keep the test fast.
    (tmp_path / "mitdb").mkdir()
    for path in records_dir.iterdir():
        if path.name != "100.atr":
            (tmp_path / "mitdb" / path.name).symlink_to(path.resolve())
    with pytest.raises(DataCorruptError, match=r"100\.atr"):
        load_mitbih(data_dir=tmp_path, cache_dir=tmp_path / "cache", download=False)


def test_rr_features_of_the_real_records(full_build, records_dir):
    cache_dir, _ = full_build
    plain = load_mitbih(data_dir=records_dir, split="inter", cache_dir=cache_dir, download=False)
    with_rr = load_mitbih(data_dir=records_dir, split="inter", cache_dir=cache_dir, download=False,
                          rr_features=True)
    n_rr = len(data_mitbih.RR_FEATURE_NAMES)
    assert with_rr.x_train.shape == (len(plain.y_train), BEAT_LENGTH + n_rr)
    assert np.array_equal(with_rr.x_train[:, :BEAT_LENGTH], plain.x_train)
    assert np.array_equal(with_rr.y_train, plain.y_train) and np.array_equal(with_rr.y_test, plain.y_test)
    assert (cache_dir / f"mitbih_rr_{data_mitbih.RR_HASH}.npz").is_file()
    # Record 100's pre-RR, from its annotations read here independently.
    annotation = wfdb.rdann(str(records_dir / "100"), "atr")
    seconds = annotation.sample[[s in AAMI_CLASS for s in annotation.symbol]] / 360.0
    features = data_mitbih.build_rr_features(records_dir / "100")
    np.testing.assert_allclose(features[1:, 0], np.diff(seconds))
    np.testing.assert_allclose(features[:, 3], np.diff(seconds).mean())
    # The rhythm is there: S beats come early (pre-RR below the record's mean), N beats do not.
    pre_ratio = np.exp(with_rr.x_train[:, BEAT_LENGTH + data_mitbih.RR_FEATURE_NAMES.index("pre_rr_ratio")])
    assert np.median(pre_ratio[with_rr.y_train == 1]) < 0.8 < np.median(pre_ratio[with_rr.y_train == 0])


# ----------------------------------------------------------------------------- splits


def test_split_constants_partition_the_database():
    assert len(DS1) == len(DS2) == 22 and len(PACED) == 4
    assert len(set(DS1) | set(DS2) | set(PACED)) == 48
    assert ALL_RECORDS == sorted(data_mitbih.ALL_RECORDS)


def test_inter_split_separates_patients(full_build, records_dir, cached_beats):
    cache_dir, _ = full_build
    x, y, record_ids = cached_beats
    train, test = data_mitbih._split_indices(y, record_ids, "inter")
    train_records, test_records = set(record_ids[train]), set(record_ids[test])
    assert train_records == set(DS1) and test_records == set(DS2)
    assert not (train_records | test_records) & set(PACED)

    dataset = load_mitbih(data_dir=records_dir, split="inter", cache_dir=cache_dir,
                          download=False)
    # The dataset holds exactly the DS1 beats for training and the DS2 beats for testing.
    assert np.array_equal(dataset.x_train, x[train]) and np.array_equal(dataset.y_test, y[test])
    assert "inter" in dataset.source


def test_intra_split_is_stratified_and_seeded(full_build, records_dir, cached_beats):
    cache_dir, first = full_build
    _, y, _ = cached_beats
    same = load_mitbih(data_dir=records_dir, cache_dir=cache_dir, split_seed=0, download=False)
    other = load_mitbih(data_dir=records_dir, cache_dir=cache_dir, split_seed=1, download=False)

    assert np.array_equal(first.x_train, same.x_train) and np.array_equal(first.y_test, same.y_test)
    assert not np.array_equal(first.y_train, other.y_train)
    assert len(first.y_test) == math.ceil(0.2 * len(y))
    total = np.bincount(y)
    # Stratified: each class's test share is 20% up to rounding.
    assert np.all(np.abs(np.bincount(first.y_test, minlength=len(total)) - 0.2 * total) <= 1)


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="intra.*inter"):
        load_mitbih(split="patient")


# ----------------------------------------------------------------------------- Kaggle CSVs


def test_csv_files_are_loaded(isolated):
    train = write_csv(isolated / "mitbih_train.csv", 20, seed=1)
    test = write_csv(isolated / "mitbih_test.csv", 10, seed=2)

    dataset = load_mitbih(data_dir=isolated, download=False)

    assert dataset.x_train.shape == (20, BEAT_LENGTH) and dataset.x_test.shape == (10, BEAT_LENGTH)
    assert dataset.x_train.dtype == np.float32 and dataset.y_train.dtype == np.int64
    np.testing.assert_allclose(dataset.x_train, train[:, :-1], rtol=1e-6)
    assert dataset.y_test.tolist() == test[:, -1].astype(int).tolist()
    assert "mitbih_train.csv" in dataset.source and dataset.class_names == CLASS_NAMES
    assert dataset.origin == "Kaggle MIT-BIH CSVs (fixed intra-patient split)"
    assert str(isolated) not in dataset.origin


def test_csv_cannot_give_inter_split(isolated):
    write_csv(isolated / "mitbih_train.csv", 5)
    write_csv(isolated / "mitbih_test.csv", 5)
    with pytest.raises(DataNotFoundError, match="needs the raw mitdb records"):
        load_mitbih(data_dir=isolated, split="inter", download=False)


def test_csv_with_wrong_column_count_is_reported(isolated):
    write_csv(isolated / "mitbih_train.csv", 5, n_columns=BEAT_LENGTH)
    write_csv(isolated / "mitbih_test.csv", 5)
    with pytest.raises(DataCorruptError, match=r"mitbih_train\.csv has 187 columns"):
        load_mitbih(data_dir=isolated, download=False)


def test_csv_with_labels_outside_classes_is_reported(isolated):
    write_csv(isolated / "mitbih_train.csv", 5)
    write_csv(isolated / "mitbih_test.csv", 5, labels=[0, 1, 2, 5, 0])
    with pytest.raises(DataCorruptError, match=r"mitbih_test\.csv.*classes 0\.\.4"):
        load_mitbih(data_dir=isolated, download=False)


# ----------------------------------------------------------------------------- not found


def test_missing_data_without_download_lists_paths(isolated, monkeypatch):
    monkeypatch.setattr(wfdb, "dl_database", lambda *a, **k: pytest.fail("download attempted"))
    nowhere = isolated / "nowhere"
    with pytest.raises(DataNotFoundError) as error:
        load_mitbih(data_dir=nowhere, download=False)
    message = str(error.value)
    assert str(nowhere) in message and str(isolated / "repo_data" / "mitbih") in message
    assert "mitbih_train.csv" in message and "dl_database('mitdb'" in message


def test_failed_download_lists_paths(isolated, monkeypatch):
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("no network")

    monkeypatch.setattr(wfdb, "dl_database", offline)
    monkeypatch.setenv("AL_DATA_DIR", str(isolated / "al_data"))
    with pytest.raises(DataNotFoundError) as error:
        load_mitbih(data_dir=isolated / "nowhere", cache_dir=isolated / "cache")
    assert calls == [("mitdb", str(isolated / "repo_data" / "mitbih" / "mitdb"))]
    message = str(error.value)
    for tried in ("nowhere", "al_data/mitbih", "repo_data/mitbih"):
        assert tried in message
    assert "no network" in message and "physionet.org/content/mitdb" in message
