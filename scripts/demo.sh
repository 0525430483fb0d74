#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, prepare TinyStories, train a small model, sample from it.
#
#   bash scripts/demo.sh                 # 10 minutes of training
#   MAX_TIME=30m bash scripts/demo.sh    # longer: the table has a recipe measured at 30 minutes
#
# Data: the full TinyStories from the Hugging Face hub when it is reachable; otherwise the local
# slices in ../shared/data/tinystories (or $TINYSTORIES_SHARED_DATA).
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_TIME=${MAX_TIME:-10m}
VOCAB_SIZE=${VOCAB_SIZE:-4096}  # the data's vocabulary (prepare's default): the budget table has rows measured at 4096 and 8192
DATA=${DATA:-data/tinystories-$VOCAB_SIZE}
RUN=${RUN:-runs/demo}
SHARED=${TINYSTORIES_SHARED_DATA:-../shared/data/tinystories}

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
python -m pip install -q -e .

if [ ! -f "$DATA/meta.json" ]; then
    if python - <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen("https://huggingface.co/api/datasets/roneneldan/TinyStories", timeout=5)
except Exception:
    sys.exit(1)
PY
    then
        echo "== preparing roneneldan/TinyStories from the hub"
        tinystories prepare roneneldan/TinyStories --val roneneldan/TinyStories:validation \
            --vocab-size "$VOCAB_SIZE" --out "$DATA"
    else
        echo "== the hub is unreachable: preparing the local slices in $SHARED"
        tinystories prepare "$SHARED/TinyStories-train-head.txt" "$SHARED/TinyStoriesV2-GPT4-train-head.txt" \
            "$SHARED/tinystories-sample-3000.json" --val "$SHARED/TinyStories-subset-valid.txt" \
            --vocab-size "$VOCAB_SIZE" --out "$DATA"
    fi
fi

echo "== training for $MAX_TIME into $RUN"
tinystories train --data "$DATA" --max-time "$MAX_TIME" --out "$RUN" --force

echo "== three stories"
tinystories generate "$RUN" "Once upon a time" --num-samples 3 --temperature 0.8 --top-p 0.95 --seed 1 --no-stream
