"""al.keras_ops: TensorFlow set-up, predictions, MC-dropout passes and embeddings of real tiny models.

Sequential models run layer by layer; functional models (two inputs here) through a sub-model,
and for MC dropout either their trunk once and the chain after the first Dropout (a model that
ends in such a chain, ``al.keras_ops.dropout_chain``) or a clone with sampled Dropout. All must
give what the layers compute by hand, and the two MC paths the same probabilities.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import itertools
import os
import sys

import numpy as np
import pytest

from al import keras_ops, strategies
from al.keras_ops import (embed_and_predict, last_layer_is_softmax, mc_predict_proba, n_samples,
                          predict_proba, take)
from conftest import N_FEATURES, feature_pool, tiny_sequential


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- TensorFlow set-up
# What TensorFlow 2.21 prints on stderr when imported (twice per process), before its log level applies.
BANNER = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    ("I0000 00:00:1796178319.311948   14616 port.cc:153] oneDNN custom operations are on. You may see "
     "slightly different numerical results due to floating-point round-off errors from different "
     "computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`."),
    ("I0000 00:00:1796178319.312372   14616 cudart_stub.cc:31] Could not find cuda drivers on your "
     "machine, GPU will not be used."),
    ("I0000 00:00:1796178319.371387   14616 cpu_feature_guard.cc:227] This TensorFlow binary is optimized "
     "to use available CPU instructions in performance-critical operations."),
    ("To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow "
     "with the appropriate compiler flags."),
    "W0000 00:00:1796178319.400000   14616 gpu_device.cc:2344] Cannot dlopen some GPU libraries.",
]
# What must still reach the user: errors and tracebacks.
KEPT = [
    ("E0000 00:00:1796178319.500000   14616 cuda_dnn.cc:8310] Unable to register cuDNN factory: "
     "Attempting to register factory for plugin cuDNN when one has already been registered"),
    "Traceback (most recent call last):",
    '  File "<string>", line 1, in <module>',
    "ImportError: libcudart.so.12: cannot open shared object file: No such file or directory",
    "WARNING:tensorflow:something Python-level",
]


@pytest.mark.parametrize("line", BANNER)
def test_banner_filter_drops_the_start_up_banner(line):
    assert keras_ops._BANNER.match(line)


@pytest.mark.parametrize("line", KEPT)
def test_banner_filter_keeps_errors_and_tracebacks(line):
    assert not keras_ops._BANNER.match(line)


class FakeTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A module ``tensorflow`` whose import writes ``lines`` to file descriptor 2, as TF's C++ does."""

    def __init__(self, lines, fail=False):
        self.lines, self.fail = lines, fail

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "tensorflow" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        os.write(2, ("\n".join(self.lines) + "\n").encode())
        if self.fail:
            raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")
        module.is_fake = True


def test_import_tensorflow_replays_stderr_without_the_banner(monkeypatch, capfd):
    lines = BANNER[:3] + KEPT[:1] + BANNER[3:] + KEPT[1:] + [""]
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.setattr(sys, "meta_path", [FakeTensorFlow(lines), *sys.meta_path])
    capfd.readouterr()
    tf = keras_ops.import_tensorflow()
    assert tf.is_fake
    assert capfd.readouterr().err.splitlines() == KEPT


def test_import_tensorflow_that_fails_still_shows_its_errors(monkeypatch, capfd):
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.setattr(sys, "meta_path", [FakeTensorFlow(BANNER + KEPT, fail=True), *sys.meta_path])
    capfd.readouterr()
    with pytest.raises(ImportError, match="libtensorflow_framework"):
        keras_ops.import_tensorflow()
    assert capfd.readouterr().err.splitlines() == KEPT
    assert "tensorflow" not in sys.modules or not getattr(sys.modules["tensorflow"], "is_fake", False)


def test_import_tensorflow_returns_the_module_already_imported():
    import tensorflow as tf
    assert keras_ops.import_tensorflow() is tf


