"""annotate.py plays the annotation loop with a simulated user: CSV and image data, every error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import annotate
from al import models, runs, stopping
from al.data_common import REPO_ROOT
from al.data_mnist import load_mnist
from al.strategies import STRATEGIES
from annotate import QUEUE_COLUMNS, AnnotationError
from conftest import read_table as read_rows, write_table as write_csv

CLASSES = ("cat", "dog", "fox")
CENTERS = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
N_ROWS, N_GIVEN = 90, 12            # synthetic CSV: 90 rows, the first 12 labeled in the file
FAST = ["--epochs", "4", "--batch-size", "6"]


# =========================================================================== helpers


def blob_rows(n: int, seed: int, prefix: str):
    """Three separable 3-D blobs: (ids, features, true class names)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    rng.shuffle(y)
    x = CENTERS[y] + rng.normal(scale=0.7, size=(n, CENTERS.shape[1]))
    return [f"{prefix}{i:03d}" for i in range(n)], np.round(x, 4), [CLASSES[k] for k in y]


@pytest.fixture
def blobs(tmp_path):
    """A CSV of 90 rows (12 labeled in its label column) and the true label of every row."""
    ids, x, names = blob_rows(N_ROWS, seed=0, prefix="s")
    rows = [[i, *xi, name if k < N_GIVEN else ""] for k, (i, xi, name) in enumerate(zip(ids, x, names))]
    path = write_csv(tmp_path / "blobs.csv", ["id", "f1", "f2", "f3", "label"], rows)
    return path, dict(zip(ids, names))


def queue_path(data: Path) -> Path:
    return data.with_name(data.stem + ".queue.csv")


def labels_path(data: Path) -> Path:
    return data.with_name(data.stem + ".labels.csv")


def answer(queue: Path, truth: dict, rows: slice = slice(None), overrides: dict | None = None) -> None:
    """Play the user: fill in the true label of the chosen queue rows (others stay blank)."""
    entries = read_rows(queue)
    for row in entries[rows]:
        row["label"] = truth[row["id"]]
    for row in entries:
        row["label"] = (overrides or {}).get(row["id"], row["label"])
    write_csv(queue, QUEUE_COLUMNS, [[r[c] for c in QUEUE_COLUMNS] for r in entries])


def fails(capsys, *argv) -> str:
    """Run the CLI expecting bad input: exit status 2 and the error message."""
    assert annotate.main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    return err


