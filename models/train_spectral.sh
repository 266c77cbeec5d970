#!/usr/bin/env bash
# Refit the shipped level model (models/spectral/: the spectral restorer's level head) in one command.
#
#   bash models/train_spectral.sh /path/to/clean_corpus [more corpora ...]
#
# Each corpus is an FMA layout or a plain folder of audio; their training splits give the
# examples, their validation splits the held-out figures (the test split is never read). The
# shipped model used ../shared/data/fma_mini and the Debian corpus (tools/debian_corpus.py):
#   bash models/train_spectral.sh ../shared/data/fma_mini /data/debian-corpus
# WORK keeps the run elsewhere (default results/level), WORKERS sets the processes making examples.
# Then the figures of the card:
#   automaster evaluate --clean <corpus> --out <dir> --true-peak -1 [--degrader pedalboard]
# The per-bin network (GPU): python -m automaster.training --audio <corpus> --config
#   models/spectral/train.toml --set model.spectral_width=8 --device cuda --steps 20000
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: train_spectral.sh CORPUS [CORPUS ...]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
WORK=${WORK:-results/level}
AUDIO=()
for corpus in "$@"; do AUDIO+=(--audio "$corpus"); done
PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" $PY -m automaster.training.level "${AUDIO[@]}" --out "$WORK" \
  --workers "${WORKERS:-2}"
cp "$WORK/model/model.pt" "$WORK/model/config.json" "$WORK/level_fit.json" "$HERE/models/spectral/"