def test_configure_tensorflow_fixes_the_thread_count_of_the_process():
    # conftest configured this session with 1 thread.
    tf = keras_ops.import_tensorflow()
    assert keras_ops.configure_tensorflow(1) == 1
    with pytest.raises(RuntimeError, match=r"already runs with 1 thread.*asking for 2"):
        keras_ops.configure_tensorflow(2)
    assert keras_ops.configure_tensorflow(1) == 1  # the refused request changed nothing
    assert tf.config.threading.get_intra_op_parallelism_threads() == 1


@pytest.mark.parametrize("threads", [0, -2])
def test_configure_tensorflow_rejects_fewer_than_one_thread(threads):
    with pytest.raises(ValueError, match="at least 1"):
        keras_ops.configure_tensorflow(threads)


def test_gpu_available_is_a_bool():
    assert isinstance(keras_ops.gpu_available(), bool)


# --------------------------------------------------------------------------- inputs
def test_n_samples_and_take_handle_one_array_and_a_list_of_arrays():
    a, b = np.arange(10).reshape(5, 2), np.arange(15).reshape(5, 3)
    assert n_samples(a) == 5 and n_samples([a, b]) == 5
    assert np.array_equal(take(a, 1, 3), a[1:3])
    parts = take([a, b], 1, 3)
    assert isinstance(parts, list) and len(parts) == 2
    assert np.array_equal(parts[0], a[1:3]) and np.array_equal(parts[1], b[1:3])


# --------------------------------------------------------------------------- Sequential: predictions
def test_predict_proba_of_an_empty_pool_has_the_model_output_width(real_model, monkeypatch):
    monkeypatch.setattr(real_model, "predict", lambda *a, **k: pytest.fail("predict called on nothing"))
    probs = predict_proba(real_model, feature_pool(0))
    assert probs.shape == (0, 4)


def test_predict_proba_is_float64_and_matches_model_predict(real_model):
    x = feature_pool(9)
    probs = predict_proba(real_model, x, batch_size=4)
    assert probs.dtype == np.float64 and probs.shape == (9, 4)
    np.testing.assert_allclose(probs, real_model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)


def test_last_layer_is_softmax(real_model):
    import keras
    assert last_layer_is_softmax(real_model)
    assert not last_layer_is_softmax(keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)]))


# --------------------------------------------------------------------------- Sequential: MC passes
def test_mc_predict_proba_has_passes_by_samples_by_classes_and_valid_rows(real_model):
    mc = mc_predict_proba(real_model, feature_pool(11), 4, np.random.default_rng(0), batch_size=8)
    assert mc.shape == (4, 11, 4) and mc.dtype == np.float64
    np.testing.assert_allclose(mc.sum(axis=2), 1.0, atol=1e-5)


def test_mc_passes_differ_and_are_reproducible_from_the_rng(real_model):
    x = feature_pool(20)
    a = mc_predict_proba(real_model, x, 5, np.random.default_rng(7))
    b = mc_predict_proba(real_model, x, 5, np.random.default_rng(7))
    c = mc_predict_proba(real_model, x, 5, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.allclose(a[0], a[1])  # different masks per pass
    assert not np.allclose(a, c)        # masks come from the rng


@pytest.mark.parametrize("passes", [0, -1])
def test_mc_predict_proba_rejects_fewer_than_one_pass(real_model, passes):
    with pytest.raises(ValueError, match="mc_passes"):
        mc_predict_proba(real_model, feature_pool(5), passes, np.random.default_rng(0))


@pytest.mark.parametrize("rate", [None, 0.0])
def test_mc_predict_proba_rejects_a_model_without_dropout(rate):
    import keras
    hidden = [keras.layers.Dense(8, activation="relu")]
    if rate is not None:
        hidden.append(keras.layers.Dropout(rate))
    with pytest.raises(ValueError, match="needs a model with a Dropout layer"):
        mc_predict_proba(tiny_sequential(*hidden), feature_pool(5), 3, np.random.default_rng(0))


def conv_model_with_dropout_between_blocks():
    """Conv1D -> BN -> ReLU -> Dropout -> Conv1D -> pool -> Dropout -> Dense: a small MIT-BIH net."""
    import keras
    from keras import layers
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input(shape=(24, 1)), layers.Conv1D(4, 3), layers.BatchNormalization(),
        layers.Activation("relu"), layers.Dropout(0.3), layers.Conv1D(6, 3),
        layers.GlobalMaxPooling1D(), layers.Dropout(0.3), layers.Dense(8, activation="relu"),
        layers.Dense(3, activation="softmax")])


