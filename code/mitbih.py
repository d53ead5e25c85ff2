"""MIT-BIH Arrhythmia heartbeats: entropy vs random sampling with a Keras 1D CNN.

Beats (187 samples at 125 Hz in [0, 1], classes N/S/V/F/Q) come from the Kaggle CSVs or
are built from the PhysioNet records (see ``data_mitbih``). ``--split intra`` (default)
reproduces the published 80/20 beat split; ``--split inter`` is the patient-wise DS1/DS2
split and writes to ``results/mitbih_inter/``. Every UPPER_CASE constant below is a
hyperparameter and a command-line option (``python code/mitbih.py --help``).
"""

import dataclasses

from al import cli, models
from al.data_mitbih import load_mitbih

# --- data
SPLIT = "intra"        # "intra": stratified 80/20 over beats; "inter": patients DS1 -> DS2
# --- active-learning protocol
START_SIZE = 256
BATCH_SIZE = 128
N_STEPS = 21           # 256 + 21 * 128 = 2944 labels at the end ("~3000")
N_SEEDS = 10
STRATEGIES = ["random", "entropy"]
POOL_SUBSAMPLE = 0     # score only this many random pool samples per step (0 = whole pool)
# --- training (a fresh model every step, on the selected labels only)
EPOCHS = 20            # published: 45 at batch 32 with the larger net (see README "Speed")
FIT_BATCH_SIZE = 64
LEARNING_RATE = 1e-3
VAL_FRACTION = 0.0     # early-stopping split, taken from the selected labels
PATIENCE = 0           # 0 = no early stopping
CLASS_WEIGHT = "none"  # "balanced": weights from the labeled set's class counts
# --- model: conv blocks of two Conv1D layers each, then max-pooling
CONV_FILTERS = [16, 32, 32, 64]   # published: 16, 32, 32, 256
KERNEL_SIZES = [5, 3, 3, 3]
DENSE_UNITS = [64, 64]
DROPOUT = 0.1
BATCH_NORM = 1         # 1: BatchNormalization after every convolution (faster convergence)
BN_MOMENTUM = 0.9      # Keras' 0.99 leaves the moving statistics unconverged on small labeled sets


def load_data(config, data_dir=None):
    data = load_mitbih(data_dir, split=config["split"])
    # Conv1D wants a channel axis: (n, 187) -> (n, 187, 1).
    return dataclasses.replace(data, x_train=data.x_train[..., None], x_test=data.x_test[..., None])


def results_name(config):
    return "mitbih" if config["split"] == "intra" else f"mitbih_{config['split']}"


build_model = models.ecg_cnn  # two Conv1D per block, pooling, dense layers, softmax; Adam (code/al/models.py)


if __name__ == "__main__":
    cli.main(results_name, globals(), load_data, build_model)
