#!/usr/bin/env bash
# On a GPU machine, from a fresh checkout: installs the package with its gpu extra into .venv-gpu and writes
# experiments/out/device_check.md (the paper configs' training step at B = 64, K = 100 in float32
# and bfloat16, compile time, temporary memory, sampling throughput, projected training time, and
# the bfloat16 flow's difference). About 8 minutes on one GPU. Extra arguments go to
# experiments/device_check.py (e.g. --configs cifar10).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-gpu/bin/python ]; then
  python3 -m venv .venv-gpu
fi
.venv-gpu/bin/python -m pip install --quiet --disable-pip-version-check -e '.[gpu]'
.venv-gpu/bin/python -c "import jax; print('devices:', jax.devices())"
.venv-gpu/bin/python -m experiments.device_check "$@"
