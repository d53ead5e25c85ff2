"""What the strategies and the loop need from a Keras model, and how TensorFlow is set up.

* :func:`predict_proba`: class probabilities in large batches;
* :func:`mc_predict_proba`: ``T`` stochastic forward passes with only the Dropout layers active;
* :func:`embed_and_predict`: the input of the last layer (penultimate embedding) and the
  probabilities;
* :func:`configure_tensorflow`: threads, deterministic kernels, a quiet start-up.

Models: any Keras model whose last layer is a ``Dense`` layer (softmax for probabilities).
``keras.Sequential`` models run layer by layer; other (functional) models, several inputs
included, through a sub-model ending at the last layer's input and, for MC passes, a
clone whose Dropout layers always sample (weights shared with the model). ``x`` is one
array, or a list of arrays (one per model input) with the samples on the first axis.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

import numpy as np
import threadpoolctl

PREDICT_BATCH_SIZE = 8192  # large batches: scoring the whole pool is the hot path
_BANNER = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} "
                     r"|To enable the following instructions)")
_CONFIGURED: dict = {}


# --------------------------------------------------------------------------- TensorFlow set-up
def import_tensorflow():
    """``import tensorflow`` without its C++ start-up banner (absl/oneDNN/CUDA notices).

    The banner is printed by native code before TensorFlow's own log level applies, twice
    per process; the start-up's stderr is captured and replayed without those lines, so
    errors still show.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # level 2 still prints harmless graph-rewrite E lines per fit
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not _BANNER.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
    return tf


def gpu_names() -> list[str]:
    tf = import_tensorflow()
    return [d.name for d in tf.config.list_physical_devices("GPU")]


def gpu_available() -> bool:
    return bool(gpu_names())


def configured_threads() -> int | None:
    """The thread count :func:`configure_tensorflow` set in this process, or None."""
    return _CONFIGURED.get("threads")


def configure_tensorflow(threads: int) -> int:
    """One fixed thread count per process, deterministic kernels, GPU memory grown on demand.

    ``threads`` TensorFlow intra-op threads (inter-op: ``min(threads, 2)``), and the same
    limit for the BLAS/OpenMP pools numpy uses (``threadpoolctl``), so the numbers of the
    numpy parts (coreset, badge) do not depend on the number of cores either. The setting is
    fixed once TensorFlow has run an op; asking for another count afterwards raises
    RuntimeError instead of silently computing with other numerics. Returns ``threads``.
    """
    threads = int(threads)
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if _CONFIGURED.get("threads") == threads:
        return threads
    if "threads" in _CONFIGURED:
        raise RuntimeError(f"TensorFlow already runs with {_CONFIGURED['threads']} thread(s) in this "
                           f"process; a run asking for {threads} needs a process of its own.")
    tf = import_tensorflow()
    tf.get_logger().setLevel("ERROR")  # retracing notices for every fresh model are expected
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    except RuntimeError:  # TensorFlow already initialized in this process
        if tf.config.threading.get_intra_op_parallelism_threads() != threads:
            raise RuntimeError(
                f"TensorFlow was initialized in this process before its threads were set "
                f"(intra-op {tf.config.threading.get_intra_op_parallelism_threads()}, wanted "
                f"{threads}); call configure_tensorflow first.") from None
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    tf.config.experimental.enable_op_determinism()
    threadpoolctl.threadpool_limits(limits=threads)
    _CONFIGURED["threads"] = threads
    return threads


# --------------------------------------------------------------------------- inputs
def n_samples(x) -> int:
    return len(x[0]) if isinstance(x, (list, tuple)) else len(x)


def take(x, start: int, stop: int):
    """Rows ``start:stop`` of one array or of each array of a multi-input list."""
    if isinstance(x, (list, tuple)):
        return [part[start:stop] for part in x]
    return x[start:stop]


# --------------------------------------------------------------------------- predictions
def predict_proba(model, x, batch_size: int = PREDICT_BATCH_SIZE) -> np.ndarray:
    """Class probabilities of ``model`` on ``x`` in large batches, as float64."""
    if n_samples(x) == 0:
        return np.zeros((0, model.output_shape[-1]))
    probs = model.predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(probs, dtype=np.float64)


def _is_active_dropout(layer) -> bool:
    import keras
    return isinstance(layer, keras.layers.Dropout) and float(layer.rate) > 0


def _noise_shape(layer, x):
    if hasattr(layer, "_get_noise_shape"):  # spatial dropout: one mask per channel
        return layer._get_noise_shape(x)
    if layer.noise_shape is not None:  # the batch axis grows when passes are tiled
        return (None, *layer.noise_shape[1:])
    return None


