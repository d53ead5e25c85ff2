"""code/patient_model_search.py: head vs fine-tuned patient models, on held-out DS1 patients only."""

from __future__ import annotations

import json

import numpy as np
import pytest

import patient_model_search as search
from al import data_mitbih, loop
from al.data_mitbih import DS1, DS2

PER_RECORD = 40


@pytest.fixture
def fake_beats(monkeypatch):
    """A few beats of every DS1 and DS2 record; DS2 beats are all NaN, so any use of them shows."""
    rng = np.random.default_rng(0)
    records = np.repeat(np.array(DS1 + DS2), PER_RECORD)
    y = rng.choice(5, size=len(records), p=[0.6, 0.1, 0.2, 0.05, 0.05])
    x = rng.normal(size=(len(records), data_mitbih.BEAT_LENGTH + 7)).astype(np.float32)
    x[:, :20] += 2 * y[:, None]
    x[np.isin(records, DS2)] = np.nan
    beats = data_mitbih.RecordBeats(x, y, records, source="fake", origin="fake beats")
    monkeypatch.setattr(data_mitbih, "load_record_beats", lambda data_dir=None, rr_features=True: beats)
    return beats


def test_the_search_trains_on_other_ds1_patients_scores_the_held_out_ones_and_resumes(fake_beats, tmp_path,
                                                                                   monkeypatch):
    fits = []
    real = loop.train_fresh_model
    monkeypatch.setattr(loop, "train_fresh_model", lambda build, cfg, x, y, n, seq: fits.append(
        (cfg["architecture"], len(x), bool(np.isnan(x).any()))) or real(build, cfg, x, y, n, seq))
    argv = ["--smoke", "--candidates", "head,finetune_lr3e-4,last_layer_lr3e-3", "--out-dir", str(tmp_path)]
    rows = search.main(argv)
    held_out = search.HOLDOUT[:2]
    assert fits[0] == ("ecg_resnet", (len(DS1) - len(held_out)) * PER_RECORD, False)  # the dev global model
    assert not any(nan for _, _, nan in fits)  # no DS2 beat anywhere
    assert [a for a, _, _ in fits[1:4]] == ["mlp", "ecg_resnet", "global_last_layer"]
    journal = [json.loads(line) for line in (tmp_path / "patient_model_search.jsonl").read_text().splitlines()]
    assert len(journal) == len(held_out) * 2 * 3  # records x budgets (0, 5) x candidates, one seed
    n_test = PER_RECORD - int(round(PER_RECORD * 0.5))
    assert all(np.sum(r["confusion_matrix"]) == n_test for r in journal)
    candidates = ("head", "finetune_lr3e-4", "last_layer_lr3e-3")
    assert {(r["candidate"], r["budget"]) for r in rows} == {(c, b) for c in candidates for b in (0, 5)}
    assert all(r["records"] == len(held_out) for r in rows)
    assert "| finetune_lr3e-4 | 5 | 1 |" in (tmp_path / "patient_model_search.md").read_text()
    fits.clear()
    search.main(argv)  # everything done: only the dev global model is trained again
    assert len(fits) == 1


def test_the_fine_tuned_model_starts_from_the_global_weights(tmp_path):
    config = search.patient_config()
    global_cfg = search.mitbih_patient.global_config(config)
    shape = (data_mitbih.BEAT_LENGTH + 7, 1)
    trained = search.mitbih.build_model(global_cfg, shape, 5)
    path = str(tmp_path / "g.weights.h5")
    trained.save_weights(path)
    tuned_cfg = search.finetune_config(config, {"learning_rate": 3e-4})
    start = search.finetune_builder(global_cfg, path)(tuned_cfg, shape, 5)
    assert all(np.array_equal(a, b) for a, b in zip(start.get_weights(), trained.get_weights()))
    assert float(start.optimizer.learning_rate) == pytest.approx(3e-4)
    assert tuned_cfg["train_steps"] == config["train_steps"] and tuned_cfg["architecture"] == "ecg_resnet"


def test_a_cut_off_last_journal_line_is_ignored_and_an_unknown_candidate_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n" + '{"a": 2, "b"')
    assert search.runs.read_jsonl(path) == [{"a": 1}]  # what the search resumes from
    with pytest.raises(SystemExit):
        search.parse_args(["--candidates", "head,bogus"])


def test_the_last_layer_candidate_starts_from_the_global_softmax_layer():
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(32, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    config = search.candidate_config(search.patient_config(), "last_layer_lr3e-4")
    model = search.last_layer_builder(kernel, bias)(config, (32,), 5)
    features = rng.normal(size=(4, 32)).astype(np.float32)
    logits = features @ kernel + bias
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert np.allclose(model.predict(features, verbose=0), expected / expected.sum(axis=1, keepdims=True), atol=1e-5)
    assert config["architecture"] == "global_last_layer" and config["learning_rate"] == 3e-4
