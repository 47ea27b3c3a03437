#!/usr/bin/env bash
# GPU measurements in one call (for the device machine: its python3 has torch + triton;
# the project runs from the source tree). Correctness first, then timings, tables last.
#   scripts/bench_gpu.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench-out}}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
$py -m pytest -m gpu -q -p no:cacheprovider test 2>&1 | tail -n 30 | tee "$out/gpu-tests.txt"
$py -m quantvla_ros.cli.main bench kernels --check --out "$out" --json > "$out/kernels.json"
for p in bf16 w8a8 w4a8 w4a4; do
  $py -m quantvla_ros.cli.main bench e2e --model pi05 --precision "$p" --device cuda \
      --runs 20 --warmup 3 --json > "$out/e2e-$p.json"
done
cat "$out/kernels.md"
$py - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("| precision | median ms | p90 ms | prefix ms | denoise ms | peak GPU MiB | weights MiB |")
print("|---|---|---|---|---|---|---|")
for p in ("bf16", "w8a8", "w4a8", "w4a4"):
    f = out / f"e2e-{p}.json"
    if not f.exists() or not f.read_text().strip():
        print(f"| {p} | failed | | | | | |")
        continue
    r = json.loads(f.read_text())
    print(f"| {p} | {r['latency_ms']['median']:.2f} | {r['latency_ms']['p90']:.2f} | "
          f"{r['prefix_ms']:.2f} | {r['denoise_ms']:.2f} | {r['peak_gpu_mem_mb']:.0f} | "
          f"{r['weight_bytes'] / 2**20:.0f} |")
PY
