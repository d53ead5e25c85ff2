"""Training recipe: model builders, augmentation, schedules, fixed update counts, dev split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from al import loop, models
from al.data_common import hold_out_dev, protocol_split
from al.keras_ops import embed_and_predict, mc_predict_proba, predict_proba
from al.strategies import get_strategy

ECG = {"conv_filters": [4, 4], "kernel_sizes": [3, 3], "dense_units": [8], "dropout": 0.1, "batch_norm": 1,
       "bn_momentum": 0.9, "learning_rate": 1e-3}
AUGMENT = {"augment": 1, "augment_shift": 3, "augment_scale": 0.2, "augment_wander": 0.1, "augment_noise": 0.05}


def beats(n=32, length=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, length, 1)).astype(np.float32), rng.integers(0, 3, n)


def test_ecg_augmentation_changes_training_inputs_only():
    import keras
    layer = models._ecg_augment_class()(3, 0.2, 0.1, 0.05)
    x, _ = beats()
    assert np.array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    augmented = keras.ops.convert_to_numpy(layer(x, training=True))
    assert augmented.shape == x.shape and not np.allclose(augmented, x)


def test_ecg_shift_moves_a_beat_by_whole_samples_with_zero_fill():
    import keras
    layer = models._ecg_augment_class()(shift=2)
    x = np.zeros((64, 10, 1), np.float32)
    x[:, 5, 0] = 1.0
    out = keras.ops.convert_to_numpy(layer(x, training=True))[..., 0]
    peaks = out.argmax(axis=1)
    assert set(peaks) <= {3, 4, 5, 6, 7} and len(set(peaks)) > 1
    assert np.allclose(out.sum(axis=1), 1.0)


def test_augmented_model_predicts_as_the_same_weights_without_augmentation():
    import keras
    x, _ = beats()
    keras.utils.set_random_seed(0)
    plain = models.ecg_cnn(ECG, x.shape[1:], 3)
    keras.utils.set_random_seed(0)
    augmented = models.ecg_cnn({**ECG, **AUGMENT}, x.shape[1:], 3)
    augmented.set_weights(plain.get_weights())  # the augmentation layer has no weights
    assert np.allclose(predict_proba(plain, x), predict_proba(augmented, x), atol=1e-6)


@pytest.mark.parametrize("architecture", ["ecg_cnn", "ecg_resnet", "published_ecg_cnn"])
def test_every_ecg_architecture_serves_every_model_strategy(architecture):
    x, y = beats(n=48, length=100)
    config = {**ECG, "architecture": architecture, "res_filters": 4, "res_blocks": 2}
    model = models.build(config, x.shape[1:], 3)
    model.fit(x, y, epochs=1, verbose=0)
    h, probs = embed_and_predict(model, x)
    assert h.ndim == 2 and probs.shape == (48, 3)
    assert mc_predict_proba(model, x, 3, np.random.default_rng(0)).shape == (3, 48, 3)
    for name in ("entropy", "coreset", "badge", "bald"):
        picked = get_strategy(name).select(model, x[8:], 4, np.random.default_rng(1), x[:8])
        assert len(set(picked.tolist())) == 4


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ValueError, match="ecg_resnet"):
        models.build({"architecture": "nope"}, (4,), 2)


def test_label_smoothing_and_adamw_compile_and_train():
    x, y = beats()
    model = models.ecg_cnn({**ECG, "label_smoothing": 0.1, "optimizer": "adamw", "weight_decay": 1e-3},
                           x.shape[1:], 3)
    history = model.fit(x, y, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert type(model.optimizer).__name__ == "AdamW"


def test_label_smoothing_raises_the_loss_of_a_confident_correct_prediction():
    import keras
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    plain = models.compile_model(keras.models.clone_model(model), {"learning_rate": 1e-3}, 2)
    smooth = models.compile_model(keras.models.clone_model(model), {"learning_rate": 1e-3, "label_smoothing": 0.2}, 2)
    y_pred = np.array([[0.99, 0.01]], np.float32)
    y_true = np.array([0])
    smoothed = np.mean(keras.ops.convert_to_numpy(smooth.loss(y_true, y_pred)))
    hard = np.mean(keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(y_true, y_pred)))
    assert smoothed > hard + 0.1
    assert plain.loss == "sparse_categorical_crossentropy"


def test_fit_plan_defaults_to_epochs_and_fixes_the_update_count_with_train_steps():
    config = {"epochs": 20, "fit_batch_size": 64}
    assert loop.fit_plan(config, 256) == (1, 20)
    for n in (256, 1000, 2944):
        repeats, epochs = loop.fit_plan({**config, "train_steps": 1000}, n)
        assert n * repeats >= loop.MIN_EPOCH_SAMPLES
        updates = epochs * math.ceil(n * repeats / 64)
        assert abs(updates - 1000) <= math.ceil(n * repeats / 64) / 2 + 1


@pytest.mark.parametrize("kind", ["cosine", "onecycle"])
def test_learning_rate_schedule_sets_the_rate_every_batch(kind):
    import keras
    x, y = beats()
    model = models.ecg_cnn(ECG, x.shape[1:], 3)
    callback = loop.learning_rate_callback({"learning_rate": 1e-2, "lr_schedule": kind}, total_steps=8)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(self.model.optimizer.learning_rate))

    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback, Record()])
    assert len(seen) == 8 and len(set(seen)) > 4
    assert max(seen) <= 1e-2 + 1e-9 and seen[-1] < 1e-2 / 2
    if kind == "onecycle":
        assert seen[0] < seen[2]  # warm-up first


def test_constant_schedule_adds_no_callback():
    assert loop.learning_rate_callback({"learning_rate": 1e-3}, 10) is None


def test_sqrt_class_weights_are_the_root_of_balanced():
    y = np.array([0] * 90 + [1] * 10)
    balanced = loop.class_weights(y, 2, "balanced")
    root = loop.class_weights(y, 2, "sqrt")
    assert root == pytest.approx({c: math.sqrt(w) for c, w in balanced.items()})


def test_check_config_rejects_an_unknown_schedule(loop_config):
    with pytest.raises(ValueError, match="lr_schedule"):
        loop.check_config({**loop_config, "lr_schedule": "linear"})


def test_train_steps_trains_the_same_number_of_updates_at_any_budget(synthetic_dataset, build_model, loop_config):
    import keras
    counts = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            counts[-1] += 1

    config = {**loop_config, "train_steps": 120, "fit_batch_size": 16}
    for n in (20, 200):
        counts.append(0)
        repeats, epochs = loop.fit_plan(config, n)
        x = np.tile(synthetic_dataset.x_train[:n], (repeats, 1))
        model = build_model(config, x.shape[1:], 3)
        model.fit(x, np.tile(synthetic_dataset.y_train[:n], repeats), epochs=epochs, batch_size=16, verbose=0,
                  callbacks=[Count()])
    assert all(abs(c - 120) <= 64 for c in counts)


def test_hold_out_dev_is_stratified_seeded_and_disjoint(synthetic_dataset):
    pool, (x_dev, y_dev) = hold_out_dev(synthetic_dataset, 60, seed=0)
    again, (x_dev2, _) = hold_out_dev(synthetic_dataset, 60, seed=0)
    assert len(y_dev) == 60 and len(pool.y_train) == len(synthetic_dataset.y_train) - 60
    assert np.array_equal(x_dev, x_dev2)
    rows = {r.tobytes() for r in pool.x_train}
    assert not any(r.tobytes() in rows for r in x_dev)
    assert np.array_equal(pool.x_test, synthetic_dataset.x_test)
    assert sorted(np.bincount(y_dev).tolist()) == [20, 20, 20]
    assert pool.sha256 != synthetic_dataset.sha256 and "development split" in pool.origin


def test_hold_out_dev_of_zero_is_the_identity_and_too_large_is_refused(synthetic_dataset):
    assert hold_out_dev(synthetic_dataset, 0)[0] is synthetic_dataset
    with pytest.raises(ValueError, match="dev_size"):
        hold_out_dev(synthetic_dataset, len(synthetic_dataset.y_train))


def test_protocol_split_scores_on_the_test_set_unless_told_to_use_the_development_split(synthetic_dataset):
    config = {"dev_size": 60}
    pool, (x_dev, y_dev) = hold_out_dev(synthetic_dataset, 60)
    on_test = protocol_split(synthetic_dataset, config)
    assert np.array_equal(on_test.x_train, pool.x_train) and np.array_equal(on_test.x_test, synthetic_dataset.x_test)
    assert protocol_split(synthetic_dataset, {**config, "evaluate_on": "test"}).sha256 == on_test.sha256
    on_dev = protocol_split(synthetic_dataset, {**config, "evaluate_on": "dev"})
    assert np.array_equal(on_dev.x_train, pool.x_train)
    assert np.array_equal(on_dev.x_test, x_dev) and np.array_equal(on_dev.y_test, y_dev)
    # the swap is in the provenance: dev-scored runs cannot share a folder with test-scored ones
    assert on_dev.sha256 != on_test.sha256 and "development split, not the test set" in on_dev.origin


def test_protocol_split_refuses_an_unknown_evaluation_set_or_a_missing_development_split(synthetic_dataset):
    with pytest.raises(ValueError, match="evaluate-on must be one of"):
        protocol_split(synthetic_dataset, {"dev_size": 60, "evaluate_on": "train"})
    with pytest.raises(ValueError, match="--dev-size N with N > 0"):
        protocol_split(synthetic_dataset, {"dev_size": 0, "evaluate_on": "dev"})
