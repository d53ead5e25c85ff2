"""Model builders of the dataset scripts and of ``annotate.py``.

Every builder has the signature ``build(config, input_shape, n_classes)`` and returns a
compiled Keras model ending in a Dense softmax layer (what every strategy needs). ``config``
holds the script's hyperparameters; each builder reads only its own keys (listed in its
docstring). Training-recipe keys shared by all builders, each optional with the default
that reproduces the original recipe:

* ``optimizer`` ("adam" | "adamw") and ``weight_decay`` (AdamW's decoupled decay);
* ``label_smoothing`` (cross-entropy against smoothed one-hot targets);
* ``augment`` (1: random augmentation layers at the input, active in training only; their
  strengths are the ``augment_*`` keys of the builder).

Augmentation runs inside the model, so inference (evaluation, every strategy's scoring,
embeddings and MC passes) never sees it.

RR features (MIT-BIH, ``rr_features`` 1; :mod:`al.data_mitbih`): the last
``len(RR_FEATURE_NAMES)`` positions of the time axis of each input hold the beat's RR
features, not samples, so that the data stay one array. :func:`ecg_resnet` and
:func:`ecg_cnn` then crop the input into the beat (their usual trunk, augmentation included)
and the RR vector (a Dense layer of ``RR_BRANCH_UNITS`` ReLU units, never augmented), and
concatenate the pooled beat features with it before the dense layers. The other builders
refuse the option (:data:`RR_ARCHITECTURES`).
"""

from __future__ import annotations

from functools import lru_cache


def compile_model(model, config: dict, n_classes: int):
    """Compile with the recipe's optimizer and loss (see the module docstring)."""
    import keras
    kind = config.get("optimizer", "adam")
    if kind == "adam":
        optimizer = keras.optimizers.Adam(config["learning_rate"])
    elif kind == "adamw":
        optimizer = keras.optimizers.AdamW(config["learning_rate"], weight_decay=config.get("weight_decay", 0.0))
    else:
        raise ValueError(f"optimizer must be 'adam' or 'adamw', got {kind!r}")
    smoothing = float(config.get("label_smoothing", 0.0))
    if smoothing > 0:
        def loss(y_true, y_pred):
            targets = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), n_classes)
            return keras.losses.categorical_crossentropy(targets, y_pred, label_smoothing=smoothing)
    else:
        loss = "sparse_categorical_crossentropy"
    model.compile(optimizer=optimizer, loss=loss)
    return model


RR_ARCHITECTURES = ("ecg_resnet", "ecg_cnn")  # the builders that take RR features
RR_BRANCH_UNITS = 16


# Trailing input positions that hold a beat's RR features: len(al.data_mitbih.RR_FEATURE_NAMES)
# (a test keeps the two equal; the builders do not import the data module and its readers).
RR_FEATURE_COUNT = 7


def check_rr_features(config) -> None:
    """ValueError unless ``rr_features`` is off, or on with an architecture that takes it."""
    if config.get("rr_features") and config["architecture"] not in RR_ARCHITECTURES:
        raise ValueError(f"architecture {config['architecture']!r} takes no RR features; use one of "
                         f"{', '.join(RR_ARCHITECTURES)} with rr_features, or turn rr_features off")


def rr_input_count(config, input_shape) -> int:
    """Trailing input positions that hold RR features: 0 unless ``config["rr_features"]``.

    Raises ValueError for an input too short to hold a beat and the RR features, or not of
    shape (length, channels).
    """
    if not config.get("rr_features"):
        return 0
    n_rr = RR_FEATURE_COUNT
    if len(input_shape) != 2 or input_shape[0] <= n_rr:
        raise ValueError(f"rr_features needs inputs of shape (beat length + {n_rr}, channels), the "
                         f"beat then its {n_rr} RR features, got {tuple(input_shape)}; load the data "
                         "with rr_features too (al.data_mitbih.load_mitbih(rr_features=True)).")
    return n_rr


def _split_beat_and_rr(inputs, n_rr):
    """The beat (all but the last ``n_rr`` positions) and the flat RR vector of ``inputs``."""
    from keras import layers
    length = int(inputs.shape[1])
    beat = layers.Cropping1D((0, n_rr), name="beat")(inputs)
    rr = layers.Flatten(name="rr")(layers.Cropping1D((length - n_rr, 0), name="rr_positions")(inputs))
    return beat, rr


