#!/usr/bin/env bash
# The GPU check (issue 16), in one call: about 6 minutes on one GPU, never more than the sum of the
# step limits below (470 s, under the 8 minutes a check may take):
#   1. install the project (editable, no downloads: torch with CUDA must already be there)
#   2. the cuda-marked tests (compile, bf16, CUDA graphs, exact resume, NCCL where 2+ GPUs)
#   3. prepare a small data set from the shared TinyStories head (BPE 10K)
#   4. train the 33M preset for TRAIN_STEPS steps with compile and bf16: tokens/s and MFU against
#      the measured bf16 matmul peak
#   5. kill a deterministic, uncompiled twin of that run after its first checkpoint, resume it, and
#      check that its losses equal an uninterrupted run's bit for bit (compiling three more times
#      would cost the budget; the compiled path's resume is in the cuda tests)
#   6. the generation benchmark (benchmarks/run.py --only generate)
# Everything goes to one results file, benchmarks/results/gpu_check_<GPU>_<date>.md (and a .json
# with the numbers). A failed step is recorded and the next one still runs; the exit status is 1
# if any step failed.
#
#   bash benchmarks/gpu_check.sh            # on a CUDA machine
#   bash benchmarks/gpu_check.sh --dry-run  # anywhere: print the steps and their commands, run nothing
#
# Needs the shared data: $TINYSTORIES_SHARED_DATA, or shared/data/tinystories in or beside the checkout.
# TRAIN_STEPS (default 300), RESUME_STEPS (200), BATCH (32) and PYTHON may be set in the environment.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DRY=0
STAMP=$(date -u +%Y%m%d_%H%M)
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PYTHON:-python}
TRAIN_STEPS=${TRAIN_STEPS:-300}
RESUME_STEPS=${RESUME_STEPS:-200}
BATCH=${BATCH:-32}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check.$STAMP.$$}
RESULTS_DIR="$ROOT/benchmarks/results"
FAILED=0

# 33M with compile and bf16; checkpoints every 100 steps so that a kill has one to resume from
TRAIN_ARGS=(--preset 33M --set "batch_size=$BATCH" --set compile=on --set precision=bf16 --set device=cuda
            --set eval_every=0 --set samples=0 --set log_every=10 --set checkpoint_every=100
            --set final_eval_tokens=65536 --set warmup_steps=20)
# torch's deterministic kernels: without them an uninterrupted run does not reproduce itself
DET=(env CUBLAS_WORKSPACE_CONFIG=:4096:8 "$PY" "$ROOT/benchmarks/gpu_check_helper.py" deterministic-train)
RESUME_ARGS=("${TRAIN_ARGS[@]}" --set compile=off --set "decay_steps=$RESUME_STEPS")

step() {  # step NAME TIMEOUT_S COMMAND...: run (or, dry, print) one step, log its output and time
    local name=$1 limit=$2
    shift 2
    if ((DRY)); then
        printf '[dry run] %-10s (<= %3ss): %s\n' "$name" "$limit" "$*"
        return 0
    fi
    echo "== $name" | tee -a "$LOG"
    local t0=$SECONDS rc=0
    timeout "$limit" "$@" >>"$LOG" 2>&1 || rc=$?
    echo "-- $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
    STATUS+=("$name: exit $rc, $((SECONDS - t0)) s")
    ((rc == 0)) || FAILED=1
    return $rc
}

if ((DRY)); then
    echo "benchmarks/gpu_check.sh: the steps it runs on a CUDA machine (work directory $WORK):"
    LOG=/dev/null
else
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA GPU visible to $PY (torch with CUDA must be installed); use --dry-run to see the steps" >&2
        exit 2
    fi
    mkdir -p "$WORK" "$RESULTS_DIR"
    LOG="$WORK/log.txt"
    : >"$LOG"
    STATUS=()
fi

SHARED_DATA=${TINYSTORIES_SHARED_DATA:-}
if [[ -z "$SHARED_DATA" ]]; then
    for cand in "$ROOT/shared/data/tinystories" "$ROOT/../shared/data/tinystories"; do
        [[ -d "$cand" ]] && SHARED_DATA=$cand && break
    done
fi
((DRY)) && SHARED_DATA=${SHARED_DATA:-'$TINYSTORIES_SHARED_DATA'}
export TINYSTORIES_SHARED_DATA=$SHARED_DATA TINYSTORIES_QUIET=1

step install 45 "$PY" -m pip install --no-deps --no-build-isolation -q -e "$ROOT"
step tests 90 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider
step prepare 40 "$PY" -m tinystories prepare "$SHARED_DATA/TinyStories-train-head.txt" --out "$WORK/data" \
    --vocab-size 10000 --val "$SHARED_DATA/TinyStories-subset-valid.txt" --force
step train 80 "$PY" -m tinystories train --data "$WORK/data" --out "$WORK/speed" --max-steps "$TRAIN_STEPS" \
    "${TRAIN_ARGS[@]}" --force
step whole 40 "${DET[@]}" --data "$WORK/data" --out "$WORK/whole" --max-steps "$RESUME_STEPS" "${RESUME_ARGS[@]}"
step killed 40 "$PY" "$ROOT/benchmarks/gpu_check_helper.py" kill-after-checkpoint "$WORK/killed" -- \
    "${DET[@]}" --data "$WORK/data" --out "$WORK/killed" --max-steps "$RESUME_STEPS" "${RESUME_ARGS[@]}"
step resumed 35 "${DET[@]}" --data "$WORK/data" --out "$WORK/killed" --max-steps "$RESUME_STEPS" --resume
step generate 70 "$PY" "$ROOT/benchmarks/run.py" --quick --only generate --device cuda --json "$WORK/generate.json"
step report 30 "$PY" "$ROOT/benchmarks/gpu_check_helper.py" report "$WORK" "$RESULTS_DIR" "$STAMP" "$LOG"

if ((DRY)); then
    exit 0
fi
printf '%s\n' "${STATUS[@]}"
exit $FAILED
