PYTHON ?= python3
PIP = $(PYTHON) -m pip
# The torch build these machines serve from local disk; elsewhere any recent torch works.
TORCH = torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint bench bench-startup bench-canvas bench-style bench-speed bench-quick bench-train bench-wheels bench-gpu bench-gpu-world \
	bench-gpu-crossflow bench-pag bench-init models clean

install:
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'

test:
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check clipag cli tests bench examples research

# The generation step as the user waits for it (world-robust and ViT-B-32; OUT.json/.md in
# bench/results/speed-DATE), then robustify throughput. bench-quick: one timed step.
bench: bench-startup bench-speed bench-canvas bench-style bench-train

bench-startup:
	$(PYTHON) bench/startup.py

bench-speed:
	$(PYTHON) bench/speed.py

# a step on each canvas in parts (render, views, model, backward, update) at CLIPDraw's
# 224 px and 4 views, world-robust and ViT-B-32 (random weights)
bench-canvas:
	$(PYTHON) bench/canvas_speed.py

bench-style:
	$(PYTHON) bench/style_speed.py

bench-quick:
	$(PYTHON) bench/speed.py --quick

bench-train:
	$(PYTHON) bench/train_speed.py

# On a connected machine: the wheels a torch-only GPU box lacks (PYVER = the box's Python).
PYVER ?= 3.12
bench-wheels:
	bash bench/gpu-wheels.sh $(PYVER)

# On the GPU box: the one-command check (tests, generate, speed, throughput; 8 minutes).
bench-gpu:
	bash bench/gpu.sh

bench-gpu-world:
	bash bench/gpu-world.sh

bench-gpu-crossflow:
	bash bench/gpu-crossflow.sh

bench-pag:
	$(PYTHON) -m clipag bench pag

bench-init:
	$(PYTHON) -m clipag bench init

clean:
	rm -rf build *.egg-info .pytest_cache
