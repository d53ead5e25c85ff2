"""MIT-BIH Arrhythmia heartbeats: entropy vs random sampling with a Keras 1D CNN.

Beats (187 samples at 125 Hz in [0, 1], classes N/S/V/F/Q) come from the Kaggle CSVs or
are built from the PhysioNet records (see ``al/data_mitbih.py``). ``--split intra``
(default) reproduces the published 80/20 beat split; ``--split inter`` is the patient-wise
DS1/DS2 split and writes to ``results/mitbih_inter/``. ``--rr-features 1`` adds each beat's
RR-interval features (records only) and writes to ``results/mitbih_rr/`` (``mitbih_inter_rr/``).
Every UPPER_CASE constant below is a hyperparameter and a command-line option
(``python code/mitbih.py --help``). The training
recipe was chosen on the development split by ``code/recipe_search.py`` (README "Training
recipe"); the first recipe's results are in ``results/recipe_v1/``.
"""

import dataclasses

from al import cli, models
from al.data_common import protocol_split
from al.data_mitbih import load_mitbih

# --- data
SPLIT = "intra"        # "intra": stratified 80/20 over beats; "inter": patients DS1 -> DS2
DEV_SIZE = 10000       # beats held out of the pool as the development split (never scored by the protocol)
EVALUATE_ON = "test"   # "test": the reported evaluation; "dev": score steps on the development
                       # split instead, to choose strategy settings (give such runs their own --results-dir)
RR_FEATURES = 0        # 1: append each beat's 7 RR features (pre/post/local/record-mean RR, ratios;
                       # needs the raw records) and feed them to the dense layers; results in *_rr/
# --- active-learning protocol
START_SIZE = 256
BATCH_SIZE = 128
N_STEPS = 21           # 256 + 21 * 128 = 2944 labels at the end ("~3000")
N_SEEDS = 10
STRATEGIES = ["random", "entropy"]
POOL_SUBSAMPLE = 0     # score only this many random pool samples per step (0 = whole pool)
# --- training (a fresh model every step, on the selected labels only)
TRAIN_STEPS = 1000     # optimizer updates per training, whatever the number of labels (0: EPOCHS)
EPOCHS = 20            # epochs per training when TRAIN_STEPS is 0
FIT_BATCH_SIZE = 64
LEARNING_RATE = 3e-3   # the peak of the schedule
LR_SCHEDULE = "onecycle"  # "constant", "cosine" or "onecycle" (warm-up, then cosine down)
OPTIMIZER = "adam"     # "adam" or "adamw"
WEIGHT_DECAY = 0.0     # AdamW only
LABEL_SMOOTHING = 0.0
VAL_FRACTION = 0.0     # early-stopping split, taken from the selected labels
PATIENCE = 0           # 0 = no early stopping
CLASS_WEIGHT = "none"  # "balanced" / "sqrt": weights from the labeled set's class counts
AUGMENT = 0            # 1: random shift / scale / baseline wander / noise while training
AUGMENT_SHIFT = 5      # samples
AUGMENT_SCALE = 0.1
AUGMENT_WANDER = 0.05
AUGMENT_NOISE = 0.01
# --- model (code/al/models.py)
ARCHITECTURE = "ecg_resnet"  # residual 1-D CNN (Kachuee et al. 2018); "ecg_cnn": the v1 net
RES_FILTERS = 32
RES_BLOCKS = 5
DROPOUT = 0.1          # before the dense layers (the MC-dropout strategies need one)
# ecg_cnn only: conv blocks of two Conv1D layers each, then max-pooling
STEM_POOL = 1
CONV_FILTERS = [16, 32, 32, 64]
KERNEL_SIZES = [5, 3, 3, 3]
DENSE_UNITS = [64, 64]
BATCH_NORM = 1
BN_MOMENTUM = 0.9


def load_data(config, data_dir=None):
    rr_features = config.get("rr_features", 0)
    if rr_features not in (0, 1):
        raise ValueError(f"--rr-features must be 0 (off) or 1 (on), got {rr_features!r}")
    if rr_features and config["architecture"] not in models.RR_ARCHITECTURES:
        raise ValueError(f"--rr-features 1 needs --architecture {' or '.join(models.RR_ARCHITECTURES)}, "
                         f"got {config['architecture']!r}")
    data = load_mitbih(data_dir, split=config["split"], rr_features=bool(rr_features))
    # Conv1D wants a channel axis: (n, 187) -> (n, 187, 1); with RR features (n, 187 + 7, 1),
    # the model splitting them off again (code/al/models.py).
    data = dataclasses.replace(data, x_train=data.x_train[..., None], x_test=data.x_test[..., None])
    return protocol_split(data, config)


def results_name(config):
    name = "mitbih" if config["split"] == "intra" else f"mitbih_{config['split']}"
    return f"{name}_rr" if config.get("rr_features") else name


build_model = models.build  # the builder named by ARCHITECTURE (code/al/models.py)


if __name__ == "__main__":
    cli.main(results_name, globals(), load_data, build_model)
