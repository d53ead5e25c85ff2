"""annotate.py push/pull against a real Label Studio server on loopback (no mocks).

The server is ``label-studio start`` from ``.venv-label-studio`` (``bash run.sh --setup``
installs it, with a migrated empty database to copy), started once per session on
127.0.0.1 with a free port, a temporary data folder and a preset user and legacy token,
and stopped at the end. Without that venv the server tests skip, unless
``AL_REQUIRE_LABEL_STUDIO=1`` (CI) makes them fail. Annotations are made through the API,
as the labeling page makes them.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import annotate
from al import label_studio
from al.data_common import REPO_ROOT
from annotate import QUEUE_COLUMNS, AnnotationError
from conftest import read_table as read_rows, write_table as write_csv

LS_VENV = Path(os.environ.get("AL_LABEL_STUDIO_VENV", REPO_ROOT / ".venv-label-studio"))
REQUIRED = os.environ.get("AL_REQUIRE_LABEL_STUDIO") == "1"
START_TIMEOUT_S = 240
CLASSES = ("cat", "dog", "fox")
CENTERS = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
FAST = ["--epochs", "1", "--batch-size", "6"]
THREE_QUEUED = [("s020", "cat", "0.5", "1.0"), ("s021", "dog", "0.6", "0.9"), ("s022", "fox", "0.7", "0.8")]
TOKEN_ENV = label_studio.TOKEN_ENV


# =========================================================================== the server
@dataclass
class RunningServer:
    url: str
    token: str
    startup_s: float
    log: Path

    def client(self):
        from label_studio_sdk import LabelStudio
        return LabelStudio(base_url=self.url, api_key=self.token)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_environment(data_dir: Path, token: str) -> dict:
    """The server's environment: preset user and token, nothing sent off this machine.

    Label Studio also reads unprefixed names (USERNAME, PASSWORD, HOST, PORT...) as settings,
    so those are dropped from the inherited environment.
    """
    settings = {"USERNAME", "PASSWORD", "HOST", "PORT", "USER_TOKEN", "DEBUG", "SENTRY_DSN"}
    env = {k: v for k, v in os.environ.items()
           if k not in settings and not k.startswith(("LABEL_STUDIO_", "HEARTEX_"))}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data_dir), LABEL_STUDIO_USERNAME="tester@example.com",
               LABEL_STUDIO_PASSWORD=secrets.token_hex(12), LABEL_STUDIO_USER_TOKEN=token,
               LABEL_STUDIO_LATEST_VERSION_CHECK="false", LABEL_STUDIO_SENTRY_DSN="",
               LABEL_STUDIO_FRONTEND_SENTRY_DSN="", LABEL_STUDIO_COLLECT_ANALYTICS="false")
    return env


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    import httpx
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"label-studio exited with status {process.returncode}:\n"
                               f"{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"label-studio did not answer {url}/health within {START_TIMEOUT_S} s:\n"
                       f"{log.read_text()[-3000:]}")


def require_server_program(program: Path, required: bool) -> None:
    """Skip the calling test when ``program`` is missing, or fail it when ``required``."""
    if program.is_file():
        return
    message = f"no Label Studio server: {program} is missing; run `bash run.sh --setup` to install it"
    if required:
        pytest.fail(message + " (AL_REQUIRE_LABEL_STUDIO=1: these tests must run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A Label Studio server on 127.0.0.1 for the whole session (skips without one; see module)."""
    program = LS_VENV / "bin" / "label-studio"
    require_server_program(program, REQUIRED)
    data_dir = tmp_path_factory.mktemp("label_studio_data")
    template = LS_VENV / "template-data" / "label_studio.sqlite3"
    if template.is_file():   # a migrated empty database: saves the minute migrations take
        shutil.copy(template, data_dir / "label_studio.sqlite3")
    token = secrets.token_hex(20)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "server.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(program), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
             "--enable-legacy-api-token"],
            env=server_environment(data_dir, token), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=data_dir)
    try:
        wait_until_healthy(url, process, log)
        running = RunningServer(url, token, time.monotonic() - started, log)
        print(f"\nLabel Studio at {url} up in {running.startup_s:.1f} s")
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def token_env(server, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, server.token)
    return server.token


