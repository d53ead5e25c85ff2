#!/usr/bin/env bash
# Set up .venv (first run, or when requirements.txt changed), then run the experiments.
#
#   bash run.sh              every dataset script (all seeds and strategies), then plot_perf.py
#   bash run.sh --quick      smoke run: 2 seeds, 2 steps, 2 epochs per dataset -> results/quick/
#   bash run.sh --test [...] run the test suite (extra arguments go to pytest)
#   bash run.sh --setup      only build the environment
# Other arguments are passed to every dataset script (see python code/mnist.py --help).
# DATASETS="mnist" bash run.sh   limits the run to some datasets.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=".venv"
PY="$VENV/bin/python"
DATASETS="${DATASETS:-mnist mitbih}"

setup_env() {
    local stamp="$VENV/.requirements.sha256"
    local want
    want="$(sha256sum requirements.txt | cut -d' ' -f1)"
    if [[ -x "$PY" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    echo "Setting up $VENV from requirements.txt (first run takes a few minutes) ..."
    [[ -x "$PY" ]] || python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -r requirements.txt
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "GPU found: installing TensorFlow's CUDA libraries (tensorflow[and-cuda])"
        "$PY" -m pip install --quiet "tensorflow[and-cuda]$(grep -E '^tensorflow' requirements.txt | sed 's/^tensorflow//')"
    fi
    echo "$want" > "$stamp"
}

for ds in $DATASETS; do  # before the (slow) environment check: fail fast on a typo
    if [[ ! -f "code/$ds.py" ]] || ! grep -q "cli.main" "code/$ds.py"; then
        echo "error: unknown dataset '$ds' in DATASETS; choose from: mnist mitbih" >&2
        exit 2
    fi
done

setup_env
case "${1:-}" in
    --setup)
        exit 0 ;;
    --test)
        shift
        exec "$PY" -m pytest "$@" ;;
    --quick)
        shift
        for ds in $DATASETS; do "$PY" "code/$ds.py" --quick "$@"; done
        "$PY" code/plot_perf.py --results-dir results/quick ;;
    *)
        for ds in $DATASETS; do "$PY" "code/$ds.py" "$@"; done
        "$PY" code/plot_perf.py ;;
esac
