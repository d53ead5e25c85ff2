#!/usr/bin/env bash
# Set up .venv (first run, or when requirements.txt changed), then run the experiments.
#
#   bash run.sh              every dataset script (all seeds and strategies), then plot_perf.py
#   bash run.sh --quick      smoke run: 2 seeds, 2 steps, 2 epochs per dataset -> results/quick/
#   bash run.sh --low-budget the low-budget protocol (MNIST 10 + 19 x 10 labels, MIT-BIH 20 + 19 x 20)
#                            with the strategies of README "Low budgets" -> results/low_budget/,
#                            then its summaries and the crossover with results/ (plot_perf --crossover)
#   bash run.sh --test [...] run the test suite (extra arguments go to pytest)
#   bash run.sh --setup      only build the environments (.venv, and .venv-label-studio for the tests)
# Other arguments are passed to every dataset script (see python code/mnist.py --help).
# DATASETS="mnist" bash run.sh   limits the run to some datasets.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=".venv"
PY="$VENV/bin/python"
# The Label Studio server (tests/test_label_studio.py runs one on loopback) has pins that clash
# with TensorFlow's, so it gets a venv of its own; annotate.py itself needs only the SDK (.venv).
LS_VENV=".venv-label-studio"
LS_SPEC="label-studio>=1.23,<1.24"
DATASETS="${DATASETS:-mnist mitbih}"
LOW_BUDGET_STRATEGIES="random,entropy,margin,badge,coreset,typiclust"

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

setup_label_studio() {
    local stamp="$LS_VENV/.spec.sha256" template="$LS_VENV/template-data"
    local want
    want="$(echo "$LS_SPEC" | sha256sum | cut -d' ' -f1)"
    if [[ -x "$LS_VENV/bin/label-studio" && -f "$stamp" && "$(cat "$stamp")" == "$want" \
          && -f "$template/label_studio.sqlite3" ]]; then
        return
    fi
    echo "Setting up $LS_VENV with $LS_SPEC (the Label Studio server for the tests; a few minutes) ..."
    if ! { [[ -x "$LS_VENV/bin/python" ]] || python3 -m venv "$LS_VENV"; } \
       || ! "$LS_VENV/bin/python" -m pip install --quiet --upgrade pip \
       || ! "$LS_VENV/bin/python" -m pip install --quiet "$LS_SPEC"; then
        echo "error: could not install $LS_SPEC into $LS_VENV (pip's message is above); the Label Studio" \
             "tests need it. Fix the cause (network, disk space), then delete $LS_VENV and run" \
             "'bash run.sh --setup' again." >&2
        exit 1
    fi
    # Migrate an empty database once, here: each test server then starts from a copy of it in
    # seconds instead of migrating for about a minute. No user, no token, no network calls.
    rm -rf "$template"
    if ! LABEL_STUDIO_BASE_DATA_DIR="$PWD/$template" LABEL_STUDIO_LATEST_VERSION_CHECK=false \
         LABEL_STUDIO_SENTRY_DSN= LABEL_STUDIO_COLLECT_ANALYTICS=false \
         "$LS_VENV/bin/label-studio" version >/dev/null || [[ ! -f "$template/label_studio.sqlite3" ]]; then
        echo "error: the Label Studio in $LS_VENV could not create its database in $template (its" \
             "message is above). Delete $LS_VENV and run 'bash run.sh --setup' again." >&2
        exit 1
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
        setup_label_studio
        exit 0 ;;
    --test)
        shift
        # One pytest worker per core (pytest-xdist), each test file whole on one worker, so a
        # file's module- and session-scoped fixtures (trained grids, the Label Studio server)
        # are built once.
        exec "$PY" -m pytest -n auto --dist loadfile "$@" ;;
    --quick)
        shift
        for ds in $DATASETS; do "$PY" "code/$ds.py" --quick "$@"; done
        "$PY" code/plot_perf.py --results-dir results/quick ;;
    --low-budget)
        shift
        for ds in $DATASETS; do
            case "$ds" in
                mnist) budget=(--start-size 10 --batch-size 10 --n-steps 19) ;;
                mitbih) budget=(--start-size 20 --batch-size 20 --n-steps 19) ;;
            esac
            "$PY" "code/$ds.py" "${budget[@]}" --strategies "$LOW_BUDGET_STRATEGIES" \
                --results-dir results/low_budget "$@"
        done
        "$PY" code/plot_perf.py --results-dir results/low_budget
        "$PY" code/plot_perf.py --crossover results/low_budget results ;;
    *)
        for ds in $DATASETS; do "$PY" "code/$ds.py" "$@"; done
        "$PY" code/plot_perf.py ;;
esac