# =========================================================================== CSV: the loop
def test_help_runs_as_a_script_and_documents_the_formats():
    proc = subprocess.run([sys.executable, "code/annotate.py", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for text in ("next", "status", "labeled/<class>/", "rank,id,predicted,confidence,uncertainty,label",
                 "--classes", "clone_model", "stratified k-fold"):
        assert text in proc.stdout


def test_first_queue_lists_unlabeled_samples_by_priority(blobs):
    data, truth = blobs
    summary = annotate.run(["next", str(data), *FAST, "--strategy", "entropy"])
    rows = read_rows(queue_path(data))
    assert list(rows[0]) == list(QUEUE_COLUMNS)
    assert [int(r["rank"]) for r in rows] == list(range(1, 7))
    assert [r["id"] for r in rows] == summary["queue"]
    assert all(r["label"] == "" and r["predicted"] in CLASSES for r in rows)
    assert all(0 <= float(r["confidence"]) <= 1 for r in rows)
    uncertainty = [float(r["uncertainty"]) for r in rows]
    assert uncertainty == sorted(uncertainty, reverse=True)  # entropy strategy: most uncertain first
    given = set(list(truth)[:N_GIVEN])
    assert not given & set(summary["queue"])
    assert summary["n_labeled"] == N_GIVEN and summary["classes"] == list(CLASSES)
    assert not labels_path(data).exists()  # nothing answered yet


def test_answers_are_merged_and_never_queued_again(blobs):
    data, truth = blobs
    original = data.read_bytes()
    queued = []
    for round_ in range(3):
        summary = annotate.run(["next", str(data), *FAST])
        assert summary["n_labeled"] == N_GIVEN + 6 * round_
        assert summary["n_new"] == (6 if round_ else 0)
        queued += summary["queue"]
        answer(queue_path(data), truth)
    assert len(set(queued)) == len(queued) == 18
    merged = {r["id"]: r["label"] for r in read_rows(labels_path(data))}
    assert set(merged) == set(queued[:12]) and all(truth[i] == label for i, label in merged.items())
    assert data.read_bytes() == original  # the data itself is never modified


# =========================================================================== stopping
def rounds_file(data: Path) -> dict:
    import json
    return json.loads(data.with_name(data.stem + ".rounds.json").read_text())


def test_each_round_records_the_stop_set_and_prints_every_criterion(blobs, capsys):
    data, truth = blobs
    for round_ in range(5):
        summary = annotate.run(["next", str(data), *FAST])
        answer(queue_path(data), truth)
    out = capsys.readouterr().out
    rounds = rounds_file(data)["rounds"]
    assert [r["n_labeled"] for r in rounds] == [N_GIVEN + 6 * k for k in range(5)]
    predictions = [runs.decode_uint8(r["stop_set_predictions"]) for r in rounds]
    assert all(len(p) == N_ROWS for p in predictions)  # fewer samples than the stop set: all of them
    assert all(0 <= r["stop_set_mean_entropy"] <= r["stop_set_max_entropy"] <= np.log(3) for r in rounds)
    assert set(summary["stopping"]) == {name for name, _ in annotate.STOPPING}
    # The kappa reading is that of the recorded predictions (window 3 of the last 4 rounds).
    kappa = np.mean([stopping.agreement(a, b) for a, b in zip(predictions[1:], predictions[2:])])
    reading = summary["stopping"]["stabilizing_predictions"]
    assert reading["value"] == pytest.approx(kappa) and reading["stop"] == (kappa >= 0.98)
    assert out.count("stopping criteria (") == 5 and "verdict: " in out
    assert "learning_curve: needs cross-validated F1 of 4 rounds" in out


def stopping_history(kappa_stable: bool) -> list[dict]:
    """Six recorded rounds: the model sure of the stop set (low entropy) throughout, and its
    stop-set predictions either unchanged from round to round or still changing."""
    rng = np.random.default_rng(0)
    fixed = rng.integers(0, 3, 200)
    rounds = []
    for k in range(6):
        predictions = fixed if kappa_stable else rng.integers(0, 3, 200)
        rounds.append({"n_labeled": 20 + 10 * k, "n_classes": 3, "stop_set_predictions": runs.encode_uint8(predictions),
                       "stop_set_mean_entropy": 0.001, "stop_set_max_entropy": 0.01, "cv_macro_f1": None})
    return rounds


def test_the_verdict_rests_on_the_recommended_criterion_alone(capsys):
    changing = annotate.stopping_readings(stopping_history(kappa_stable=False))
    out = capsys.readouterr().out
    assert changing["overall_uncertainty"]["stop"] and not changing[annotate.VERDICT_CRITERION]["stop"]
    assert "verdict: keep labeling" in out  # a sure but still-changing model: not a stop
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if line.startswith("  ")}
    assert "for information, not the verdict" in lines["overall_uncertainty"]
    assert "for information" not in lines[annotate.VERDICT_CRITERION]
    assert [n for n, r in changing.items() if r["decides"]] == [annotate.VERDICT_CRITERION]
    stable = annotate.stopping_readings(stopping_history(kappa_stable=True))
    assert stable[annotate.VERDICT_CRITERION]["stop"]
    assert "verdict: stop (stabilizing_predictions)" in capsys.readouterr().out


def test_rerunning_a_round_replaces_it_and_status_adds_the_cross_validated_score(blobs, capsys):
    data, truth = blobs
    annotate.run(["next", str(data), *FAST])
    answer(queue_path(data), truth)
    annotate.run(["next", str(data), *FAST])            # round 2
    summary = annotate.run(["status", str(data), *FAST])
    rounds = rounds_file(data)["rounds"]
    assert [r["n_labeled"] for r in rounds] == [N_GIVEN, N_GIVEN + 6]
    assert rounds[0]["cv_macro_f1"] is None                       # status scores the current labels only
    assert rounds[1]["cv_macro_f1"] == pytest.approx(summary["cv_macro_f1"])
    annotate.run(["next", str(data), *FAST])            # the same labels again: replaced, CV kept
    again = rounds_file(data)["rounds"]
    assert [r["n_labeled"] for r in again] == [N_GIVEN, N_GIVEN + 6]
    assert again[1]["cv_macro_f1"] == rounds[1]["cv_macro_f1"]
    assert again[1]["stop_set_predictions"] == rounds[1]["stop_set_predictions"]  # same labels, same model
    curve = summary["stopping"]["learning_curve"]
    assert curve["value"] is None and "needs cross-validated F1 of 4 rounds" in curve["verdict"]
    assert "has 1" in curve["verdict"]


def test_round_history_restarts_for_another_model_and_a_corrupt_one_is_refused(blobs, capsys):
    data, truth = blobs
    annotate.run(["next", str(data), *FAST])
    key = rounds_file(data)["stop_set"]
    path = data.with_name(data.stem + ".rounds.json")
    path.write_text("{not json")
    err = fails(capsys, "next", data, *FAST)
    assert f"the round history {path} is unreadable; delete it" in err
    path.unlink()
    annotate.run(["next", str(data), *FAST])
    assert rounds_file(data)["stop_set"] == key  # same data, model and seed: the same stop set
    other = rounds_file(data) | {"stop_set": "0" * 16}
    import json
    path.write_text(json.dumps(other))
    annotate.run(["next", str(data), *FAST])
    assert "recorded on other data or with another model; the stopping criteria start again" in capsys.readouterr().out
    assert len(rounds_file(data)["rounds"]) == 1


def test_the_default_strategy_is_the_recommended_one():
    args = annotate.build_parser().parse_args(["next", "data.csv"])
    assert args.strategy == annotate.DEFAULT_STRATEGY == "margin"


def test_blank_rows_stay_unlabeled(blobs, capsys):
    data, truth = blobs
    annotate.run(["next", str(data), *FAST])
    first = [r["id"] for r in read_rows(queue_path(data))]
    answer(queue_path(data), truth, rows=slice(0, 2))
    summary = annotate.run(["next", str(data), *FAST])
    assert (summary["n_new"], summary["n_blank"], summary["n_labeled"]) == (2, 4, N_GIVEN + 2)
    assert "4 queue row(s) left blank stay unlabeled" in capsys.readouterr().out
    assert set(r["id"] for r in read_rows(labels_path(data))) == set(first[:2])


def test_same_labels_and_seed_give_the_same_queue(blobs, tmp_path):
    data, _ = blobs
    copy = tmp_path / "copy" / data.name
    copy.parent.mkdir()
    shutil.copy(data, copy)
    annotate.run(["next", str(data), *FAST, "--seed", "3"])
    first = queue_path(data).read_text()
    annotate.run(["next", str(data), *FAST, "--seed", "3"])  # rerun without answers: same queue
    annotate.run(["next", str(copy), *FAST, "--seed", "3"])
    assert queue_path(data).read_text() == first == queue_path(copy).read_text()


def test_status_reports_labels_class_mix_and_cross_validated_f1(blobs, capsys):
    data, truth = blobs
    annotate.run(["next", str(data), *FAST])
    answer(queue_path(data), truth, rows=slice(0, 3))
    summary = annotate.run(["status", str(data), "--epochs", "20"])
    out = capsys.readouterr().out
    assert summary["n_labeled"] == N_GIVEN  # answers in the queue are not merged by status
    assert "3 new answer(s) not merged yet" in out
    assert sum(summary["class_counts"].values()) == N_GIVEN
    assert summary["cv_folds"] == min(5, min(summary["class_counts"].values()))
    assert 0.5 < summary["cv_macro_f1"] <= 1.0  # separable blobs
    assert f"cross-validated macro-F1 (mlp, {summary['cv_folds']}-fold stratified)" in out
    for name in CLASSES:
        assert name in out


@pytest.mark.parametrize("counts, folds, used, note", [
    ([10, 8, 7], 5, 25, ""),
    ([3, 2, 9], 2, 14, ""),
    ([6, 6, 1], 5, 12, "1 class(es) with a single label left out"),
    ([6, 1, 0], 0, 6, "needs two classes"),
    ([0, 0, 0], 0, 0, "needs two classes"),
])
def test_cross_validation_plan(counts, folds, used, note):
    y = np.repeat(np.arange(3), counts)
    usable, k, text = stopping.cv_plan(y, 3)
    assert (k, int(usable.sum())) == (folds, used) and note in text


def test_no_labels_needs_classes_and_then_starts_with_a_random_queue(tmp_path, capsys):
    ids, x, _ = blob_rows(30, seed=2, prefix="u")
    path = write_csv(tmp_path / "cold.csv", ["id", "a", "b", "c"], [[i, *xi] for i, xi in zip(ids, x)])
    assert "pass --classes" in fails(capsys, "next", path)
    summary = annotate.run(["next", str(path), "--classes", "x,y", "--batch-size", "5"])
    rows = read_rows(queue_path(path))
    assert len(rows) == 5 and summary["n_labeled"] == 0
    assert all(r["predicted"] == "" for r in rows)


def test_every_sample_labeled_writes_an_empty_queue(tmp_path):
    ids, x, names = blob_rows(12, seed=3, prefix="a")
    path = write_csv(tmp_path / "all.csv", ["id", "a", "b", "c", "label"],
                     [[i, *xi, n] for i, xi, n in zip(ids, x, names)])
    summary = annotate.run(["next", str(path), "--epochs", "1"])
    assert summary["queue"] == [] and read_rows(queue_path(path)) == []


def test_eval_option_reports_held_out_macro_f1(blobs):
    data, _ = blobs
    ids, x, names = blob_rows(60, seed=5, prefix="e")
    held_out = write_csv(data.parent / "eval.csv", ["id", "f1", "f2", "f3", "label"],
                         [[i, *xi, n] for i, xi, n in zip(ids, x, names)])
    summary = annotate.run(["next", str(data), "--eval", str(held_out), "--epochs", "30"])
    assert 0.5 < summary["eval_macro_f1"] <= 1.0


def test_semicolon_separated_queue_from_a_spreadsheet_is_read(blobs):
    data, truth = blobs
    first = annotate.run(["next", str(data), *FAST])["queue"]
    rows = [f"{k};{i};;;;{truth[i]}" for k, i in enumerate(first, 1)]
    queue_path(data).write_text("\ufeffrank;id;predicted;confidence;uncertainty;label\n" + "\n".join(rows))
    assert annotate.run(["next", str(data), *FAST])["n_new"] == 6


# =========================================================================== CSV: bad input
@pytest.fixture
def answered_once(blobs):
    """Six answers merged earlier and a queue of six waiting, as `next` leaves them.

    Written directly (no training), so the error tests run in milliseconds.
    Returns (data, truth, queued ids).
    """
    data, truth = blobs
    ids = list(truth)
    write_csv(labels_path(data), ["id", "label"], [[i, truth[i]] for i in ids[N_GIVEN:N_GIVEN + 6]])
    queued = ids[N_GIVEN + 6:N_GIVEN + 12]
    write_csv(queue_path(data), QUEUE_COLUMNS,
              [[k, i, "cat", "0.5000", "1.0000", ""] for k, i in enumerate(queued, 1)])
    return data, truth, queued


def assert_nothing_merged(data: Path, before: str) -> None:
    assert labels_path(data).read_text() == before
    assert not list(data.parent.glob("*.tmp")) and not list(data.parent.glob(".*.tmp"))


def test_label_that_is_not_a_known_class_is_rejected(answered_once, capsys):
    data, truth, queued = answered_once
    before = labels_path(data).read_text()
    answer(queue_path(data), truth, overrides={queued[1]: "wolf"})
    err = fails(capsys, "next", data, *FAST)
    assert "'wolf'" in err and "Known classes: cat, dog, fox" in err and "--classes" in err
    assert_nothing_merged(data, before)
    # Declaring the class makes the same answers valid.
    assert annotate.run(["next", str(data), *FAST, "--classes", "cat,dog,fox,wolf"])["n_new"] == 6


def test_classes_option_must_cover_the_data_labels(blobs, capsys):
    data, _ = blobs
    assert "'fox'" in fails(capsys, "next", data, "--classes", "cat,dog")


def test_id_not_in_the_pool_is_rejected(answered_once, capsys):
    data, truth, queued = answered_once
    before = labels_path(data).read_text()
    rows = read_rows(queue_path(data))
    rows[2]["id"] = "s999"
    rows[2]["label"] = "cat"
    write_csv(queue_path(data), QUEUE_COLUMNS, [[r[c] for c in QUEUE_COLUMNS] for r in rows])
    err = fails(capsys, "next", data, *FAST)
    assert "'s999'" in err and "not in the data" in err
    assert_nothing_merged(data, before)


def test_same_id_twice_with_different_labels_is_rejected(answered_once, capsys):
    data, truth, queued = answered_once
    before = labels_path(data).read_text()
    rows = read_rows(queue_path(data))
    rows[0]["label"] = "cat"
    rows[3]["id"], rows[3]["label"] = rows[0]["id"], "dog"
    write_csv(queue_path(data), QUEUE_COLUMNS, [[r[c] for c in QUEUE_COLUMNS] for r in rows])
    err = fails(capsys, "next", data, *FAST)
    assert repr(rows[0]["id"]) in err and "an earlier row" in err and "line 5" in err
    assert_nothing_merged(data, before)


def test_same_id_twice_with_the_same_label_is_fine(answered_once):
    data, truth, queued = answered_once
    rows = read_rows(queue_path(data))
    rows.append(dict(rows[0]))
    for row in rows:
        row["label"] = truth[row["id"]]
    write_csv(queue_path(data), QUEUE_COLUMNS, [[r[c] for c in QUEUE_COLUMNS] for r in rows])
    assert annotate.run(["next", str(data), *FAST])["n_new"] == 6


def test_label_contradicting_an_earlier_answer_is_rejected(answered_once, capsys):
    data, truth, _ = answered_once
    before = labels_path(data).read_text()
    earlier_id, earlier_label = next(iter(read_rows(labels_path(data)))).values()
    wrong = next(c for c in CLASSES if c != earlier_label)
    write_csv(queue_path(data), ["id", "label"], [[earlier_id, wrong]])
    err = fails(capsys, "next", data, *FAST)
    assert repr(earlier_id) in err and "your earlier answer" in err and repr(earlier_label) in err
    assert_nothing_merged(data, before)


def test_label_contradicting_the_data_is_rejected(answered_once, capsys):
    data, truth, _ = answered_once
    given_id = "s000"
    wrong = next(c for c in CLASSES if c != truth[given_id])
    write_csv(queue_path(data), ["id", "label"], [[given_id, wrong]])
    assert "the data itself says" in fails(capsys, "next", data, *FAST)


@pytest.mark.parametrize("content, expected", [
    ("rank,id,predicted\n1,s050,cat\n", "lacks the column(s) 'label'"),
    ("rank,identifier,label\n1,s050,cat\n", "lacks the column(s) 'id'"),
    ("id,label\ns050,cat\ns051,dog,extra,fields\n", "cannot read the queue"),
    ("", "cannot read the queue"),
    (",label\n,cat\n", "lacks the column(s) 'id'"),
    ("id,label\n,cat\n", "have a label but no id"),
])
def test_queue_edited_into_an_invalid_csv_is_rejected(answered_once, capsys, content, expected):
    data, _, _ = answered_once
    before = labels_path(data).read_text()
    queue_path(data).write_text(content)
    err = fails(capsys, "next", data, *FAST)
    assert expected in err and "delete it to get a fresh queue" in err
    assert_nothing_merged(data, before)


def test_binary_garbage_queue_is_rejected(answered_once, capsys):
    data, _, _ = answered_once
    queue_path(data).write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xff\xfe\x00")
    assert "cannot read the queue" in fails(capsys, "next", data, *FAST)


def test_status_shows_an_invalid_queue_instead_of_failing(answered_once):
    data, _, _ = answered_once
    queue_path(data).write_text("rank,id\n1,s050\n")
    user_data, answered, classes = annotate.prepare_session(
        annotate.build_parser().parse_args(["status", str(data)]))
    state = annotate.queue_state(user_data, {**user_data.given, **answered}, classes)
    assert state.startswith("INVALID: ") and "lacks the column(s) 'label'" in state


def test_corrupt_labels_file_is_reported(answered_once, capsys):
    data, _, _ = answered_once
    labels_path(data).write_text("id\ns050\n")
    err = fails(capsys, "next", data, *FAST)
    assert "labels file" in err and "lacks the column(s) 'label'" in err


@pytest.mark.parametrize("header, row, expected", [
    (["name", "f1", "label"], ["a", "1.0", "cat"], "--id-column"),
    (["id", "f1", "label"], ["a", "one", "cat"], "'one' is not a number"),
    (["id", "f1", "label"], ["a", "", "cat"], "column 'f1'"),
    (["id", "label"], ["a", "cat"], "no feature columns"),
])
def test_bad_data_csv_is_rejected(tmp_path, capsys, header, row, expected):
    path = write_csv(tmp_path / "bad.csv", header, [row, ["b", *row[1:]]])
    assert expected in fails(capsys, "next", path)


def test_duplicate_ids_in_the_data_are_rejected(tmp_path, capsys):
    path = write_csv(tmp_path / "dup.csv", ["id", "f1", "label"], [["a", 1, "x"], ["a", 2, "y"]])
    assert "more than once" in fails(capsys, "next", path)


def test_missing_data_and_bad_options_are_rejected(tmp_path, blobs, capsys):
    assert "does not exist" in fails(capsys, "next", tmp_path / "nothing.csv")
    data, _ = blobs
    assert "--batch-size must be positive" in fails(capsys, "next", data, "--batch-size", "0")
    assert "neither one of" in fails(capsys, "next", data, "--model", "resnet")


def test_run_keeps_the_thread_count_tensorflow_already_runs_with(monkeypatch):
    """conftest configured 1 thread; annotate asks for every core and keeps the 1 instead of failing."""
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert annotate.configure_threads() == 1


# =========================================================================== atomic writes
def test_write_csv_atomic_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "labels.csv"
    annotate.write_csv_atomic(path, ["id", "label"], [["a", "cat"]])
    before = path.read_text()

    def broken_rows():
        yield ["b", "dog"]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        annotate.write_csv_atomic(path, ["id", "label"], broken_rows())
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["labels.csv"]


def test_merged_labels_survive_a_crash_during_training(answered_once, monkeypatch):
    data, truth, queued = answered_once
    answer(queue_path(data), truth)

    def crash(*args, **kwargs):
        raise MemoryError("simulated crash while training")

    monkeypatch.setattr(annotate, "train", crash)
    with pytest.raises(MemoryError):
        annotate.run(["next", str(data), *FAST])
    merged = {r["id"] for r in read_rows(labels_path(data))}
    assert set(queued) <= merged
    monkeypatch.undo()
    summary = annotate.run(["next", str(data), *FAST])  # rerun: the old queue merges again, no-op
    assert summary["n_new"] == 0 and summary["n_labeled"] == N_GIVEN + 12


# =========================================================================== models
def test_model_auto_picks_by_input_shape():
    def data(shape, kind="table"):
        return annotate.UserData([], np.zeros((1, *shape), np.float32), {}, kind, Path("l"), Path("q"), [])
    assert annotate.model_kind("auto", data((4,))) == "mlp"
    assert annotate.model_kind("auto", data((187,))) == "cnn1d"
    assert annotate.model_kind("auto", data((28, 28, 1), "images")) == "cnn2d"


@pytest.mark.parametrize("kind, script, builder", [
    ("cnn1d", "mitbih", "ecg_cnn"),
    ("cnn2d", "mnist", "mnist_cnn"),
])
def test_built_in_cnns_are_the_v1_nets_with_every_key_their_builder_reads(kind, script, builder):
    """CNN1D_CONFIG / CNN2D_CONFIG: the scripts' first recipe, complete for their builder."""
    config = getattr(annotate, f"{kind.upper()}_CONFIG")
    images = np.zeros((2, 28, 28, 1) if kind == "cnn2d" else (2, 187), np.float32)
    data = annotate.UserData([], images, {}, "images" if kind == "cnn2d" else "table", Path("l"),
                             Path("q"), [])
    args = annotate.build_parser().parse_args(["next", "data", "--model", kind])
    spec = annotate.model_spec(args, data, 3)
    assert spec.build is getattr(models, builder)
    assert {k: spec.config[k] for k in config} == config
    model = spec.build(spec.config, spec.prepare(images[:1]).shape[1:] if kind == "cnn1d" else images.shape[1:], 3)
    assert model.output_shape[-1] == 3


def test_cnn1d_on_rows_too_short_explains_the_problem(blobs, capsys):
    data, _ = blobs
    err = fails(capsys, "next", data, "--model", "cnn1d", "--epochs", "1")
    assert "cannot train the cnn1d model" in err and "choose another --model" in err


def test_user_model_file_is_cloned_and_trained_fresh(blobs, tmp_path):
    import keras
    data, _ = blobs
    template = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(5, activation="relu"),
                                 keras.layers.Dense(3, activation="softmax")])
    weights = [w.copy() for w in template.get_weights()]
    path = tmp_path / "mine.keras"
    template.save(path)
    summary = annotate.run(["next", str(data), "--model", str(path), *FAST,
                            "--save-model", str(tmp_path / "trained.keras")])
    assert summary["model"] == "mine.keras" and len(summary["queue"]) == 6
    trained = keras.models.load_model(tmp_path / "trained.keras")
    assert not all(np.allclose(a, b) for a, b in zip(weights, trained.get_weights()))
    assert all(np.array_equal(a, b) for a, b in zip(weights, keras.models.load_model(path).get_weights()))


