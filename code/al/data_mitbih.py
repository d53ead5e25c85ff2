"""MIT-BIH Arrhythmia heartbeats (AAMI classes N, S, V, F, Q) as fixed-length beats.

Where the data comes from
-------------------------
:func:`load_mitbih` searches the directories of :func:`data_common.candidate_dirs`
(``data_dir``, ``$AL_DATA_DIR/mitbih``, ``<repo>/data/mitbih``) in order; the first one
holding either of these wins:

* the Kaggle CSVs ``mitbih_train.csv`` + ``mitbih_test.csv`` ("ECG Heartbeat
  Categorization Dataset": no header, 187 samples then the class 0..4 as a float). Their
  train/test split is fixed, so they serve only ``split="intra"`` (``split_seed`` and
  ``test_fraction`` are then ignored);
* the raw PhysioNet ``mitdb`` records (``NNN.hea/.dat/.atr``) in ``<dir>/mitdb/`` or
  directly in ``<dir>``. Beats are built from them once (see below) and cached as a
  compressed ``.npz`` in ``cache_dir`` (default ``<repo>/data/mitbih/``), named after a
  hash of the recipe, so changing the recipe never reuses a stale cache.

A directory with both serves ``intra`` from the CSVs (the published split), and ``inter``
and the RR features (``rr_features=True``) from the records. With nothing found, the
records are downloaded from PhysioNet with ``wfdb.dl_database`` into
``<repo>/data/mitbih/mitdb`` (if ``download``).

Beat recipe (Kachuee et al. 2018, "ECG Heartbeat Classification: A Deep Transferable
Representation", section III.A), and the choices made where the paper is vague
----------------------------------------------------------------------------------------
1. Lead MLII, found by signal name in the header (it is the second channel of record 114).
   Records 102 and 104 (paced, so outside both de Chazal sets) have no MLII; their first
   channel (V5) is used so that their beats still count (the Kaggle CSVs' 109,446 beats
   imply that they used these records too).
2. Resampled 360 Hz -> 125 Hz with ``scipy.signal.resample_poly`` (up 25, down 72).
3. Split into consecutive 10 s windows (1250 samples) starting at sample 0; the last,
   shorter window of a record is used as it is.
4. Each window min-max normalised to [0, 1] over its own samples (a flat window maps to 0).
5. R-peaks: the paper detects them (local maxima above 0.9); here they are the reference
   beat annotations of ``.atr`` (AAMI symbols only; rhythm, noise and other non-beat
   annotations are skipped), their sample index scaled by 125/360 and rounded.
6. Nominal period T of a window: the median of the RR intervals between consecutive
   R-peaks that both lie in that window (intervals spanning a window boundary are not
   used). A window with a single R-peak falls back to the median RR of the whole record.
7. Each beat starts at its R-peak and spans ``round(1.2 * T)`` samples, zero-padded to
   187 samples; a longer span (T > 1.25 s, i.e. under 48 bpm; 1% of beats) is cut at 187.
8. Every annotated beat is kept, so class counts equal the AAMI totals of the database.
   A beat whose span runs past its window's end continues into the next samples, scaled
   with its own window's minimum and maximum and clipped to [0, 1] (clipping only acts
   where the next window's amplitude exceeds this one's). Over all 48 records 9.2% of the
   beats run past their window, 1.4% have some clipped samples, and 0.8% of the samples
   past a window end are clipped. A span running past the end of the record is cut there
   and zero-padded.

RR (rhythm) features, with ``rr_features=True``
-----------------------------------------------
The beat above is cut at its R-peak and rescaled, so it carries little of the rhythm that
tells premature (S, V) beats apart; the standard remedy in this literature (de Chazal,
O'Dwyer & Reilly 2004, "Automatic classification of heartbeats using ECG morphology and
heartbeat interval features"; Mondejar-Guerra et al. 2019, "Heartbeat classification fusing
temporal and morphological information of ECGs via ensemble of classifiers") adds RR
intervals. Here, per beat, in this order (:data:`RR_FEATURE_NAMES`), in seconds:

1. ``pre_rr``: time since the previous beat; 2. ``post_rr``: time to the next beat;
3. ``local_rr``: mean of the ``RR_LOCAL_INTERVALS`` (10) RR intervals around the beat, the
   5 ending at or before it (the last is ``pre_rr``) and the 5 starting at it (the first is
   ``post_rr``); 4. ``record_mean_rr``: mean of all RR intervals of the record;
5.-7. ``pre_rr``, ``post_rr`` and ``local_rr`` each divided by ``record_mean_rr``.

They come only from the positions (``sample / fs``, at the original 360 Hz) of the same
record's beat annotations, the same AAMI beats as above in the same order: no labels, no
other patient. Edges: the first beat of a record has no ``pre_rr`` and takes its
``post_rr``; the last has no ``post_rr`` and takes its ``pre_rr``; near a record's ends the
``local_rr`` window is clipped to the intervals that exist (the first beat averages the 5
intervals after it). Intervals span whatever is not an AAMI beat annotation (e.g. the
100 s ventricular-flutter episode of record 207), as the annotations give them. They are
cached in ``cache_dir`` next to the beats, as ``mitbih_rr_<RR_HASH>.npz``;
:data:`RR_HASH` covers the beat recipe and :data:`RR_RECIPE`, so a change of either builds
them again.

Model input: the natural log of each feature (:func:`rr_model_inputs`), appended to the
beat's 187 samples, so ``x`` has ``BEAT_LENGTH + len(RR_FEATURE_NAMES)`` columns. The log
needs no statistics of any data: 0.8 s maps to -0.22, a ratio of 1 to 0, premature (ratio
0.6) and late (1.6) beats lie symmetrically at -0.51 and +0.47, and rare long pauses stay
moderate (100 s: 4.6), on the scale of the beat samples in [0, 1].

The Kaggle CSVs have no beat positions, so ``rr_features`` needs the raw records.

Splits
------
``intra`` (default): stratified random split over all beats of all 48 records
(``train_test_split(stratify=y, random_state=split_seed, test_size=test_fraction)``).
``inter``: patient-wise split of de Chazal et al. 2004, train ``DS1``, test ``DS2``; the
paced records ``PACED`` are left out; ``test_fraction`` and ``split_seed`` are ignored.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.signal
import wfdb
from sklearn.model_selection import train_test_split

from al import data_common
from al.data_common import DataCorruptError, DataNotFoundError, Dataset, candidate_dirs, resolve_repo_path
from al.runs import write_bytes_atomic

CLASS_NAMES = ("N", "S", "V", "F", "Q")
BEAT_LENGTH = 187

# de Chazal, O'Dwyer & Reilly 2004, patient-wise training (DS1) and test (DS2) records.
DS1 = (101, 106, 108, 109, 112, 114, 115, 116, 118, 119, 122,
       124, 201, 203, 205, 207, 208, 209, 215, 220, 223, 230)
DS2 = (100, 103, 105, 111, 113, 117, 121, 123, 200, 202, 210,
       212, 213, 214, 219, 221, 222, 228, 231, 232, 233, 234)
PACED = (102, 104, 107, 217)
ALL_RECORDS = tuple(sorted(DS1 + DS2 + PACED))

SPLITS = ("intra", "inter")

# Annotation symbols of each AAMI class (ANSI/AAMI EC57); other symbols are not beats.
AAMI_SYMBOLS = {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"}
CLASS_OF_SYMBOL = {
    symbol: CLASS_NAMES.index(aami_class)
    for aami_class, symbols in AAMI_SYMBOLS.items()
    for symbol in symbols
}

TARGET_FS = 125
WINDOW_SECONDS = 10
BEAT_SPAN_IN_RR = 1.2
LEAD = "MLII"
# Bump when the beat recipe changes in a way the parameters below do not capture.
RECIPE_VERSION = 1
RECIPE = {
    "version": RECIPE_VERSION,
    "fs": TARGET_FS,
    "window_seconds": WINDOW_SECONDS,
    "beat_span_in_rr": BEAT_SPAN_IN_RR,
    "beat_length": BEAT_LENGTH,
    "lead": LEAD,
    "lead_if_missing": "first channel",
    "symbols": AAMI_SYMBOLS,
    "records": ALL_RECORDS,
}
RECIPE_HASH = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:10]

# RR (rhythm) features of each beat (module docstring, "RR (rhythm) features").
RR_FEATURE_NAMES = ("pre_rr", "post_rr", "local_rr", "record_mean_rr",
                    "pre_rr_ratio", "post_rr_ratio", "local_rr_ratio")
RR_LOCAL_INTERVALS = 10
# Bump when the RR features change in a way RR_RECIPE does not capture.
RR_RECIPE_VERSION = 1
RR_RECIPE = {
    "version": RR_RECIPE_VERSION,
    "beats": RECIPE_HASH,  # the same beats (records, symbols), in the same order
    "features": RR_FEATURE_NAMES,
    "units": "seconds, from annotation sample / fs",
    "local_intervals": RR_LOCAL_INTERVALS,
    "edges": "first beat: pre_rr = post_rr; last beat: post_rr = pre_rr; local window clipped",
    "model_input": "natural log of each feature",
}


def recipe_hash(recipe):
    """Short content hash of a recipe dict: the cache-file key (as ``RECIPE_HASH``)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