@pytest.mark.parametrize("batch_size", [40, 8192])
@pytest.mark.parametrize("kind", ["dense", "conv", "two_inputs"])
def test_graph_mc_passes_equal_eager_passes(real_model, two_input_model, kind, batch_size):
    """Graph mode is only a speed-up: the same seed gives the same masks (several Dropout
    layers, several pool batches: the seed state advances as in eager mode), so the same
    probabilities up to float32 rounding."""
    if kind == "conv":
        model = conv_model_with_dropout_between_blocks()
        x = np.random.default_rng(0).normal(size=(30, 24, 1)).astype(np.float32)
    elif kind == "dense":
        model, x = real_model, feature_pool(30)
    else:
        model, x = two_input_model, two_inputs(30)
    graph = mc_predict_proba(model, x, 4, np.random.default_rng(3), batch_size=batch_size)
    eager = mc_predict_proba(model, x, 4, np.random.default_rng(3), batch_size=batch_size, graph=False)
    np.testing.assert_allclose(graph, eager, rtol=1e-6, atol=1e-7)
    other = mc_predict_proba(model, x, 4, np.random.default_rng(4), batch_size=batch_size)
    assert not np.allclose(graph, other)  # the comparison can tell masks apart


def test_graph_passes_are_a_tensorflow_function_on_the_tensorflow_backend():
    import keras
    import tensorflow as tf
    if keras.backend.backend() != "tensorflow":
        pytest.skip("graph functions are TensorFlow-only; other backends run eagerly")
    assert isinstance(keras_ops._compiled(lambda v: v), tf.types.experimental.PolymorphicFunction)


@pytest.mark.parametrize("dropout_first", [False, True], ids=["dropout_after", "dropout_before"])
def test_mc_passes_sample_dropout_but_keep_noise_and_batch_norm_in_inference_mode(dropout_first):
    """GaussianNoise -> BN(1 unit) and Dropout(0.5), in either order, -> Dense: each pass is the
    inference-mode output with the unit kept (scaled by 2) or dropped. Training-mode BN would
    normalize with the batch statistics, training-mode GaussianNoise add noise; the layers
    before the first Dropout and after it run differently, so both orders are checked."""
    import keras
    noise_bn = [keras.layers.GaussianNoise(1.0), keras.layers.BatchNormalization()]
    dropout = [keras.layers.Dropout(0.5)]
    model = tiny_sequential(*(dropout + noise_bn if dropout_first else noise_bn + dropout),
                            n_inputs=1, n_classes=2)
    bn, dense = noise_bn[1], model.layers[-1]
    bn.moving_mean.assign([10.0])
    bn.moving_variance.assign([4.0 - bn.epsilon])
    dense.kernel.assign([[1.0, -1.0]])
    dense.bias.assign([0.0, 0.0])
    x = np.array([[8.0], [11.0], [14.0], [9.0]], dtype=np.float32)
    mc = mc_predict_proba(model, x, 20, np.random.default_rng(0))

    def softmax_of(z):
        return softmax(np.stack([z, -z], axis=-1))

    if dropout_first:  # BN((2x or 0) - 10) / 2
        kept, dropped = softmax_of((2 * x[:, 0] - 10.0) / 2.0), softmax_of(np.full(len(x), -5.0))
    else:              # 2 BN(x) or 0
        kept, dropped = softmax_of(2 * (x[:, 0] - 10.0) / 2.0), softmax_of(np.zeros(len(x)))
    is_kept = np.isclose(mc, kept[None], atol=1e-5).all(axis=2)
    is_dropped = np.isclose(mc, dropped[None], atol=1e-5).all(axis=2)
    assert np.all(is_kept | is_dropped)
    assert is_kept.any() and is_dropped.any()