@pytest.mark.parametrize("layers, expected", [
    ([("Dense", 4)], "has 4 outputs but there are 3 classes"),
    ([("Dense", 3, "linear")], "not class probabilities"),
])
def test_unsuitable_user_model_is_rejected(blobs, tmp_path, capsys, layers, expected):
    import keras
    data, _ = blobs
    model = keras.Sequential([keras.Input(shape=(3,))] + [
        keras.layers.Dense(units, activation=(rest[0] if rest else "softmax")) for _, units, *rest in layers])
    model.save(tmp_path / "bad.keras")
    assert expected in fails(capsys, "next", data, "--model", tmp_path / "bad.keras", "--epochs", "1")


def test_user_model_with_the_wrong_input_shape_is_rejected(blobs, tmp_path, capsys):
    import keras
    data, _ = blobs
    keras.Sequential([keras.Input(shape=(7,)), keras.layers.Dense(3, activation="softmax")]).save(
        tmp_path / "wide.keras")
    assert "takes inputs of shape (7,)" in fails(capsys, "next", data, "--model", tmp_path / "wide.keras")


def test_select_queue_passes_every_argument_to_the_strategy():
    seen = {}

    class Strategy:
        name = "fake"

        def select(self, model, x_unlabeled, batch_size, rng, x_labeled):
            seen.update(model=model, x_unlabeled=x_unlabeled, batch_size=batch_size, rng=rng,
                        x_labeled=x_labeled)
            return np.arange(batch_size)

    pool, labeled, rng, model = np.zeros((5, 3)), np.ones((2, 3)), np.random.default_rng(0), object()
    positions = annotate.select_queue(Strategy(), model, pool, labeled, 10, rng)
    assert positions.tolist() == [0, 1, 2, 3, 4]
    assert seen["model"] is model and seen["x_unlabeled"] is pool and seen["rng"] is rng
    assert seen["batch_size"] == 5 and seen["x_labeled"] is labeled


