"""Label your own data with active learning: the model picks what you label next.

Workflow::

    python code/annotate.py next DATA     # train on the labels so far, write a queue to label
    # ... fill in the `label` column of the queue file in any editor or spreadsheet ...
    python code/annotate.py next DATA     # merge your answers, retrain, write the next queue
    python code/annotate.py status DATA   # labels so far, class mix, cross-validated macro-F1

Label Studio instead of the CSV queue (``code/al/label_studio.py`` documents the tasks)::

    python code/annotate.py next DATA                            # train, write the queue
    python code/annotate.py push DATA --label-studio URL [--label-studio-project ID]
    # ... label the tasks in Label Studio ...
    python code/annotate.py pull DATA --label-studio URL --label-studio-project ID
    python code/annotate.py next DATA                            # retrain, next queue, push again

The API token is read from the environment variable ``LABEL_STUDIO_API_KEY``. Without a
server, ``push --label-studio-file tasks.json`` writes tasks to import (and the label config
beside them) and ``pull --label-studio-file export.json`` reads the project's JSON export.
Pulled answers get the queue's checks: unknown classes and conflicting answers are refused
before anything is written.

DATA is either

* a CSV file of numeric features, one row per sample: a column ``id`` (unique sample
  names; ``--id-column``), an optional column ``label`` (``--label-column``: the class of
  the rows already labeled, empty for the others) and numeric feature columns (every
  other column). Comma-, semicolon- or tab-separated; or
* an image folder: ``DATA/labeled/<class>/<image>`` (one subfolder per class, named after
  the class) and ``DATA/unlabeled/<image>`` (the pool). PNG, JPEG, BMP, GIF, TIFF or WebP,
  resized to ``--image-size`` (default: the size of the first image), read as grayscale
  when every image is gray and as RGB otherwise (``--color``), scaled to [0, 1].

Files written beside the data (the data itself is never modified):

* the queue: ``<name>.queue.csv`` next to ``<name>.csv``, ``DATA/queue.csv`` for a folder
  (``--queue``). Columns ``rank,id,predicted,confidence,uncertainty,label``, most wanted
  first: ``id`` is the CSV id or the image path relative to DATA, ``predicted`` the current
  model's class, ``confidence`` its probability, ``uncertainty`` the prediction's entropy in
  nats (0 = sure). Write a class name into ``label``. A row left blank is skipped: the
  sample stays unlabeled and may be queued again. Only ``id`` and ``label`` are read back.
* your labels: ``<name>.labels.csv`` / ``DATA/labels.csv`` (``--labels``), columns ``id,label``,
  replaced atomically (temporary file + rename), so a crash never loses or halves it. The
  labels that come with the data (label column, ``labeled/`` folders) are not copied there.

Classes are those named by the data's labeled part plus those in the labels file, sorted.
``--classes a,b,c`` fixes the list and its order (pass it every round); it is required when
nothing is labeled yet, and the first queue is then drawn at random.

Models (``--model``): ``auto`` picks ``cnn2d`` for images, ``cnn1d`` for CSV rows of at least
100 features (sampled signals) and ``mlp`` otherwise. ``mlp`` is two dense layers on
standardized features; ``cnn1d`` is the 1D-CNN of ``mitbih.py`` and ``cnn2d`` the CNN of
``mnist.py``, with those scripts' default hyperparameters (all three built by
``code/al/models.py``). A path to a ``.keras`` file uses your model: it is cloned with
``keras.models.clone_model`` (fresh weights) and compiled with Adam and sparse categorical
cross-entropy every round, so training starts from scratch; it must accept the samples'
shape and end in a softmax over the classes.

Every round trains a fresh model on all labels, seeded from ``--seed`` and the number of
labels: the same labels give the same model and the same queue.

Stopping: every ``next`` round also predicts a fixed *stop set* (up to 2,000 samples of the
data, drawn from ``--seed``; their labels are never read) and records the predictions and
their entropy in ``<name>.rounds.json`` / ``DATA/rounds.json`` beside the labels file;
``status`` adds its cross-validated macro-F1 to the round of the current labels. ``next``
and ``status`` then print each criterion of ``STOPPING`` (``code/al/stopping.py``) and a
plain verdict that rests on ``VERDICT_CRITERION`` alone, e.g. "predictions have been stable
for 3 rounds (kappa 0.985 >= 0.98): more labels are unlikely to change the model"; the other
criteria are printed for information, with the measured reason they do not decide (README
"When to stop labeling"). The learning curve needs the cross-validated score of 4 rounds
(run ``status`` after each round), and it is informative only when the labels were drawn at
random. The history is tied to the stop set and the model; with other data or another
``--model`` it starts again.

``status`` estimates the model's quality by stratified k-fold cross-validation on the labels,
k = min(5, labels of the rarest class); classes with a single label are left out of it. The
score is the macro-F1 of the out-of-fold predictions pooled over the folds. ``--eval PATH``
also reports macro-F1 on a fully labeled held-out set in the data's format: a CSV in which
every row has a label, or a folder of ``<class>/`` subfolders of images.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from al import label_studio, models
from al.keras_ops import configure_tensorflow, configured_threads, predict_proba
from al.loop import stop_set_indices, train_fresh_model
from al.runs import decode_uint8, encode_uint8, write_text_atomic
from al.stopping import MAX_CV_FOLDS, Round, cross_validated_macro_f1, get_criterion
from al.strategies import STRATEGIES, entropy, get_strategy

QUEUE_COLUMNS = ("rank", "id", "predicted", "confidence", "uncertainty", "label")
LABEL_COLUMNS = ("id", "label")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MODEL_KINDS = ("auto", "mlp", "cnn1d", "cnn2d")
SIGNAL_MIN_FEATURES = 100   # --model auto: CSV rows this long are signals -> cnn1d
SAMPLES_PER_EPOCH = 2048    # small labeled sets are tiled into epochs of about this size
MAX_EXAMPLES = 5            # problems listed per error message
DEFAULT_STRATEGY = "margin"  # README "When to stop labeling" and "Reality check" say why
# The stopping criteria status and next read. The verdict rests on VERDICT_CRITERION alone,
# at the threshold README "When to stop labeling" recommends from the protocol measurements;
# the others are printed for information, with the reason they do not decide (NOT_DECIDING).
STOPPING = (("stabilizing_predictions", {"threshold": 0.98, "window": 3}),
            ("overall_uncertainty", {"threshold": 0.05}),
            ("learning_curve", {"min_gain": 0.01, "horizon": 500}))
VERDICT_CRITERION = "stabilizing_predictions"
NOT_DECIDING = {
    "overall_uncertainty": "stopped at once on imbalanced MIT-BIH, giving up about 0.2 macro-F1",
    "learning_curve": "cross-validated F1 of the labels a strategy chose falls as uncertain samples are added, "
                      "so it stops too early unless the labels were drawn at random",
}
assert VERDICT_CRITERION in dict(STOPPING) and VERDICT_CRITERION not in NOT_DECIDING
# Hyperparameters of the built-in models: the keys their builder in al.models reads, plus
# epochs and fit_batch_size. CNN1D_CONFIG / CNN2D_CONFIG are the first (v1) recipe of
# mitbih.py / mnist.py: they train in seconds on a few dozen labels and the 1-D net takes any
# signal of 40 samples or more (the scripts' residual net needs about 190).
MLP_CONFIG = {"dense_units": [64, 64], "dropout": 0.1, "learning_rate": 3e-3,
              "epochs": 100, "fit_batch_size": 16}
CNN1D_CONFIG = {"conv_filters": [16, 32, 32, 64], "kernel_sizes": [5, 3, 3, 3], "batch_norm": 1,
                "bn_momentum": 0.9, "dropout": 0.1, "dense_units": [64, 64], "learning_rate": 1e-3,
                "epochs": 20, "fit_batch_size": 64}
CNN2D_CONFIG = {"conv_filters": [32, 64], "dense_units": 128, "dropout": 0.25, "learning_rate": 1e-3,
                "epochs": 20, "fit_batch_size": 32}
USER_MODEL_CONFIG = {"learning_rate": 1e-3, "epochs": 20, "fit_batch_size": 32}


class AnnotationError(ValueError):
    """Bad input: the message names the problem and what to do about it."""


@dataclass
class UserData:
    """The user's samples and the labels that come with them.

    Attributes
    ----------
    ids : sample ids (CSV ids, or image paths relative to the folder), unique.
    x : float32 array, samples first.
    given : {id: class} from the data itself (label column, ``labeled/<class>/`` folders).
    kind : "table" or "images".
    labels_path, queue_path : default locations of the label and queue files.
    classes_named : classes the data names (label values, ``labeled/`` subfolders).
    load_options : what an ``--eval`` set needs to be read the same way.
    source : the path given on the command line, for messages.
    """

    ids: list[str]
    x: np.ndarray
    given: dict[str, str]
    kind: str
    labels_path: Path
    queue_path: Path
    classes_named: list[str]
    load_options: dict = field(default_factory=dict)

    source: str = ""

    @property
    def description(self) -> str:
        what = "CSV rows" if self.kind == "table" else "images"
        return f"{self.source}: {len(self.ids)} {what} of shape {self.x.shape[1:]}"


# =========================================================================== reading files
def examples(items, limit: int = MAX_EXAMPLES) -> str:
    """The first few items for an error message, with a count of the rest."""
    items = list(items)
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def sniff_delimiter(path: Path) -> str:
    """The most frequent of comma, semicolon and tab in the header line (comma on ties)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    counts = {sep: header.count(sep) for sep in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] > counts[","] else ","