# --------------------------------------------------------------------------- Sequential: embeddings
def test_embeddings_are_the_input_of_the_last_dense_layer_and_probs_match_predict(real_model):
    import keras
    x = feature_pool(30)
    h, probs = embed_and_predict(real_model, x, batch_size=7)
    penultimate = keras.Model(real_model.inputs, real_model.layers[-2].output)
    np.testing.assert_allclose(h, penultimate.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs, predict_proba(real_model, x), rtol=1e-5, atol=1e-6)
    assert h.shape == (30, 8) and h.dtype == np.float32 and probs.dtype == np.float64


def test_embeddings_of_an_empty_pool_have_the_right_widths(real_model):
    h, probs = embed_and_predict(real_model, feature_pool(0))
    assert h.shape == (0, 8) and probs.shape == (0, 4)


def test_embeddings_reject_a_last_layer_that_is_not_dense():
    import keras
    model = keras.Sequential([keras.Input(shape=(N_FEATURES,)), keras.layers.Dense(4),
                              keras.layers.Activation("softmax")])
    with pytest.raises(ValueError, match="last layer is Dense"):
        embed_and_predict(model, feature_pool(5))


def test_embeddings_reject_an_input_of_the_last_layer_that_is_not_flat():
    import keras
    model = keras.Sequential([keras.Input(shape=(4, 2)), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(ValueError, match="flat input"):
        embed_and_predict(model, np.zeros((5, 4, 2), np.float32))


# --------------------------------------------------------------------------- functional, two inputs
RATE, HIDDEN = 0.5, 5


def two_inputs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, 4)).astype(np.float32), rng.normal(size=(n, 2)).astype(np.float32)]


@pytest.fixture(scope="module")
def two_input_model():
    """Inputs (4,) and (2,) -> Concatenate -> GaussianNoise -> Dense relu -> Dropout -> Dense softmax.

    GaussianNoise is the identity at inference: only the Dropout layer may sample.
    """
    import keras
    keras.utils.set_random_seed(1)
    a, b = keras.Input((4,)), keras.Input((2,))
    z = keras.layers.Concatenate()([a, b])
    z = keras.layers.GaussianNoise(1.0)(z)
    z = keras.layers.Dense(HIDDEN, activation="relu")(z)
    z = keras.layers.Dropout(RATE)(z)
    return keras.Model([a, b], keras.layers.Dense(3, activation="softmax")(z))


def hand_hidden(model, x) -> np.ndarray:
    """The input of the last layer, from the weights: relu(concat(a, b) @ W1 + b1)."""
    import keras
    first, _ = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    w, b = first.get_weights()
    return np.maximum(np.concatenate(x, axis=1).astype(np.float64) @ w + b, 0.0)


def hand_output(model, h) -> np.ndarray:
    w, b = model.layers[-1].get_weights()
    return softmax(h @ w + b)


def test_two_input_predict_proba_matches_the_layers_by_hand(two_input_model):
    x = two_inputs(13)
    probs = predict_proba(two_input_model, x, batch_size=4)
    assert probs.shape == (13, 3) and probs.dtype == np.float64
    np.testing.assert_allclose(probs, hand_output(two_input_model, hand_hidden(two_input_model, x)),
                               rtol=1e-5, atol=1e-6)


