#!/usr/bin/env bash
# Refit the shipped level model (models/level/: boosted trees over statistics of the input) in one command.
#
#   bash models/train_level.sh /path/to/fma_mini /path/to/debian-corpus
#
# Each corpus is an FMA layout or a plain folder of audio; their training splits give the
# examples, their validation splits the held-out figures (the test split is never read). The
# shipped model used ../shared/data/fma_mini (4 crops a song) and the Debian corpus
# (tools/debian_corpus.py; 1 crop a song): CROPS and VAL_CROPS give one count per corpus
# (default 4,1 and 3,2 for two corpora; 4 and 3 for one).
# WORK keeps the run elsewhere (default results/level), WORKERS sets the processes making examples.
# Then the figures of the card: bench/attribution.py (README "Results").
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: train_level.sh CORPUS [CORPUS ...]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
WORK=${WORK:-results/level}
if [ $# -eq 2 ]; then CROPS=${CROPS:-4,1}; VAL_CROPS=${VAL_CROPS:-3,2}; else CROPS=${CROPS:-4}; VAL_CROPS=${VAL_CROPS:-3}; fi
AUDIO=()
for corpus in "$@"; do AUDIO+=(--audio "$corpus"); done
PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" $PY -m automaster.training.level "${AUDIO[@]}" --out "$WORK" \
  --crops-per-track "$CROPS" --val-crops-per-track "$VAL_CROPS" --workers "${WORKERS:-2}"
mkdir -p "$HERE/models/level"
cp "$WORK/trees.npz" "$WORK/level_fit.json" "$HERE/models/level/"
