"""al.runs: atomic writes, the one-file run format, and read_run's checks.

A real run file (random strategy, one step, on the tiny synthetic data) is written once per
module; each test reads or breaks a copy of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat

import numpy as np
import pytest

from al import loop, runs
from al.runs import RunFileError, read_run
from conftest import LOOP_CONFIG, tmp_files


# --------------------------------------------------------------------------- atomic writes
@pytest.fixture
def umask():
    """Set the process umask for a test; the original one is restored afterwards."""
    original = os.umask(0o022)
    os.umask(original)
    yield os.umask
    os.umask(original)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o027, 0o002], ids=oct)
def test_write_bytes_atomic_creates_files_with_mode_0666_minus_the_umask(tmp_path, umask, mask):
    umask(mask)
    path = tmp_path / "sub" / "x.bin"
    runs.write_bytes_atomic(path, b"one")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    runs.write_bytes_atomic(path, b"two")  # replacing: the new file's mode, not the old one's
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert path.read_bytes() == b"two"
    assert os.umask(mask) == mask, "write_bytes_atomic changed the process umask"
    assert tmp_files(tmp_path) == []


def test_write_bytes_atomic_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "x.bin"
    runs.write_bytes_atomic(path, b"old")

    def fail(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        runs.write_bytes_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert tmp_files(tmp_path) == []


def test_write_bytes_atomic_leaves_only_the_target_in_its_folder(tmp_path):
    runs.write_bytes_atomic(tmp_path / "x.bin", b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_write_json_atomic_replaces_the_file_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "sub" / "x.json"
    runs.write_json_atomic(path, {"a": 1})
    runs.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert tmp_files(tmp_path) == []


def test_write_json_atomic_keeps_the_old_file_when_serialization_fails(tmp_path):
    path = tmp_path / "x.json"
    runs.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        runs.write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert tmp_files(tmp_path) == []


def test_write_text_atomic_writes_utf8(tmp_path):
    runs.write_text_atomic(tmp_path / "x.txt", "naïve µ")
    assert (tmp_path / "x.txt").read_bytes() == "naïve µ".encode()


def test_append_line_atomic_appends_one_line_at_a_time(tmp_path):
    path = tmp_path / "log" / "grid_log.jsonl"
    runs.append_line_atomic(path, '{"a": 1}')
    runs.append_line_atomic(path, '{"a": 2}\n')
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    path.write_text('{"a": 1}')  # a last line without its newline
    runs.append_line_atomic(path, '{"a": 3}')
    assert path.read_text() == '{"a": 1}\n{"a": 3}\n'


def test_remove_stale_tmp_removes_only_the_temporary_files_of_that_path(tmp_path):
    path = tmp_path / "entropy_seed0.json"
    stale = [tmp_path / ".entropy_seed0.json.a1b2c3.tmp", tmp_path / ".entropy_seed0.json.ffffff.tmp"]
    others = [tmp_path / ".entropy_seed1.json.a1b2c3.tmp", path, tmp_path / "entropy_seed0.json.tmp"]
    for p in stale + others:
        p.write_text("x")
    assert runs.remove_stale_tmp(path) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(others)
    assert runs.remove_stale_tmp(tmp_path / "missing" / "x.json") == []


# --------------------------------------------------------------------------- small pieces
def test_encode_uint8_round_trips_class_indices():
    values = np.array([0, 1, 2, 255, 7, 0])
    text = runs.encode_uint8(values)
    assert isinstance(text, str)
    decoded = runs.decode_uint8(text)
    assert decoded.dtype == np.int64 and decoded.tolist() == values.tolist()
    assert runs.decode_uint8(runs.encode_uint8(np.array([], dtype=np.int64))).tolist() == []


@pytest.mark.parametrize("bad", [[-1, 2], [0, 256]])
def test_encode_uint8_rejects_values_outside_0_255(bad):
    with pytest.raises(ValueError, match="0..255"):
        runs.encode_uint8(np.array(bad))


def test_content_digest_ignores_key_order_and_the_sha256_field():
    a = {"x": 1, "y": [1, 2], "sha256": "whatever"}
    b = {"y": [1, 2], "x": 1}
    assert runs.content_digest(a) == runs.content_digest(b)
    assert runs.content_digest(a) != runs.content_digest({"x": 2, "y": [1, 2]})
    assert re.fullmatch(r"[0-9a-f]{64}", runs.content_digest(a))


def test_config_differences_list_every_differing_key():
    diffs = runs.config_differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4})
    assert diffs == ["b: 2 on disk vs 3 now", "c: None on disk vs 4 now"]
    assert runs.config_differences({"a": 1}, {"a": 1}) == []


def test_a_key_added_later_matches_runs_that_lack_it_only_at_its_old_behaviour_value():
    # rr_features arrived after the first MIT-BIH runs: those ran without RR features;
    # evaluate_on after the first runs, which were all scored on the test set
    assert runs.LATER_KEYS == {"rr_features": 0, "evaluate_on": "test", "batch_sizes": []}
    assert runs.differing_keys({"a": 1}, {"a": 1, "rr_features": 0, "evaluate_on": "test"}) == []
    assert runs.differing_keys({"a": 1}, {"a": 1, "evaluate_on": "dev"}) == ["evaluate_on"]
    assert runs.config_differences({"a": 1}, {"a": 1, "rr_features": 1}) == ["rr_features: None on disk vs 1 now"]
    assert runs.differing_keys({"a": 1, "rr_features": 1}, {"a": 1}) == ["rr_features"]


def test_data_difference_compares_the_content_hash(synthetic_dataset):
    provenance = synthetic_dataset.provenance()
    same = {"provenance": {"data": dict(provenance)}}
    other = {"provenance": {"data": {**provenance, "sha256": "f" * 64, "origin": "another copy"}}}
    unrecorded = {"provenance": {"data": {**provenance, "sha256": None}}}  # converted from the old format
    assert runs.data_difference(same, provenance) is None
    assert runs.data_difference(unrecorded, provenance) is None
    message = runs.data_difference(other, provenance)
    assert message.startswith("data 'another copy' (sha256 ffffffffffff) on disk vs")
    assert provenance["sha256"][:12] in message


def test_run_path_and_run_files(tmp_path):
    path = runs.run_path(tmp_path, "toy", "bald", 3)
    assert path == tmp_path / "toy" / "bald_seed3.json"
    for name in ("random_seed1.json", "bald_seed0.json", "grid_log.jsonl", "notes.json"):
        (tmp_path / "toy").mkdir(exist_ok=True)
        (tmp_path / "toy" / name).write_text("{}")
    assert [p.name for p in runs.run_files(tmp_path / "toy")] == ["bald_seed0.json", "random_seed1.json"]
    assert runs.run_files(tmp_path / "nothing") == []


def test_cpu_model_and_git_commit_are_non_empty_strings():
    assert isinstance(runs.cpu_model(), str) and runs.cpu_model()
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", runs.git_commit())


# --------------------------------------------------------------------------- read_run
@pytest.fixture(scope="module")
def run_file(tmp_path_factory, synthetic_dataset, build_model):
    """A real run file: random strategy, seed 0, one step."""
    folder = tmp_path_factory.mktemp("runs")
    loop.run_active_learning(dataset="toy", data=synthetic_dataset, build_model=build_model,
                             config={**LOOP_CONFIG, "n_steps": 1}, strategy="random", seed=0,
                             results_dir=folder)
    return runs.run_path(folder, "toy", "random", 0)


@pytest.fixture
def copy(run_file, tmp_path):
    """A copy of the run file (same name) and its content, to break."""
    path = tmp_path / run_file.name
    shutil.copy(run_file, path)
    return path, json.loads(path.read_text())


def test_read_run_returns_the_content_of_a_good_file(run_file):
    run = read_run(run_file)
    assert run == json.loads(run_file.read_text())
    assert run["format"] == runs.FORMAT == 2
    assert set(run) == set(runs.RESULT_KEYS)
    assert run["sha256"] == runs.content_digest(run)


def test_read_run_refuses_a_file_whose_content_was_edited(copy):
    path, run = copy
    f1 = run["steps"][1]["macro_f1"]
    run["steps"][1]["macro_f1"] = f1 - 0.001 if f1 > 0.5 else f1 + 0.001  # one number; sha256 kept
    path.write_text(json.dumps(run, indent=1))
    with pytest.raises(RunFileError, match="content does not match its sha256") as err:
        read_run(path)
    assert str(path) in str(err.value) and "--fresh" in str(err.value)


def test_read_run_accepts_an_edit_whose_digest_was_stamped_again(copy):
    # The digest is what tells an edited file: the same edit, saved by save_run, reads.
    path, run = copy
    run["steps"][1]["macro_f1"] = 0.5
    runs.save_run(path, run)
    assert read_run(path)["steps"][1]["macro_f1"] == 0.5


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_read_run_refuses_a_truncated_file(copy, keep):
    path, _ = copy
    text = path.read_text()
    path.write_text(text[: int(len(text) * keep)])
    with pytest.raises(RunFileError, match="not valid JSON.*truncated or corrupt") as err:
        read_run(path)
    assert str(path) in str(err.value)


def test_read_run_refuses_a_file_that_lost_its_last_step(copy):
    path, run = copy
    run["steps"] = run["steps"][:1]  # still valid JSON, digest not updated
    path.write_text(json.dumps(run))
    with pytest.raises(RunFileError, match=re.escape(str(path))):
        read_run(path)


def test_read_run_refuses_a_renamed_file(copy):
    path, _ = copy
    renamed = path.with_name("random_seed1.json")
    path.rename(renamed)
    with pytest.raises(RunFileError,
                       match=r"holds random seed 0, which belongs in random_seed0\.json.*renamed"):
        read_run(renamed)


def test_read_run_points_an_old_format_file_to_the_converter(copy):
    path, run = copy
    old = {k: v for k, v in run.items() if k not in ("format", "sha256", "provenance")}
    for step in old["steps"]:
        del step["selected"]
    path.write_text(json.dumps(old))
    with pytest.raises(RunFileError, match=r"old two-file format.*code/convert_run_files\.py") as err:
        read_run(path)
    assert str(path) in str(err.value)


def test_read_run_refuses_another_format_number(copy):
    path, run = copy
    run["format"] = 3
    runs.save_run(path, run)
    with pytest.raises(RunFileError, match="run-file format 3, this code reads format 2"):
        read_run(path)


def set_in(run, keys, value):
    target = run
    for key in keys[:-1]:
        target = target[key]
    if value is DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value


DELETE = object()
SCHEMA_BREAKS = {
    "missing top-level key": (("complete",), DELETE, r"missing keys \['complete'\]"),
    "unexpected top-level key": (("extra",), 1, r"unexpected keys \['extra'\]"),
    "seed not an int": (("seed",), "0", "seed should be an int"),
    "missing step key": (("steps", 1, "selected"), DELETE, r"step 1 is malformed \(missing \['selected'\]"),
    "unexpected step key": (("steps", 0, "note"), "x", r"step 0 is malformed \(bad unexpected keys"),
    "macro_f1 above 1": (("steps", 1, "macro_f1"), 1.5, r"macro_f1 \(a number in \[0, 1\]\)"),
    "n_labeled not growing": (("steps", 1, "n_labeled"), 20, "n_labeled"),
    "negative timing": (("steps", 0, "train_seconds"), -1.0, r"train_seconds \(a number >= 0\)"),
    "empty selection": (("steps", 1, "selected"), [], "selected"),
    "stop set not a string": (("steps", 1, "stop_set_predictions"), [0, 1], "stop_set_predictions"),
    "negative stop-set entropy": (("steps", 1, "stop_set_mean_entropy"), -0.1, r"stop_set_mean_entropy \(a number"),
    "stop-set entropy not a number": (("steps", 1, "stop_set_max_entropy"), "1", r"stop_set_max_entropy \(a number"),
    "confusion matrix of the wrong size": (("steps", 1, "confusion_matrix"), [[1]], "confusion_matrix"),
    "confusion matrix with a negative count": (("steps", 1, "confusion_matrix"), "NEGATIVE", "confusion_matrix"),
    "complete with steps missing": (("config", "n_steps"), 2, r"complete is True with 2 of 3 steps"),
}


@pytest.mark.parametrize("key, value, message", list(SCHEMA_BREAKS.values()), ids=list(SCHEMA_BREAKS))
def test_read_run_refuses_a_schema_violation_even_with_a_matching_digest(copy, key, value, message):
    path, run = copy
    if value == "NEGATIVE":  # the step's own matrix with one count made negative
        value = [list(row) for row in run["steps"][1]["confusion_matrix"]]
        value[0][0] = -1
    set_in(run, key, value)
    runs.save_run(path, run)  # a valid digest: only the schema check can tell
    with pytest.raises(RunFileError, match=message):
        read_run(path)


def test_read_run_refuses_a_sample_selected_twice(copy):
    path, run = copy
    run["steps"][1]["selected"][0] = run["steps"][0]["selected"][0]
    runs.save_run(path, run)
    with pytest.raises(RunFileError, match="step 1 selects samples twice"):
        read_run(path)


def test_read_run_refuses_a_file_that_is_not_an_object(tmp_path):
    path = tmp_path / "random_seed0.json"
    path.write_text("[1, 2]")
    with pytest.raises(RunFileError, match="top level is a list"):
        read_run(path)
