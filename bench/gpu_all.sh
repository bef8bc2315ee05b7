#!/usr/bin/env bash
# Every GPU setting of the benchmarks in one go (issues 16, 25), for a machine with one CUDA GPU; ~9-10 minutes.
#
#   bash bench/gpu_all.sh                      # on the GPU machine: runs, then appends to bench/RESULTS.md
#   bash bench/gpu_all.sh --dry-run            # the same steps on CPU at tiny sizes (checks the script end to end)
#   bash bench/gpu_all.sh --results FILE       # append to FILE instead of bench/RESULTS.md
#   bash bench/gpu_all.sh --steps model,train  # a subset of: model, segment, train, flow, engines
#
# Steps (each under its own `timeout`, so one slow or failing bench cannot eat the others' time):
#   model    bench/model_speed.py     fp32 and bf16 at batch 1, 4, 16, 512x512, T=5, and memory flatness
#   segment  bench/segment_throughput.py --gpu   1, 4 and 16 videos in flight on one GPU actor
#   train    bench/train_throughput.py            fp32 and bf16 training steps at 512x512 (official model)
#   flow     bench/flow_throughput.py             ptlflow models' flow-job throughput
#   engines  bench/flow_engines.py                DIS vs neuflow2, rapidflow, raft_small per flow at 480p
# Each step's JSON lines, its exit status and wall time go into one section appended to the results file, headed
# with the device (nvidia-smi) and the date. The script exits non-zero if any step failed or timed out, after
# writing what it has.
set -u -o pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DRY_RUN=0
RESULTS=bench/RESULTS.md
STEPS=model,segment,train,flow,engines
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --results) RESULTS=$2; shift ;;
        --steps) STEPS=$2; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "gpu_all.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
export PYTHONPATH=${PYTHONPATH:-$PWD} PYTHONUNBUFFERED=1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 AWS_EC2_METADATA_DISABLED=true

if [ "$DRY_RUN" = 1 ]; then
    DEVICE="CPU dry run (no GPU): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
    # Tiny sizes: the point is that every command line parses and runs, not the figures. The model step is sized
    # for CPUs that emulate bf16 (~1 GFLOP/s): a 1024 yardstick matmul alone takes 2 s there, per timed step.
    MODEL_ARGS=(--device cpu --model hmhi_mit_b0 --size 32 --memory-size 1 --batches 1 --dtypes fp32,bf16
                --steady-frames 1 --gemm-size 128 --threads 1 --no-baseline --memory-check-size 32
                --memory-check-frames 1,2)
    SEGMENT_ARGS=(--frames 4 --size 64x48 --input-size 64 --cpus 2)
    TRAIN_ARGS=(--device cpu --size 64 --model hmhi_mit_b0 --decoder-width 32 --batch 1 --workers 1 --steps 2
                --warmup 1 --rounds 1 --loader-batches 2 --synthetic-videos 2 --synthetic-size 64x64
                --precisions fp32,bf16)
    FLOW_ARGS=(--settings rapidflow_it1 --cpus 1 --videos 1 --frames 2 --ptlflow-frames 2 --size 64x96
               --storage local)
    ENGINES_ARGS=(--engines dis:medium,rapidflow --size 64x96 --frames 3 --rounds 1)
    LIMIT_MODEL=300 LIMIT_SEGMENT=300 LIMIT_TRAIN=300 LIMIT_FLOW=300 LIMIT_ENGINES=300  # only to stop a hang
