#!/usr/bin/env bash
# The fidelity table of docs/libero.md: quantize the trained checkpoint in each
# scheme, calibrated on held-out demonstration frames (unlabeled, never evaluation episodes),
# then the offline metrics and the paired closed-loop evaluation of fp32 / W8A8 / W4A8 / W4A4
# on the same episodes. Resumable: finished artifacts and episodes are kept.
#   bash scripts/libero_fidelity.sh [INITS] [WORKERS]      (default 0-19 and 2)
# Environment: DEMOS (the checkpoint's demonstrations, default data/libero_object_s1, recorded
# as its card says), EXTRA=1 adds bf16 and the W4A8 ablations (no ATM / OHB, backbone balance).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
INITS="${1:-0-19}"
WORKERS="${2:-2}"
CKPT=checkpoints/pi05-libero-object
DEMOS="${DEMOS:-data/libero_object_s1}"
BUF="${DEMOS}_calib"
ART=artifacts/libero
OUT=reports/libero
PY=.venv/bin/python
Q=.venv/bin/quantvla
export PYTHONPATH="$ROOT"
mkdir -p "$ART" "$OUT"

[[ -d $DEMOS ]] || { echo "no $DEMOS: record it as $CKPT/README.md says" >&2; exit 1; }
[[ -d $BUF ]] || $PY scripts/demos_to_buffer.py --demos "$DEMOS" --include '*_ep000[01].npz' \
	--per-episode 3 --out "$BUF"

quantize() {  # name, then quantize arguments
	local name=$1
	shift
	[[ -f $ART/$name/manifest.yaml ]] || $Q quantize --checkpoint $CKPT --calib "$BUF" \
		--out $ART/$name "$@" | tee "$OUT/quantize-$name.txt"
}
NAMES=(w8a8 w4a8 w4a4)
quantize w8a8 --bits w8a8
quantize w4a8 --bits w4a8
quantize w4a4 --bits w4a4
POLICIES=(--policy $CKPT)
if [[ ${EXTRA:-0} == 1 ]]; then
	quantize w4a8-no-atm-ohb --bits w4a8 --no-atm --no-ohb
	quantize w4a8-backbone-balance --bits w4a8 --balance-backbone
	NAMES+=(w4a8-no-atm-ohb w4a8-backbone-balance)
	POLICIES+=(--policy $CKPT@bf16)
fi
for name in "${NAMES[@]}"; do
	POLICIES+=(--policy $ART/$name)
	[[ -f $OUT/report-$name/report.json ]] || $Q report --artifact $ART/$name --calib "$BUF" \
		--out $OUT/report-$name > /dev/null
done
# offline action error on held-out episodes (never trained on; calibration saw 3 of their
# frames, without actions)
$PY scripts/libero_offline_metrics.py --demos "$DEMOS" --include '*_ep0001.npz' \
	"${POLICIES[@]}" --json $OUT/offline.json | tee $OUT/offline.md

$Q eval libero "${POLICIES[@]}" --suite libero_object --tasks all --inits "$INITS" \
	--workers "$WORKERS" --threads 1 --out $OUT/eval --video $OUT/video --video-episodes 1
