#!/usr/bin/env bash
# gpu_check.sh — the first run on a GPU: every path no CPU has exercised, in one go (< 8 min, one H100:
# the step limits below add up to 455 s).
#
#   benchmarks/gpu_check.sh --out runs/gpu-check              # on the GPU machine, from the repo root
#   benchmarks/gpu_check.sh --dry-run --out /tmp/gpu-check    # the same steps on CPU, tiny, ≤ 60 s
#
# Steps (each under its own time limit; a failure is recorded and the next step still runs):
#   env          the machine: GPU, memory, torch, CUDA, Triton (env.json)
#   triton_cubin both Triton kernels compiled for sm_90 (plugins/mdm-plugin-triton-loss/tests/compile_for_gpu.py)
#   triton_tests the Triton loss tests with the kernels compiled and run on the GPU (no interpreter)
#   b3           benchmarks/bench_fused_loss.py: fused vs eager vs torch.compile, time, peak memory,
#                bytes/s (b3.json; the table is in logs/b3.log and summary.md)
#   quickstart   specs/quickstart.yaml, bf16 + torch.compile, 300 steps
#   shakespeare  specs/bell-shakespeare.yaml with the bell sampler, bf16 + torch.compile, 300 steps;
#                its data path (../shared/data/tinyshakespeare.txt, read from the current directory,
#                i.e. the repo root) can be replaced with --shakespeare PATH; missing: skipped, said so
# Output, all under --out DIR: env.json, steps.jsonl, b3.json, runs/<step>/ (run directories),
# logs/<step>.log, and summary.json + summary.md (the markdown pastes into benchmarks/RESULTS.md).
# Exit status: 0 when every step passed or was skipped, 1 when one failed, 2 on bad arguments.
#
# --dry-run: the same steps on CPU with tiny sizes in fp32 and without torch.compile, so the script
# is known to work before a GPU is available (tests/test_gpu_check.py runs it). No Triton compile:
# triton_cubin and triton_tests are skipped with a line saying so (the kernels' interpreter tests
# run in the ordinary suite: TRITON_INTERPRET=1 pytest plugins/mdm-plugin-triton-loss).
# How to read the output: docs/diagnostics.md ("The GPU check").
set -uo pipefail

usage() {
    echo "usage: benchmarks/gpu_check.sh --out DIR [--dry-run] [--python PY] [--shakespeare PATH]" >&2
    exit 2
}

OUT=""
DRY=0
PY=""
TEXT="../shared/data/tinyshakespeare.txt"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="${2:-}"; shift 2 || usage ;;
        --dry-run) DRY=1; shift ;;
        --python) PY="${2:-}"; shift 2 || usage ;;
        --shakespeare) TEXT="${2:-}"; shift 2 || usage ;;
        -h|--help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1'" >&2; usage ;;
    esac
done
[ -n "$OUT" ] || { echo "gpu_check: --out DIR is required (where the JSON and markdown go)" >&2; usage; }

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO" || exit 2
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
    echo "gpu_check: --out $OUT is not empty; choose a new folder (nothing is overwritten)" >&2
    exit 2
fi
mkdir -p "$OUT/logs" "$OUT/runs" || exit 2
OUT="$(cd "$OUT" && pwd)"
COMMAND="benchmarks/gpu_check.sh --out $OUT$([ $DRY = 1 ] && echo ' --dry-run')"
REPORT=("$PY" benchmarks/gpu_check_report.py)
MDM=("$PY" -c 'import sys; from mdm_core.cli import main; sys.exit(main(sys.argv[1:]))')

# run_step NAME LIMIT_S RUN_DIR CMD...: run CMD under a time limit, log it, record its status.
run_step() {
    local name="$1" limit="$2" run_dir="$3"
    shift 3
    echo "== $name (limit ${limit}s)"
    local start end code status
    start=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
    code=$?
    end=$(date +%s.%N)
    case $code in
        0) status="ok" ;;
        124|137) status="timed out after ${limit}s" ;;
        *) status="failed (exit $code)" ;;
    esac
    echo "   $status; log: $OUT/logs/$name.log"
    local note=""  # a failure's last log line says why
    [ "$status" = ok ] || note="$(tail -n 1 "$OUT/logs/$name.log" | cut -c1-160)"
    "${REPORT[@]}" step "$OUT" "$name" "$status" "$(awk "BEGIN {print $end - $start}")" "$run_dir" "$note"
}