else
    if ! command -v nvidia-smi >/dev/null || ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
        echo "gpu_all.sh: no CUDA GPU here; use --dry-run on a CPU machine" >&2
        exit 2
    fi
    DEVICE="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1), $(nproc) CPU cores"
    MODEL_ARGS=(--device cuda --batches 1,4,16 --dtypes fp32,bf16 --steady-frames 20 --no-baseline
                --memory-check-frames 50,500)
    SEGMENT_ARGS=(--frames 30 --size 854x480 --input-size 512 --cpus "$(nproc)" --gpu --gpu-frames 60)
    TRAIN_ARGS=(--device cuda --size 512 --model hmhi_mit_b1 --decoder-width 256 --batch 2 --workers 6 --steps 12
                --warmup 3 --rounds 1 --loader-batches 10 --precisions fp32,bf16)
    FLOW_ARGS=(--settings rapidflow_it1,neuflow --cpus 4 --videos 2 --frames 8 --ptlflow-frames 16 --storage local)
    # flow_throughput.py has no GPU switch yet: pass one if it grows one (its ptlflow actors otherwise use CPUs).
    if "$PY" bench/flow_throughput.py --help 2>/dev/null | grep -q -- '--gpu'; then FLOW_ARGS+=(--gpu); fi
    # 480p clips of 33 frames (32 flows) through each engine, 3 timed rounds after a warm-up one.
    ENGINES_ARGS=(--device cuda --engines dis:medium,neuflow2,rapidflow,raft_small --frames 33 --rounds 3
                  --batch-size 8)
    # Budget: 140 + 150 + 120 + 60 + 90 = 560 s < 10 minutes (the engines step includes the ptlflow import).
    LIMIT_MODEL=140 LIMIT_SEGMENT=150 LIMIT_TRAIN=120 LIMIT_FLOW=60 LIMIT_ENGINES=90
fi

WORK=$(mktemp -d -t gpu_all.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
FAILED=0

run_step() {  # name limit_s command...
    local name=$1 limit=$2
    shift 2
    local start rc
    start=$(date +%s)
    echo "== $name (limit ${limit}s): $*" >&2
    timeout --kill-after=15 "$limit" "$@" >"$WORK/$name.jsonl" 2>"$WORK/$name.err"
    rc=$?
    echo "$rc $(( $(date +%s) - start ))" >"$WORK/$name.status"
    if [ "$rc" != 0 ]; then
        FAILED=1
        echo "== $name: exit $rc$([ "$rc" = 124 ] && echo ' (timed out)'); last lines of its stderr:" >&2
        tail -n 20 "$WORK/$name.err" >&2
    fi
}

for step in ${STEPS//,/ }; do
    case "$step" in
        model) run_step model "$LIMIT_MODEL" "$PY" bench/model_speed.py "${MODEL_ARGS[@]}" ;;
        segment) run_step segment "$LIMIT_SEGMENT" "$PY" bench/segment_throughput.py "${SEGMENT_ARGS[@]}" ;;
        train) run_step train "$LIMIT_TRAIN" "$PY" bench/train_throughput.py "${TRAIN_ARGS[@]}" ;;
        flow) run_step flow "$LIMIT_FLOW" "$PY" bench/flow_throughput.py "${FLOW_ARGS[@]}" ;;
        engines) run_step engines "$LIMIT_ENGINES" "$PY" bench/flow_engines.py "${ENGINES_ARGS[@]}" ;;
        *) echo "gpu_all.sh: unknown step $step (model, segment, train, flow, engines)" >&2; exit 2 ;;
    esac
done

{
    echo
    if [ "$DRY_RUN" = 1 ]; then
        echo "## bench/gpu_all.sh --dry-run, $(date -u '+%Y-%m-%d %H:%M UTC')"
    else
        echo "## GPU benchmarks (bench/gpu_all.sh), $(date -u '+%Y-%m-%d %H:%M UTC')"
    fi
    echo
    echo "Device: $DEVICE; torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)."
    for step in ${STEPS//,/ }; do
        read -r rc seconds <"$WORK/$step.status"
        echo
        echo "### $step: exit $rc$([ "$rc" = 124 ] && echo ' (timed out)'), ${seconds} s"
        echo
        echo '```json'
        grep '^{' "$WORK/$step.jsonl" || echo "(no figures)"
        echo '```'
    done
} >>"$RESULTS"
echo "appended to $RESULTS" >&2
exit "$FAILED"
