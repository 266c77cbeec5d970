#!/usr/bin/env bash
# Retrain the shipped spectral restorer (models/spectral/) in one command, with the Ray-free core.
#
#   bash models/train_spectral.sh /path/to/clean_corpus [more corpora ...]
#
# Each corpus is an FMA layout or a plain folder of audio; their training splits are the training
# audio, their validation splits the held-out validation crops (the test split is never read).
# The shipped model was trained on ../shared/data/fma_mini on a 2-core CPU (MODEL_CARD.md).
# Set DEVICE=cuda to train on a GPU, WORK to keep the run elsewhere (default results/spectral),
# STEPS to override the step count. Then the figures of the card:
#   python jobs/evaluate.py --model models/spectral --clean <corpus> --out <dir> --degrader ours|pedalboard
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: train_spectral.sh CORPUS [CORPUS ...]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
WORK=${WORK:-results/spectral}
AUDIO=()
for corpus in "$@"; do AUDIO+=(--audio "$corpus"); done
EXTRA=()
[ -n "${STEPS:-}" ] && EXTRA+=(--steps "$STEPS")
PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" $PY -m automaster.training "${AUDIO[@]}" --out "$WORK" \
  --config "$HERE/models/spectral/train.toml" --device "${DEVICE:-cpu}" "${EXTRA[@]}"
PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" $PY -m automaster.model.checkpoint strip "$WORK/model" "$HERE/models/spectral"
