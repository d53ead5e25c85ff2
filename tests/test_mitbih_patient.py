"""code/mitbih_patient.py: patient adaptation through the shared loop, and its gross report."""

from __future__ import annotations

import numpy as np
import pytest

import mitbih_patient
import plot_perf
from al import cli, data_common, data_mitbih, loop, runs
from al.data_mitbih import DS1, DS2

N_FEATURES = 6


def fake_features(per_record=40, seed=0):
    """Features of a few beats per DS1 and DS2 record: class c sits around 3 * e_c."""
    rng = np.random.default_rng(seed)
    records = np.repeat(np.array(DS1 + DS2), per_record)
    y = rng.choice(5, size=len(records), p=[0.6, 0.15, 0.15, 0.05, 0.05])
    x = (3 * np.eye(N_FEATURES)[y] + rng.normal(scale=0.5, size=(len(y), N_FEATURES))).astype(np.float32)
    return {"features": x, "y": y.astype(np.int64), "record_ids": records, "source": "fake", "cache": "fake.npz"}


@pytest.fixture
def config():
    values = cli.hyperparameters(vars(mitbih_patient))
    for key in ("n_seeds", "strategies"):
        values.pop(key)
    return {**values, "record": DS2[0], "threads": 1, "train_steps": 20, "batch_sizes": [5, 5, 10], "n_steps": 3}


@pytest.fixture
def patched(monkeypatch):
    features = fake_features()
    monkeypatch.setattr(mitbih_patient, "global_features", lambda config, data_dir=None: features)
    return features


def test_the_record_is_split_in_time_and_the_common_set_comes_from_ds1(config, patched):
    data = mitbih_patient.load_data(config)
    beats = np.flatnonzero(patched["record_ids"] == DS2[0])
    assert np.array_equal(data.x_train, patched["features"][beats[:20]])  # the first half, in order
    assert np.array_equal(data.x_test, patched["features"][beats[20:]])
    assert data.has_base and len(data.y_base) > 0
    base_rows = {r.tobytes() for r in data.x_base}
    ds1_rows = {r.tobytes() for r in patched["features"][np.isin(patched["record_ids"], DS1)]}
    assert base_rows <= ds1_rows
    assert max(np.bincount(data.y_base)) <= config["base_per_class"]


def test_common_set_takes_up_to_k_per_class_reproducibly():
    y = np.array([0] * 50 + [1] * 3 + [2] * 20)
    chosen = mitbih_patient.common_set(y, np.arange(len(y)), 10, seed=0)
    assert np.bincount(y[chosen]).tolist() == [10, 3, 10]
    assert np.array_equal(chosen, mitbih_patient.common_set(y, np.arange(len(y)), 10, seed=0))
    assert list(chosen) == sorted(chosen)


def test_bad_record_or_pool_fraction_are_clear_errors(config, patched):
    with pytest.raises(ValueError, match="not a DS2 record"):
        mitbih_patient.load_data({**config, "record": DS1[0]})
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        mitbih_patient.load_data({**config, "pool_fraction": 1.0})


def test_runs_start_from_no_patient_label_and_the_report_adds_up_the_records(config, patched, tmp_path):
    root = tmp_path / "mitbih_patient"
    for record in DS2[:2]:
        data = mitbih_patient.load_data({**config, "record": record})
        for strategy in ("sequential", "margin"):
            run = loop.run_active_learning(dataset=f"record_{record}", data=data,
                                           build_model=mitbih_patient.build_model,
                                           config={**config, "record": record}, strategy=strategy, seed=0,
                                           results_dir=root)
            assert [s["n_labeled"] for s in run["steps"]] == [0, 5, 10, 20]  # the pool holds 20 beats
    sequential = runs.read_run(root / f"record_{DS2[0]}" / "sequential_seed0.json")  # the reader accepts step 0
    assert sequential["steps"][1]["selected"] == [0, 1, 2, 3, 4]  # the first beats of the record
    per_record, gross = plot_perf.patient_frames(root)
    at = per_record[(per_record.strategy == "margin") & (per_record.n_labeled == 10)]
    total = np.sum(np.stack(at.matrix.to_list()), axis=0)
    v = list(at.classes.iloc[0]).index("V")
    row = gross[(gross.strategy == "margin") & (gross.n_labeled == 10)].iloc[0]
    assert row.records == 2 and row["VEB Se"] == pytest.approx(total[v, v] / total[v].sum())
    assert plot_perf.main(["--patients", str(root)]) == 0
    assert (root / "patients.png").stat().st_size > 0 and "| 20 | margin (1) |" in (root / "patients.md").read_text()
    (root / "patients.md").unlink()
    assert plot_perf.main(["--results-dir", str(tmp_path)]) == 0  # the plain command regenerates it too
    assert "| 20 | margin (1) |" in (root / "patients.md").read_text()


