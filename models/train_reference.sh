#!/usr/bin/env bash
# Rebuild the shipped reference model (models/reference/) with the project's own jobs.
#
#   bash models/train_reference.sh /path/to/fma_root [workdir]
#
# fma_root: an FMA layout (fma_metadata/ + fma_small/...); the shipped model was trained on the
# 95-clip fma_mini of ../shared/data. Steps: demaster 8 variants per track -> a short loss-weight
# search (params mode) -> train the cascade with models/reference/train.toml -> keep the weights
# only (no optimiser state) -> evaluate on the test split, with our degrader and pedalboard's.
# Local Ray (loopback) and a local MLflow store in the workdir; add --ray-address to each job to
# run it on a cluster. Times on a 2-core VM: models/reference/MODEL_CARD.md.
set -euo pipefail
CORPUS=${1:?usage: train_reference.sh FMA_ROOT [WORKDIR]}
WORK=${2:-results/reference}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
MLFLOW="sqlite:///$WORK/mlflow.db"

$PY "$HERE/jobs/demaster.py" --corpus "$CORPUS" --out "$WORK/data" --variants 8 \
  --set demaster.write_audio=false --set demaster.write_png=false --set demaster.write_txt=false \
  --experiment reference --run-name demaster --tracking-uri "$MLFLOW"

$PY "$HERE/jobs/tune.py" --data "$WORK/data" --out "$WORK/tune" --samples 3 --epochs 2 \
  --set model.mode=params --set train.crops_per_track=1 \
  --experiment reference --run-name tune --tracking-uri "$MLFLOW"

$PY "$HERE/jobs/train.py" --data "$WORK/data" --out "$WORK/train" --config "$HERE/models/reference/train.toml" \
  --experiment reference --run-name train --tracking-uri "$MLFLOW"

$PY -m automaster.model.checkpoint strip "$WORK/train/model" "$HERE/models/reference"

for degrader in ours pedalboard; do
  $PY "$HERE/jobs/evaluate.py" --model "$HERE/models/reference" --clean "$CORPUS" --out "$WORK/eval-$degrader" \
    --degrader "$degrader" --true-peak -1 --experiment reference --run-name "evaluate-$degrader" --tracking-uri "$MLFLOW"
done