@pytest.fixture(scope="module")
def trained_mlp():
    """The mlp of annotate.py trained once on 12 blob rows: (model, prepared pool, labeled)."""
    ids, x, names = blob_rows(60, seed=4, prefix="m")
    x = x.astype(np.float32)
    data = annotate.UserData(ids, x, {}, "table", Path("l"), Path("q"), list(CLASSES))
    spec = annotate.ModelSpec("mlp", models.mlp, dict(annotate.MLP_CONFIG, epochs=2, val_fraction=0,
                                                      patience=0, class_weight="none"),
                              annotate.flat_standardizer(data.x))
    y = np.array([CLASSES.index(n) for n in names])
    model = annotate.train(spec, x[:12], y[:12], len(CLASSES), [0])
    return model, spec.prepare(x[12:]), spec.prepare(x[:12])


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_works_with_the_mlp(trained_mlp, strategy):
    model, pool, labeled = trained_mlp
    positions = annotate.select_queue(annotate.get_strategy(strategy), model, pool, labeled, 5,
                                      np.random.default_rng(0))
    assert len(set(positions.tolist())) == 5 and positions.max() < len(pool)


def test_strategy_that_cannot_use_the_model_explains_the_problem():
    class NeedsSequential:
        name = "picky"

        def select(self, model, x_unlabeled, batch_size, rng, x_labeled):
            raise TypeError("needs a keras.Sequential model")

    with pytest.raises(AnnotationError, match="strategy 'picky' cannot work with this model"):
        annotate.select_queue(NeedsSequential(), None, np.zeros((5, 3)), np.zeros((0, 3)), 2,
                              np.random.default_rng(0))


