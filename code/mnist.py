"""MNIST: entropy vs random sampling with a small Keras CNN (published budget ~1400 labels).

Every UPPER_CASE constant below is a hyperparameter and a command-line option
(``python code/mnist.py --help``). Results go to ``results/mnist/<strategy>_seed<k>.json``.
The training recipe was chosen on the development split by ``code/recipe_search.py``
(README "Training recipe"); the first recipe's results are in ``results/recipe_v1/``.
"""

from al import cli, models
from al.data_common import protocol_split
from al.data_mnist import load_mnist

# --- data
DEV_SIZE = 5000        # images held out of the pool as the development split (never scored by the protocol)
EVALUATE_ON = "test"   # "test": the reported evaluation; "dev": score steps on the development
                       # split instead, to choose strategy settings (give such runs their own --results-dir)

# --- active-learning protocol
START_SIZE = 256
BATCH_SIZE = 128
N_STEPS = 9            # 256 + 9 * 128 = 1408 labels at the end ("~1400")
N_SEEDS = 10
STRATEGIES = ["random", "entropy"]
POOL_SUBSAMPLE = 0     # score only this many random pool samples per step (0 = whole pool)
# --- training (a fresh model every step, on the selected labels only)
TRAIN_STEPS = 0        # optimizer updates per training, whatever the number of labels (0: EPOCHS)
EPOCHS = 20
FIT_BATCH_SIZE = 32
LEARNING_RATE = 3e-3   # the peak of the schedule
LR_SCHEDULE = "onecycle"  # "constant", "cosine" or "onecycle" (warm-up, then cosine down)
OPTIMIZER = "adam"     # "adam" or "adamw"
WEIGHT_DECAY = 0.0     # AdamW only
LABEL_SMOOTHING = 0.1
VAL_FRACTION = 0.0     # early-stopping split, taken from the selected labels
PATIENCE = 0           # 0 = no early stopping
CLASS_WEIGHT = "none"
AUGMENT = 1            # 1: random shifts and rotations while training
AUGMENT_SHIFT = 0.08   # fraction of the image size
AUGMENT_ROTATION = 10.0  # degrees
# --- model (code/al/models.py)
ARCHITECTURE = "mnist_cnn"
CONV_FILTERS = [32, 64]
DENSE_UNITS = 128
DROPOUT = 0.25


def load_data(config, data_dir=None):
    return protocol_split(load_mnist(data_dir), config)


build_model = models.build  # the builder named by ARCHITECTURE (code/al/models.py)


if __name__ == "__main__":
    cli.main("mnist", globals(), load_data, build_model)
