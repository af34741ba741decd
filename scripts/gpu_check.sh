#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU and no internet:
#   builds the package (CUDA extension included), runs the GPU tests (bf16 included), runs the
#   benchmark runner against the baselines, and prints a short table at the end.
#
#   OUT=/some/dir scripts/gpu_check.sh [WHEELHOUSE]
#
# WHEELHOUSE (default $MMHNET_WHEELHOUSE, else ./wheelhouse) holds files downloaded beforehand
# with scripts/fetch_wheels.sh: build tools and test packages missing on the machine, and the
# baselines (the mamba-ssm sdist, installed without its CUDA build; the fla-core wheel). A
# baseline that cannot be found is skipped, and the script says so.
# Files written under $OUT: summary.txt, build.log, tests.txt, bench.txt, tables/<section>.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
WHEELS=${1:-${MMHNET_WHEELHOUSE:-$PWD/wheelhouse}}
PY=${PYTHON:-python3}
TEST_TIMEOUT=${TEST_TIMEOUT:-300}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-240}
# the kernel sections; the 5-minute profile runs too, within a small time budget
BENCH_SECTIONS=${BENCH_SECTIONS:-scan precision routing layers profile}
export MMHNET_BENCH_PROFILE_BUDGET=${MMHNET_BENCH_PROFILE_BUDGET:-60}
# only the GPU in this machine (sm_90 for an H100 or H200): half the CUDA compile time of "80;90"
if [ -z "${MMHNET_CUDA_ARCHS:-}" ]; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
  [ -n "$cap" ] && export MMHNET_CUDA_ARCHS="$cap"
fi
mkdir -p "$OUT"
: > "$OUT/summary.txt"
say() { echo "== $*" | tee -a "$OUT/summary.txt"; }
offline_pip() { "$PY" -m pip install --no-index --find-links "$WHEELS" "$@"; }

say "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%MZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$OUT/summary.txt"
"$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| triton', triton.__version__)" 2>&1 | tee -a "$OUT/summary.txt"

# 1. build tools and test packages: use what is installed, take the rest from the wheelhouse
for mod in setuptools pybind11 ninja pytest pytest_benchmark hypothesis; do
  if ! "$PY" -c "import $mod" 2>/dev/null; then
    offline_pip "${mod//_/-}" >/dev/null 2>&1 && say "installed $mod from $WHEELS" \
      || say "missing $mod and not in $WHEELS"
  fi
done

# 2. build (the CUDA extension is required here)
if MMHNET_BUILD_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . \
    > "$OUT/build.log" 2>&1; then
  say "build: ok ($("$PY" -m mmhnet.cli info 2>&1 | tr '\n' ' '))"
else
  say "build: FAILED, see build.log"; tail -20 "$OUT/build.log"
fi

# 3. baselines, from the wheelhouse only
if ! "$PY" -c "import einops" 2>/dev/null; then offline_pip einops >/dev/null 2>&1; fi
# mamba-ssm: the sdist is unpacked and put on PYTHONPATH, never built: the benchmark uses only
# its Triton SSD and enters the package without its __init__ (which needs the CUDA build)
if "$PY" -c "import mamba_ssm.ops.triton.ssd_combined" 2>/dev/null; then
  say "baseline mamba_ssm: already installed"
elif ls "$WHEELS"/mamba_ssm-*.tar.gz >/dev/null 2>&1; then
  MAMBA_SRC=$(mktemp -d)
  tar xzf "$(ls "$WHEELS"/mamba_ssm-*.tar.gz | tail -1)" -C "$MAMBA_SRC"
  export PYTHONPATH="$(ls -d "$MAMBA_SRC"/mamba_ssm-* | tail -1)${PYTHONPATH:+:$PYTHONPATH}"
  say "baseline mamba_ssm: sdist unpacked (Triton SSD only, no CUDA build)"
else
  say "baseline mamba_ssm: skipped (no mamba_ssm-*.tar.gz in $WHEELS)"
fi
if "$PY" -c "import fla" 2>/dev/null; then
  say "baseline fla: already installed"
elif ls "$WHEELS"/fla_core-*.whl >/dev/null 2>&1; then
  offline_pip --no-deps "$(ls "$WHEELS"/fla_core-*.whl | tail -1)" >> "$OUT/build.log" 2>&1 \
    && say "baseline fla: installed fla-core" || say "baseline fla: install FAILED, skipped"
else
  say "baseline fla: skipped (no fla_core-*.whl in $WHEELS)"
fi

# 4. GPU tests: every Triton / CUDA test file (CPU-only files are CI's job)
# (test_large_indexing's cpu cases are CI's too: deselected here)
GPU_TESTS=$(ls tests/test_scan_triton.py tests/test_scan_native.py tests/test_scan_ops.py \
            tests/test_routing*.py tests/test_layers*.py tests/test_large_indexing.py 2>/dev/null)
timeout "$TEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider $GPU_TESTS \
  -k "not (test_large_indexing and cpu)" > "$OUT/tests.txt" 2>&1
rc=$?
say "GPU tests: exit $rc: $(tail -1 "$OUT/tests.txt")"

# 5. benchmarks against the baselines
timeout "$BENCH_TIMEOUT" "$PY" -m benchmarks.run --only $BENCH_SECTIONS --out "$OUT/tables" \
  > "$OUT/bench.txt" 2>&1
say "benchmarks: exit $?"

# 6. the short table
echo
grep -E "^(###|\|)" "$OUT/bench.txt" | head -60
echo
cat "$OUT/summary.txt"