def test_an_empty_first_step_is_refused_in_runs_without_base_samples(config, patched, tmp_path):
    data = mitbih_patient.load_data(config)
    run = loop.run_active_learning(dataset="r", data=data, build_model=mitbih_patient.build_model,
                                   config={**config, "batch_sizes": [5], "n_steps": 1}, strategy="random", seed=0,
                                   results_dir=tmp_path)
    del run["provenance"]["data"]["n_base"]
    runs.save_run(tmp_path / "r" / "random_seed0.json", run)
    with pytest.raises(runs.RunFileError, match="n_labeled"):
        runs.read_run(tmp_path / "r" / "random_seed0.json")


def test_the_global_model_is_trained_once_and_its_features_cached(config, monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    records = np.repeat(np.array(DS1 + DS2 + (102,)), 6)
    beats = data_mitbih.RecordBeats(rng.random((len(records), data_mitbih.BEAT_LENGTH + 7), dtype=np.float32),
                                    rng.integers(0, 5, len(records)), records, source="fake", origin="fake beats")
    monkeypatch.setattr(mitbih_patient, "load_record_beats", lambda data_dir=None, rr_features=True: beats)
    monkeypatch.setattr(data_common, "DEFAULT_DATA_ROOT", tmp_path)
    trained = []
    real = loop.train_fresh_model
    monkeypatch.setattr(loop, "train_fresh_model", lambda *a: trained.append(len(a[3])) or real(*a))
    config = {**config, "global_train_steps": 5}
    first = mitbih_patient.global_features(config)
    again = mitbih_patient.global_features(config)
    assert trained == [len(DS1) * 6]  # once, on the DS1 beats only
    assert len(first["y"]) == len(DS1 + DS2) * 6  # the paced record is left out
    assert np.array_equal(first["features"], again["features"]) and first["features"].shape[1] == 32
    assert list((tmp_path / "mitbih").glob("patient_features_*.npz"))


def test_the_comparison_against_the_first_beats_pairs_seeds_holm_corrects_and_finds_the_beats_to_match():
    import pandas as pd
    rows = []
    for seed in range(10):
        for n, (se, ppv) in {0: (0.5, 0.5), 5: (0.6, 0.5), 10: (0.7, 0.6), 20: (0.78, 0.68)}.items():
            rows.append({"strategy": "sequential", "seed": seed, "n_labeled": n, "VEB Se": se, "VEB +P": ppv})
            lift = 0.0 if n == 0 else 0.1 + 0.002 * (seed - 4.5)  # margin: 0.1 higher on average from 5 beats
            rows.append({"strategy": "margin", "seed": seed, "n_labeled": n, "VEB Se": se + lift,
                         "VEB +P": ppv + (lift if n >= 20 else 0.0)})
    lines = plot_perf.patient_comparison(pd.DataFrame(rows), ["sequential", "margin"], target_se=0.85)
    margin = next(line for line in lines if line.startswith("| margin |")).strip("| ").split(" | ")[1:]
    assert margin[0] == "+0.100 (0.00586) / +0.000 (1)"  # Wilcoxon over 10 seeds: 0.00195, x3 budgets (Holm)
    assert margin[2] == "+0.100 (0.00586) / +0.100 (0.00586)"
    assert margin[3:] == ["10", "20", "20"]  # sequential at 20: Se 0.78 (margin 0.8 at 10), +P 0.68 (0.78 at 20)
    assert plot_perf.patient_comparison(pd.DataFrame(rows), ["margin"]) == []  # no reference: no section
    partial = pd.DataFrame(rows)
    partial = partial[~((partial.strategy == "margin") & (partial.n_labeled == 20))]  # not there yet
    margin = next(line for line in plot_perf.patient_comparison(partial, ["sequential", "margin"])
                  if line.startswith("| margin |")).strip("| ").split(" | ")[1:]
    assert margin[2] == "-" and margin[3:] == ["10", "-", "-"]