def test_two_input_embeddings_are_the_input_of_the_last_layer(two_input_model):
    x = two_inputs(13)
    h, probs = embed_and_predict(two_input_model, x, batch_size=5)
    assert h.shape == (13, HIDDEN) and h.dtype == np.float32
    np.testing.assert_allclose(h, hand_hidden(two_input_model, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs, predict_proba(two_input_model, x), rtol=1e-5, atol=1e-6)


def test_two_input_mc_passes_sample_only_the_dropout_layer(two_input_model):
    x = two_inputs(12)
    mc = mc_predict_proba(two_input_model, x, 6, np.random.default_rng(0), batch_size=18)  # 3 batches
    assert mc.shape == (6, 12, 3) and mc.dtype == np.float64
    assert not np.allclose(mc[0], mc[1])  # passes differ
    # Every pass of every sample is the output for one of the 2^HIDDEN dropout masks (kept units
    # scaled by 1 / (1 - rate)), with the other layers in inference mode.
    h = hand_hidden(two_input_model, x)
    masks = np.array(list(itertools.product([0.0, 1.0 / (1 - RATE)], repeat=HIDDEN)))
    candidates = hand_output(two_input_model, masks[:, None, :] * h[None])   # (masks, n, K)
    gap = np.abs(mc[:, None] - candidates[None]).max(axis=3).min(axis=1)     # (T, n)
    assert gap.max() < 1e-5
    again = mc_predict_proba(two_input_model, x, 6, np.random.default_rng(0), batch_size=18)
    assert np.array_equal(mc, again)
    other = mc_predict_proba(two_input_model, x, 6, np.random.default_rng(1), batch_size=18)
    assert not np.allclose(mc, other)


@pytest.mark.parametrize("name", sorted(strategies.STRATEGIES))
def test_every_strategy_selects_on_a_two_input_model(two_input_model, name):
    positions = np.asarray(strategies.get_strategy(name).select(
        two_input_model, two_inputs(25), 6, np.random.default_rng(0), two_inputs(5, seed=1)))
    assert positions.shape == (6,) and len(np.unique(positions)) == 6
    assert positions.min() >= 0 and positions.max() < 25


def test_two_input_coreset_is_k_center_greedy_on_the_embeddings(two_input_model):
    x, labeled = two_inputs(25), two_inputs(5, seed=1)
    positions = strategies.get_strategy("coreset").select(two_input_model, x, 6, np.random.default_rng(0),
                                                          labeled)
    pool_emb, labeled_emb = hand_hidden(two_input_model, x), hand_hidden(two_input_model, labeled)
    expected = strategies.k_center_greedy(pool_emb, labeled_emb, 6, np.random.default_rng(0))
    assert list(positions) == list(expected)


def test_two_input_badge_is_kmeans_pp_on_the_gradient_embeddings(two_input_model):
    x = two_inputs(25)
    positions = strategies.get_strategy("badge").select(two_input_model, x, 6, np.random.default_rng(2),
                                                        two_inputs(5, seed=1))
    h = hand_hidden(two_input_model, x)
    seed = int(np.random.default_rng(2).integers(2 ** 31 - 1))
    centers = strategies.kmeans_pp_outer(strategies.gradient_residuals(hand_output(two_input_model, h)),
                                         h, 6, random_state=seed)
    assert list(positions) == list(centers)


def test_two_input_bald_is_the_top_bald_scores_of_its_passes(two_input_model):
    x = two_inputs(25)
    positions = strategies.get_strategy("bald").select(two_input_model, x, 6, np.random.default_rng(3),
                                                       two_inputs(5, seed=1))
    mc = mc_predict_proba(two_input_model, x, strategies.MC_PASSES, np.random.default_rng(3))
    assert list(positions) == list(strategies.top_k_positions(strategies.bald_scores(mc), 6))


# --------------------------------------------------------------------------- functional models ending in a chain
def small_resnet(rr_features=0):
    """code/mitbih.py's ``ecg_resnet``, narrowed: a conv trunk, then Dropout and the dense layers."""
    from al import models
    import keras
    keras.utils.set_random_seed(2)
    config = {"res_filters": 4, "res_blocks": 2, "dropout": 0.3, "learning_rate": 1e-3, "rr_features": rr_features}
    return models.ecg_resnet(config, (40 + 7 * rr_features, 1), 3)


def skip_past_dropout_model():
    """Dense -> Dropout, then the Dropout's output joined with its own input: no plain chain."""
    import keras
    keras.utils.set_random_seed(3)
    a = keras.Input((4,))
    h = keras.layers.Dense(6, activation="relu")(a)
    z = keras.layers.Dropout(0.4)(h)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Concatenate()([z, h]))
    return keras.Model(a, out)


