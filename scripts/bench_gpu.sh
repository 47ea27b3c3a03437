#!/usr/bin/env bash
# GPU measurements in one call that keeps whatever it measured (shared/GPU-NOTES.md, P0):
# environment, smoke checks, GPU tests, kernel checks then timings, end to end with peak
# memory and a profile, tables last. Every step runs under `timeout` inside one overall
# budget, its results stream into one of 7 files, so a hang or a crash costs only itself.
#   scripts/bench_gpu.sh [OUT_DIR]    BENCH_BUDGET_S: whole run in seconds (default 470)
# For the device machine: its python3 has torch + triton; the project runs from this tree.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench-out}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the kernels must compile for the GPU (3.6's interpreter fails them)
py=${PYTHON:-python3}
budget=${BENCH_BUDGET_S:-470}
reserve=15  # seconds kept back for the tables
exec > >(tee "$out/run.log") 2>&1
tee_pid=$!

# step NAME CAP_S FILE CMD...: append CMD's stdout to $out/FILE (stderr: run.log); kill it
# after CAP_S seconds, or sooner when the overall budget would run out.
step() {
  local name=$1 cap=$2 file=$3
  shift 3
  local left=$((budget - reserve - SECONDS))
  ((cap > left)) && cap=$left
  if ((cap < 5)); then
    echo "== $name: skipped, out of time at ${SECONDS}s"
    return 0
  fi
  echo "== $name (at most ${cap}s, start ${SECONDS}s)"
  timeout -k 5 "$cap" "$@" >>"$out/$file"
  local rc=$?
  ((rc == 124 || rc == 137)) && echo "== $name: TIMEOUT after ${cap}s"
  echo "== $name: rc=$rc, ${SECONDS}s"
  return 0
}

step gpu 15 env.txt nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
  --format=csv
step env 60 env.txt $py -m quantvla_ros.workflows.gpu_smoke env --model pi05
cat "$out/env.txt"
step smoke 120 smoke.jsonl $py -m quantvla_ros.workflows.gpu_smoke gemm chunk \
  --model pi05-tiny --bits w8a8,w4a8
step gpu-tests 110 gpu-tests.txt $py -m pytest -m gpu -q -p no:cacheprovider --timeout=60 \
  --tb=short -rfE --durations=5 test
tail -n 15 "$out/gpu-tests.txt"
step kernel-checks 70 kernels.jsonl $py -m quantvla_ros.cli.main bench kernels --check \
  --no-timing --json
step kernel-timings 120 kernels.jsonl $py -m quantvla_ros.cli.main bench kernels --json \
  ${BENCH_SHAPES:+--shapes "$BENCH_SHAPES"}
for p in bf16 w8a8 w4a8 w4a4; do
  profile=""
  [[ $p == bf16 || $p == w4a8 ]] && profile=--profile
  step "e2e $p" 75 e2e.jsonl $py -m quantvla_ros.workflows.gpu_e2e --model pi05 \
    --precision "$p" --runs 10 --warmup 2 $profile
done
reserve=0
step tables 15 summary.md $py -m quantvla_ros.workflows.gpu_report "$out"
cat "$out/summary.md"
echo "== done in ${SECONDS}s; files: $(ls "$out" | tr '\n' ' ')"
exec >&- 2>&-
wait "$tee_pid" || true  # run.log complete before the machine collects $out
