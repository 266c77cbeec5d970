#!/usr/bin/env bash
# One call on a GPU machine lent by the minute: the GPU benchmarks of issue 12, then the spectral
# restorer's per-bin network trained on the staged corpus for MINUTES, sized by the measured speed.
#
# The machine may have torch, numpy, scipy and numba but no network, no ray, mlflow or soundfile.
# Prepare here (the staged corpus and the wheels travel in an ignored folder, at most ~50 MiB):
#   python tools/device_stage.py --audio ../shared/data/fma_mini --audio <debian corpus> --out .device --wheels
# Check it here on the CPU (two minutes; STAGE: the staged folder when it is not .device):
#   DEVICE=cpu OUT=/tmp/device BATCH=4 bash tools/device_train.sh 0.3 --set train.val_crops=2
# Run it there (the device tool: carry [".device"], timeout 600), then evaluate the model here:
#   bash tools/device_train.sh 7
#   automaster evaluate --model <OUT>/spectral/model --clean ../shared/data/fma_mini --out results/eval-gpu --true-peak -1
#
# Environment: DEVICE (cuda), OUT (results/device), STAGE (.device), BATCH (64), CROP_S (3), WIDTH (16).
# Writes to $OUT: gpu.txt, bench_compressor.jsonl, bench_core.jsonl, spectral/ (the training core's
# output: model/, checkpoints/last/, metrics.jsonl, summary.json) and train.log.
# Extra arguments go to python -m automaster.training (e.g. --set model.spectral_width=32).
set -euo pipefail
MINUTES=${1:-7}
shift || true
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-results/device}
STAGE=${STAGE:-.device}
BATCH=${BATCH:-64}
CROP_S=${CROP_S:-3}
WIDTH=${WIDTH:-16}
python -c "import math,sys; m=float(sys.argv[1]); assert math.isfinite(m) and m > 0" "$MINUTES" 2>/dev/null \
    || { echo "error: MINUTES must be a number > 0, got '$MINUTES'" >&2; exit 2; }
[[ $BATCH =~ ^[1-9][0-9]*$ ]] || { echo "error: BATCH must be a whole number > 0, got '$BATCH'" >&2; exit 2; }
[ -d "$STAGE/corpus" ] || { echo "error: STAGE: $STAGE/corpus is missing: run tools/device_stage.py --out $STAGE first" >&2; exit 2; }
mkdir -p "$OUT"

if [ -d "$STAGE/whl" ] && ! python -c "import soundfile" 2>/dev/null; then
    pip install -q --no-index --no-deps --target /tmp/site "$STAGE"/whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

if [ "$DEVICE" != cpu ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" || true
    # the compressor and its inverse on the device (torch scans) against numba on one CPU thread
    python bench/bench_compressor.py --device "$DEVICE" --batch 256 --seconds 3 --repeats 3 > "$OUT/bench_compressor.jsonl" || true
fi
MODEL_SETS=(--set model.mode=spectral --set "model.spectral_width=$WIDTH")
python bench/bench_core.py --audio "$STAGE/corpus" --device "$DEVICE" --batch "$BATCH" --crop-seconds "$CROP_S" --steps 10 \
    --limit 40 --only data spectral cascade_mel cascade_wave --set "model.spectral_width=$WIDTH" > "$OUT/bench_core.jsonl"
cat "$OUT/bench_core.jsonl"

# steps that fit MINUTES at the measured rate (less a tenth for validation), at least 20
RATE=$(python -c "import json,sys; print(next(json.loads(l)['crops_per_s'] for l in open(sys.argv[1]) if json.loads(l)['config']=='spectral'))" "$OUT/bench_core.jsonl")
STEPS=$(python -c "import sys; r,m,b=map(float,sys.argv[1:]); print(max(20, int(0.9*r*m*60/b)))" "$RATE" "$MINUTES" "$BATCH")
VAL_EVERY=$(( STEPS / 5 > 0 ? STEPS / 5 : 1 ))
echo "spectral at $RATE crops/s: $STEPS steps of batch $BATCH in $MINUTES min, validation every $VAL_EVERY"
python -m automaster.training --audio "$STAGE/corpus" --out "$OUT/spectral" --config models/spectral/train.toml \
    --device "$DEVICE" --steps "$STEPS" "${MODEL_SETS[@]}" --set "train.batch_size=$BATCH" --set "train.crop_seconds=$CROP_S" \
    --set "train.max_minutes=$MINUTES" --set "train.val_every=$VAL_EVERY" --set train.val_crops=32 \
    --set "train.warmup_steps=$(( STEPS / 20 + 1 ))" "$@" > "$OUT/train.log" 2>&1 || { tail -30 "$OUT/train.log"; exit 1; }
tail -3 "$OUT/train.log"
python -c "import json,sys; m=[json.loads(l) for l in open(sys.argv[1])][-1]; print({k: round(v, 4) for k, v in m.items() if k.startswith(('val/mrstft', 'val/si_sdr', 'val/level', 'perf/'))})" "$OUT/spectral/metrics.jsonl"
