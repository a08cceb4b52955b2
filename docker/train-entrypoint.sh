#!/bin/sh
# Runs the training job from TRAIN_* environment variables (see docker/.env.example).
# Extra arguments are passed on to `python -m training`.
set -eu

set -- --runs-dir "${TRAIN_RUNS_DIR:-/data/runs}" --epochs "${TRAIN_EPOCHS:-25}" "$@"
if [ -n "${TRAIN_DATASET:-}" ]; then
  set -- --dataset "$TRAIN_DATASET" "$@"
else
  set -- --data "${TRAIN_DATA_DIR:-/data/input}" "$@"
fi
if [ -n "${TRAIN_MAX_PER_CLASS:-}" ]; then
  set -- "$@" --max-per-class "$TRAIN_MAX_PER_CLASS"
fi
set -- "$@" --register "${TRAIN_MODEL_NAME:?set TRAIN_MODEL_NAME}"
if [ -n "${TRAIN_PROMOTE:-}" ]; then
  set -- "$@" --promote "$TRAIN_PROMOTE" --min-accuracy "${TRAIN_MIN_ACCURACY:-0}"
fi
exec python -m training "$@"
