"""Label Studio round trip for ``annotate.py``'s queue: tasks out, finished annotations back.

Two transports, one task format (Label Studio's JSON task format, see
https://labelstud.io/guide/task_format):

* a server: :class:`Server` talks to Label Studio through the official ``label-studio-sdk``
  (imported lazily, so the rest of the toolkit does not need it). The URL comes from the
  user; the API token is read from the environment variable :data:`TOKEN_ENV` and is never
  written to a file, a log line or an error message (every message is passed through
  :func:`scrub`). Either kind of token works: a Personal Access Token (the SDK exchanges it
  for short-lived access tokens) or a legacy token.
* files, for users without a server: :func:`write_tasks_file` writes tasks to import and the
  label config to paste into the project; :func:`read_export_file` reads a project's
  JSON export (Export > JSON).

Tasks. Each queued sample becomes one task whose ``data`` holds ``sample_id`` (the id
annotate.py uses: CSV id, or image path relative to the data folder), the queue's ``rank``,
``predicted``, ``confidence`` and ``uncertainty`` (Data Manager columns), and the view of the
sample, one of :data:`VIEWS`:

* ``image``: the image file itself as a ``data:`` URI (PNG, JPEG, GIF and WebP as they are;
  other formats converted to PNG), so a stock server shows it with no file serving or cloud
  storage set up. The task carries the whole file: for large photos, shrink them first;
* ``plot``: a sampled signal (a CSV row of many numeric columns) rendered as a PNG line plot,
  also a ``data:`` URI;
* ``table``: the feature values as ``{column: value}``, shown by Label Studio's ``<Table>``.

When the queue has a model prediction, the task carries it as a Label Studio prediction: a
``Choices`` result with the predicted class and ``score`` = the prediction's uncertainty
(entropy in nats, 0 = sure), so sorting the Data Manager by "Prediction score", descending,
puts the most uncertain samples first, as the queue's rank does. (Label Studio's own
"uncertainty sampling" setting serves the *lowest* score first: leave it on sequential.)

The label config (:func:`label_config`) has one object tag named after the view and one
single-choice ``<Choices name="label">`` with the project's classes. A project whose config
offers other classes, or lacks that control, is refused (:func:`check_config`).

Pushing to a server replaces the project's open tasks: tasks made by an earlier push that
have neither an annotation (submitted or skipped) nor a draft are deleted, then the queue's
samples that have no remaining task are imported. Tasks someone has worked on are kept.

Pulling reads every task (the project's JSON export) and returns one :class:`Answer` per
submitted annotation; skipped (cancelled) annotations and annotations without a choice are
counted, not returned. Checking the answers against the data and the labels so far, and
writing them, is the caller's job (annotate.py uses the same checks as for its CSV queue).
"""

from __future__ import annotations

import base64
import io
import json
import mimetypes
import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from al.runs import write_text_atomic

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
CONTROL_NAME = "label"                      # the <Choices> tag's name, in configs and results
VIEWS = ("image", "plot", "table")
OBJECT_TAGS = {"image": ("Image", "image"), "plot": ("Image", "plot"), "table": ("Table", "features")}
BROWSER_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
QUEUE_FIELDS = ("rank", "predicted", "confidence", "uncertainty")
REQUEST_TIMEOUT_S = 60.0
PLOT_SIZE_INCHES, PLOT_DPI = (6.0, 2.4), 100


class LabelStudioError(ValueError):
    """A Label Studio problem: the message names it and says what to do."""


