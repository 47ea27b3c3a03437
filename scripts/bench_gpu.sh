#!/usr/bin/env bash
# GPU measurements in one 10-minute call that keeps whatever it measured, the headline first:
# environment and smoke; end to end bf16 vs W4A8 on full pi05 (graphed, peak memory,
# profile) in time held back for it; the split-K stress (200 bit-exact graph replays per
# shape, two streams); the GPU tests; kernel tables (new rows first); tables. Every step
# runs under `timeout` inside one overall budget and streams into one of 7 files, so a
# hang or a crash costs only itself.
#   scripts/bench_gpu.sh [OUT_DIR]    BENCH_BUDGET_S: whole run in seconds (default 540)
#   BENCH_PCT: percent applied to every step's cap and reserve (the CPU rehearsal runs at 10)
# For the device machine: its python3 has torch + triton; the project runs from this tree.
# Expected wall time per step (estimates, not measured; GPU-REVIEW.md section 4): gpu 1-2 s,
# env 15-30, smoke 50-90, e2e bf16 30-60, e2e w4a8 30-60 (build, quantize, compiles,
# capture, 10 runs, profile), split-k stress 20-40, gpu-tests 60-90, kernels-new 30-60,
# kernels 40-80, e2e w8a8 30-60, tables 2-5: 310-580 s, so the last steps may be cut.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench-out}}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the kernels must compile for the GPU (3.6's interpreter fails them)
py=${PYTHON:-python3}
budget=${BENCH_BUDGET_S:-540}
pct=${BENCH_PCT:-100}
e2e_cap=100  # per headline e2e step
hold=$((e2e_cap * pct / 100))
reserve=$(((15 + 2 * e2e_cap) * pct / 100))  # tables, and both headline e2e until they start
min_cap=$((5 * pct / 100))
((min_cap < 1)) && min_cap=1
exec > >(tee "$out/run.log") 2>&1
tee_pid=$!

# step NAME CAP_S FILE CMD...: append CMD's stdout to $out/FILE (stderr: run.log); kill it
# after CAP_S seconds, or sooner when the overall budget (less the reserve) would run out.
step() {
  local name=$1 cap=$(($2 * pct / 100)) file=$3
  shift 3
  local left=$((budget - reserve - SECONDS))
  ((cap > left)) && cap=$left
  if ((cap < min_cap)); then
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

smi="nvidia-smi --format=csv --query-gpu"
step gpu 15 env.txt $smi=name,driver_version,memory.total,clocks.max.sm
step env 45 env.txt $py -m quantvla_ros.workflows.pi_gpu_smoke env --model pi05
cat "$out/env.txt"
step smoke 90 smoke.jsonl $py -m quantvla_ros.workflows.pi_gpu_smoke gemm chunk \
  --model pi05-tiny --bits w4a8
for p in bf16 w4a8; do  # the headline: held-back time, so earlier steps cannot eat it
  reserve=$((reserve - hold))
  step "e2e $p" $e2e_cap e2e.jsonl $py -m quantvla_ros.workflows.gpu_e2e --model pi05 \
    --precision "$p" --runs 10 --warmup 2 --profile
done
step split-k-stress 60 gpu-tests.txt $py -m pytest -m gpu -q -p no:cacheprovider \
  --timeout=50 --tb=short -rfE test/test_split_workspace.py
step gpu-tests 90 gpu-tests.txt $py -m pytest -m gpu -q -p no:cacheprovider --timeout=60 \
  --tb=short -rfE --durations=5 --ignore=test/test_split_workspace.py test
tail -n 20 "$out/gpu-tests.txt"
step clocks 10 env.txt $smi=clocks.sm,power.draw,temperature.gpu
# Rows never timed before: gate_up W4A8 (expert, prefix), SigLIP K / N = 4304 (per channel,
# K tail), per-channel W4A8, the split on / off pair, fp8 rowwise at prefill shapes.
step kernels-new 70 kernels.jsonl $py -m quantvla_ros.cli.main bench kernels --check --json \
  --shapes 50x1024x8192,968x2048x32768,768x4304x1152,768x1152x4304,50x4096x1024,16x2048x2048 \
  --ops bf16,w4a8,w4a8_gate_up,w4a8_pc,w4a8_nosplit,fp8_rowwise
step kernels 100 kernels.jsonl $py -m quantvla_ros.cli.main bench kernels --check --json \
  --ops bf16,int_mm,w8a8,w4a8,fp8_rowwise,act_quant8 ${BENCH_SHAPES:+--shapes "$BENCH_SHAPES"}
step clocks 10 env.txt $smi=clocks.sm,power.draw,temperature.gpu
step "e2e w8a8" 75 e2e.jsonl $py -m quantvla_ros.workflows.gpu_e2e --model pi05 \
  --precision w8a8 --runs 10 --warmup 2
reserve=0
step tables 15 summary.md $py -m quantvla_ros.workflows.gpu_report "$out"
cat "$out/summary.md"
echo "== done in ${SECONDS}s; files: $(ls "$out" | tr '\n' ' ')"
exec >&- 2>&-
wait "$tee_pid" || true  # run.log complete before the machine collects $out