@pytest.mark.parametrize("rr_features", [0, 1])
def test_dropout_chain_splits_the_residual_net_before_its_dropout(rr_features):
    import keras
    model = small_resnet(rr_features)
    trunk, head = keras_ops.dropout_chain(model)
    assert isinstance(head[0], keras.layers.Dropout) and head[-1] is model.layers[-1]
    assert [type(layer).__name__ for layer in head] == ["Dropout", "Dense", "Dense", "Dense"]
    x = np.random.default_rng(0).normal(size=(5, *model.input_shape[1:])).astype(np.float32)
    h = keras.ops.convert_to_numpy(trunk(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras_ops._forward(head, h)), predict_proba(model, x),
                               rtol=1e-5, atol=1e-6)  # trunk, then head in inference mode: the model


def test_dropout_chain_is_none_when_a_branch_joins_after_the_dropout(two_input_model):
    assert keras_ops.dropout_chain(skip_past_dropout_model()) is None
    assert keras_ops.dropout_chain(two_input_model) is not None  # its Dropout is followed by a chain


@pytest.mark.parametrize("make", [lambda: small_resnet(1), skip_past_dropout_model], ids=["chain", "no_chain"])
def test_functional_mc_passes_equal_the_sampled_clones_passes(make):
    """Running the trunk once and the chain on tiled copies is a speed-up only: the same seed
    draws the same masks as the clone fed tiled inputs, so the same probabilities."""
    import keras
    model = make()
    x = np.random.default_rng(1).normal(size=(30, *model.input_shape[1:])).astype(np.float32)
    mc = mc_predict_proba(model, x, 4, np.random.default_rng(5), batch_size=40)  # 3 pool batches
    seed = keras.random.SeedGenerator(int(np.random.default_rng(5).integers(2 ** 31 - 1)))
    cloned = keras_ops._compiled(keras_ops._cloned_mc_passes(model, 4, seed, "test"))
    expected = np.concatenate([keras.ops.convert_to_numpy(cloned(x[i:i + 10])).reshape(4, -1, 3)
                               for i in range(0, 30, 10)], axis=1)
    np.testing.assert_allclose(mc, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(mc[0], mc[1])  # the passes differ: the masks were sampled


def test_mc_passes_of_a_model_ending_in_a_chain_run_its_trunk_once_not_a_clone(monkeypatch):
    model = small_resnet(0)
    monkeypatch.setattr(keras_ops, "_cloned_mc_passes", lambda *args: pytest.fail("the clone ran"))
    x = np.random.default_rng(1).normal(size=(6, *model.input_shape[1:])).astype(np.float32)
    assert mc_predict_proba(model, x, 3, np.random.default_rng(0)).shape == (3, 6, 3)


def test_dropout_chain_is_none_for_a_model_with_two_outputs():
    import keras
    keras.utils.set_random_seed(4)
    a = keras.Input((4,))
    h = keras.layers.Dense(6, activation="relu")(a)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Dropout(0.4)(h))
    assert keras_ops.dropout_chain(keras.Model(a, [out, h])) is None