def scrub(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    return text.replace(secret, "***") if secret else text


# =========================================================================== tasks
@dataclass
class QueueItem:
    """One queued sample: the queue file's fields (strings as written, '' when absent)."""

    sample_id: str
    rank: str = ""
    predicted: str = ""
    confidence: str = ""
    uncertainty: str = ""


def image_data_uri(path: Path) -> str:
    """The image file as a ``data:`` URI; formats browsers cannot show are converted to PNG."""
    path = Path(path)
    kind = mimetypes.guess_type(path.name)[0]
    if kind in BROWSER_IMAGE_TYPES:
        payload = path.read_bytes()
    else:
        from PIL import Image
        buffer = io.BytesIO()
        with Image.open(path) as image:
            image.save(buffer, format="PNG")
        kind, payload = "image/png", buffer.getvalue()
    return f"data:{kind};base64,{base64.b64encode(payload).decode('ascii')}"


def signal_plot_data_uri(values: np.ndarray, title: str = "") -> str:
    """A line plot of one sampled signal (sample index on x) as a PNG ``data:`` URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(np.asarray(values, dtype=np.float64).ravel(), linewidth=1.0)
    axes.set_xlabel("sample")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def feature_table(names: list[str], values: np.ndarray) -> dict[str, float]:
    """``{column: value}`` for a ``<Table>``; float32 values written with 7 significant digits."""
    return {str(name): float(f"{float(v):.7g}") for name, v in zip(names, np.ravel(values))}


def label_config(classes: list[str], view: str) -> str:
    """The labeling interface: the sample's view and a single choice among ``classes``."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    tag, name = OBJECT_TAGS[view]
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f"<View>\n"
            f"  <Header value=\"$sample_id\"/>\n"
            f"  <{tag} name=\"{name}\" value=\"${name}\"/>\n"
            f"  <Choices name=\"{CONTROL_NAME}\" toName=\"{name}\" choice=\"single\" showInLine=\"true\" "
            f"required=\"true\">\n{choices}\n  </Choices>\n"
            f"</View>\n")


def build_task(item: QueueItem, view: str, content, model_version: str) -> dict:
    """One task in Label Studio's import format; ``content`` is the view's data (URI or dict)."""
    tag, name = OBJECT_TAGS[view]
    data = {"sample_id": item.sample_id, name: content}
    data.update({key: _number_or_text(getattr(item, key)) for key in QUEUE_FIELDS})
    task = {"data": data}
    if item.predicted:
        score = float(item.uncertainty) if item.uncertainty else None
        task["predictions"] = [{
            "model_version": model_version,
            "score": score,
            "result": [{"from_name": CONTROL_NAME, "to_name": name, "type": "choices",
                        "value": {"choices": [item.predicted]}}],
        }]
    return task


def build_tasks(items: list[QueueItem], view: str, model_version: str, *, image_root: Path | None = None,
                rows: dict | None = None, feature_names: list[str] | None = None) -> list[dict]:
    """The queued samples as tasks: images read from ``image_root / sample_id``; signals and
    tables from ``rows`` ({sample_id: feature vector}) with the CSV's ``feature_names``."""
    tasks = []
    for item in items:
        if view == "image":
            content = image_data_uri(Path(image_root) / item.sample_id)
        elif view == "plot":
            content = signal_plot_data_uri(rows[item.sample_id], item.sample_id)
        else:
            content = feature_table(feature_names, rows[item.sample_id])
        tasks.append(build_task(item, view, content, model_version))
    return tasks