def read_table(path: Path, what: str, fix: str):
    """Read a CSV with every cell as a stripped string ('' when empty).

    Raises :class:`AnnotationError` naming ``what`` and ``fix`` when the file is not a CSV.
    """
    import pandas as pd
    try:
        frame = pd.read_csv(path, sep=sniff_delimiter(path), dtype=str, keep_default_na=False,
                            encoding="utf-8-sig", skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AnnotationError(f"cannot read the {what} {path} as CSV ({reason}). {fix}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.fillna("").apply(lambda column: column.str.strip())


def require_columns(frame, columns, path: Path, what: str, fix: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AnnotationError(
            f"the {what} {path} lacks the column(s) {examples(map(repr, missing))}; its header has "
            f"{examples(map(repr, frame.columns), 12) or 'no columns'}. {fix}")


def line_numbers(frame, mask=None) -> list[int]:
    """File line numbers (header = line 1) of the rows (all, or those selected by ``mask``).

    Rows keep their index from :func:`read_table` through filtering, so numbers stay true.
    """
    index = frame.index if mask is None else frame.index[np.asarray(mask, dtype=bool)]
    return [int(i) + 2 for i in index]


def write_csv_atomic(path: Path, header, rows) -> None:
    """Write a CSV so that readers never see a partial file, even if killed mid-write."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


# =========================================================================== loading data
def load_csv_samples(path: Path, id_column: str, label_column: str, what: str = "data file"):
    """Ids, float32 features, labels ('' = unlabeled) and feature names of a CSV."""
    fix = f"Fix {path} (one row per sample: {id_column}, optional {label_column}, numeric features)."
    frame = read_table(path, what, fix)
    require_columns(frame, [id_column], path, what,
                    f"Name the id column with --id-column. {fix}")
    ids = frame[id_column]
    if (ids == "").any():
        raise AnnotationError(f"{path}: empty {id_column!r} on line(s) "
                              f"{examples(line_numbers(frame, ids == ''))}; every row needs an id.")
    repeated = ids[ids.duplicated()].unique()
    if len(repeated):
        raise AnnotationError(f"{path}: the ids {examples(map(repr, repeated))} appear more than "
                              f"once; ids must be unique.")
    labels = frame[label_column] if label_column in frame.columns else None
    features = [c for c in frame.columns if c not in (id_column, label_column)]
    if not features:
        raise AnnotationError(f"{path} has no feature columns besides {id_column!r} and "
                              f"{label_column!r}. {fix}")
    x = numeric_features(frame[features], path)
    return list(ids), x, (list(labels) if labels is not None else [""] * len(ids)), features


def numeric_features(frame, path: Path) -> np.ndarray:
    """Feature cells as float32; the first non-number is reported with its line and column."""
    import pandas as pd
    values = frame.apply(pd.to_numeric, errors="coerce")
    bad = ~np.isfinite(values.to_numpy(dtype=np.float64))
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        column = frame.columns[col]
        raise AnnotationError(
            f"{path}, line {row + 2}, column {column!r}: {frame.iat[row, col]!r} is not a number "
            f"({int(bad.sum())} such cells). Feature columns must be numeric and complete; "
            f"drop or fill column {column!r}, or name the id/label columns with --id-column/--label-column.")
    return values.to_numpy(dtype=np.float32)


def load_csv_data(path: Path, args) -> UserData:
    ids, x, labels, features = load_csv_samples(path, args.id_column, args.label_column)
    given = {i: label for i, label in zip(ids, labels) if label}
    stem = path.with_suffix("") if path.suffix.lower() == ".csv" else path
    return UserData(ids=ids, x=x, given=given, kind="table",
                    labels_path=Path(f"{stem}.labels.csv"), queue_path=Path(f"{stem}.queue.csv"),
                    classes_named=sorted(set(given.values())),
                    load_options={"features": features})


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden ones skipped), sorted."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """'28' -> (28, 28); '32x48' -> (height 32, width 48)."""
    if not text:
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) <= 0:
        raise AnnotationError(f"--image-size {text!r}: give SIZE or HEIGHTxWIDTH, e.g. 28 or 32x48")
    return (parts[0], parts[-1])


def read_image(path: Path, size: tuple[int, int] | None, mode: str) -> np.ndarray:
    """One image as a uint8 array (height, width[, 3]), resized to ``size`` (height, width)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if size and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise AnnotationError(f"cannot read the image {path} ({err}); replace or delete it.") from None


def load_images(paths: list[Path], size, color: str) -> tuple[np.ndarray, tuple, str]:
    """Images as float32 (n, height, width, channels) in [0, 1], plus the size and color used.

    ``color='auto'`` reads RGB and keeps one channel when every image is gray (R = G = B).
    """
    if size is None:
        size = read_image(paths[0], None, "L").shape[:2]
    mode = "L" if color == "grayscale" else "RGB"
    arrays = np.stack([read_image(p, size, mode) for p in paths])
    if color == "auto":
        gray = bool(np.all(arrays[..., 0] == arrays[..., 1]) and np.all(arrays[..., 1] == arrays[..., 2]))
        color = "grayscale" if gray else "rgb"
        arrays = arrays[..., :1] if gray else arrays
    if arrays.ndim == 3:
        arrays = arrays[..., None]
    return arrays.astype(np.float32) / 255.0, tuple(size), color


def class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_image_folder(root: Path, args) -> UserData:
    labeled_dir, unlabeled_dir = root / "labeled", root / "unlabeled"
    if not labeled_dir.is_dir() and not unlabeled_dir.is_dir():
        raise AnnotationError(
            f"{root} has neither a labeled/ nor an unlabeled/ subfolder. Lay the images out as "
            f"{root}/labeled/<class>/<image> and {root}/unlabeled/<image>.")
    paths, given = [], {}
    if labeled_dir.is_dir():
        loose = [p for p in labeled_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if loose:
            raise AnnotationError(
                f"{labeled_dir} holds images outside class subfolders ({examples(p.name for p in loose)}); "
                f"move them into {labeled_dir}/<class>/ or into {unlabeled_dir}/.")
        for folder in class_folders(labeled_dir):
            for path in image_files(folder):
                paths.append(path)
                given[path.relative_to(root).as_posix()] = folder.name
    if unlabeled_dir.is_dir():
        paths += image_files(unlabeled_dir)
    if not paths:
        raise AnnotationError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}.")
    x, size, color = load_images(paths, parse_image_size(args.image_size), args.color)
    classes = [f.name for f in class_folders(labeled_dir)] if labeled_dir.is_dir() else []
    return UserData(ids=[p.relative_to(root).as_posix() for p in paths], x=x, given=given,
                    kind="images", labels_path=root / "labels.csv", queue_path=root / "queue.csv",
                    classes_named=classes, load_options={"size": size, "color": color})


def load_data(args) -> UserData:
    """The user's data, from a CSV file or an image folder; files paths resolved."""
    path = Path(args.data).expanduser()
    if path.is_dir():
        data = load_image_folder(path, args)
    elif path.is_file():
        data = load_csv_data(path, args)
    else:
        raise AnnotationError(f"{path} does not exist; give a CSV file or an image folder.")
    data.source = str(path)
    data.labels_path = Path(args.labels).expanduser() if args.labels else data.labels_path
    data.queue_path = Path(args.queue).expanduser() if args.queue else data.queue_path
    return data


def load_eval_set(path: Path, data: UserData, args) -> tuple[np.ndarray, list[str]]:
    """A fully labeled held-out set in the data's format, read the same way as the data."""
    path = path.expanduser()
    if data.kind == "images":
        if not path.is_dir():
            raise AnnotationError(f"--eval {path}: expected a folder of <class>/ image subfolders.")
        pairs = [(p, folder.name) for folder in class_folders(path) for p in image_files(folder)]
        if not pairs:
            raise AnnotationError(f"--eval {path}: no images in <class>/ subfolders.")
        x, _, _ = load_images([p for p, _ in pairs], data.load_options["size"], data.load_options["color"])
        return x, [label for _, label in pairs]
    if not path.is_file():
        raise AnnotationError(f"--eval {path}: expected a CSV file with the data's columns.")
    ids, x, labels, features = load_csv_samples(path, args.id_column, args.label_column, "--eval file")
    if features != data.load_options["features"]:
        raise AnnotationError(f"--eval {path}: its feature columns differ from those of the data "
                              f"({examples(features, 8)} vs {examples(data.load_options['features'], 8)}).")
    unlabeled = [i for i, label in zip(ids, labels) if not label]
    if unlabeled:
        raise AnnotationError(f"--eval {path}: every row needs a {args.label_column!r}; "
                              f"missing for {examples(unlabeled)}.")
    return x, labels


# =========================================================================== labels
def read_label_file(path: Path, data: UserData) -> dict[str, str]:
    """Labels answered in earlier rounds, checked against the data; {} if there is no file yet."""
    if not path.exists():
        return {}
    fix = (f"Restore {path} (columns id,label) or delete it to drop the answers merged so far "
           f"(the data's own labels are kept).")
    frame = read_table(path, "labels file", fix)
    require_columns(frame, LABEL_COLUMNS, path, "labels file", fix)
    frame = frame[frame["label"] != ""]
    labels = checked_answers(frame, path, "labels file", data, {}, fix)
    clashes = [f"{i!r} ({label!r} in the file, {data.given[i]!r} in the data)"
               for i, label in labels.items() if i in data.given and data.given[i] != label]
    if clashes:
        raise AnnotationError(f"{path} contradicts the data's own labels for {examples(clashes)}. "
                              f"Correct one of the two.")
    return labels


def checked_answers(frame, path: Path, what: str, data: UserData, known: dict[str, str],
                    fix: str) -> dict[str, str]:
    """{id: label} of rows with a label, after checking ids and duplicates.

    ``known`` labels may be repeated but not contradicted.
    """
    empty_id = frame["id"] == ""
    if empty_id.any():
        raise AnnotationError(f"{path}: line(s) {examples(line_numbers(frame, empty_id))} have a label "
                              f"but no id. {fix}")
    pool = set(data.ids)
    unknown = [i for i in frame["id"] if i not in pool]
    if unknown:
        raise AnnotationError(
            f"the {what} {path} names ids that are not in the data: {examples(map(repr, unknown))}. "
            f"Ids must match the data exactly (for images: the path relative to the data folder, "
            f"as written in the queue); if you moved or deleted those samples, remove their rows.")
    answers: dict[str, str] = {}
    for line, sample_id, label in zip(line_numbers(frame), frame["id"], frame["label"]):
        earlier = answers.get(sample_id, known.get(sample_id))
        if earlier is not None and earlier != label:
            raise AnnotationError(
                f"the {what} {path}, line {line}, labels {sample_id!r} as {label!r}, but "
                f"{label_source(sample_id, answers, data)} {earlier!r}. Keep one label per sample: "
                f"fix that row, or correct the earlier label if it was the wrong one.")
        answers[sample_id] = label
    return answers


def label_source(sample_id: str, answers: dict[str, str], data: UserData) -> str:
    """Where the label a new answer contradicts comes from, for error messages."""
    if sample_id in answers:
        return "an earlier row of the same file says"
    if sample_id in data.given:
        return "the data itself says"
    return f"{data.labels_path} (your earlier answer) says"


def resolve_classes(option: str | None, data: UserData, answered: dict[str, str]) -> list[str]:
    """The class list: ``--classes`` if given, else the classes the data and labels name."""
    named = sorted(set(data.classes_named) | set(data.given.values()) | set(answered.values()))
    if not option:
        if not named:
            raise AnnotationError(
                "nothing is labeled yet, so the classes are unknown: pass --classes a,b,c "
                "(the first queue is then drawn at random), or label a few samples in the data first.")
        return named
    classes = [c.strip() for c in option.split(",") if c.strip()]
    if len(set(classes)) != len(classes):
        raise AnnotationError(f"--classes {option!r} lists a class twice.")
    extra = [c for c in named if c not in classes]
    if extra:
        raise AnnotationError(f"the data or the labels file use the classes {examples(map(repr, extra))}, "
                              f"which --classes {option!r} does not list; add them to --classes.")
    return classes


def check_labels_known(labels: dict[str, str], classes: list[str], path: Path, what: str) -> None:
    unknown = sorted({label for label in labels.values() if label not in classes})
    if unknown:
        raise AnnotationError(
            f"the {what} {path} uses labels that are not known classes: {examples(map(repr, unknown))}. "
            f"Known classes: {', '.join(classes)}. Fix the typo, or pass --classes with every class "
            f"(e.g. --classes {','.join(classes + unknown)}).")


def read_queue_answers(data: UserData, known: dict[str, str], classes: list[str]):
    """New labels written into the queue file, and how many queue rows were left blank."""
    path = data.queue_path
    if not path.exists():
        return {}, 0
    fix = (f"Repair {path} (a CSV with at least the columns id and label, one row per sample), "
           f"or delete it to get a fresh queue (its answers are then lost).")
    frame = read_table(path, "queue", fix)
    require_columns(frame, ("id", "label"), path, "queue", fix)
    frame = frame[(frame["id"] != "") | (frame["label"] != "")]
    answered = frame[frame["label"] != ""]
    check_labels_known(dict(enumerate(answered["label"])), classes, path, "queue")
    answers = checked_answers(answered, path, "queue", data, known, fix)
    new = {i: label for i, label in answers.items() if i not in known}
    return new, int((frame["label"] == "").sum())


# =========================================================================== models
@dataclass
class ModelSpec:
    """How to build, configure and feed one model choice."""

    name: str
    build: Callable
    config: dict
    prepare: Callable[[np.ndarray], np.ndarray]


def model_kind(choice: str, data: UserData) -> str:
    """Resolve ``--model``: auto by input shape, a known kind, or a model file path."""
    if choice == "auto":
        if data.kind == "images":
            return "cnn2d"
        return "cnn1d" if data.x.shape[1] >= SIGNAL_MIN_FEATURES else "mlp"
    if choice in MODEL_KINDS:
        return choice
    if Path(choice).expanduser().is_file():
        return "file"
    raise AnnotationError(f"--model {choice!r} is neither one of {', '.join(MODEL_KINDS)} "
                          f"nor an existing .keras model file.")


def flat_standardizer(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Flatten samples and z-score each feature with the mean and std of all samples.

    Statistics come from the whole data set, labeled or not (no label is used).
    """
    def flatten(values):
        return values.reshape(values.shape[0], int(np.prod(values.shape[1:])))

    mean, std = flatten(x).mean(axis=0), flatten(x).std(axis=0)
    std[std == 0] = 1.0
    return lambda values: ((flatten(values) - mean) / std).astype(np.float32)


def add_channel_axis(values: np.ndarray) -> np.ndarray:
    return values[..., None]


def unchanged(values: np.ndarray) -> np.ndarray:
    return values


def user_model_spec(path: Path, data: UserData, n_classes: int) -> ModelSpec:
    """A user's model file: cloned (fresh weights) and compiled anew each round."""
    import keras
    try:
        template = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for unreadable or custom-layer models
        raise AnnotationError(f"cannot load the model {path} ({err}). Save it with model.save('x.keras'); "
                              f"custom layers must be registered.") from None
    expected, shape = tuple(template.input_shape[1:]), tuple(data.x.shape[1:])
    prepare = unchanged
    if len(expected) == len(shape) + 1 and expected[-1] == 1:
        prepare, shape = add_channel_axis, shape + (1,)
    if len(expected) != len(shape) or any(e not in (None, s) for e, s in zip(expected, shape)):
        raise AnnotationError(f"the model {path} takes inputs of shape {expected}, but the samples have "
                              f"shape {tuple(data.x.shape[1:])}; build it for that shape.")
    if template.output_shape[-1] != n_classes:
        raise AnnotationError(f"the model {path} has {template.output_shape[-1]} outputs but there are "
                              f"{n_classes} classes; end it in Dense({n_classes}, activation='softmax').")

    def build(config, input_shape, n_out):
        model = keras.models.clone_model(template)
        model.compile(optimizer=keras.optimizers.Adam(config["learning_rate"]),
                      loss="sparse_categorical_crossentropy")
        return model

    return ModelSpec(path.name, build, dict(USER_MODEL_CONFIG), prepare)


def model_spec(args, data: UserData, n_classes: int) -> ModelSpec:
    """The model to train every round, with its hyperparameters and input preparation."""
    kind = model_kind(args.model, data)
    if kind == "file":
        spec = user_model_spec(Path(args.model).expanduser(), data, n_classes)
    elif kind == "mlp":
        spec = ModelSpec("mlp", models.mlp, dict(MLP_CONFIG), flat_standardizer(data.x))
    elif kind == "cnn1d":
        spec = ModelSpec("cnn1d", models.ecg_cnn, dict(CNN1D_CONFIG),
                         add_channel_axis if data.x.ndim == 2 else unchanged)
    else:
        if data.x.ndim != 4:
            raise AnnotationError("--model cnn2d needs images; use mlp or cnn1d for CSV data.")
        spec = ModelSpec("cnn2d", models.mnist_cnn, dict(CNN2D_CONFIG), unchanged)
    for key in ("epochs", "fit_batch_size", "learning_rate"):
        if getattr(args, key) is not None:
            spec.config[key] = getattr(args, key)
    spec.config.update(val_fraction=0.0, patience=0, class_weight=args.class_weight)
    return spec


def fewer_longer_epochs(x: np.ndarray, y: np.ndarray, epochs: int):
    """Tile a small labeled set so that ``epochs`` passes over it take fewer Keras epochs.

    Keras spends tens of milliseconds per epoch on bookkeeping, which dominates training on a
    few dozen labels. Repeating the samples ``r`` times (``r`` a divisor of ``epochs``, at most
    ``SAMPLES_PER_EPOCH / len(x)``) and fitting ``epochs / r`` epochs makes exactly the same
    number of passes over every sample, in a fraction of the time.
    """
    limit = max(1, SAMPLES_PER_EPOCH // max(len(x), 1))
    repeats = max(r for r in range(1, min(epochs, limit) + 1) if epochs % r == 0)
    if repeats == 1:
        return x, y, epochs
    return np.tile(x, (repeats,) + (1,) * (x.ndim - 1)), np.tile(y, repeats), epochs // repeats


def train(spec: ModelSpec, x: np.ndarray, y: np.ndarray, n_classes: int, seed_seq: list[int]):
    """A fresh model fitted on (x, y); clear errors for a model that does not fit the data."""
    x = spec.prepare(x)
    x_fit, y_fit, epochs = fewer_longer_epochs(x, y, int(spec.config["epochs"]))
    try:
        model = train_fresh_model(spec.build, {**spec.config, "epochs": epochs}, x_fit, y_fit,
                                  n_classes, seed_seq)
    except ValueError as err:
        raise AnnotationError(f"cannot train the {spec.name} model on samples of shape {x.shape[1:]} "
                              f"({str(err).strip().splitlines()[0]}); choose another --model.") from None
    probs = predict_proba(model, x[:64])
    if not (np.all(probs >= -1e-6) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)):
        raise AnnotationError(f"the {spec.name} model's outputs are not class probabilities; "
                              f"end it in a softmax layer.")
    return model


def macro_f1(y_true, y_pred, labels) -> float:
    from sklearn.metrics import f1_score
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def cross_validated_f1(spec: ModelSpec, x, y, n_classes: int, seed: int) -> tuple[float | None, int, str]:
    """Stratified k-fold macro-F1 on the labels (:func:`al.stopping.cross_validated_macro_f1`)."""
    def fit_predict(x_fit, y_fit, x_held_out, fold):
        # the count of the labels cross-validation uses (single-label classes left out)
        model = train(spec, x_fit, y_fit, n_classes, [seed, len(y_fit) + len(x_held_out), fold + 1])
        return predict_proba(model, spec.prepare(x_held_out)).argmax(axis=1)
    return cross_validated_macro_f1(fit_predict, x, y, n_classes, seed, MAX_CV_FOLDS)


# =========================================================================== the queue
def select_queue(strategy, model, x_pool: np.ndarray, x_labeled: np.ndarray, batch_size: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Positions into ``x_pool`` of the next samples to label, most wanted first.

    ``strategy.select`` always gets every argument, the labeled samples included.
    """
    k = min(batch_size, len(x_pool))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        positions = np.asarray(strategy.select(model, x_pool, k, rng, x_labeled), dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise AnnotationError(f"strategy {strategy.name!r} cannot work with this model ({err}); "
                              f"choose another --strategy (e.g. entropy).") from None
    if len(np.unique(positions)) != k:
        raise RuntimeError(f"strategy {strategy.name} returned duplicate or too few samples")
    return positions


def queue_rows(ids: list[str], probs: np.ndarray | None, classes: list[str]) -> list[list]:
    """Queue rows (rank, id, predicted, confidence, uncertainty, empty label)."""
    if probs is None:
        return [[rank, i, "", "", "", ""] for rank, i in enumerate(ids, 1)]
    scores = entropy(probs)
    return [[rank, i, classes[int(p.argmax())], f"{p.max():.4f}", f"{s:.4f}", ""]
            for rank, (i, p, s) in enumerate(zip(ids, probs, scores), 1)]


# =========================================================================== commands
def labeled_arrays(data: UserData, labels: dict[str, str], classes: list[str]):
    """Pool positions, samples and class indices of the labeled samples, in data order."""
    index = {c: k for k, c in enumerate(classes)}
    positions = np.array([k for k, i in enumerate(data.ids) if i in labels], dtype=np.int64)
    y = np.array([index[labels[data.ids[k]]] for k in positions], dtype=np.int64)
    return positions, data.x[positions], y


def class_mix(y: np.ndarray, classes: list[str]) -> dict[str, int]:
    return dict(zip(classes, map(int, np.bincount(y, minlength=len(classes)))))


def prepare_session(args):
    """Data, earlier answers and classes, all checked."""
    data = load_data(args)
    answered = read_label_file(data.labels_path, data)
    classes = resolve_classes(args.classes, data, answered)
    check_labels_known(data.given, classes, Path(args.data), "data")
    check_labels_known(answered, classes, data.labels_path, "labels file")
    return data, answered, classes


def load_eval_labels(path: str | None, data: UserData, classes: list[str], args):
    """The ``--eval`` set as (samples, class indices), or None; read before anything is written."""
    if not path:
        return None
    x, labels = load_eval_set(Path(path), data, args)
    check_labels_known(dict(enumerate(labels)), classes, Path(path), "--eval set")
    return x, np.array([classes.index(label) for label in labels], dtype=np.int64)


def held_out_f1(eval_set, spec: ModelSpec, model, n_classes: int) -> float | None:
    """Macro-F1 of ``model`` on the ``--eval`` set (None without one or without a model)."""
    if eval_set is None or model is None:
        return None
    x, y = eval_set
    predicted = predict_proba(model, spec.prepare(x)).argmax(axis=1)
    return macro_f1(y, predicted, list(range(n_classes)))


def merge_queue(data: UserData, answered: dict[str, str], classes: list[str]):
    """Add the queue's new answers to the labels file (atomically): (all answers, new, n_blank)."""
    new, n_blank = read_queue_answers(data, {**data.given, **answered}, classes)
    if new:
        answered = {**answered, **new}
        write_csv_atomic(data.labels_path, LABEL_COLUMNS, answered.items())
    print(f"{data.description}; merged {len(new)} new label(s)"
          + (f" from {data.queue_path}" if data.queue_path.exists() else "")
          + (f", {n_blank} queue row(s) left blank stay unlabeled" if n_blank else ""))
    return answered, new, n_blank


def fit_round(spec: ModelSpec, x_labeled, y, n_classes: int, seed: int):
    """This round's model, or None while nothing is labeled."""
    if not len(y):
        return None
    started = time.perf_counter()
    model = train(spec, x_labeled, y, n_classes, [seed, len(y)])
    print(f"trained {spec.name} on {len(y)} labels ({spec.config['epochs']} epochs) "
          f"in {time.perf_counter() - started:.1f} s")
    return model


def next_queue(args, data: UserData, spec: ModelSpec, model, pool: np.ndarray, x_labeled,
               classes: list[str]) -> list[str]:
    """Choose the next samples to label and write them to the queue file; returns their ids."""
    strategy = get_strategy(args.strategy)
    if model is None and strategy.uses_model:
        print("no labels yet: the first queue is drawn at random")
        strategy = get_strategy("random")
    rng = np.random.default_rng([args.seed, len(x_labeled)])
    candidates = spec.prepare(data.x[pool]) if strategy.uses_model else data.x[pool]
    chosen = pool[select_queue(strategy, model, candidates, spec.prepare(x_labeled), args.batch_size, rng)]
    probs = predict_proba(model, spec.prepare(data.x[chosen])) if model is not None else None
    queue = [data.ids[k] for k in chosen]
    write_csv_atomic(data.queue_path, QUEUE_COLUMNS, queue_rows(queue, probs, classes))
    if queue:
        print(f"wrote {len(queue)} samples to label ({strategy.name}) to {data.queue_path}: "
              f"fill in the label column, then run this command again")
    else:
        print(f"every sample is labeled; {data.queue_path} is empty")
    return queue


# =========================================================================== stopping
def rounds_path(data: UserData) -> Path:
    """The session's round history, beside the labels file: ``<name>.rounds.json`` / ``DATA/rounds.json``."""
    name = data.labels_path.name
    stem = name[: -len("labels.csv")] if name.endswith("labels.csv") else f"{data.labels_path.stem}."
    return data.labels_path.with_name(f"{stem}rounds.json")


def stop_set_positions(data: UserData, seed: int) -> np.ndarray:
    """A fixed sample of the data (labeled or not; no label is read) whose predictions the
    stopping criteria compare from round to round: the protocol's stop set."""
    return stop_set_indices(seed, len(data.ids))


def stop_set_key(data: UserData, positions: np.ndarray, model_name: str) -> str:
    """Names the stop set and model: rounds recorded under another key are not comparable."""
    text = "\n".join([model_name, *(data.ids[k] for k in positions)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_rounds(data: UserData, key: str) -> list[dict]:
    """Earlier rounds of this session on the same stop set and model ([] if none or another)."""
    path = rounds_path(data)
    if not path.exists():
        return []
    try:
        content = json.loads(path.read_text())
        rounds = content["rounds"] if content.get("stop_set") == key else []
        as_rounds(rounds)  # every round readable
    except (ValueError, KeyError, TypeError, AttributeError):
        raise AnnotationError(f"the round history {path} is unreadable; delete it (the stopping criteria then "
                              f"start again from the next round).") from None
    if content.get("stop_set") != key:
        print(f"note: {path} was recorded on other data or with another model; the stopping criteria start again")
    return rounds


def write_rounds(data: UserData, key: str, rounds: list[dict]) -> None:
    write_text_atomic(rounds_path(data), json.dumps({"stop_set": key, "rounds": rounds}, indent=1) + "\n")


def record_round(rounds: list[dict], entry: dict) -> list[dict]:
    """``rounds`` with ``entry`` for its label count (replacing one with the same count), in order."""
    kept = [r for r in rounds if r["n_labeled"] != entry["n_labeled"]]
    return sorted([*kept, entry], key=lambda r: r["n_labeled"])


def as_rounds(rounds: list[dict]) -> list[Round]:
    return [Round(r["n_labeled"], r["n_classes"],
                  None if r.get("stop_set_predictions") is None else decode_uint8(r["stop_set_predictions"]),
                  r.get("stop_set_mean_entropy"), r.get("stop_set_max_entropy"), r.get("cv_macro_f1"))
            for r in rounds]


def stopping_readings(rounds: list[dict]) -> dict:
    """Each criterion of ``STOPPING`` on the history, printed with a plain verdict from
    ``VERDICT_CRITERION``: {name: value, stop, verdict text, decides (True for that one)}."""
    history = as_rounds(rounds)
    readings = {name: get_criterion(name, **settings).read(history) for name, settings in STOPPING}
    print(f"stopping criteria ({len(history)} round(s) recorded in this session):")
    for name, reading in readings.items():
        why_not = f" [for information, not the verdict: {NOT_DECIDING[name]}]" if name in NOT_DECIDING else ""
        print(f"  {name}: {reading.verdict}{why_not}")
    if readings[VERDICT_CRITERION].stop:
        print(f"verdict: stop ({VERDICT_CRITERION}): more labels are unlikely to pay; check the class mix "
              f"and, if you have one, the --eval score before you stop")
    else:
        print(f"verdict: keep labeling ({VERDICT_CRITERION} does not say stop yet)")
    return {name: {"value": r.value, "stop": r.stop, "verdict": r.verdict, "decides": name == VERDICT_CRITERION}
            for name, r in readings.items()}


def stop_set_round(data: UserData, spec: ModelSpec, model, positions: np.ndarray, n_labeled: int,
                   n_classes: int) -> dict:
    """What this round's model says of the stop set (no label is read)."""
    probs = predict_proba(model, spec.prepare(data.x[positions]))
    uncertainty = entropy(probs)
    return {"n_labeled": n_labeled, "n_classes": n_classes,
            "stop_set_predictions": encode_uint8(probs.argmax(axis=1)),
            "stop_set_mean_entropy": float(uncertainty.mean()), "stop_set_max_entropy": float(uncertainty.max()),
            "cv_macro_f1": None}


def command_next(args) -> dict:
    """Merge the answered queue, retrain on all labels, write the next queue."""
    data, answered, classes = prepare_session(args)
    eval_set = load_eval_labels(args.eval, data, classes, args)
    spec = model_spec(args, data, len(classes))  # every check before anything is written
    answered, new, n_blank = merge_queue(data, answered, classes)

    positions, x_labeled, y = labeled_arrays(data, {**data.given, **answered}, classes)
    pool = np.setdiff1d(np.arange(len(data.ids)), positions)
    print(f"labeled {len(y)}, unlabeled {len(pool)}; class mix "
          + ", ".join(f"{c}: {n}" for c, n in class_mix(y, classes).items()))
    model = fit_round(spec, x_labeled, y, len(classes), args.seed)
    eval_f1 = held_out_f1(eval_set, spec, model, len(classes))
    if eval_f1 is not None:
        print(f"macro-F1 on {args.eval}: {eval_f1:.4f}")
    if args.save_model and model is not None:
        model.save(Path(args.save_model).expanduser())
        print(f"model saved to {args.save_model}")
    stopping = None
    if model is not None:
        positions = stop_set_positions(data, args.seed)
        key = stop_set_key(data, positions, spec.name)
        here = stop_set_round(data, spec, model, positions, len(y), len(classes))
        rounds = read_rounds(data, key)
        earlier = next((r for r in rounds if r["n_labeled"] == len(y)), None)
        if earlier is not None:  # the same labels give the same model: keep the CV score status found
            here["cv_macro_f1"] = earlier.get("cv_macro_f1")
        rounds = record_round(rounds, here)
        write_rounds(data, key, rounds)
        stopping = stopping_readings(rounds)
    queue = next_queue(args, data, spec, model, pool, x_labeled, classes)
    return {"n_labeled": len(y), "n_new": len(new), "n_blank": n_blank, "n_unlabeled": len(pool),
            "classes": classes, "class_counts": class_mix(y, classes), "queue": queue,
            "queue_path": data.queue_path, "labels_path": data.labels_path, "model": spec.name,
            "eval_macro_f1": eval_f1, "stopping": stopping}


def queue_state(data: UserData, labels: dict[str, str], classes: list[str]) -> str:
    if not data.queue_path.exists():
        return "no queue yet (run `next`)"
    try:
        new, n_blank = read_queue_answers(data, labels, classes)
    except AnnotationError as err:
        return f"INVALID: {err}"
    return (f"{data.queue_path}: {len(new)} new answer(s) not merged yet, {n_blank} blank row(s)"
            + (" -> run `next` to merge them" if new else ""))


def command_status(args) -> dict:
    """Print labels so far, the class mix, the queue state and cross-validated macro-F1."""
    data, answered, classes = prepare_session(args)
    eval_set = load_eval_labels(args.eval, data, classes, args)
    labels = {**data.given, **answered}
    positions, x_labeled, y = labeled_arrays(data, labels, classes)
    counts = class_mix(y, classes)
    print(f"data: {data.description}")
    print(f"labels: {len(y)} ({len(data.given)} from the data, {len(answered)} in {data.labels_path}); "
          f"unlabeled: {len(data.ids) - len(y)}")
    print("class mix:")
    for name, count in counts.items():
        print(f"  {name:>12}  {count:6d}  {100 * count / max(len(y), 1):5.1f}%")
    print(f"queue: {queue_state(data, labels, classes)}")
    spec = model_spec(args, data, len(classes))
    cv_f1, folds, note = cross_validated_f1(spec, x_labeled, y, len(classes), args.seed)
    if cv_f1 is None:
        print(f"cross-validated macro-F1: not available ({note})")
    else:
        print(f"cross-validated macro-F1 ({spec.name}, {folds}-fold stratified{note}): {cv_f1:.4f}")
    eval_f1 = None
    if args.eval and len(y):
        model = train(spec, x_labeled, y, len(classes), [args.seed, len(y)])
        eval_f1 = held_out_f1(eval_set, spec, model, len(classes))
        print(f"macro-F1 on {args.eval}: {eval_f1:.4f}")
    key = stop_set_key(data, stop_set_positions(data, args.seed), spec.name)
    rounds = read_rounds(data, key)
    current = next((r for r in rounds if r["n_labeled"] == len(y)), None)
    if current is not None and cv_f1 is not None and current.get("cv_macro_f1") != cv_f1:
        current["cv_macro_f1"] = cv_f1  # the learning curve reads it
        write_rounds(data, key, rounds)
    if current is None and len(y):
        print("note: the current labels have no round yet (run `next`); the criteria read the rounds so far")
    stopping = stopping_readings(rounds)
    return {"n_labeled": len(y), "n_answered": len(answered), "class_counts": counts,
            "cv_macro_f1": cv_f1, "cv_folds": folds, "eval_macro_f1": eval_f1, "stopping": stopping}


# =========================================================================== Label Studio
def label_studio_view(data: UserData) -> str:
    """How Label Studio shows a sample: the image, a plot of a signal, or a table of features."""
    if data.kind == "images":
        return "image"
    return "plot" if data.x.shape[1] >= SIGNAL_MIN_FEATURES else "table"


def queue_items(data: UserData, labels: dict[str, str]) -> tuple[list[label_studio.QueueItem], int]:
    """The queue's rows still to label (no answer in the file, not labeled since): (items, n_left_out)."""
    path = data.queue_path
    if not path.exists():
        raise AnnotationError(f"no queue to push: {path} does not exist. Run `next` first (it writes the "
                              f"queue), then push it.")
    fix = f"Repair {path} or run `next` to write a fresh queue."
    frame = read_table(path, "queue", fix)
    require_columns(frame, ("id", "label"), path, "queue", fix)
    frame = frame[frame["id"] != ""]
    pool = set(data.ids)
    unknown = [i for i in frame["id"] if i not in pool]
    if unknown:
        raise AnnotationError(f"the queue {path} names ids that are not in the data: "
                              f"{examples(map(repr, unknown))}. Run `next` to write a fresh queue.")
    todo = frame[(frame["label"] == "") & ~frame["id"].isin(list(labels))]
    items = [label_studio.QueueItem(row["id"], *(row.get(key, "") for key in label_studio.QUEUE_FIELDS))
             for _, row in todo.iterrows()]
    return items, len(frame) - len(todo)


def label_studio_tasks(data: UserData, items: list[label_studio.QueueItem], view: str) -> list[dict]:
    """The queue's samples as Label Studio tasks (with the queue's prediction, if any)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(data.queue_path.stat().st_mtime))
    wanted = {item.sample_id for item in items}
    rows = {i: data.x[k] for k, i in enumerate(data.ids) if i in wanted} if view != "image" else None
    return label_studio.build_tasks(items, view, f"annotate.py queue of {stamp}",
                                    image_root=Path(data.source), rows=rows,
                                    feature_names=data.load_options.get("features"))


def label_studio_server(args) -> label_studio.Server:
    """The server named by --label-studio, with the token from the environment (checked)."""
    return label_studio.Server(args.label_studio, label_studio.read_token())


def command_push(args) -> dict:
    """Send the queue to Label Studio: into a project on a server, or to a tasks file to import."""
    data, answered, classes = prepare_session(args)
    items, n_left_out = queue_items(data, {**data.given, **answered})
    view = label_studio_view(data)
    summary = {"n_tasks": len(items), "n_left_out": n_left_out, "view": view, "project": None}
    try:
        if args.label_studio_file:
            tasks_path = Path(args.label_studio_file).expanduser()
            config_path = label_studio.write_tasks_file(tasks_path, label_studio_tasks(data, items, view),
                                                        label_studio.label_config(classes, view))
            print(f"wrote {len(items)} tasks to {tasks_path} and the label config to {config_path}: create a "
                  f"Label Studio project with that config (Settings > Labeling Interface > Code), import "
                  f"{tasks_path.name}, label, export as JSON, then run `pull --label-studio-file EXPORT`")
            return {**summary, "tasks_path": tasks_path, "config_path": config_path}
        server = label_studio_server(args)
        project, created, counts = server.push_queue(
            args.label_studio_project, f"annotate: {Path(data.source).name}", classes, view,
            label_studio_tasks(data, items, view))
    except label_studio.LabelStudioError as err:
        raise AnnotationError(str(err)) from None
    if created:
        print(f"created Label Studio project {project}; pass --label-studio-project {project} from now on")
    print(f"pushed {counts['imported']} tasks to {server.project_address(project)}"
          + (f"; removed {counts['removed']} open task(s) of the previous queue" if counts["removed"] else "")
          + (f"; {counts['kept']} queued sample(s) already have an annotated or drafted task there "
             f"(run `pull`)" if counts["kept"] else "")
          + ". Sort the Data Manager by prediction score, descending: most uncertain first")
    return {**summary, "project": project, **counts}


def task_wording(message: str) -> str:
    """A CSV check's message reworded for Label Studio answers (``line`` numbers are task ids there)."""
    for old, new in ((", line ", ", task "), ("line(s) ", "task(s) "),
                     ("an earlier row of the same file says", "another annotation there says"),
                     ("fix that row", "fix that annotation"), ("remove their rows", "delete their tasks")):
        message = message.replace(old, new)
    return message


def merge_pulled(data: UserData, answered: dict[str, str], classes: list[str], pulled) -> tuple[dict, dict]:
    """Add Label Studio answers to the labels file (atomically), with the CSV queue's checks.

    Unknown classes and answers contradicting the data, the labels file or each other are
    refused before anything is written. Returns (all answers, new ones).
    """
    import pandas as pd
    frame = pd.DataFrame({"id": [a.sample_id for a in pulled.answers],
                          "label": [a.label for a in pulled.answers]},
                         index=[a.task_id - 2 for a in pulled.answers], dtype=str)  # "line" = task id
    known = {**data.given, **answered}
    fix = "Correct the annotation in Label Studio (or the earlier label), then pull again."
    try:
        check_labels_known(dict(enumerate(frame["label"])), classes, pulled.where, pulled.what)
        answers = checked_answers(frame, pulled.where, pulled.what, data, known, fix)
    except AnnotationError as err:
        raise AnnotationError(task_wording(str(err))) from None
    new = {i: label for i, label in answers.items() if i not in known}
    if new:
        answered = {**answered, **new}
        write_csv_atomic(data.labels_path, LABEL_COLUMNS, answered.items())
    return answered, new


def command_pull(args) -> dict:
    """Merge the finished annotations of a Label Studio project (or its JSON export) into the labels."""
    data, answered, classes = prepare_session(args)
    try:
        if args.label_studio_file:
            pulled = label_studio.read_export_file(Path(args.label_studio_file).expanduser())
        elif args.label_studio_project is None:
            raise AnnotationError("pull needs --label-studio-project ID (the number in the project's "
                                  "address, printed by push).")
        else:
            server = label_studio_server(args)
            pulled = server.pull(args.label_studio_project, classes, label_studio_view(data))
    except label_studio.LabelStudioError as err:
        raise AnnotationError(str(err)) from None
    answered, new = merge_pulled(data, answered, classes, pulled)
    print(f"{data.description}; merged {len(new)} new label(s) from the {pulled.what} {pulled.where} into "
          f"{data.labels_path} ({len(pulled.answers)} annotation(s) in {pulled.n_tasks} task(s); "
          f"{pulled.n_unannotated} task(s) not annotated yet, {pulled.n_skipped} skipped)"
          + (": run `next` to retrain and queue more" if new else ""))
    return {"n_new": len(new), "n_answers": len(pulled.answers), "n_tasks": pulled.n_tasks,
            "n_unannotated": pulled.n_unannotated, "n_skipped": pulled.n_skipped,
            "labels_path": data.labels_path}


def label_studio_options(parser: argparse.ArgumentParser, pull: bool) -> None:
    group = parser.add_argument_group(f"Label Studio (token: environment variable {label_studio.TOKEN_ENV})")
    where = group.add_mutually_exclusive_group(required=True)
    where.add_argument("--label-studio", metavar="URL", help="server address, e.g. http://localhost:8080")
    where.add_argument("--label-studio-file", metavar="PATH",
                       help=("a project's JSON export (Export > JSON) to read" if pull else
                             "write the tasks to this JSON file (and the label config beside it) to import"))
    group.add_argument("--label-studio-project", metavar="ID", type=int,
                       help=("project to pull from (required with --label-studio)" if pull else
                             "project to push to (default: create one)"))


# =========================================================================== command line
def common_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("data", help="CSV file of features, or image folder with labeled/ and unlabeled/")
    parser.add_argument("--model", default="auto",
                        help="auto, mlp, cnn1d, cnn2d, or a path to a .keras model (default: auto)")
    parser.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=sorted(STRATEGIES),
                        help=f"query strategy (default: {DEFAULT_STRATEGY})")
    parser.add_argument("--batch-size", type=int, default=20, help="samples per queue (default: 20)")
    parser.add_argument("--classes", help="comma-separated class list, fixes names and order")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--eval", help="fully labeled held-out set (same format) to report macro-F1 on")
    files = parser.add_argument_group("files")
    files.add_argument("--queue", help="queue file (default: beside the data, see above)")
    files.add_argument("--labels", help="labels file (default: beside the data, see above)")
    files.add_argument("--id-column", default="id", help="CSV: id column (default: id)")
    files.add_argument("--label-column", default="label", help="CSV: label column (default: label)")
    files.add_argument("--image-size", help="images: SIZE or HEIGHTxWIDTH (default: first image's)")
    files.add_argument("--color", default="auto", choices=("auto", "grayscale", "rgb"),
                       help="images: channels (default: auto = grayscale if every image is gray)")
    training = parser.add_argument_group("training (defaults: those of the chosen model)")
    training.add_argument("--epochs", type=int)
    training.add_argument("--fit-batch-size", type=int)
    training.add_argument("--learning-rate", type=float)
    training.add_argument("--class-weight", default="none", choices=("none", "balanced"),
                          help="'balanced' weights classes by their labeled counts (default: none)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python code/annotate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{next,status,push,pull}")
    next_parser = commands.add_parser(
        "next", parents=[common_options()], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="merge the answered queue, retrain, write the next queue",
        description="Merge the labels written into the queue, retrain on all labels, write the next queue.")
    next_parser.add_argument("--save-model", help="also save the trained model to this .keras file")
    commands.add_parser("status", parents=[common_options()],
                        help="labels so far, class mix, cross-validated macro-F1",
                        description="Print labels so far, the class mix, the queue's state and the "
                                    "model's cross-validated macro-F1 on the labels.")
    push_parser = commands.add_parser(
        "push", parents=[common_options()], help="send the queue to Label Studio (server or tasks file)",
        description="Send the queue's samples to Label Studio as tasks, with the model's prediction and "
                    "its uncertainty as the prediction score.")
    label_studio_options(push_parser, pull=False)
    pull_parser = commands.add_parser(
        "pull", parents=[common_options()], help="merge finished Label Studio annotations into the labels",
        description="Merge the finished annotations of a Label Studio project (or of its JSON export) into "
                    "the labels file, with the same checks as the CSV queue.")
    label_studio_options(pull_parser, pull=True)
    return parser


def check_options(args) -> None:
    for key in ("batch_size", "epochs", "fit_batch_size"):
        value = getattr(args, key, None)
        if value is not None and value <= 0:
            raise AnnotationError(f"--{key.replace('_', '-')} must be positive, got {value}")


def configure_threads() -> int:
    """Set TensorFlow up to use every core; returns the thread count it runs with.

    The count is fixed per process (:func:`al.keras_ops.configure_tensorflow`). When this
    process already configured TensorFlow with another count (``annotate`` called from a
    program that set it up first, such as the test session), that count is kept.
    """
    return configured_threads() or configure_tensorflow(os.cpu_count() or 1)


def run(argv=None) -> dict:
    """Parse ``argv`` and run the command; returns its summary. Raises :class:`AnnotationError`."""
    args = build_parser().parse_args(argv)
    check_options(args)
    if args.command in ("next", "status"):  # push and pull train nothing
        configure_threads()
    commands = {"next": command_next, "status": command_status, "push": command_push, "pull": command_pull}
    return commands[args.command](args)


def main(argv=None) -> int:
    """Command-line entry point: exit status 0, or 2 with ``error: ...`` on stderr for bad input."""
    try:
        run(argv)
    except AnnotationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