def _forward(layers: list, x, seed=None):
    """Call ``layers`` in order in inference mode; with a ``seed``, sample Dropout layers.

    Only ``keras.layers.Dropout`` and its subclasses (SpatialDropout1D/2D/3D) are made
    stochastic, with masks drawn from ``seed`` (a ``keras.random.SeedGenerator``), not from
    the layer's own generator, so masks are reproducible. Every other layer runs with
    ``training=False``: BatchNormalization keeps its moving statistics, and
    GaussianDropout/AlphaDropout/GaussianNoise act as in inference. Only the top-level
    layers are inspected: Dropout inside a nested model stays off.
    """
    import keras
    for layer in layers:
        if seed is not None and _is_active_dropout(layer):
            x = keras.random.dropout(x, float(layer.rate), noise_shape=_noise_shape(layer, x), seed=seed)
        else:
            x = layer(x, training=False)
    return x


def _compiled(fn):
    """``fn`` as a TensorFlow graph function on the TensorFlow backend, else ``fn`` itself.

    The graph is traced again on every call: each step scores with a fresh model.
    """
    import keras
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf
    return tf.function(fn, reduce_retracing=True)


def _last_dense(model, purpose: str):
    import keras
    last = model.layers[-1]
    if not isinstance(last, keras.layers.Dense):
        raise ValueError(f"{purpose} needs a model whose last layer is Dense, got {type(last).__name__}")
    return last


def _no_dropout_error(purpose: str) -> ValueError:
    return ValueError(
        f"{purpose} needs a model with a Dropout layer (rate > 0): without one every stochastic "
        "pass is identical, BALD is 0 for every sample and entropy_mc equals plain entropy. Add "
        "dropout to the model or use another strategy.")


def _sequential_mc_passes(model, mc_passes: int, seed, purpose: str):
    """Sequential model: the layers before the first Dropout run once, the rest on tiled copies."""
    import keras
    layers = list(model.layers)
    first = next((i for i, layer in enumerate(layers) if _is_active_dropout(layer)), None)
    if first is None:
        raise _no_dropout_error(purpose)

    def stochastic_passes(part):
        h = _forward(layers[:first], part)
        h = keras.ops.tile(h, [mc_passes] + [1] * (len(h.shape) - 1))
        return _forward(layers[first:], h, seed)
    return stochastic_passes


def dropout_chain(model):
    """``(trunk, head)`` when a functional model ends in a plain chain that starts at its first
    active Dropout, else None.

    ``head`` is the list of layers from that Dropout to the output, each called once on the
    previous one's output (no branch joins it), and ``trunk`` a model from the inputs to the
    Dropout's input, which holds every layer before it, so the trunk is deterministic and
    MC passes need to run it only once (``ecg_resnet``: the conv trunk, then Dropout and the
    dense layers). A model with several outputs, a Dropout inside a branch, or a layer after
    the Dropout that also reads another tensor gives None.
    """
    import keras
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    first = next((i for i, layer in enumerate(layers) if _is_active_dropout(layer)), None)
    if first is None or len(model.outputs) != 1:
        return None
    head = layers[first:]
    for previous, layer in zip([None, *head], head):
        if len(layer._inbound_nodes) != 1:
            return None
        inputs = layer._inbound_nodes[0].input_tensors
        if len(inputs) != 1 or (previous is not None and inputs[0] is not previous.output):
            return None
    if head[-1].output is not model.outputs[0]:
        return None
    trunk = keras.Model(model.inputs if len(model.inputs) > 1 else model.inputs[0], head[0].input)
    return trunk, head


def _functional_mc_passes(model, mc_passes: int, seed, purpose: str):
    """Functional model: when it ends in a chain from its first Dropout (:func:`dropout_chain`),
    the trunk runs once and the chain on tiled copies of its output, as for Sequential models;
    otherwise a clone whose Dropout layers always sample, fed tiled inputs."""
    import keras
    split = dropout_chain(model)
    if split is not None:
        trunk, head = split

        def chain_passes(part):
            h = trunk(part, training=False)
            h = keras.ops.tile(h, [mc_passes] + [1] * (len(h.shape) - 1))
            return _forward(head, h, seed)
        return chain_passes
    return _cloned_mc_passes(model, mc_passes, seed, purpose)