skip_step() {
    echo "== $1: skipped — $2"
    "${REPORT[@]}" step "$OUT" "$1" "skipped" 0 "" "$2"
}

"${REPORT[@]}" env "$OUT" || { echo "gpu_check: $PY cannot import torch" >&2; exit 1; }
if [ $DRY = 0 ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device here; use --dry-run to check the script on CPU" >&2
    exit 2
fi

if [ $DRY = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""
    TRAIN_RUNTIME=(trainer.device=cpu trainer.precision=fp32 trainer.compile=false trainer.threads=1
        trainer.max_steps=4 trainer.log_every=1 trainer.ckpt_every=4 trainer.warmup=1 trainer.num_samples=0
        trainer.batch_size=4 trainer.eval_batch_size=16 backbone.dim=32 backbone.layers=1 backbone.heads=2
        'evaluators=[{name: nll, every: 2, draws: 2, max_batches: 1}]')
    QUICK_DATA=(data.num_train=64 data.num_val=8 data.seq_len=16)
    TEXT_DATA=(data.seq_len=32)
    B3_ARGS=(--device cpu --vocab 64 --rows 256 --dtypes fp32 --warmup 1 --repeats 2 --compile off --threads 1)
    LIMIT_TRAIN=40; LIMIT_B3=40
else
    TRAIN_RUNTIME=(trainer.device=cuda trainer.precision=bf16 trainer.compile=true trainer.max_steps=300
        trainer.ckpt_every=300 trainer.num_samples=0
        'evaluators=[{name: nll, every: 100, draws: 8, max_batches: 16}, {name: nll_by_t, every: 100, buckets: 8, max_batches: 16}]')
    # nll_by_t with 8 buckets feeds the model the same [128, L] batches as nll (8 draws): no recompile.
    QUICK_DATA=()
    TEXT_DATA=()
    B3_ARGS=(--device cuda --compile on --warmup 2 --repeats 5)
    LIMIT_TRAIN=90; LIMIT_B3=130
fi

if [ $DRY = 1 ]; then
    skip_step triton_cubin "--dry-run compiles no Triton kernel (needs the CUDA toolchain; run on the GPU)"
    skip_step triton_tests "--dry-run runs no compiled kernel; interpreter tests: TRITON_INTERPRET=1 pytest plugins/mdm-plugin-triton-loss"
else
    run_step triton_cubin 45 "" env -u TRITON_INTERPRET "$PY" plugins/mdm-plugin-triton-loss/tests/compile_for_gpu.py
    run_step triton_tests 100 "" env -u TRITON_INTERPRET "$PY" -m pytest plugins/mdm-plugin-triton-loss -q -x -p no:cacheprovider
fi

run_step b3 "$LIMIT_B3" "" "$PY" benchmarks/bench_fused_loss.py "${B3_ARGS[@]}" --json "$OUT/b3.json"

run_step quickstart "$LIMIT_TRAIN" "$OUT/runs/quickstart" "${MDM[@]}" train specs/quickstart.yaml \
    "${TRAIN_RUNTIME[@]}" "${QUICK_DATA[@]}" --run-dir "$OUT/runs/quickstart" --quiet

if [ -f "$TEXT" ]; then
    run_step shakespeare "$LIMIT_TRAIN" "$OUT/runs/shakespeare" "${MDM[@]}" train specs/bell-shakespeare.yaml \
        time_sampler.name=bell "data.path=$(cd "$(dirname "$TEXT")" && pwd)/$(basename "$TEXT")" \
        "${TRAIN_RUNTIME[@]}" "${TEXT_DATA[@]}" --run-dir "$OUT/runs/shakespeare" --quiet
else
    skip_step shakespeare "text not found: $TEXT (read from $REPO); pass --shakespeare PATH"
fi

"${REPORT[@]}" summary "$OUT" "$COMMAND"
