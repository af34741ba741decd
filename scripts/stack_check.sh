#!/usr/bin/env bash
# Checks the Triton kernels against another Triton release than the one `make test` installs,
# without a GPU: the GPU machine this project is measured on has Triton 3.6, CI has 3.9.
#
#   scripts/triton_version_check.sh [TRITON_VERSION]      (default 3.6.0)
#
# In a separate virtual environment (.venv-triton-<version>): the package with that Triton, then
#   1. every Triton kernel compiled ahead of time for sm_90 and sm_80 (scripts/triton_aot_check.py);
#   2. the Triton tests under TRITON_INTERPRET=1.
# Triton 3.6's interpreter needs numpy < 2.3 (it converts 1-element arrays to Python ints, which
# numpy 2.3 and later refuse); that is the interpreter's limit, not the kernels'.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-3.6.0}
VENV=.venv-triton-$VERSION
PY=$VENV/bin/python
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -m pip install -q "$TORCH_SPEC" "triton==$VERSION" "numpy<2.3" setuptools wheel pybind11 \
    ninja pytest hypothesis
MMHNET_BUILD_CUDA=0 "$PY" -m pip install -q --no-build-isolation --no-deps -e .
"$PY" -c "import triton, torch, numpy; print('triton', triton.__version__, '| torch', torch.__version__, '| numpy', numpy.__version__)"
"$PY" scripts/triton_aot_check.py --arch 90 80
"$PY" -m pytest -q -p no:cacheprovider -k triton tests/test_scan_triton.py tests/test_scan_ops.py \
    tests/test_routing_ops.py tests/test_routing_library.py tests/test_layers_bimamba2.py
