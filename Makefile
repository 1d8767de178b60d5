PYTHON ?= python3
PIP = $(PYTHON) -m pip
# The torch build these machines serve from local disk; elsewhere any recent torch works.
TORCH = torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint bench bench-speed bench-train bench-pag bench-init models clean

install:
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'

test:
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check clipag cli tests bench examples research

bench: bench-speed bench-train

bench-speed:
	$(PYTHON) bench/speed.py

bench-train:
	$(PYTHON) bench/train_speed.py

bench-pag:
	$(PYTHON) -m clipag bench pag

bench-init:
	$(PYTHON) -m clipag bench init

clean:
	rm -rf build *.egg-info .pytest_cache
