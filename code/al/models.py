"""Model builders of the dataset scripts and of ``annotate.py``.

Every builder has the signature ``build(config, input_shape, n_classes)`` and returns a
compiled Keras model ending in a Dense softmax layer (what every strategy needs). ``config``
holds the script's hyperparameters; each builder reads only its own keys (listed in its
docstring).
"""

from __future__ import annotations


def _adam(config):
    import keras
    return keras.optimizers.Adam(config["learning_rate"])


def mnist_cnn(config, input_shape, n_classes):
    """Conv-pool blocks, a dense layer with dropout, softmax output; Adam.

    Keys: ``conv_filters`` (one Conv2D 3x3 + MaxPooling2D per entry), ``dense_units``,
    ``dropout``, ``learning_rate``.
    """
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input(shape=input_shape)])
    for filters in config["conv_filters"]:
        model.add(layers.Conv2D(int(filters), 3, activation="relu"))
        model.add(layers.MaxPooling2D())
    model.add(layers.Flatten())
    model.add(layers.Dropout(config["dropout"]))
    model.add(layers.Dense(config["dense_units"], activation="relu"))
    model.add(layers.Dropout(config["dropout"]))
    model.add(layers.Dense(n_classes, activation="softmax"))
    model.compile(optimizer=_adam(config), loss="sparse_categorical_crossentropy")
    return model


def ecg_cnn(config, input_shape, n_classes):
    """Conv blocks (two Conv1D + pooling), global max pool, dense layers, softmax; Adam.

    Keys: ``conv_filters`` and ``kernel_sizes`` (one block per pair), ``batch_norm``
    (BatchNormalization after every convolution), ``bn_momentum``, ``dropout`` (after every
    block), ``dense_units`` (a list), ``learning_rate``.
    """
    import keras
    from keras import layers

    model = keras.Sequential([keras.Input(shape=input_shape)])
    blocks = list(zip(config["conv_filters"], config["kernel_sizes"], strict=True))
    for i, (filters, kernel) in enumerate(blocks):
        for _ in range(2):
            model.add(layers.Conv1D(int(filters), int(kernel)))
            if config["batch_norm"]:
                model.add(layers.BatchNormalization(momentum=config["bn_momentum"]))
            model.add(layers.Activation("relu"))
        model.add(layers.GlobalMaxPooling1D() if i == len(blocks) - 1 else layers.MaxPooling1D(2))
        model.add(layers.Dropout(config["dropout"]))
    for units in config["dense_units"]:
        model.add(layers.Dense(int(units), activation="relu"))
    model.add(layers.Dense(n_classes, activation="softmax"))
    model.compile(optimizer=_adam(config), loss="sparse_categorical_crossentropy")
    return model


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
    model.compile(optimizer=_adam(config), loss="sparse_categorical_crossentropy")
    return model
