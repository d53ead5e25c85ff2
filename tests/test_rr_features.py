"""RR (rhythm) features of MIT-BIH beats: the features, their cache, the loader option, the
models that take them, and ``code/mitbih.py --rr-features 1`` end to end.

Real-data tests (the end-to-end run) read the mitdb records under ``$AL_DATA_DIR/mitbih``
and are skipped when AL_DATA_DIR is not set; the real-record checks of the features ride on
the full build of tests/test_data_mitbih.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from al import data_mitbih, models
from al.data_common import REPO_ROOT, DataNotFoundError
from al.data_mitbih import BEAT_LENGTH, RR_FEATURE_NAMES, load_mitbih
from conftest import write_csv
from test_data_mitbih import write_synthetic_record

N_RR = len(RR_FEATURE_NAMES)
PRE, POST, LOCAL, MEAN, PRE_RATIO, POST_RATIO, LOCAL_RATIO = range(N_RR)


# ----------------------------------------------------------------------------- the features


def test_feature_order_is_the_documented_one():
    assert RR_FEATURE_NAMES == ("pre_rr", "post_rr", "local_rr", "record_mean_rr",
                                "pre_rr_ratio", "post_rr_ratio", "local_rr_ratio")
    assert models.RR_FEATURE_COUNT == len(RR_FEATURE_NAMES)  # the models split off this many inputs


def test_features_of_constructed_positions():
    # 14 intervals: a premature beat (0.5 s) with its compensatory pause (1.1 s) at beats 3-4.
    intervals = np.array([0.8, 0.8, 0.8, 0.5, 1.1, 0.8, 0.8, 0.8, 0.8, 0.8, 0.6, 0.6, 0.6, 0.6])
    t = 2.0 + np.r_[0.0, np.cumsum(intervals)]
    features = data_mitbih.rr_features_from_positions(t)

    assert features.shape == (15, N_RR) and features.dtype == np.float64
    # pre/post: the neighbours' distances; the first beat's pre and last beat's post are the
    # beat's other interval.
    np.testing.assert_allclose(features[:, PRE], np.r_[0.8, intervals])
    np.testing.assert_allclose(features[:, POST], np.r_[intervals, 0.6])
    assert features[3, PRE] == pytest.approx(0.8) and features[3, POST] == pytest.approx(0.5)
    assert features[4, PRE] == pytest.approx(0.5) and features[4, POST] == pytest.approx(1.1)
    # local: the 5 intervals ending at the beat and the 5 starting at it, clipped at the ends.
    expected_local = {
        0: np.mean([0.8, 0.8, 0.8, 0.5, 1.1]),            # intervals 0..4 only
        2: np.mean([0.8, 0.8, 0.8, 0.5, 1.1, 0.8, 0.8]),  # 0..6
        7: np.mean([0.8, 0.5, 1.1, 0.8, 0.8, 0.8, 0.8, 0.8, 0.6, 0.6]),  # 2..11: all 10
        14: np.mean([0.8, 0.6, 0.6, 0.6, 0.6]),           # 9..13 only
    }
    for beat, local in expected_local.items():
        assert features[beat, LOCAL] == pytest.approx(local), beat
    record_mean = intervals.sum() / 14
    np.testing.assert_allclose(features[:, MEAN], record_mean)
    np.testing.assert_allclose(features[:, PRE_RATIO], features[:, PRE] / record_mean)
    np.testing.assert_allclose(features[:, POST_RATIO], features[:, POST] / record_mean)
    np.testing.assert_allclose(features[:, LOCAL_RATIO], features[:, LOCAL] / record_mean)


def test_two_beats_are_enough_and_shifting_time_changes_nothing():
    two = data_mitbih.rr_features_from_positions([10.0, 10.9])
    np.testing.assert_allclose(two, [[0.9, 0.9, 0.9, 0.9, 1, 1, 1]] * 2)
    t = np.cumsum(np.random.default_rng(0).uniform(0.4, 1.2, 40))
    np.testing.assert_allclose(data_mitbih.rr_features_from_positions(t),
                               data_mitbih.rr_features_from_positions(t + 100.0))


@pytest.mark.parametrize("positions, problem", [
    ([3.0], "at least two beats"),
    ([], "at least two beats"),
    ([1.0, 2.0, 2.0, 3.0], "strictly increasing; beat 2 at 2.0 s"),
    ([1.0, 0.5], "strictly increasing"),
])
def test_unusable_positions_are_refused(positions, problem):
    with pytest.raises(ValueError, match=problem):
        data_mitbih.rr_features_from_positions(positions)


def test_features_of_a_record_come_from_its_beat_annotations(tmp_path):
    # Beats 0.8 s apart, one premature (at 0.5 s) and a rhythm note '+' that is no beat.
    seconds = np.r_[np.arange(1, 9) * 0.8, 6.9, np.arange(10, 14) * 0.8]
    samples = np.round(seconds * 360).astype(int)
    symbols = ["N"] * 8 + ["V"] + ["N"] * 4
    prefix = write_synthetic_record(tmp_path, "902", np.r_[samples[:4], samples[3] + 7, samples[4:]],
                                    symbols[:4] + ["+"] + symbols[4:], 12 * 360)

    features = data_mitbih.build_rr_features(prefix)
    x, _ = data_mitbih.build_beats(prefix)

    assert len(features) == len(x) == len(symbols)  # one row per beat, the note skipped
    np.testing.assert_allclose(features, data_mitbih.rr_features_from_positions(samples / 360))
    assert features[8, PRE] == pytest.approx(6.9 - 6.4) and features[8, POST] == pytest.approx(8.0 - 6.9)


def test_record_with_one_beat_is_reported(tmp_path):
    prefix = write_synthetic_record(tmp_path, "903", [360], ["N"], 3 * 360)
    with pytest.raises(data_mitbih.DataCorruptError, match="903.*at least two beats"):
        data_mitbih.build_rr_features(prefix)


# ----------------------------------------------------------------------------- cache key


def test_cache_key_changes_with_the_feature_definition():
    recipe = data_mitbih.RR_RECIPE
    assert data_mitbih.RR_HASH == data_mitbih.recipe_hash(recipe)
    assert recipe["local_intervals"] == data_mitbih.RR_LOCAL_INTERVALS
    assert recipe["features"] == RR_FEATURE_NAMES and recipe["beats"] == data_mitbih.RECIPE_HASH
    changed = [{**recipe, "local_intervals": 8}, {**recipe, "version": recipe["version"] + 1},
               {**recipe, "beats": "another"}, {**recipe, "features": RR_FEATURE_NAMES[:-1]},
               {**recipe, "model_input": "seconds"}]
    hashes = {data_mitbih.recipe_hash(r) for r in changed}
    assert len(hashes) == len(changed) and data_mitbih.RR_HASH not in hashes


# ----------------------------------------------------------------------------- loader


@pytest.fixture
def two_records(isolated, monkeypatch):
    """Synthetic records 100 and 101 in ``<tmp>/mitbih/mitdb``, the database shrunk to them."""
    monkeypatch.setattr(data_mitbih, "ALL_RECORDS", (100, 101))
    mitdb = isolated / "mitbih" / "mitdb"
    mitdb.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("100", "101"):
        samples = np.cumsum(rng.integers(180, 400, 30))
        write_synthetic_record(mitdb, name, samples, ["N", "V", "A", "F", "/"] * 6, samples[-1] + 400)
    return isolated / "mitbih"


def load_two(two_records, **kwargs):
    return load_mitbih(data_dir=two_records, cache_dir=two_records / "cache", download=False, **kwargs)


def test_loader_appends_the_log_features_to_the_same_beats(two_records):
    plain = load_two(two_records)
    with_rr = load_two(two_records, rr_features=True)

    assert with_rr.x_train.shape == (len(plain.y_train), BEAT_LENGTH + N_RR)
    assert with_rr.x_train.dtype == np.float32
    np.testing.assert_array_equal(with_rr.x_train[:, :BEAT_LENGTH], plain.x_train)
    np.testing.assert_array_equal(with_rr.y_test, plain.y_test)
    # The appended columns are the log features of the same beats, in the same (split) order.
    rr, _ = data_mitbih.build_all_rr_features(two_records / "mitdb")
    _, y_all, record_ids = data_mitbih.build_all_beats(two_records / "mitdb")
    train, test = data_mitbih._split_indices(y_all, record_ids, "intra")
    np.testing.assert_allclose(with_rr.x_train[:, BEAT_LENGTH:], np.log(rr[train]), rtol=1e-6)
    np.testing.assert_allclose(with_rr.x_test[:, BEAT_LENGTH:], np.log(rr[test]), rtol=1e-6)
    assert f"RR features {data_mitbih.RR_HASH}" in with_rr.origin
    assert "RR features" not in plain.origin
    assert with_rr.sha256 != plain.sha256


def test_rr_cache_is_written_keyed_and_reused(two_records, monkeypatch):
    first = load_two(two_records, rr_features=True)
    cache = two_records / "cache" / f"mitbih_rr_{data_mitbih.RR_HASH}.npz"
    assert cache.is_file() and str(cache) in first.source
    with np.load(cache) as stored:
        assert json.loads(str(stored["recipe"])) == json.loads(json.dumps(data_mitbih.RR_RECIPE))
        assert stored["rr"].shape == (len(first.y_train) + len(first.y_test), N_RR)

    def fail(*args, **kwargs):
        raise AssertionError("the RR features were rebuilt although they were cached")

    monkeypatch.setattr(data_mitbih, "build_all_rr_features", fail)
    again = load_two(two_records, rr_features=True)
    np.testing.assert_array_equal(again.x_train, first.x_train)


@pytest.mark.parametrize("corruption", ["recipe", "beats", "garbage"])
def test_stale_or_broken_rr_cache_is_rebuilt(two_records, corruption):
    first = load_two(two_records, rr_features=True)
    cache = two_records / "cache" / f"mitbih_rr_{data_mitbih.RR_HASH}.npz"
    with np.load(cache) as stored:
        arrays = dict(stored)
    if corruption == "recipe":
        arrays["recipe"] = json.dumps({**data_mitbih.RR_RECIPE, "local_intervals": 4})
        arrays["rr"] = arrays["rr"] * 2
    elif corruption == "beats":
        arrays["record_ids"] = arrays["record_ids"][1:]
        arrays["rr"] = arrays["rr"][1:]
    if corruption == "garbage":
        cache.write_bytes(b"not a zip file")
    else:
        np.savez_compressed(cache, **arrays)
    with pytest.warns(UserWarning, match="Ignoring the unreadable RR feature cache"):
        again = load_two(two_records, rr_features=True)
    np.testing.assert_array_equal(again.x_train, first.x_train)


def test_annotations_not_matching_the_beat_cache_are_reported(two_records):
    load_two(two_records, rr_features=False)  # the beat cache, from these records
    # The records change (one beat fewer in 101) while the beat cache stays.
    mitdb = two_records / "mitdb"
    samples = np.cumsum(np.random.default_rng(1).integers(180, 400, 29))
    write_synthetic_record(mitdb, "101", samples, ["N"] * 29, samples[-1] + 400)
    with pytest.raises(data_mitbih.DataCorruptError, match="other beats than the beat cache.*Delete"):
        load_two(two_records, rr_features=True)


def test_csvs_alone_cannot_give_rr_features(isolated):
    write_csv(isolated / "mitbih_train.csv", 10)
    write_csv(isolated / "mitbih_test.csv", 5)
    with pytest.raises(DataNotFoundError) as error:
        load_mitbih(data_dir=isolated, rr_features=True, download=False)
    message = str(error.value)
    assert "Kaggle CSVs" in message and str(isolated) in message
    assert "positions of the beat annotations" in message  # why
    assert "--rr-features 0" in message and "wfdb.dl_database('mitdb'" in message  # what to do
    # Without the option the same CSVs still load.
    assert load_mitbih(data_dir=isolated, download=False).x_train.shape == (10, BEAT_LENGTH)


def test_rr_features_prefer_records_over_csvs_in_the_same_folder(two_records):
    write_csv(two_records / "mitbih_train.csv", 10)
    write_csv(two_records / "mitbih_test.csv", 5)
    assert load_two(two_records).x_train.shape == (10, BEAT_LENGTH)  # the CSVs serve intra
    with_rr = load_two(two_records, rr_features=True)
    assert with_rr.x_train.shape[1] == BEAT_LENGTH + N_RR and "mitdb records" in with_rr.origin


def test_script_refuses_rr_features_from_csvs_and_bad_values(isolated):
    import mitbih
    from al import cli
    write_csv(isolated / "mitbih_train.csv", 10)
    write_csv(isolated / "mitbih_test.csv", 5)
    config = {**cli.hyperparameters(vars(mitbih)), "rr_features": 1, "dev_size": 0}
    with pytest.raises(DataNotFoundError, match="RR features"):
        mitbih.load_data(config, isolated)
    with pytest.raises(ValueError, match="--rr-features must be 0 .off. or 1"):
        mitbih.load_data({**config, "rr_features": 2}, isolated)
    with pytest.raises(ValueError, match="--rr-features 1 needs --architecture ecg_resnet or ecg_cnn"):
        mitbih.load_data({**config, "architecture": "published_ecg_cnn"}, isolated)
    assert mitbih.results_name(config) == "mitbih_rr"
    assert mitbih.results_name({**config, "split": "inter"}) == "mitbih_inter_rr"
    assert mitbih.results_name({**config, "rr_features": 0}) == "mitbih"


def test_script_stops_with_a_clean_error_for_rr_features_from_csvs(isolated):
    import mitbih
    from al import cli
    folder = isolated / "mitbih"
    folder.mkdir()
    write_csv(folder / "mitbih_train.csv", 10)
    write_csv(folder / "mitbih_test.csv", 5)
    with pytest.raises(SystemExit) as stop:
        cli.main(mitbih.results_name, vars(mitbih), mitbih.load_data, mitbih.build_model,
                 ["--rr-features", "1", "--data-dir", str(folder), "--results-dir", str(isolated / "r")])
    message = str(stop.value)
    assert message.startswith("error: Found only the Kaggle CSVs") and "--rr-features 0" in message
    assert not (isolated / "r").exists()  # nothing ran


def test_script_option_defaults_to_off():
    import mitbih
    from al import cli
    config, _, _ = cli.parse_config("mitbih", cli.hyperparameters(vars(mitbih)), [])
    assert config["rr_features"] == 0
    config, _, _ = cli.parse_config("mitbih", cli.hyperparameters(vars(mitbih)), ["--rr-features", "1"])
    assert config["rr_features"] == 1


# ----------------------------------------------------------------------------- models

TINY = {
    "ecg_resnet": {"architecture": "ecg_resnet", "res_filters": 4, "res_blocks": 1},
    "ecg_cnn": {"architecture": "ecg_cnn", "conv_filters": [4, 4], "kernel_sizes": [5, 3],
                "dense_units": [8], "batch_norm": 1, "bn_momentum": 0.9},
}
SHAPE = (BEAT_LENGTH + N_RR, 1)


def tiny_config(architecture, **changes):
    return {**TINY[architecture], "dropout": 0.2, "learning_rate": 1e-2, "rr_features": 1, **changes}


def beats_with_rr(n, seed=0):
    """Random beats in [0, 1] and RR inputs on the log scale the loader gives."""
    rng = np.random.default_rng(seed)
    beats = rng.random((n, BEAT_LENGTH))
    rr = np.log(rng.uniform(0.3, 2.0, (n, N_RR)))
    return np.concatenate([beats, rr], axis=1)[..., None].astype(np.float32)


def build(config, seed=0):
    import keras
    keras.utils.set_random_seed(seed)
    return models.build(config, SHAPE, 5)


@pytest.mark.parametrize("architecture", sorted(TINY))
def test_model_with_rr_trains_and_uses_both_parts(architecture):
    x = beats_with_rr(64)
    y = np.arange(64) % 5
    model = build(tiny_config(architecture))
    assert model.input_shape == (None, *SHAPE) and model.output_shape == (None, 5)
    before = [w.numpy().copy() for w in model.get_layer("rr_dense").weights]
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    after = [w.numpy() for w in model.get_layer("rr_dense").weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))  # the RR branch learns

    probs = model.predict(x, verbose=0)
    other_rr = x.copy()
    other_rr[:, BEAT_LENGTH:] = beats_with_rr(64, seed=1)[:, BEAT_LENGTH:]
    other_beat = x.copy()
    other_beat[:, :BEAT_LENGTH] = beats_with_rr(64, seed=2)[:, :BEAT_LENGTH]
    # Predictions depend on the RR positions (the RR branch is connected) and on the beat.
    assert np.abs(model.predict(other_rr, verbose=0) - probs).max() > 1e-4
    assert np.abs(model.predict(other_beat, verbose=0) - probs).max() > 1e-4


@pytest.mark.parametrize("architecture", sorted(TINY))
def test_augmentation_leaves_the_rr_features_alone(architecture):
    import keras
    config = tiny_config(architecture, augment=1, augment_noise=0.5, augment_scale=0.5,
                         augment_shift=3, augment_wander=0.5)
    model = build(config)
    rr_path = keras.Model(model.input, model.get_layer("rr_dense").output)
    x = beats_with_rr(16)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(rr_path(x, training=True)),
                                  keras.ops.convert_to_numpy(rr_path(x, training=False)))
    # ... while the beat is augmented in training (the augmentation is there at all).
    beat = keras.Model(model.input, model.get_layer("beat").output)
    augment = next(layer for layer in model.layers if type(layer).__name__ == "ECGAugment")
    h = keras.ops.convert_to_numpy(beat(x))
    assert h.shape == (16, BEAT_LENGTH, 1)
    assert not np.allclose(keras.ops.convert_to_numpy(augment(h, training=True)), h)


@pytest.mark.parametrize("architecture", sorted(TINY))
def test_every_strategy_selects_with_the_rr_model(architecture):
    from al.strategies import STRATEGIES, get_strategy
    x = beats_with_rr(80)
    model = build(tiny_config(architecture))
    model.fit(x[:40], np.arange(40) % 5, epochs=1, batch_size=20, verbose=0)
    for name in sorted(STRATEGIES):
        positions = get_strategy(name).select(model, x[40:], 6, np.random.default_rng(0), x[:40])
        positions = np.asarray(positions)
        assert len(set(positions.tolist())) == 6 and positions.min() >= 0 and positions.max() < 40, name


def test_mc_passes_and_embeddings_see_the_rr_branch():
    from al.keras_ops import embed_and_predict, mc_predict_proba
    model = build(tiny_config("ecg_resnet"))
    x = beats_with_rr(12)
    other_rr = x.copy()
    other_rr[:, BEAT_LENGTH:] = beats_with_rr(12, seed=1)[:, BEAT_LENGTH:]
    h, probs = embed_and_predict(model, x)
    h_other, _ = embed_and_predict(model, other_rr)
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert h.shape == (12, 32) and not np.allclose(h, h_other)
    mc = mc_predict_proba(model, x, 4, np.random.default_rng(0))
    mc_other = mc_predict_proba(model, other_rr, 4, np.random.default_rng(0))
    assert mc.shape == (4, 12, 5) and not np.allclose(mc, mc_other)
    assert not np.allclose(mc[0], mc[1])  # the dropout samples


def test_rr_features_without_rr_inputs_or_with_other_builders_are_refused():
    with pytest.raises(ValueError, match=r"rr_features needs inputs of shape \(beat length \+ 7"):
        models.build(tiny_config("ecg_resnet"), (5, 1), 5)
    with pytest.raises(ValueError, match=r"rr_features needs inputs"):
        models.build(tiny_config("ecg_cnn"), (BEAT_LENGTH + N_RR,), 5)
    for architecture in ("published_ecg_cnn", "mlp"):
        with pytest.raises(ValueError, match="takes no RR features; use one of ecg_resnet, ecg_cnn"):
            models.build({"architecture": architecture, "rr_features": 1, "learning_rate": 1e-3,
                          "dense_units": [4], "dropout": 0.0}, SHAPE, 5)


def test_without_rr_features_the_ecg_models_take_the_whole_input():
    for architecture in TINY:
        model = build(tiny_config(architecture, rr_features=0), seed=0)
        names = [layer.name for layer in model.layers]
        assert "rr_dense" not in names and "beat" not in names
        assert model.input_shape == (None, *SHAPE)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_quick_script_with_rr_features_on_the_real_records(tmp_path):
    root = os.environ.get("AL_DATA_DIR")
    if not root:
        pytest.skip("AL_DATA_DIR is not set; real MIT-BIH data tests skipped")
    if data_mitbih._records_dir(Path(root).expanduser() / "mitbih") is None:
        pytest.fail(f"AL_DATA_DIR={root} is set but holds no mitdb records in mitbih/mitdb/")
    # One entropy run of --quick cut down to 2 fits of 10 updates of a small net, the pool
    # subsampled: the records, the RR features, the model and the loop, in ~20 s.
    proc = subprocess.run(
        [sys.executable, "code/mitbih.py", "--quick", "--rr-features", "1", "--strategies", "entropy",
         "--seeds", "1", "--n-steps", "1", "--train-steps", "10", "--pool-subsample", "512",
         "--jobs", "1", "--res-filters", "8", "--res-blocks", "2", "--results-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from al import runs
    run = runs.read_run(tmp_path / "mitbih_rr" / "entropy_seed0.json")
    assert run["complete"] and run["config"]["rr_features"] == 1
    assert f"RR features {data_mitbih.RR_HASH}" in run["provenance"]["data"]["origin"]
    assert len(run["steps"]) == 2 and all(0 <= s["macro_f1"] <= 1 for s in run["steps"])
    assert not (tmp_path / "mitbih").exists()  # not mixed with the runs without RR features
