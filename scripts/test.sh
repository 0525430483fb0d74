#!/usr/bin/env bash
# Set up a virtual environment in .venv and run the test suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[test]"
python -m pytest -q "$@"
