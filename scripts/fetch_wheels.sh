#!/usr/bin/env bash
# Run on a machine WITH internet, before a GPU check on an offline machine: downloads into
# ./wheelhouse (or $1) what scripts/gpu_check.sh may need there (Python 3.12, x86_64 Linux):
# build tools, test packages, and the baselines (mamba-ssm as an sdist, installed there
# without its CUDA build; fla-core as a wheel). Copy the folder next to the repository.
set -euo pipefail
DEST=${1:-wheelhouse}
PYVER=${PYVER:-3.12}
mkdir -p "$DEST"
common=(--dest "$DEST" --python-version "$PYVER" --platform manylinux2014_x86_64
        --platform manylinux_2_17_x86_64 --platform any --only-binary=:all: --no-deps)
pip download "${common[@]}" setuptools wheel pybind11 ninja pytest pytest-benchmark \
  py-cpuinfo hypothesis sortedcontainers attrs iniconfig pluggy packaging einops fla-core
# the sdist's metadata step imports torch: use this environment's torch, skip its CUDA build
MAMBA_SKIP_CUDA_BUILD=TRUE pip download --dest "$DEST" --no-deps --no-build-isolation \
  --no-binary=:all: mamba-ssm
ls -1 "$DEST"