def _number_or_text(text: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


# =========================================================================== label configs
def config_choices(config: str) -> tuple[list[str] | None, str | None]:
    """(classes, object tag name) of the ``<Choices name="label">`` control of a label config.

    (None, None) when the config has no such control or cannot be parsed.
    """
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError:
        return None, None
    for element in root.iter():
        if element.tag == "Choices" and element.get("name") == CONTROL_NAME:
            values = [c.get("value", c.get("alias", "")) for c in element.iter("Choice")]
            return values, element.get("toName")
    return None, None


def check_config(config: str, classes: list[str], view: str, where: str) -> None:
    """Refuse a project whose label config is not annotate's config for ``classes`` and ``view``."""
    found, target = config_choices(config)
    expected_target = OBJECT_TAGS[view][1]
    if found is None:
        raise LabelStudioError(
            f"{where}: its label config has no <Choices name=\"{CONTROL_NAME}\"> control, so it was not "
            f"made by annotate.py. Push without --label-studio-project to create a project with the "
            f"right config, or paste the config that push --label-studio-file writes into the project's "
            f"Settings > Labeling Interface > Code.")
    if sorted(found) != sorted(classes):
        missing = [c for c in classes if c not in found]
        extra = [c for c in found if c not in classes]
        raise LabelStudioError(
            f"{where}: its label config offers the classes {', '.join(map(repr, found)) or 'none'}, but "
            f"the classes here are {', '.join(map(repr, classes))}"
            + (f"; the project lacks {', '.join(map(repr, missing))}" if missing else "")
            + (f"; {', '.join(map(repr, extra))} not known here" if extra else "")
            + ". Use a project made for these classes (push without --label-studio-project creates "
              "one), or, if the project is right, pass its classes with --classes.")
    if target != expected_target:
        raise LabelStudioError(
            f"{where}: its <Choices name=\"{CONTROL_NAME}\"> labels {target!r}, but these samples are "
            f"shown as {expected_target!r} ({view}); the project was made for other data. Push without "
            f"--label-studio-project to create a project for this data.")


# =========================================================================== answers
@dataclass
class Answer:
    """One submitted annotation: the sample it labels and the chosen class."""

    task_id: int
    annotation_id: int | None
    sample_id: str
    label: str


@dataclass
class PulledAnswers:
    """What a project (or its export) holds: answers, plus counts of what carries none."""

    answers: list[Answer] = field(default_factory=list)
    what: str = "Label Studio export"   # for messages: "the {what} {where}"
    where: str = ""
    n_tasks: int = 0
    n_unannotated: int = 0    # tasks without any annotation
    n_skipped: int = 0        # annotations cancelled ("Skip") or without a choice


def answers_from_export(tasks, what: str, where: str) -> PulledAnswers:
    """Answers in a Label Studio JSON export (a list of tasks with their annotations).

    ``what`` and ``where`` name the source in messages: "the {what} {where}".
    """
    source = f"the {what} {where}"
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise LabelStudioError(f"{source} is not a Label Studio JSON export (expected a list of tasks). "
                               f"Export the project with Export > JSON.")
    pulled = PulledAnswers(what=what, where=where, n_tasks=len(tasks))
    for position, task in enumerate(tasks, 1):
        data = task.get("data")
        task_id = task.get("id", position)
        if not isinstance(data, dict) or "annotations" not in task:
            hint = (" It looks like a JSON-MIN or CSV export;" if "sample_id" in task or CONTROL_NAME in task
                    else "")
            raise LabelStudioError(f"{source}: task {task_id} has no 'data' and 'annotations'.{hint} "
                                   f"Export the project with Export > JSON (not JSON-MIN or CSV).")
        sample_id = data.get("sample_id")
        annotations = task.get("annotations") or []
        if not annotations:
            pulled.n_unannotated += 1
            continue
        if not isinstance(sample_id, str):
            raise LabelStudioError(
                f"{source}: task {task_id} has no data field 'sample_id', so it was not made by "
                f"annotate.py push; delete it from the project (or give it the sample's id).")
        for annotation in annotations:
            label = _annotation_choice(annotation, task_id, source)
            if label is None:
                pulled.n_skipped += 1
            else:
                pulled.answers.append(Answer(int(task_id), annotation.get("id"), sample_id, label))
    return pulled


def _annotation_choice(annotation: dict, task_id, source: str) -> str | None:
    """The class an annotation picks; None for a skipped annotation or one without a choice."""
    if annotation.get("was_cancelled"):
        return None
    picked = []
    for region in annotation.get("result") or []:
        if region.get("type") != "choices":
            continue
        if region.get("from_name") != CONTROL_NAME:
            raise LabelStudioError(
                f"{source}: annotation {annotation.get('id')} of task {task_id} uses the control "
                f"{region.get('from_name')!r}, not {CONTROL_NAME!r}: the project's label config is not "
                f"annotate.py's. Use a project created by push.")
        picked += list((region.get("value") or {}).get("choices") or [])
    if len(picked) > 1:
        raise LabelStudioError(f"{source}: annotation {annotation.get('id')} of task {task_id} picks "
                               f"{len(picked)} classes ({', '.join(map(repr, picked))}); pick exactly one.")
    return str(picked[0]) if picked else None


# =========================================================================== files
def config_path_for(tasks_path: Path) -> Path:
    """Where :func:`write_tasks_file` puts the label config: ``<stem>.label_config.xml``."""
    tasks_path = Path(tasks_path)
    return tasks_path.with_name(f"{tasks_path.stem}.label_config.xml")


def write_tasks_file(path: Path, tasks: list[dict], config: str) -> Path:
    """Write tasks to import (JSON list) and the label config beside them; returns the config path."""
    path = Path(path)
    write_text_atomic(config_path_for(path), config)
    write_text_atomic(path, json.dumps(tasks, indent=1) + "\n")
    return config_path_for(path)


def read_export_file(path: Path) -> PulledAnswers:
    """Answers in a project's JSON export file (Export > JSON)."""
    path = Path(path)
    if not path.is_file():
        raise LabelStudioError(f"--label-studio-file {path} does not exist; export the project "
                               f"(Export > JSON) and give that file.")
    try:
        tasks = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LabelStudioError(f"{path} is not JSON ({err}); export the project with "
                               f"Export > JSON.") from None
    return answers_from_export(tasks, "Label Studio export", str(path))


# =========================================================================== server
def read_token(env_var: str = TOKEN_ENV) -> str:
    """The API token from the environment; a clear error when it is missing."""
    token = os.environ.get(env_var, "").strip()
    if not token:
        raise LabelStudioError(
            f"set the environment variable {env_var} to your Label Studio access token (Label Studio: "
            f"your avatar > Account & Settings > Personal Access Token, or the legacy token), e.g. "
            f"`read -s {env_var} && export {env_var}`; it is read from there only, never from a file "
            f"or the command line.")
    return token


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise LabelStudioError(f"--label-studio {url!r}: give the server's address with http:// or "
                               f"https://, e.g. http://localhost:8080")
    return url


class Server:
    """A Label Studio server reached through ``label-studio-sdk``, with every error explained.

    Constructing one checks the URL and the token (``/api/current-user/whoami``).
    """

    def __init__(self, url: str, token: str, timeout: float = REQUEST_TIMEOUT_S):
        self.url = normalize_url(url)
        self._token = token
        try:
            from label_studio_sdk import LabelStudio
        except ImportError:
            raise LabelStudioError(
                "the Label Studio SDK is not installed in this environment: run `bash run.sh --setup` "
                "(or pip install -r requirements.txt).") from None
        self._client = self._call("connect", lambda: LabelStudio(base_url=self.url, api_key=token,
                                                                 timeout=timeout))
        self.user = self._call("check the token", self._client.users.whoami)

    # ------------------------------------------------------------------ errors
    def _call(self, doing: str, function, *args, about_project: int | None = None, **kwargs):
        """``function(*args, **kwargs)`` with transport and API errors turned into clear messages."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError
        try:
            return function(*args, **kwargs)
        except httpx.ConnectError as err:
            message = (f"cannot reach Label Studio at {self.url} ({err}): nothing is listening there. "
                       f"Start the server (`label-studio start`) or give its address with --label-studio, "
                       f"e.g. http://localhost:8080.")
        except httpx.TimeoutException:
            message = (f"Label Studio at {self.url} did not answer within {REQUEST_TIMEOUT_S:.0f} s "
                       f"(while trying to {doing}); check that the server is up and not overloaded.")
        except httpx.HTTPError as err:
            message = (f"cannot talk to Label Studio at {self.url} ({type(err).__name__}: {err}); "
                       f"check the URL.")
        except ApiError as err:
            message = self._api_message(err, doing, about_project)
        raise LabelStudioError(scrub(message, self._token)) from None

    def _api_message(self, err, doing: str, project: int | None) -> str:
        status = err.status_code
        detail = err.body.get("detail", "") if isinstance(err.body, dict) else ""
        said = f"HTTP {status}" + (f": {detail}" if detail else "")
        if status == 401:
            return (f"Label Studio at {self.url} refused the API token in ${TOKEN_ENV} ({said}). Set "
                    f"{TOKEN_ENV} to a valid token from Label Studio (Account & Settings > Personal Access "
                    f"Token); a legacy token works only where the organization enables legacy tokens.")
        if status == 403:
            return (f"Label Studio at {self.url} does not let this token's user {doing} ({said}); use "
                    f"the token of a user who owns or manages the project.")
        if status == 404 and project is not None:
            return (f"Label Studio at {self.url} has no project {project} ({said}). Check the id in the "
                    f"project's address ({self.url}/projects/<id>), or push without "
                    f"--label-studio-project to create a project.")
        if status == 404:
            return (f"{self.url} answered HTTP 404 to the Label Studio API (while trying to {doing}): is it "
                    f"the address of a Label Studio server, without a path (e.g. http://localhost:8080)?")
        return f"Label Studio at {self.url} could not {doing} ({said})."

    # ------------------------------------------------------------------ projects
    def project_address(self, project: int) -> str:
        return f"{self.url}/projects/{project}/data"

    def where(self, project: int) -> str:
        """The project, for messages that begin "the Label Studio ..."."""
        return f"project {project} at {self.url}"

    def create_project(self, title: str, config: str) -> int:
        made = self._call("create a project", self._client.projects.create, title=title,
                          label_config=config)
        return int(made.id)

    def checked_project(self, project: int, classes: list[str], view: str) -> None:
        """Refuse a missing project or one whose label config does not fit (:func:`check_config`)."""
        found = self._call(f"read project {project}", self._client.projects.get, project,
                           about_project=project)
        check_config(found.label_config or "", classes, view, f"the Label Studio {self.where(project)}")

    def export(self, project: int) -> list[dict]:
        """Every task of the project with its annotations and drafts (Label Studio's JSON export)."""
        raw = self._call(f"export project {project}",
                         lambda: b"".join(self._client.projects.exports.download_sync(
                             project, export_type="JSON", download_all_tasks=True)), about_project=project)
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise LabelStudioError(f"the Label Studio {self.where(project)} sent an export that is not JSON; "
                                   f"check that {self.url} is a Label Studio server.") from None

    # ------------------------------------------------------------------ push / pull
    def push(self, project: int, tasks: list[dict]) -> dict:
        """Replace the project's open tasks by ``tasks`` (see the module docstring); returns counts."""
        existing = self.export(project)
        kept, removed = set(), 0
        for task in existing:
            sample_id = (task.get("data") or {}).get("sample_id")
            if task.get("annotations") or task.get("drafts") or not isinstance(sample_id, str):
                if isinstance(sample_id, str):
                    kept.add(sample_id)
                continue
            self._call(f"delete task {task['id']}", self._client.tasks.delete, str(task["id"]),
                       about_project=project)
            removed += 1
        new = [t for t in tasks if t["data"]["sample_id"] not in kept]
        if new:
            self._call(f"import tasks into project {project}", self._client.projects.import_tasks,
                       project, request=new, about_project=project)
        return {"imported": len(new), "removed": removed, "kept": len(tasks) - len(new)}

    def push_queue(self, project: int | None, title: str, classes: list[str], view: str,
                   tasks: list[dict]) -> tuple[int, bool, dict]:
        """Push to ``project`` (checked), or to a new project titled ``title`` when None.

        Returns (project id, whether it was created, :meth:`push`'s counts).
        """
        created = project is None
        if created:
            project = self.create_project(title, label_config(classes, view))
        else:
            self.checked_project(project, classes, view)
        return project, created, self.push(project, tasks)

    def pull(self, project: int, classes: list[str], view: str) -> PulledAnswers:
        """The project's answers, after checking its label config."""
        self.checked_project(project, classes, view)
        return answers_from_export(self.export(project), "Label Studio", self.where(project))