RR_HASH = recipe_hash(RR_RECIPE)

CSV_NAMES = ("mitbih_train.csv", "mitbih_test.csv")
HOW_TO_GET_DATA = (
    "Get the data in one of two ways:\n"
    "  * the Kaggle 'ECG Heartbeat Categorization Dataset' CSVs mitbih_train.csv and "
    "mitbih_test.csv, placed in one of the directories above;\n"
    "  * the PhysioNet MIT-BIH Arrhythmia Database records (NNN.hea/.dat/.atr) in "
    "<directory>/mitdb/, e.g. with python -c \"import wfdb; "
    "wfdb.dl_database('mitdb', 'data/mitbih/mitdb')\" from the repository root, or "
    "from https://physionet.org/content/mitdb/1.0.0/."
)


# ----------------------------------------------------------------------------- beats


def _require_files(paths, record_name):
    """Raise :class:`DataCorruptError` naming the first of ``paths`` that is missing."""
    for path in paths:
        if not path.is_file():
            raise DataCorruptError(
                f"MIT-BIH record {record_name}: {path} is missing, so this copy of mitdb is "
                "incomplete. Copy the record's .hea, .dat and .atr files again, or re-download "
                "them with wfdb.dl_database('mitdb', <directory>)."
            )


def _read_record(record_path_prefix):
    """Lead-MLII signal, its sampling rate, and the beat annotations of one record.

    Returns
    -------
    signal : np.ndarray
        MLII samples (first channel if there is no MLII) in mV, float64.
    fs : float
        Sampling rate of ``signal`` in Hz.
    beat_samples : np.ndarray
        Sample index of each beat annotation (AAMI symbols only).
    beat_symbols : list of str
        Annotation symbol of each of those beats.
    """
    prefix = Path(record_path_prefix)
    _require_files([prefix.parent / f"{prefix.name}.hea"], prefix.name)
    try:
        header = wfdb.rdheader(str(prefix))
        _require_files([prefix.parent / name for name in dict.fromkeys(header.file_name)], prefix.name)
        _require_files([prefix.parent / f"{prefix.name}.atr"], prefix.name)
        # Records 102 and 104 have no MLII (surgical dressings); both list V5 first.
        channel = header.sig_name.index(LEAD) if LEAD in header.sig_name else 0
        record = wfdb.rdrecord(str(prefix), channels=[channel])
        annotation = wfdb.rdann(str(prefix), "atr")
    except DataCorruptError:
        raise
    except Exception as exc:  # wfdb raises many types for malformed files
        raise DataCorruptError(
            f"MIT-BIH record {prefix} cannot be read ({type(exc).__name__}: {exc}); "
            "re-download it with wfdb.dl_database('mitdb', <directory>)."
        ) from exc
    signal = record.p_signal[:, 0]
    if not np.isfinite(signal).all():
        raise DataCorruptError(
            f"MIT-BIH record {prefix}: the {LEAD} signal has invalid samples; re-download it."
        )
    beat_samples, beat_symbols = _beat_annotations(annotation)
    return signal, float(record.fs), beat_samples, beat_symbols


