#!/usr/bin/env bash
# The fidelity table of README (LIBERO section): quantize the trained checkpoint in each
# scheme, calibrated on held-out demonstration frames (unlabeled), then the offline metrics
# and the paired closed-loop evaluation. Resumable: finished artifacts and episodes are kept.
#   bash scripts/libero_fidelity.sh [INITS] [WORKERS]      (default 0-4 and 2)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
INITS="${1:-0-4}"
WORKERS="${2:-2}"
CKPT=checkpoints/pi05-libero-object
DEMOS=data/libero_object
BUF=data/libero_calib
ART=artifacts/libero
OUT=reports/libero
PY=.venv/bin/python
Q=.venv/bin/quantvla
export PYTHONPATH="$ROOT"
mkdir -p "$ART" "$OUT"

[[ -d $BUF ]] || $PY scripts/demos_to_buffer.py --demos $DEMOS --include '*_ep000[01].npz' \
	--per-episode 3 --out $BUF

quantize() {  # name, then quantize arguments
	local name=$1
	shift
	[[ -f $ART/$name/manifest.yaml ]] || $Q quantize --checkpoint $CKPT --calib $BUF \
		--out $ART/$name "$@" | tee "$OUT/quantize-$name.txt"
}
quantize w8a8 --bits w8a8
quantize w4a8 --bits w4a8
quantize w4a8-no-atm-ohb --bits w4a8 --no-atm --no-ohb
quantize w4a8-backbone-balance --bits w4a8 --balance-backbone
quantize w4a4 --bits w4a4

for name in w8a8 w4a8 w4a8-no-atm-ohb w4a8-backbone-balance w4a4; do
	[[ -f $OUT/report-$name/report.json ]] || $Q report --artifact $ART/$name --calib $BUF \
		--out $OUT/report-$name > /dev/null
done
$PY scripts/libero_offline_metrics.py --demos $DEMOS --include '*_ep0001.npz' --policy $CKPT \
	$(for n in w8a8 w4a8 w4a8-no-atm-ohb w4a8-backbone-balance w4a4; do echo --policy $ART/$n; done) \
	--json $OUT/offline.json | tee $OUT/offline.md

$Q eval libero --policy $CKPT --policy $CKPT@bf16 --policy $ART/w8a8 --policy $ART/w4a8 \
	--policy $ART/w4a8-no-atm-ohb --policy $ART/w4a8-backbone-balance --policy $ART/w4a4 \
	--suite libero_object --tasks all --inits "$INITS" --workers "$WORKERS" \
	--out $OUT/eval --video $OUT/video --video-episodes 1
