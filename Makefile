# The two commands: `make demo` and `make test`. Both install what is missing first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: deps venv demo test lint typecheck unit integration virtual bench clean

deps:
	@scripts/install-deps.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: deps venv
	@$(PY) scripts/demo.py

# The board's POSIX sh, where the trust path lives: every script that runs on the board.
DEVICE_SH := $(filter-out %.c %.h %.cmd fleet/device/inittab fleet/device/fstab,$(wildcard fleet/device/*))

lint: deps venv
	$(VENV)/bin/ruff check fleet signing tests bench scripts hardware-in-loop
	$(VENV)/bin/ruff format --check fleet signing
	shellcheck -s sh -S warning $(DEVICE_SH)

typecheck: venv
	$(VENV)/bin/mypy --strict fleet signing

unit: venv
	$(VENV)/bin/pytest -m unit -q

# Two workers, one test file each at a time (a file's booted board and builds stay in
# one process): the QEMU boards spend much of their time waiting on deadlines and
# reboots, so two of them share the two cores (49 min in one process, 39 in two).
test: deps venv lint typecheck
	$(VENV)/bin/pytest -q -ra --durations=40 -n 2 --dist loadfile

bench: deps venv
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