def _rr_branch(rr):
    from keras import layers
    return layers.Dense(RR_BRANCH_UNITS, activation="relu", name="rr_dense")(rr)


@lru_cache(maxsize=1)
def _ecg_augment_class():
    import keras

    class ECGAugment(keras.layers.Layer):
        """Random time shift, amplitude scale, baseline wander and noise of 1-D beats (training only).

        ``x`` has shape (batch, length, channels). Shift: a whole number of samples in
        [-shift, shift], zero-filled (beats are zero-padded anyway); scale: a factor in
        [1 - scale, 1 + scale]; wander: a sinusoid of amplitude up to ``wander`` with a random
        period of 1-3 beat lengths and phase; noise: Gaussian with std ``noise``.
        """

        def __init__(self, shift=0, scale=0.0, wander=0.0, noise=0.0, **kwargs):
            super().__init__(**kwargs)
            self.shift, self.scale, self.wander, self.noise = int(shift), float(scale), float(wander), float(noise)
            self.seed_generator = keras.random.SeedGenerator()

        def call(self, x, training=False):
            if not training:
                return x
            ops, rand = keras.ops, keras.random
            batch, length = ops.shape(x)[0], ops.shape(x)[1]
            if self.shift:
                pad = self.shift
                padded = ops.pad(x, [[0, 0], [pad, pad], [0, 0]])
                offsets = rand.randint((batch,), 0, 2 * pad + 1, seed=self.seed_generator)
                positions = ops.arange(length)[None, :] + offsets[:, None]
                x = ops.take_along_axis(padded, positions[:, :, None], axis=1)
            t = ops.cast(ops.arange(length), x.dtype)[None, :, None]
            if self.scale:
                x = x * rand.uniform((batch, 1, 1), 1 - self.scale, 1 + self.scale, seed=self.seed_generator)
            if self.wander:
                amplitude = rand.uniform((batch, 1, 1), 0, self.wander, seed=self.seed_generator)
                period = rand.uniform((batch, 1, 1), 1.0, 3.0, seed=self.seed_generator) * ops.cast(length, x.dtype)
                phase = rand.uniform((batch, 1, 1), 0, 6.283185307, seed=self.seed_generator)
                x = x + amplitude * ops.sin(6.283185307 * t / period + phase)
            if self.noise:
                x = x + rand.normal(ops.shape(x), stddev=self.noise, seed=self.seed_generator)
            return x

    return ECGAugment


def _image_augment_layers(config) -> list:
    from keras import layers
    shift, degrees = float(config.get("augment_shift", 0.0)), float(config.get("augment_rotation", 0.0))
    out = []
    if shift:
        out.append(layers.RandomTranslation(shift, shift, fill_mode="constant"))
    if degrees:
        out.append(layers.RandomRotation(degrees / 360.0, fill_mode="constant"))
    return out


def mnist_cnn(config, input_shape, n_classes):
    """Conv-pool blocks, a dense layer with dropout, softmax output; Adam.

    Keys: ``conv_filters`` (one Conv2D 3x3 + MaxPooling2D per entry), ``dense_units``,
    ``dropout``, ``learning_rate``.
    """
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input(shape=input_shape)])
    if config.get("augment"):
        for layer in _image_augment_layers(config):
            model.add(layer)
    for filters in config["conv_filters"]:
        model.add(layers.Conv2D(int(filters), 3, activation="relu"))
        model.add(layers.MaxPooling2D())
    model.add(layers.Flatten())
    model.add(layers.Dropout(config["dropout"]))
    model.add(layers.Dense(config["dense_units"], activation="relu"))
    model.add(layers.Dropout(config["dropout"]))
    model.add(layers.Dense(n_classes, activation="softmax"))
    return compile_model(model, config, n_classes)