# =========================================================================== data helpers


def labels_in(path: Path) -> dict[str, str]:
    return {r["id"]: r["label"] for r in read_rows(path)} if path.exists() else {}


@pytest.fixture
def blobs(tmp_path):
    """60 rows of three 3-D blobs, the first 12 labeled in the file; (path, truth)."""
    rng = np.random.default_rng(0)
    ids = [f"s{i:03d}" for i in range(60)]
    y = np.arange(60) % 3
    x = np.round(CENTERS[y] + rng.normal(scale=0.7, size=(60, 3)), 4)
    truth = {i: CLASSES[k] for i, k in zip(ids, y)}
    rows = [[i, *xi, truth[i] if n < 12 else ""] for n, (i, xi) in enumerate(zip(ids, x))]
    return write_csv(tmp_path / "blobs.csv", ["id", "f1", "f2", "f3", "label"], rows), truth


def write_queue(data: Path, entries) -> Path:
    """A queue file as ``next`` writes it: entries are (id, predicted, confidence, uncertainty)."""
    path = data.with_name(data.stem + ".queue.csv") if data.is_file() else data / "queue.csv"
    rows = [[rank, i, p, c, u, ""] for rank, (i, p, c, u) in enumerate(entries, 1)]
    return write_csv(path, QUEUE_COLUMNS, rows)


def csv_labels_path(data: Path) -> Path:
    return data.with_name(data.stem + ".labels.csv")


def push(data, *options) -> dict:
    return annotate.run(["push", str(data), *map(str, options)])


def pull(data, *options) -> dict:
    return annotate.run(["pull", str(data), *map(str, options)])


def tasks_of(client, project: int) -> list:
    return list(client.tasks.list(project=project, fields="all"))


def annotate_task(client, task, label, to_name="features", cancelled=False):
    """What the labeling page sends when a person picks ``label`` and submits (or skips) the task."""
    result = [{"from_name": "label", "to_name": to_name, "type": "choices", "value": {"choices": [label]}}]
    return client.annotations.create(id=task.id, result=result, was_cancelled=cancelled)


def refusal(function, *args) -> str:
    with pytest.raises(AnnotationError) as caught:
        function(*args)
    return str(caught.value)


# =========================================================================== server round trip
def test_push_then_annotate_then_pull_round_trip(blobs, server, token_env):
    data, truth = blobs
    annotate.run(["next", str(data), *FAST])
    queue = read_rows(data.with_name("blobs.queue.csv"))
    summary = push(data, "--label-studio", server.url)
    project = summary["project"]
    assert summary["n_tasks"] == 6 and summary["imported"] == 6 and summary["view"] == "table"

    client = server.client()
    config_classes, target = label_studio.config_choices(client.projects.get(project).label_config)
    assert config_classes == list(CLASSES) and target == "features"
    tasks = {t.data["sample_id"]: t for t in tasks_of(client, project)}
    assert set(tasks) == {r["id"] for r in queue}
    features = {r[0]: r[1:4] for r in csv.reader(open(data))}
    for row in queue:
        task = tasks[row["id"]]
        assert task.data["rank"] == int(row["rank"])
        assert task.data["features"] == {k: float(v) for k, v in zip(("f1", "f2", "f3"), features[row["id"]])}
        (prediction,) = task.predictions
        assert prediction.result[0]["value"]["choices"] == [row["predicted"]]
        assert prediction.score == pytest.approx(float(row["uncertainty"]))
        assert task.predictions_score == pytest.approx(float(row["uncertainty"]))  # Data Manager column

    ordered = [r["id"] for r in queue]
    answered = ordered[:3]
    for sample_id in answered:
        annotate_task(client, tasks[sample_id], truth[sample_id])
    annotate_task(client, tasks[ordered[3]], truth[ordered[3]], cancelled=True)  # picked, then "Skip"
    result = pull(data, "--label-studio", server.url, "--label-studio-project", project)
    assert labels_in(csv_labels_path(data)) == {i: truth[i] for i in answered}
    assert (result["n_new"], result["n_skipped"], result["n_unannotated"]) == (3, 1, 2)
    assert pull(data, "--label-studio", server.url, "--label-studio-project", project)["n_new"] == 0

    # next round (queue as `next` would write it): it replaces the open tasks; tasks someone
    # annotated or skipped stay, and a queued sample that has one is not imported twice
    fresh = [i for i in list(truth)[12:] if i not in ordered][:2]
    second = [ordered[3], ordered[4], *fresh]
    write_queue(data, [(i, "dog", "0.5", "0.7") for i in second])
    counts = push(data, "--label-studio", server.url, "--label-studio-project", project)
    assert (counts["removed"], counts["imported"], counts["kept"]) == (2, 3, 1)
    remaining = sorted(t.data["sample_id"] for t in tasks_of(client, project))
    assert remaining == sorted(answered + second)


