# `make run` and `make test` do everything on a fresh machine (README.md, Quick start); `make lint`
# and `make docs` are the other two checks CI runs (.ci/run). Each installs what it needs at the
# exact versions CI ran (requirements.lock pins every extra; each install takes the versions of
# what it needs from it). The package's own bounds, for users who install it into their
# environment, are in pyproject.toml. VENV=DIR puts the virtual environment elsewhere (.venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
UV_VERSION := 0.13.9

$(VENV)/.installed: requirements.lock pyproject.toml
	@echo "installing fdrl_jax and its test tools at requirements.lock's versions into $(VENV) (a few minutes, once)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c requirements.lock -e '.[test]'
	touch $@

$(VENV)/.docs-installed: $(VENV)/.installed
	$(PIP) install --quiet -c requirements.lock -e '.[docs]'
	touch $@

.PHONY: install run test bench lock lint docs
install: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) -m fdrl_jax.main --config=configs/digits.py --workdir=runs/digits

test: $(VENV)/.installed
	$(PY) -m pytest -q -rs -n 2 --dist loadfile tests

bench: $(VENV)/.installed
	$(PY) experiments/bench_flow.py
	$(PY) experiments/bench_train.py
	$(PY) experiments/bench_resnet.py

# Re-resolves requirements.lock from pyproject.toml's bounds, keeping its pinned versions where they
# still fit (add UPGRADE=--upgrade for the newest allowed); then run `make test` on the new lock.
lock: $(VENV)/.installed
	$(PIP) install --quiet uv==$(UV_VERSION)
	$(VENV)/bin/uv pip compile pyproject.toml --universal --extra test --extra docs --extra lint \
	    --extra experiments --extra tensorboard --python-version 3.11 -o requirements.lock $(UPGRADE)

# ruff's rules and mypy's settings are in pyproject.toml.
lint: $(VENV)/.installed
	$(PIP) install --quiet -c requirements.lock ruff mypy
	$(VENV)/bin/ruff check fdrl_jax
	$(VENV)/bin/ruff format --check fdrl_jax
	$(VENV)/bin/mypy fdrl_jax

# The site, into site/, with warnings as errors; the two tutorials run during the build (minutes).
docs: $(VENV)/.docs-installed
	$(VENV)/bin/mkdocs build --strict