def _cloned_mc_passes(model, mc_passes: int, seed, purpose: str):
    """Functional model: a clone whose Dropout layers always sample, fed tiled inputs."""
    import keras

    class SampledDropout(keras.layers.Layer):
        def __init__(self, layer, **kwargs):
            super().__init__(name=f"{layer.name}_sampled", **kwargs)
            self.template = layer

        def call(self, x):
            return keras.random.dropout(x, float(self.template.rate),
                                        noise_shape=_noise_shape(self.template, x), seed=seed)

    if not any(_is_active_dropout(layer) for layer in model.layers):
        raise _no_dropout_error(purpose)
    sampled = keras.models.clone_model(
        model, clone_function=lambda layer: SampledDropout(layer) if _is_active_dropout(layer) else layer)

    def stochastic_passes(part):
        parts = part if isinstance(part, (list, tuple)) else [part]
        tiled = [keras.ops.tile(p, [mc_passes] + [1] * (len(p.shape) - 1)) for p in parts]
        return sampled(tiled if isinstance(part, (list, tuple)) else tiled[0], training=False)
    return stochastic_passes


def mc_predict_proba(model, x, mc_passes: int, rng: np.random.Generator,
                     batch_size: int = PREDICT_BATCH_SIZE, purpose: str = "MC dropout",
                     graph: bool = True) -> np.ndarray:
    """Class probabilities of ``mc_passes`` stochastic forward passes with dropout active.

    Sequential models, and functional ones that end in a chain from their first Dropout
    (:func:`dropout_chain`): the layers before the first Dropout are deterministic and run once
    per batch; their output is tiled ``mc_passes`` times along the batch axis and the rest
    runs once on the tiled batch. Other functional models: the inputs are tiled and a clone
    with sampled Dropout layers runs on them. Pool batches hold ``batch_size // mc_passes``
    samples. Dropout masks are seeded from ``rng``: same ``rng`` state, same probabilities.
    On the TensorFlow backend the passes of a batch run as one graph function;
    ``graph=False`` runs them eagerly (same masks; kept for benchmarks and tests).

    Raises ``ValueError`` when the model has no Dropout layer with a positive rate (every
    pass would be identical) or ``mc_passes < 1``.

    Returns
    -------
    array of shape (mc_passes, n_samples(x), n_classes), float64
    """
    import keras
    if int(mc_passes) < 1:
        raise ValueError(f"mc_passes must be >= 1, got {mc_passes}")
    mc_passes = int(mc_passes)
    builder = _sequential_mc_passes if isinstance(model, keras.Sequential) else _functional_mc_passes
    seed = keras.random.SeedGenerator(int(rng.integers(2 ** 31 - 1)))
    passes = builder(model, mc_passes, seed, purpose)
    passes = _compiled(passes) if graph else passes
    n_classes, n = model.output_shape[-1], n_samples(x)
    out = np.empty((mc_passes, n, n_classes))
    rows = max(1, batch_size // mc_passes)
    for start in range(0, n, rows):
        part = take(x, start, start + rows)
        size = n_samples(part)
        probs = keras.ops.convert_to_numpy(passes(part))
        out[:, start:start + size] = probs.reshape(mc_passes, size, n_classes)
    return out


def embed_and_predict(model, x, batch_size: int = PREDICT_BATCH_SIZE,
                      purpose: str = "embedding") -> tuple[np.ndarray, np.ndarray]:
    """Penultimate embeddings and class probabilities, in inference mode and in batches.

    The embedding ``h`` is the input of the model's last layer, which must be ``Dense``
    (for the scripts' models: the last hidden Dense layer's output; a Dropout in between
    is the identity at inference). Raises ``ValueError`` when the last layer is not Dense or
    its input is not flat.

    Returns
    -------
    h : array of shape (n_samples(x), d), float32
    probs : array of shape (n_samples(x), n_classes), float64
    """
    import keras
    last = _last_dense(model, purpose)
    if isinstance(model, keras.Sequential):
        layers = list(model.layers)[:-1]

        def embed(part):
            return _forward(layers, part)
    else:
        trunk = keras.Model(model.inputs if len(model.inputs) > 1 else model.inputs[0], last.input)

        def embed(part):
            return trunk(part, training=False)
    features, probs = [], []
    n = n_samples(x)
    for start in range(0, n, batch_size):
        h = embed(take(x, start, start + batch_size))
        if len(h.shape) != 2:
            raise ValueError(f"{purpose} needs a flat input to the last Dense layer, got shape "
                             f"{tuple(h.shape)}")
        features.append(keras.ops.convert_to_numpy(h).astype(np.float32))
        probs.append(keras.ops.convert_to_numpy(last(h, training=False)).astype(np.float64))
    if not features:
        return np.zeros((0, last.kernel.shape[0]), np.float32), np.zeros((0, last.units))
    return np.concatenate(features), np.concatenate(probs)


def last_layer_is_softmax(model) -> bool:
    activation = getattr(model.layers[-1], "activation", None)
    return getattr(activation, "__name__", "") == "softmax"