def _beat_annotations(annotation):
    """Sample indices and symbols of the AAMI beat annotations of a ``wfdb.Annotation``."""
    is_beat = np.array([symbol in CLASS_OF_SYMBOL for symbol in annotation.symbol], dtype=bool)
    beat_symbols = [s for s, keep in zip(annotation.symbol, is_beat) if keep]
    return annotation.sample[is_beat], beat_symbols


def _window_ranges(signal, window_len):
    """Minimum and (maximum - minimum) of each consecutive window of ``signal``."""
    n_windows = -(-len(signal) // window_len)
    # Edge padding repeats the last sample, which leaves the last window's range unchanged.
    windows = np.pad(signal, (0, n_windows * window_len - len(signal)), mode="edge")
    windows = windows.reshape(n_windows, window_len)
    low, high = windows.min(axis=1), windows.max(axis=1)
    spread = high - low
    spread[spread == 0] = 1.0  # a flat window normalises to all zeros, not NaN
    return low, spread


def _window_median_rr(peaks, window_of_peak, n_windows):
    """Median RR interval (samples) of each window, from R-peaks inside that window.

    Windows with fewer than two R-peaks get the record's median RR interval.
    """
    rr = np.diff(peaks)
    record_median = np.median(rr) if len(rr) else BEAT_LENGTH / BEAT_SPAN_IN_RR
    median_rr = np.full(n_windows, record_median, dtype=float)
    in_one_window = window_of_peak[1:] == window_of_peak[:-1]
    windows, rr_in_window = window_of_peak[1:][in_one_window], rr[in_one_window]
    # Peaks are sorted, so each window's intervals are contiguous.
    unique_windows, starts = np.unique(windows, return_index=True)
    for window, window_rr in zip(unique_windows, np.split(rr_in_window, starts[1:])):
        median_rr[window] = np.median(window_rr)
    return median_rr


def build_beats(record_path_prefix):
    """Cut one MIT-BIH record into fixed-length beats, as in Kachuee et al. 2018.

    See the module docstring for the recipe and the choices where the paper is vague.

    Parameters
    ----------
    record_path_prefix : str or os.PathLike
        Path of the record without extension, e.g. ``".../mitdb/100"``.

    Returns
    -------
    x : np.ndarray
        float32, shape (n_beats, BEAT_LENGTH), values in [0, 1], zero-padded at the end.
    y : np.ndarray
        int64 AAMI class index into ``CLASS_NAMES``, one per beat annotation, in order.

    Raises
    ------
    DataCorruptError
        A file of the record is missing or unreadable.
    """
    signal, fs, beat_samples, beat_symbols = _read_record(record_path_prefix)
    ratio = Fraction(TARGET_FS) / Fraction(fs).limit_denominator(1000)
    signal = scipy.signal.resample_poly(signal, ratio.numerator, ratio.denominator)
    peaks = np.clip(np.round(beat_samples * float(ratio)).astype(np.int64), 0, len(signal) - 1)

    window_len = TARGET_FS * WINDOW_SECONDS
    window_low, window_spread = _window_ranges(signal, window_len)
    window_of_peak = peaks // window_len
    median_rr = _window_median_rr(peaks, window_of_peak, len(window_low))
    span = np.minimum(np.round(BEAT_SPAN_IN_RR * median_rr[window_of_peak]), BEAT_LENGTH)

    offsets = np.arange(BEAT_LENGTH)
    sample_index = peaks[:, None] + offsets
    inside_beat = (offsets < span[:, None]) & (sample_index < len(signal))
    samples = signal[np.minimum(sample_index, len(signal) - 1)]
    scaled = (samples - window_low[window_of_peak, None]) / window_spread[window_of_peak, None]
    x = np.where(inside_beat, np.clip(scaled, 0.0, 1.0), 0.0).astype(np.float32)
    y = np.array([CLASS_OF_SYMBOL[s] for s in beat_symbols], dtype=np.int64)
    return x, y


def build_all_beats(mitdb_dir, records=None):
    """Beats of several MIT-BIH records, concatenated in record order.

    Parameters
    ----------
    mitdb_dir : str or os.PathLike
        Directory holding the ``NNN.hea/.dat/.atr`` files.
    records : sequence of int, optional
        Record numbers; all 48 (``ALL_RECORDS``) by default.

    Returns
    -------
    x : np.ndarray
        float32, shape (n_beats, BEAT_LENGTH).
    y : np.ndarray
        int64 AAMI class indices.
    record_ids : np.ndarray
        int64 record number of each beat.
    """
    records = ALL_RECORDS if records is None else tuple(records)
    xs, ys = zip(*(build_beats(Path(mitdb_dir) / str(record)) for record in records))
    record_ids = np.repeat(np.asarray(records, dtype=np.int64), [len(y) for y in ys])
    return np.concatenate(xs), np.concatenate(ys), record_ids


# ----------------------------------------------------------------------------- RR features


def rr_features_from_positions(beat_seconds):
    """RR features of the beats of one record from their positions (module docstring).

    Parameters
    ----------
    beat_seconds : array_like
        Time of each beat of the record in seconds, strictly increasing, at least two.

    Returns
    -------
    np.ndarray
        float64, shape (n_beats, len(RR_FEATURE_NAMES)), columns in ``RR_FEATURE_NAMES``
        order: seconds for the first four, ratios to ``record_mean_rr`` for the last three.

    Raises
    ------
    ValueError
        Fewer than two beats, or positions that are not strictly increasing.
    """
    t = np.asarray(beat_seconds, dtype=np.float64)
    if t.ndim != 1 or len(t) < 2:
        raise ValueError(f"RR features need the positions of at least two beats, got shape {t.shape}")
    rr = np.diff(t)
    if not (rr > 0).all():
        first = int(np.flatnonzero(~(rr > 0))[0])
        raise ValueError(f"beat positions must be strictly increasing; beat {first + 1} at "
                         f"{t[first + 1]} s does not follow beat {first} at {t[first]} s")
    pre = np.r_[rr[0], rr]     # the first beat has no predecessor: its post-RR stands in
    post = np.r_[rr, rr[-1]]   # the last beat has no successor: its pre-RR stands in
    # Beat i lies between intervals i - 1 (pre) and i (post); its window is intervals
    # i - half .. i + half - 1, clipped to 0 .. n - 2.
    half = RR_LOCAL_INTERVALS // 2
    index = np.arange(len(t))
    low, high = np.maximum(index - half, 0), np.minimum(index + half, len(rr))
    cumulative = np.r_[0.0, np.cumsum(rr)]
    local = (cumulative[high] - cumulative[low]) / (high - low)
    mean = np.full(len(t), rr.mean())
    return np.stack([pre, post, local, mean, pre / mean, post / mean, local / mean], axis=1)


def build_rr_features(record_path_prefix):
    """RR features of every beat of one record, in the order of :func:`build_beats`.

    Reads only the header (sampling rate) and the beat annotations ``.atr``.

    Returns
    -------
    np.ndarray
        float64, shape (n_beats, len(RR_FEATURE_NAMES)); see :func:`rr_features_from_positions`.

    Raises
    ------
    DataCorruptError
        A file is missing or unreadable, or the record has fewer than two beats or beats
        out of order.
    """
    prefix = Path(record_path_prefix)
    _require_files([prefix.parent / f"{prefix.name}.hea", prefix.parent / f"{prefix.name}.atr"],
                   prefix.name)
    try:
        fs = float(wfdb.rdheader(str(prefix)).fs)
        annotation = wfdb.rdann(str(prefix), "atr")
    except Exception as exc:  # wfdb raises many types for malformed files
        raise DataCorruptError(
            f"MIT-BIH record {prefix} cannot be read ({type(exc).__name__}: {exc}); "
            "re-download it with wfdb.dl_database('mitdb', <directory>)."
        ) from exc
    beat_samples, _ = _beat_annotations(annotation)
    try:
        return rr_features_from_positions(beat_samples / fs)
    except ValueError as exc:
        raise DataCorruptError(
            f"MIT-BIH record {prefix}: no RR features from its beat annotations ({exc}); "
            "re-download its .atr file."
        ) from exc


def build_all_rr_features(mitdb_dir, records=None):
    """RR features of several records, concatenated in record order like :func:`build_all_beats`.

    Returns
    -------
    rr : np.ndarray
        float64, shape (n_beats, len(RR_FEATURE_NAMES)).
    record_ids : np.ndarray
        int64 record number of each beat.
    """
    records = ALL_RECORDS if records is None else tuple(records)
    parts = [build_rr_features(Path(mitdb_dir) / str(record)) for record in records]
    record_ids = np.repeat(np.asarray(records, dtype=np.int64), [len(p) for p in parts])
    return np.concatenate(parts), record_ids


def rr_model_inputs(rr):
    """What the model sees of the RR features: their natural log, float32 (module docstring)."""
    return np.log(np.asarray(rr, dtype=np.float64)).astype(np.float32)


# ----------------------------------------------------------------------------- cache


def _save_npz_atomically(path, **arrays):
    """Write a compressed ``.npz`` so readers never see a half-written file."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def _load_cache(cache_path):
    """Beats, labels and record ids from ``cache_path``, or None if absent or unreadable."""
    if not cache_path.is_file():
        return None
    try:
        with np.load(cache_path) as cache:
            if json.loads(str(cache["recipe"])) != json.loads(json.dumps(RECIPE)):
                raise ValueError("it was built with another recipe")
            return cache["x"], cache["y"], cache["record_ids"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        warnings.warn(f"Ignoring the unreadable beat cache {cache_path} ({exc}); rebuilding it.")
        return None


def _cached_beats(records_dir, cache_dir):
    """All beats of ``records_dir``, from the cache in ``cache_dir`` or built and cached."""
    cache_path = cache_dir / f"mitbih_beats_{RECIPE_HASH}.npz"
    cached = _load_cache(cache_path)
    if cached is not None:
        return (*cached, cache_path)
    print(f"Building MIT-BIH beats from {records_dir} (once; cached in {cache_path}) ...")
    start = time.perf_counter()
    x, y, record_ids = build_all_beats(records_dir)
    print(f"Built {len(y)} beats in {time.perf_counter() - start:.1f} s.")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _save_npz_atomically(cache_path, x=x, y=y, record_ids=record_ids, recipe=json.dumps(RECIPE))
    except OSError as exc:
        warnings.warn(f"Could not write the beat cache {cache_path} ({exc}); the beats will be "
                      "rebuilt next time. Pass a writable cache_dir to avoid that.")
    return x, y, record_ids, cache_path


def _load_rr_cache(cache_path, record_ids):
    """RR features from ``cache_path`` if it belongs to the beats of ``record_ids``, else None."""
    if not cache_path.is_file():
        return None
    try:
        with np.load(cache_path) as cache:
            if json.loads(str(cache["recipe"])) != json.loads(json.dumps(RR_RECIPE)):
                raise ValueError("it was built with another RR recipe")
            rr = cache["rr"]
            if not np.array_equal(cache["record_ids"], record_ids) or rr.shape != (
                    len(record_ids), len(RR_FEATURE_NAMES)):
                raise ValueError("its beats are not those of the beat cache")
            return rr
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        warnings.warn(f"Ignoring the unreadable RR feature cache {cache_path} ({exc}); rebuilding it.")
        return None


def _cached_rr_features(records_dir, cache_dir, record_ids, beat_cache_path):
    """RR features of the beats of ``record_ids`` (all records), cached next to the beats."""
    cache_path = cache_dir / f"mitbih_rr_{RR_HASH}.npz"
    rr = _load_rr_cache(cache_path, record_ids)
    if rr is not None:
        return rr, cache_path
    rr, rr_record_ids = build_all_rr_features(records_dir)
    if not np.array_equal(rr_record_ids, record_ids):
        raise DataCorruptError(
            f"The beat annotations in {records_dir} give other beats than the beat cache "
            f"{beat_cache_path} holds ({len(rr_record_ids)} vs {len(record_ids)} beats), so the "
            "cache was built from another copy of mitdb. Delete that cache file to rebuild it."
        )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _save_npz_atomically(cache_path, rr=rr, record_ids=record_ids, recipe=json.dumps(RR_RECIPE))
    except OSError as exc:
        warnings.warn(f"Could not write the RR feature cache {cache_path} ({exc}); the features "
                      "will be rebuilt next time. Pass a writable cache_dir to avoid that.")
    return rr, cache_path


# ----------------------------------------------------------------------------- lookup


def _csv_paths(directory):
    """The two Kaggle CSV paths if both exist in ``directory``, else None."""
    paths = tuple(directory / name for name in CSV_NAMES)
    return paths if all(path.is_file() for path in paths) else None


def _records_dir(directory):
    """``directory/mitdb`` or ``directory`` if it holds any mitdb record header, else None."""
    for candidate in (directory / "mitdb", directory):
        if any((candidate / f"{record}.hea").is_file() for record in ALL_RECORDS):
            return candidate
    return None


def _download_records(tried):
    """Download mitdb from PhysioNet into ``<repo>/data/mitbih/mitdb``; return that dir."""
    target = data_common.DEFAULT_DATA_ROOT / "mitbih" / "mitdb"
    print(f"MIT-BIH not found locally; downloading mitdb from PhysioNet into {target} ...")
    try:
        wfdb.dl_database("mitdb", str(target))
    except Exception as exc:  # no network, HTTP errors, disk errors: all mean "no data"
        raise DataNotFoundError(
            _not_found_message(tried) + f"\nDownloading from PhysioNet into {target} failed "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    return target


def _not_found_message(tried):
    paths = "\n".join(f"  {directory}" for directory in tried)
    return (
        "MIT-BIH data not found. Looked for mitbih_train.csv + mitbih_test.csv, or mitdb "
        f"records in <directory>/mitdb/ or <directory>/, in:\n{paths}\n{HOW_TO_GET_DATA}"
    )


# ----------------------------------------------------------------------------- loading


def _read_csv(path):
    """Samples (float32, n x 187) and labels (int64) of one Kaggle MIT-BIH CSV."""
    try:
        table = pd.read_csv(path, header=None, dtype=np.float64).to_numpy()
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataCorruptError(
            f"{path} is not a numeric CSV ({exc}); replace it with the Kaggle file of that name."
        ) from exc
    if table.shape[1] != BEAT_LENGTH + 1:
        raise DataCorruptError(
            f"{path} has {table.shape[1]} columns, expected {BEAT_LENGTH + 1} ({BEAT_LENGTH} "
            "samples and the class); it is not the Kaggle MIT-BIH file, replace it."
        )
    labels = table[:, -1]
    if not np.isin(labels, np.arange(len(CLASS_NAMES))).all():
        bad = np.unique(labels[~np.isin(labels, np.arange(len(CLASS_NAMES)))])[:5]
        raise DataCorruptError(
            f"{path}: the last column must hold classes 0..{len(CLASS_NAMES) - 1}, found "
            f"{bad.tolist()}; it is not the Kaggle MIT-BIH file, replace it."
        )
    return table[:, :-1].astype(np.float32), labels.astype(np.int64)


def _load_csvs(train_path, test_path):
    x_train, y_train = _read_csv(train_path)
    x_test, y_test = _read_csv(test_path)
    source = f"Kaggle MIT-BIH CSVs {train_path} and {test_path} (fixed intra-patient split)"
    return Dataset(x_train, y_train, x_test, y_test, class_names=CLASS_NAMES, source=source,
                   origin="Kaggle MIT-BIH CSVs (fixed intra-patient split)")


def _split_indices(y, record_ids, split, split_seed=0, test_fraction=0.2):
    """Train and test indices into the full build for ``split`` (see module docstring)."""
    if split == "intra":
        return train_test_split(np.arange(len(y)), test_size=test_fraction,
                                random_state=split_seed, stratify=y)
    return np.flatnonzero(np.isin(record_ids, DS1)), np.flatnonzero(np.isin(record_ids, DS2))


def _load_records(records_dir, cache_dir, split, split_seed, test_fraction, rr_features=False):
    x, y, record_ids, cache_path = _cached_beats(records_dir, cache_dir)
    train, test = _split_indices(y, record_ids, split, split_seed, test_fraction)
    how = (f"intra-patient split, seed {split_seed}, test fraction {test_fraction}"
           if split == "intra" else "inter-patient split DS1/DS2, paced records excluded")
    cached, recipe = f"beats cached in {cache_path}", f"beat recipe {RECIPE_HASH}"
    if rr_features:
        rr, rr_cache_path = _cached_rr_features(records_dir, cache_dir, record_ids, cache_path)
        x = np.concatenate([x, rr_model_inputs(rr)], axis=1)
        cached += f", RR features in {rr_cache_path}"
        recipe += f", RR features {RR_HASH} (log, appended)"
    source = f"mitdb records at {records_dir} ({cached}; {how})"
    return Dataset(x[train], y[train], x[test], y[test], class_names=CLASS_NAMES, source=source,
                   origin=f"PhysioNet mitdb records, {recipe}, {how}")


def _csv_only_message(directory, split, rr_features):
    """Why the Kaggle CSVs in ``directory`` cannot serve this request, and what to do."""
    records = directory / "mitdb"
    get_records = (f"Put the records in {records} (wfdb.dl_database('mitdb', '{records}') or "
                   "https://physionet.org/content/mitdb/1.0.0/)")
    if split == "inter":
        return (f"Found only the Kaggle CSVs in {directory}, but split='inter' (patient-wise) needs "
                f"the raw mitdb records, whose record numbers the CSVs lack. {get_records}, or use "
                "split='intra'.")
    return (f"Found only the Kaggle CSVs in {directory}, but the RR features (rr_features=True, "
            "--rr-features 1) need the raw mitdb records: RR intervals are computed from the "
            "positions of the beat annotations, and the CSVs hold only each beat's 187 samples, "
            f"without positions or record numbers. {get_records}, or turn the RR features off "
            "(rr_features=False, --rr-features 0).")


def load_mitbih(data_dir=None, split="intra", cache_dir=None, split_seed=0,
                test_fraction=0.2, download=True, rr_features=False):
    """MIT-BIH beats (AAMI classes) as a train pool and a test set.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Directory searched first (before ``$AL_DATA_DIR/mitbih`` and ``<repo>/data/mitbih``).
    split : {"intra", "inter"}
        ``"intra"``: stratified random split over all beats; ``"inter"``: de Chazal
        DS1 (train) / DS2 (test), paced records excluded. ``"inter"`` needs the raw records.
    cache_dir : str or os.PathLike, optional
        Where the built beats are cached (relative paths are from the repository root);
        default ``<repo>/data/mitbih``. Created if missing.
    split_seed : int
        ``random_state`` of the intra-patient split.
    test_fraction : float
        Test share of the intra-patient split.
    download : bool
        Download the records from PhysioNet when no local copy is found.
    rr_features : bool
        Append the beat's RR features (module docstring): columns ``BEAT_LENGTH`` on of ``x``
        hold ``rr_model_inputs`` of the ``RR_FEATURE_NAMES``. Needs the raw records.

    Returns
    -------
    data_common.Dataset
        x float32 (n, BEAT_LENGTH) in [0, 1] (``rr_features``: (n, BEAT_LENGTH +
        len(RR_FEATURE_NAMES)), the beat then its RR features), y int64 indices into
        ``CLASS_NAMES``. The beats, labels and split are the same with and without
        ``rr_features``.

    Raises
    ------
    ValueError
        Unknown ``split``.
    DataNotFoundError
        No data found (and the download failed or was not allowed), or only the CSVs
        were found but ``split="inter"`` or ``rr_features``.
    DataCorruptError
        A data file is incomplete or malformed.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown MIT-BIH split {split!r}; use one of {SPLITS}.")
    cache_dir = (resolve_repo_path(cache_dir) if cache_dir is not None
                 else data_common.DEFAULT_DATA_ROOT / "mitbih")
    tried = candidate_dirs("mitbih", data_dir)
    needs_records = split == "inter" or bool(rr_features)
    for directory in tried:
        csv_paths, records_dir = _csv_paths(directory), _records_dir(directory)
        if csv_paths and not needs_records:
            return _load_csvs(*csv_paths)
        if records_dir:
            return _load_records(records_dir, cache_dir, split, split_seed, test_fraction, rr_features)
        if csv_paths:
            raise DataNotFoundError(_csv_only_message(directory, split, rr_features))
    if not download:
        raise DataNotFoundError(_not_found_message(tried) + "\n(Download was not allowed.)")
    records_dir = _download_records(tried)
    return _load_records(records_dir, cache_dir, split, split_seed, test_fraction, rr_features)


@dataclass(frozen=True)
class RecordBeats:
    """Every beat of the 48 records in record order and, within a record, in time order.

    ``x`` float32 (n, BEAT_LENGTH), or (n, BEAT_LENGTH + 7) with the RR features appended as in
    :func:`load_mitbih`; ``y`` AAMI class indices; ``record_ids`` the record number of each
    beat; ``source`` where they came from (with paths) and ``origin`` what they are (without).
    """
    x: np.ndarray
    y: np.ndarray
    record_ids: np.ndarray
    source: str
    origin: str


def load_record_beats(data_dir=None, cache_dir=None, rr_features=True, download=True) -> RecordBeats:
    """The beats of every record with their record numbers, from the raw mitdb records.

    For experiments per patient (``code/mitbih_patient.py``); same lookup order, caches and
    errors as :func:`load_mitbih` with ``split="inter"`` (the Kaggle CSVs carry no record
    numbers and are refused).
    """
    cache_dir = (resolve_repo_path(cache_dir) if cache_dir is not None
                 else data_common.DEFAULT_DATA_ROOT / "mitbih")
    tried = candidate_dirs("mitbih", data_dir)
    records_dir = None
    for directory in tried:
        records_dir = _records_dir(directory)
        if records_dir:
            break
        if _csv_paths(directory):
            raise DataNotFoundError(_csv_only_message(directory, "inter", rr_features))
    if records_dir is None:
        if not download:
            raise DataNotFoundError(_not_found_message(tried) + "\n(Download was not allowed.)")
        records_dir = _download_records(tried)
    x, y, record_ids, cache_path = _cached_beats(records_dir, cache_dir)
    recipe = f"beat recipe {RECIPE_HASH}"
    if rr_features:
        rr, _ = _cached_rr_features(records_dir, cache_dir, record_ids, cache_path)
        x = np.concatenate([x, rr_model_inputs(rr)], axis=1)
        recipe += f", RR features {RR_HASH} (log, appended)"
    return RecordBeats(x, y, record_ids, source=f"mitdb records at {records_dir} (beats cached in {cache_path})",
                       origin=f"PhysioNet mitdb records, {recipe}")
