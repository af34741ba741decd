#!/usr/bin/env bash
# Runs the CPU checks on another torch / Triton stack than the one `make test` installs, without
# a GPU. Default: the GPU machine's stack (torch 2.11, Triton 3.6); CI has torch 2.13, Triton 3.9.
#
#   scripts/stack_check.sh [TORCH_SPEC] [TRITON_VERSION]     (default torch==2.11.0 3.6.0)
#
# In a separate virtual environment (.venv-stack-<torch>-<triton>): the package on that stack, then
#   1. every Triton kernel compiled ahead of time for sm_90 and sm_80 (scripts/triton_aot_check.py);
#   2. the whole test suite (Triton kernels under TRITON_INTERPRET=1).
# PyPI's torch 2.11 for Linux is the CUDA build: its first install downloads ~3 GB of CUDA
# libraries (they load without a GPU). Triton 3.6's interpreter needs numpy < 2.3 (it converts
# 1-element arrays to Python ints, which numpy 2.3 and later refuse): the interpreter's limit,
# not the kernels'.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC=${1:-torch==2.11.0}
TRITON_VERSION=${2:-3.6.0}
VENV=.venv-stack-${TORCH_SPEC##*=}-$TRITON_VERSION
PY=$VENV/bin/python
[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -m pip install -q "$TORCH_SPEC" "triton==$TRITON_VERSION" "numpy<2.3" setuptools wheel \
    pybind11 ninja pytest pytest-benchmark hypothesis
MMHNET_BUILD_CUDA=0 "$PY" -m pip install -q --no-build-isolation --no-deps -e .
"$PY" -c "import triton, torch, numpy; print('torch', torch.__version__, '| triton', triton.__version__, '| numpy', numpy.__version__)"
"$PY" scripts/triton_aot_check.py --arch 90 80
"$PY" -m pytest -q -p no:cacheprovider