# =========================================================================== images
def save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_image_folder_layout_errors(tmp_path, capsys):
    assert "neither a labeled/ nor an unlabeled/" in fails(capsys, "next", tmp_path)
    save_png(tmp_path / "labeled" / "loose.png", np.zeros((8, 8), np.uint8))
    assert "outside class subfolders" in fails(capsys, "next", tmp_path)


def test_images_are_read_gray_or_rgb_and_resized(tmp_path):
    gray = np.full((10, 12), 200, np.uint8)
    save_png(tmp_path / "g" / "a.png", gray)
    save_png(tmp_path / "g" / "b.png", np.stack([gray] * 3, axis=-1))
    color = np.zeros((6, 6, 3), np.uint8)
    color[..., 0] = 255
    save_png(tmp_path / "c" / "c.png", color)
    paths = annotate.image_files(tmp_path / "g")
    x, size, mode = annotate.load_images(paths, None, "auto")
    assert x.shape == (2, 10, 12, 1) and mode == "grayscale" and np.allclose(x, 200 / 255)
    x, size, mode = annotate.load_images(paths + annotate.image_files(tmp_path / "c"), (5, 7), "auto")
    assert x.shape == (3, 5, 7, 3) and mode == "rgb"
    (tmp_path / "g" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(AnnotationError, match="broken.png"):
        annotate.load_images(annotate.image_files(tmp_path / "g"), None, "auto")


# =========================================================================== end to end: MNIST
N_START, N_POOL, N_EVAL, QUEUE_SIZE, ROUNDS = 20, 500, 500, 40, 3


@pytest.fixture(scope="module")
def mnist_folder(tmp_path_factory):
    """PNG digits: data/labeled/<d>/ (2 per class), data/unlabeled/ (500), eval/<d>/ (500 test digits)."""
    if not os.environ.get("AL_DATA_DIR"):
        pytest.skip("set AL_DATA_DIR to a folder holding mnist/ to run the MNIST end-to-end test")
    mnist = load_mnist(allow_download=False)
    root = tmp_path_factory.mktemp("digits")
    rng = np.random.default_rng(0)
    start = np.concatenate([rng.choice(np.flatnonzero(mnist.y_train == d), 2, replace=False)
                            for d in range(10)])
    pool = rng.choice(np.setdiff1d(np.arange(len(mnist.y_train)), start), N_POOL, replace=False)
    truth = {}

    def png(image):
        return (image[..., 0] * 255).round().astype(np.uint8)

    for k in start:
        save_png(root / "data" / "labeled" / str(mnist.y_train[k]) / f"train_{k:05d}.png",
                 png(mnist.x_train[k]))
    for k in pool:
        truth[f"unlabeled/train_{k:05d}.png"] = str(mnist.y_train[k])
        save_png(root / "data" / f"unlabeled/train_{k:05d}.png", png(mnist.x_train[k]))
    for k in rng.choice(len(mnist.y_test), N_EVAL, replace=False):
        save_png(root / "eval" / str(mnist.y_test[k]) / f"test_{k:05d}.png", png(mnist.x_test[k]))
    return root, truth


@pytest.mark.slow
def test_user_labels_three_mnist_queues_and_the_model_improves(mnist_folder, capsys):
    root, truth = mnist_folder
    data = root / "data"
    argv = ["next", str(data), "--batch-size", str(QUEUE_SIZE), "--eval", str(root / "eval")]
    rounds, queued = [], []
    for round_ in range(ROUNDS + 1):
        if round_:
            answer(data / "queue.csv", truth)
        summary = annotate.run(argv)
        rounds.append(summary)
        queued.append(summary["queue"])
    assert [r["n_labeled"] for r in rounds] == [N_START + QUEUE_SIZE * k for k in range(ROUNDS + 1)]
    assert [r["n_new"] for r in rounds] == [0] + [QUEUE_SIZE] * ROUNDS
    every = [i for q in queued for i in q]
    assert len(every) == len(set(every)) == QUEUE_SIZE * (ROUNDS + 1)
    assert all(i.startswith("unlabeled/") for i in every)
    merged = read_rows(data / "labels.csv")
    assert len(merged) == QUEUE_SIZE * ROUNDS and all(truth[r["id"]] == r["label"] for r in merged)
    f1 = [r["eval_macro_f1"] for r in rounds]
    assert rounds[0]["classes"] == [str(d) for d in range(10)]
    assert f1[-1] > f1[0], f"held-out macro-F1 by round: {f1}"
    print(f"held-out macro-F1 by round: {[round(v, 3) for v in f1]}")
