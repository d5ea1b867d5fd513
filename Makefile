# Two targets do everything on a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	touch $@

.PHONY: install run test bench
install: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) -m fdrl_jax.main --config=configs/digits.py --workdir=runs/digits

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadfile tests

bench: $(VENV)/.installed
	$(PY) experiments/bench_flow.py
	$(PY) experiments/bench_train.py
	$(PY) experiments/bench_resnet.py
