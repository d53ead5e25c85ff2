"""MNIST: entropy vs random sampling with a small Keras CNN (published budget ~1400 labels).

Every UPPER_CASE constant below is a hyperparameter and a command-line option
(``python code/mnist.py --help``). Results go to ``results/mnist/<strategy>_seed<k>.json``.
"""

from al import cli, models
from al.data_mnist import load_mnist

# --- active-learning protocol
START_SIZE = 256
BATCH_SIZE = 128
N_STEPS = 9            # 256 + 9 * 128 = 1408 labels at the end ("~1400")
N_SEEDS = 10
STRATEGIES = ["random", "entropy"]
POOL_SUBSAMPLE = 0     # score only this many random pool samples per step (0 = whole pool)
# --- training (a fresh model every step, on the selected labels only)
EPOCHS = 20
FIT_BATCH_SIZE = 32
LEARNING_RATE = 1e-3
VAL_FRACTION = 0.0     # early-stopping split, taken from the selected labels
PATIENCE = 0           # 0 = no early stopping
CLASS_WEIGHT = "none"
# --- model
CONV_FILTERS = [32, 64]
DENSE_UNITS = 128
DROPOUT = 0.25


def load_data(config, data_dir=None):
    return load_mnist(data_dir)


build_model = models.mnist_cnn  # conv-pool blocks, dense + dropout, softmax; Adam (code/al/models.py)


if __name__ == "__main__":
    cli.main("mnist", globals(), load_data, build_model)