def test_images_are_embedded_and_their_labels_come_back(tmp_path, server, token_env):
    from PIL import Image
    root = tmp_path / "pictures"
    rng = np.random.default_rng(1)
    for name, folder in [("a.png", "labeled/cat"), ("b.png", "labeled/dog"), ("c.png", "unlabeled"),
                         ("d.jpg", "unlabeled")]:
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / folder / name)
    write_queue(root, [("unlabeled/c.png", "dog", "0.6", "0.67"), ("unlabeled/d.jpg", "cat", "0.9", "0.33")])
    project = push(root, "--label-studio", server.url)["project"]
    client = server.client()
    assert label_studio.config_choices(client.projects.get(project).label_config) == (["cat", "dog"], "image")
    tasks = {t.data["sample_id"]: t for t in tasks_of(client, project)}
    for sample_id, kind in [("unlabeled/c.png", "image/png"), ("unlabeled/d.jpg", "image/jpeg")]:
        head, payload = tasks[sample_id].data["image"].split(",", 1)
        assert head == f"data:{kind};base64"
        assert base64.b64decode(payload) == (root / sample_id).read_bytes()   # the file itself
        assert tasks[sample_id].predictions[0].result[0]["to_name"] == "image"
    annotate_task(client, tasks["unlabeled/c.png"], "cat", to_name="image")
    pull(root, "--label-studio", server.url, "--label-studio-project", project)
    assert labels_in(root / "labels.csv") == {"unlabeled/c.png": "cat"}


# =========================================================================== refused answers
@pytest.fixture
def pushed(blobs, server, token_env):
    """blobs with a hand-written 3-row queue pushed to a new project: (data, truth, project, tasks)."""
    data, truth = blobs
    write_queue(data, THREE_QUEUED)
    project = push(data, "--label-studio", server.url)["project"]
    tasks = {t.data["sample_id"]: t for t in tasks_of(server.client(), project)}
    return data, truth, project, tasks


def test_unknown_class_is_refused_before_anything_is_written(pushed, server):
    data, truth, project, tasks = pushed
    client = server.client()
    annotate_task(client, tasks["s020"], truth["s020"])
    annotate_task(client, tasks["s021"], "wolf")          # the server takes it; pull must not
    message = refusal(pull, data, "--label-studio", server.url, "--label-studio-project", project)
    assert "'wolf'" in message and "not known classes" in message and f"project {project}" in message
    assert not csv_labels_path(data).exists()              # not even the good answer


def test_conflicting_answers_are_refused_before_anything_is_written(pushed, server):
    data, truth, project, tasks = pushed
    client = server.client()
    annotate_task(client, tasks["s020"], "cat")
    annotate_task(client, tasks["s021"], "dog")
    annotate_task(client, tasks["s021"], "fox")            # a second annotator disagrees
    message = refusal(pull, data, "--label-studio", server.url, "--label-studio-project", project)
    assert f"task {tasks['s021'].id}" in message and "another annotation there says 'dog'" in message
    assert not csv_labels_path(data).exists()

    # an answer that contradicts the labels merged earlier is refused too
    write_csv(csv_labels_path(data), ["id", "label"], [["s020", "dog"]])
    (second,) = [a for t in tasks_of(client, project) for a in t.annotations
                 if a["result"][0]["value"]["choices"] == ["fox"]]
    client.annotations.delete(second["id"])
    before = csv_labels_path(data).read_bytes()
    message = refusal(pull, data, "--label-studio", server.url, "--label-studio-project", project)
    assert "'s020' as 'cat'" in message and "(your earlier answer) says 'dog'" in message
    assert csv_labels_path(data).read_bytes() == before