def cifar_cnn(config, input_shape, n_classes):
    """A small VGG-style CNN for 32 x 32 colour images (CIFAR-10); Adam.

    Per entry of ``conv_filters`` a block of two Conv2D 3x3 (same padding), each followed by
    BatchNormalization (when ``batch_norm``) and ReLU, then MaxPooling2D; then global average
    pooling, Dropout, a Dense(``dense_units``) ReLU layer, Dropout and the softmax layer.

    Keys: ``conv_filters``, ``batch_norm``, ``dense_units``, ``dropout``, ``learning_rate``;
    recipe keys as for :func:`mnist_cnn`, and with ``augment``: ``augment_flip`` (1: random
    horizontal flips), ``augment_shift`` and ``augment_rotation`` (as :func:`mnist_cnn`).
    """
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input(shape=input_shape)])
    if config.get("augment"):
        if config.get("augment_flip"):
            model.add(layers.RandomFlip("horizontal"))
        for layer in _image_augment_layers(config):
            model.add(layer)
    for filters in config["conv_filters"]:
        for _ in range(2):
            model.add(layers.Conv2D(int(filters), 3, padding="same"))
            if config.get("batch_norm"):
                model.add(layers.BatchNormalization())
            model.add(layers.Activation("relu"))
        model.add(layers.MaxPooling2D())
    model.add(layers.GlobalAveragePooling2D())
    model.add(layers.Dropout(config["dropout"]))
    model.add(layers.Dense(int(config["dense_units"]), activation="relu"))
    model.add(layers.Dropout(config["dropout"]))
    model.add(layers.Dense(n_classes, activation="softmax"))
    return compile_model(model, config, n_classes)


def ecg_cnn(config, input_shape, n_classes):
    """Conv blocks (two Conv1D + pooling), global max pool, dense layers, softmax; Adam.

    Keys: ``conv_filters`` and ``kernel_sizes`` (one block per pair), ``batch_norm``
    (BatchNormalization after every convolution), ``bn_momentum``, ``dropout`` (after every
    block), ``dense_units`` (a list), ``learning_rate``; optional ``stem_pool`` (k > 1: a
    MaxPooling1D(k) before the first convolution, so every layer runs on a k times shorter
    signal), ``augment`` with ``augment_shift`` (samples), ``augment_scale``,
    ``augment_wander``, ``augment_noise``; ``rr_features`` (module docstring: a functional
    model whose trunk sees the beat and whose dense layers also see the RR branch).
    """
    import keras
    from keras import layers

    n_rr = rr_input_count(config, input_shape)
    model = keras.Sequential([keras.Input(shape=(input_shape[0] - n_rr, *input_shape[1:]))])
    if config.get("augment"):
        model.add(_ecg_augment_class()(config.get("augment_shift", 0), config.get("augment_scale", 0.0),
                                       config.get("augment_wander", 0.0), config.get("augment_noise", 0.0)))
    if int(config.get("stem_pool", 1)) > 1:
        model.add(layers.MaxPooling1D(int(config["stem_pool"])))
    blocks = list(zip(config["conv_filters"], config["kernel_sizes"], strict=True))
    for i, (filters, kernel) in enumerate(blocks):
        for _ in range(2):
            model.add(layers.Conv1D(int(filters), int(kernel)))
            if config["batch_norm"]:
                model.add(layers.BatchNormalization(momentum=config["bn_momentum"]))
            model.add(layers.Activation("relu"))
        model.add(layers.GlobalMaxPooling1D() if i == len(blocks) - 1 else layers.MaxPooling1D(2))
        model.add(layers.Dropout(config["dropout"]))
    if n_rr:
        inputs = keras.Input(shape=input_shape)
        h, rr = _split_beat_and_rr(inputs, n_rr)
        for layer in model.layers:  # the trunk built above, now on the beat part
            h = layer(h)
        h = layers.Concatenate()([h, _rr_branch(rr)])
        for units in config["dense_units"]:
            h = layers.Dense(int(units), activation="relu")(h)
        outputs = layers.Dense(n_classes, activation="softmax")(h)
        return compile_model(keras.Model(inputs, outputs), config, n_classes)
    for units in config["dense_units"]:
        model.add(layers.Dense(int(units), activation="relu"))
    model.add(layers.Dense(n_classes, activation="softmax"))
    return compile_model(model, config, n_classes)


