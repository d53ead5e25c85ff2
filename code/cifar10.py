"""CIFAR-10: active learning on a low budget with a small Keras CNN (256 + 10 x 128 = 1536 labels).

For users who have the data (the standard ``cifar-10-batches-py`` folder, see
``al/data_cifar10.py``; Keras downloads it when nothing is found and the internet is there).
Every UPPER_CASE constant below is a hyperparameter and a command-line option
(``python code/cifar10.py --help``). Results go to ``results/cifar10/<strategy>_seed<k>.json``.
The training recipe is a first guess, not tuned on the development split.
"""

from al import cli, models
from al.data_cifar10 import load_cifar10
from al.data_common import protocol_split

# --- data
DEV_SIZE = 5000        # images held out of the pool as the development split (never scored by the protocol)
EVALUATE_ON = "test"   # "test": the reported evaluation; "dev": score steps on the development
                       # split instead, to choose strategy settings (give such runs their own --results-dir)

# --- active-learning protocol
START_SIZE = 256
BATCH_SIZE = 128
N_STEPS = 10           # 256 + 10 * 128 = 1536 labels at the end
N_SEEDS = 10
STRATEGIES = ["random", "entropy", "typiclust"]
POOL_SUBSAMPLE = 0     # score only this many random pool samples per step (0 = whole pool)
# --- training (a fresh model every step, on the selected labels only)
TRAIN_STEPS = 0        # optimizer updates per training, whatever the number of labels (0: EPOCHS)
EPOCHS = 30
FIT_BATCH_SIZE = 32
LEARNING_RATE = 3e-3   # the peak of the schedule
LR_SCHEDULE = "onecycle"  # "constant", "cosine" or "onecycle" (warm-up, then cosine down)
OPTIMIZER = "adam"     # "adam" or "adamw"
WEIGHT_DECAY = 0.0     # AdamW only
LABEL_SMOOTHING = 0.1
VAL_FRACTION = 0.0     # early-stopping split, taken from the selected labels
PATIENCE = 0           # 0 = no early stopping
CLASS_WEIGHT = "none"
AUGMENT = 1            # 1: random flips, shifts and rotations while training
AUGMENT_FLIP = 1       # random horizontal flips
AUGMENT_SHIFT = 0.1    # fraction of the image size
AUGMENT_ROTATION = 0.0  # degrees
# --- model (code/al/models.py)
ARCHITECTURE = "cifar_cnn"
CONV_FILTERS = [32, 64, 128]  # one block of two Conv2D 3x3 per entry
BATCH_NORM = 1
DENSE_UNITS = 128
DROPOUT = 0.3


def load_data(config, data_dir=None):
    return protocol_split(load_cifar10(data_dir), config)


build_model = models.build  # the builder named by ARCHITECTURE (code/al/models.py)


if __name__ == "__main__":
    cli.main("cifar10", globals(), load_data, build_model)