# =========================================================================== bad setups
def test_wrong_url_bad_token_and_missing_token_are_explained(blobs, server, monkeypatch):
    data, _ = blobs
    write_queue(data, [("s020", "cat", "0.5", "1.0")])
    monkeypatch.setenv(TOKEN_ENV, server.token)
    nowhere = f"http://127.0.0.1:{free_port()}"
    message = refusal(push, data, "--label-studio", nowhere)
    assert f"cannot reach Label Studio at {nowhere}" in message and "nothing is listening" in message
    assert "--label-studio" in message

    monkeypatch.setenv(TOKEN_ENV, "not-" + server.token)
    message = refusal(pull, data, "--label-studio", server.url, "--label-studio-project", 1)
    assert "refused the API token" in message and TOKEN_ENV in message and "401" in message

    monkeypatch.delenv(TOKEN_ENV)
    message = refusal(push, data, "--label-studio", server.url)
    assert f"set the environment variable {TOKEN_ENV}" in message

    monkeypatch.setenv(TOKEN_ENV, server.token)
    message = refusal(pull, data, "--label-studio", server.url, "--label-studio-project", 987654)
    assert "has no project 987654" in message


def test_a_project_made_for_other_classes_is_refused(blobs, server, token_env):
    data, _ = blobs
    write_queue(data, [("s020", "cat", "0.5", "1.0")])
    client = server.client()
    other_config = label_studio.label_config(["cat", "dog", "owl"], "table")
    other = client.projects.create(title="other", label_config=other_config).id
    for command in (push, pull):
        message = refusal(command, data, "--label-studio", server.url, "--label-studio-project", other)
        assert f"project {other}" in message and "'owl'" in message and "the project lacks 'fox'" in message
    foreign = client.projects.create(
        title="foreign", label_config='<View><Text name="text" value="$text"/><Choices name="sentiment" '
                                     'toName="text"><Choice value="cat"/></Choices></View>').id
    message = refusal(push, data, "--label-studio", server.url, "--label-studio-project", foreign)
    assert 'no <Choices name="label">' in message
    assert len(tasks_of(client, other)) == 0 and len(tasks_of(client, foreign)) == 0


def test_the_token_never_appears_in_output_logs_or_files(blobs, server, monkeypatch, capsys, caplog,
                                                         tmp_path):
    data, truth = blobs
    caplog.set_level(logging.DEBUG)
    write_queue(data, [("s020", "cat", "0.5", "1.0"), ("s021", "dog", "0.6", "0.9")])
    bad = secrets.token_hex(20)
    server_at, nowhere = ["--label-studio", server.url], ["--label-studio", f"http://127.0.0.1:{free_port()}"]
    project_1 = ["--label-studio-project", "1"]
    runs = []
    for token, argv in [(server.token, ["push", str(data), *server_at]),
                        (bad, ["push", str(data), *server_at]),
                        (bad, ["pull", str(data), *server_at, *project_1]),
                        (server.token, ["pull", str(data), *nowhere, *project_1]),
                        (server.token, ["push", str(data), "--label-studio-file", str(tmp_path / "t.json")])]:
        monkeypatch.setenv(TOKEN_ENV, token)
        runs.append((token, annotate.main(argv)))
    assert [status for _, status in runs] == [0, 2, 2, 2, 0]
    captured = capsys.readouterr()
    text = captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)
    assert "refused the API token" in captured.err           # the failures did report
    assert server.token not in text and bad not in text
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        assert server.token.encode() not in path.read_bytes(), path
    assert label_studio.scrub(f"echo {bad} {bad}.", bad) == "echo *** ***."   # the last line of defence