def ecg_resnet(config, input_shape, n_classes):
    """Residual 1-D CNN after Kachuee et al. 2018 ("ECG heartbeat classification: a deep
    transferable representation", Fig. 2): a Conv1D(f, 5), then ``res_blocks`` residual blocks
    (Conv1D-ReLU-Conv1D, identity skip, ReLU, MaxPooling1D(5, strides 2)), then two Dense(32)
    layers and softmax. A functional model.

    Keys: ``res_filters`` (f; the paper: 32), ``res_blocks`` (the paper: 5), ``dropout``
    (before the dense layers, so that the MC-dropout strategies apply; the paper has none),
    ``learning_rate``; recipe keys as for :func:`ecg_cnn` (``augment``...); ``rr_features``
    (module docstring: the RR branch joins the flattened features before the dropout).
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape)
    n_rr = rr_input_count(config, input_shape)
    x, rr = _split_beat_and_rr(inputs, n_rr) if n_rr else (inputs, None)
    if config.get("augment"):
        x = _ecg_augment_class()(config.get("augment_shift", 0), config.get("augment_scale", 0.0),
                                 config.get("augment_wander", 0.0), config.get("augment_noise", 0.0))(x)
    filters = int(config.get("res_filters", 32))
    x = layers.Conv1D(filters, 5, padding="same")(x)
    for _ in range(int(config.get("res_blocks", 5))):
        h = layers.Conv1D(filters, 5, padding="same", activation="relu")(x)
        h = layers.Conv1D(filters, 5, padding="same")(h)
        x = layers.Activation("relu")(layers.Add()([x, h]))
        x = layers.MaxPooling1D(5, strides=2)(x)
    x = layers.Flatten()(x)
    if rr is not None:
        x = layers.Concatenate()([x, _rr_branch(rr)])
    x = layers.Dropout(config.get("dropout", 0.0))(x)
    x = layers.Dense(32, activation="relu")(x)
    x = layers.Dense(32, activation="relu")(x)
    outputs = layers.Dense(n_classes, activation="softmax")(x)
    return compile_model(keras.Model(inputs, outputs), config, n_classes)


def published_ecg_cnn(config, input_shape, n_classes):
    """The published MIT-BIH 1-D CNN: Conv1D pairs of 16, 32, 32, 256 filters (kernels 5, 3, 3,
    3), max pooling (global after the last pair), Dropout 0.1 (0.2 last), Dense 64, 64, softmax.

    Keys: ``learning_rate`` (published: 1e-3); recipe keys as for :func:`ecg_cnn`.
    """
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input(shape=input_shape)])
    if config.get("augment"):
        model.add(_ecg_augment_class()(config.get("augment_shift", 0), config.get("augment_scale", 0.0),
                                       config.get("augment_wander", 0.0), config.get("augment_noise", 0.0)))
    blocks = [(16, 5), (32, 3), (32, 3), (256, 3)]
    for i, (filters, kernel) in enumerate(blocks):
        model.add(layers.Conv1D(filters, kernel, activation="relu"))
        model.add(layers.Conv1D(filters, kernel, activation="relu"))
        last = i == len(blocks) - 1
        model.add(layers.GlobalMaxPooling1D() if last else layers.MaxPooling1D(2))
        model.add(layers.Dropout(0.2 if last else 0.1))
    model.add(layers.Dense(64, activation="relu"))
    model.add(layers.Dense(64, activation="relu"))
    model.add(layers.Dense(n_classes, activation="softmax"))
    return compile_model(model, config, n_classes)


def mlp(config, input_shape, n_classes):
    """Dense layers with dropout, softmax output; Adam. Keys: ``dense_units``, ``dropout``,
    ``learning_rate``."""
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input(shape=input_shape)])
    for units in config["dense_units"]:
        model.add(layers.Dense(int(units), activation="relu"))
        model.add(layers.Dropout(config["dropout"]))
    model.add(layers.Dense(n_classes, activation="softmax"))
    return compile_model(model, config, n_classes)


ARCHITECTURES = {"mnist_cnn": mnist_cnn, "cifar_cnn": cifar_cnn, "ecg_cnn": ecg_cnn, "ecg_resnet": ecg_resnet,
                 "published_ecg_cnn": published_ecg_cnn, "mlp": mlp}


def build(config, input_shape, n_classes):
    """The builder named by ``config["architecture"]`` (one of :data:`ARCHITECTURES`)."""
    try:
        builder = ARCHITECTURES[config["architecture"]]
    except KeyError:
        raise ValueError(f"unknown architecture {config.get('architecture')!r}; choose from "
                         f"{', '.join(ARCHITECTURES)}") from None
    check_rr_features(config)
    return builder(config, input_shape, n_classes)
