# quantvla_ros developer entry points. `make test` and `make demo` work on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := $(CURDIR)/.venv
VBIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
CONSTRAINTS := $(VENV)/constraints.txt
WS := $(CURDIR)/ws

# Only this exact CPU build: a bare `torch` requirement makes pip pull a multi-GB CUDA build.
TORCH_VERSION := 2.13.0
PIP_PACKAGES := triton==3.7.1 transformers safetensors numpy pyyaml matplotlib tqdm pillow \
	"ros-rclpy[fastrtps]" ros-sensor-msgs ros-std-msgs ros-trajectory-msgs \
	ros-lifecycle-msgs ros-diagnostic-msgs rosbags \
	colcon-common-extensions colcon-ros pytest ruff

# Extra arguments for pytest under `make test`, e.g. make test PYTEST_ARGS='-k layering'.
PYTEST_ARGS ?=

export PATH := $(VBIN):$(PATH)
export AMENT_PREFIX_PATH := $(VENV)
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST

.PHONY: help setup test demo lint clean

help:
	@echo 'make setup  create .venv (CPU torch, triton, ROS 2 wheels, colcon) and install the package'
	@echo 'make test   colcon build + colcon test in ws/ (fails on any test failure)'
	@echo 'make demo   run `quantvla demo`'
	@echo 'make lint   ruff check'
	@echo 'make libero create .venv-libero (LIBERO simulator, its own numpy/mujoco) for the LIBERO tools'
	@echo 'make clean  remove ws/, build/, install/, log/ (keeps .venv)'

setup: $(STAMP)

# The editable install maps top-level packages found at install time: redo it if the
# package's __init__.py appears later.
$(STAMP): Makefile setup.py setup.cfg package.xml $(wildcard quantvla_ros/__init__.py)
	@test -x $(VBIN)/python || { echo '>> creating $(VENV)'; $(PYTHON) -m venv $(VENV); }
	@touch $(VENV)/COLCON_IGNORE
	@if ! $(VBIN)/python -c 'import torch' 2>/dev/null; then \
		echo '>> installing torch==$(TORCH_VERSION) (CPU build)'; \
		$(VBIN)/python -m pip install 'torch==$(TORCH_VERSION)'; \
	fi
	@# Pin whatever torch is installed now so that no later install can replace it.
	$(VBIN)/python -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' \
		> $(CONSTRAINTS)
	$(VBIN)/python -m pip install -c $(CONSTRAINTS) $(PIP_PACKAGES) \
		| { grep -v '^Requirement already satisfied' || true; }
	$(VBIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@
	@echo '>> setup done'

# colcon crawls every folder under its base paths for package.xml (site-packages holds
# dozens), so it runs in ws/ whose only source is a link to this repository; ws/COLCON_IGNORE
# stops the crawl where the link leads back into ws/.
$(WS)/src/quantvla_ros:
	@mkdir -p $(WS)/src
	@touch $(WS)/COLCON_IGNORE
	@ln -sfn ../.. $@

# AMENT_PREFIX_PATH is unset for colcon itself (it warns about a prefix without
# local_setup files); the tests get this venv on it from conftest.py.
# LIBERO (about 2 minutes and 2 GB, once) lets the closed-loop tests run; if it cannot be
# installed here those tests skip with the reason instead of failing the suite.
test: setup $(WS)/src/quantvla_ros
	@bash scripts/libero_setup.sh || echo '>> LIBERO setup failed: the simulator tests will skip'
	cd $(WS) && env -u AMENT_PREFIX_PATH colcon build --symlink-install --base-paths src \
		--event-handlers desktop_notification-
	@echo 'cd $(WS) && colcon test ... && colcon test-result --verbose'
	@cd $(WS) && rc=0; \
		env -u AMENT_PREFIX_PATH colcon test --base-paths src --return-code-on-test-failure \
			--event-handlers console_direct+ desktop_notification- \
			$(if $(strip $(PYTEST_ARGS)),--pytest-args $(PYTEST_ARGS)) || rc=1; \
		colcon test-result --test-result-base build --verbose || rc=1; \
		if [ "$$rc" != 0 ]; then echo '>> make test: FAILED'; exit 1; fi; \
		echo '>> make test: all tests passed'

demo: setup
	$(VBIN)/quantvla demo

# The LIBERO simulator pins numpy 1.26 and mujoco 2.3.7, so it gets its own venv; the policy
# side (.venv) talks to it through quantvla_ros/sim/ (a subprocess and a pipe).
.PHONY: libero
libero:
	@bash scripts/libero_setup.sh

lint: setup
	$(VBIN)/ruff check .

clean:
	rm -rf $(WS) build install log