# =========================================================================== files, no server
def test_file_export_and_import_round_trip_through_the_server(blobs, server, token_env, tmp_path):
    import httpx
    data, truth = blobs
    write_queue(data, THREE_QUEUED)
    tasks_file = tmp_path / "tasks.json"
    summary = push(data, "--label-studio-file", tasks_file)
    config = summary["config_path"].read_text()
    # a person: create a project with that config, import the file, label two tasks, export JSON
    client = server.client()
    project = client.projects.create(title="by hand", label_config=config).id
    with open(tasks_file, "rb") as f:
        response = httpx.post(f"{server.url}/api/projects/{project}/import",
                              headers={"Authorization": f"Token {server.token}"},
                              files={"file": ("tasks.json", f, "application/json")}, timeout=60)
    assert response.status_code == 201, response.text
    tasks = {t.data["sample_id"]: t for t in tasks_of(client, project)}
    assert tasks["s021"].predictions[0].score == pytest.approx(0.9)
    annotate_task(client, tasks["s020"], truth["s020"])
    annotate_task(client, tasks["s022"], truth["s022"])
    export = tmp_path / "export.json"
    export.write_bytes(b"".join(client.projects.exports.download_sync(project, export_type="JSON")))
    result = pull(data, "--label-studio-file", export)
    assert labels_in(csv_labels_path(data)) == {"s020": truth["s020"], "s022": truth["s022"]}
    assert result["n_new"] == 2


def test_signals_are_pushed_as_plots(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(2)
    n_samples = 120                                     # >= annotate's SIGNAL_MIN_FEATURES: a signal
    header = ["id", *[f"t{k}" for k in range(n_samples)], "label"]
    rows = [[f"b{i}", *np.round(rng.normal(size=n_samples), 3), "N" if i < 2 else ""] for i in range(4)]
    data = write_csv(tmp_path / "beats.csv", header, rows)
    write_queue(data, [("b2", "N", "0.8", "0.5"), ("b3", "", "", "")])
    summary = push(data, "--label-studio-file", tmp_path / "tasks.json", "--classes", "N,V")
    assert summary["view"] == "plot" and summary["n_tasks"] == 2
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    head, payload = tasks[0]["data"]["plot"].split(",", 1)
    assert head == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
        assert image.size == (600, 240)
    assert tasks[0]["predictions"][0]["result"][0]["to_name"] == "plot"
    assert "predictions" not in tasks[1]                # no model yet: no prediction
    assert label_studio.config_choices(summary["config_path"].read_text()) == (["N", "V"], "plot")


def test_a_file_that_is_not_a_json_export_is_explained(blobs, tmp_path):
    data, _ = blobs
    bad = tmp_path / "min.json"
    bad.write_text(json.dumps([{"id": 1, "sample_id": "s020", "label": "cat"}]))
    message = refusal(pull, data, "--label-studio-file", bad)
    assert "JSON-MIN" in message and "Export > JSON" in message
    (tmp_path / "broken.json").write_text("[{")
    assert "is not JSON" in refusal(pull, data, "--label-studio-file", tmp_path / "broken.json")
    assert "does not exist" in refusal(pull, data, "--label-studio-file", tmp_path / "none.json")
    assert not csv_labels_path(data).exists()


def test_without_the_server_venv_the_tests_skip_or_fail_as_told(tmp_path):
    """AL_REQUIRE_LABEL_STUDIO=1 turns a missing server into a failure, not a skip."""
    absent = tmp_path / "absent" / "bin" / "label-studio"
    with pytest.raises(pytest.skip.Exception, match="run.sh --setup"):
        require_server_program(absent, required=False)
    with pytest.raises(pytest.fail.Exception, match="AL_REQUIRE_LABEL_STUDIO=1"):
        require_server_program(absent, required=True)
    absent.parent.mkdir(parents=True)
    absent.write_text("")
    require_server_program(absent, required=True)       # present: neither
