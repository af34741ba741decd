#!/usr/bin/env bash
# The GPU check: what a lent GPU machine (no internet; 15 minutes of it in all, 10 a command)
# must answer, in ONE command of at most 9 minutes: do the kernels build and run right on the
# GPU, and how fast are they against mamba_ssm and fla. Four stages, each with a deadline; each
# writes its section of summary.md as it ends, and its log under $OUT as it runs, so a stage
# killed at its deadline (or the whole command killed) still leaves what finished.
#
#   1. env+build  (<= 120 s) nvidia-smi, versions, commit; the package built for this GPU's arch
#                            only (MMHNET_CUDA_ARCHS from nvidia-smi's compute_cap), MAX_JOBS =
#                            cores; a failed CUDA build is reported (the tail of its log) and the
#                            CPU-only build (MMHNET_BUILD_CUDA=0) is made instead
#   2. smoke      (<= 60 s)  scripts/gpu_smoke.py with CUDA_LAUNCH_BLOCKING=1, one process per
#                            case: each backend x {float32, bfloat16} forward + backward on packed
#                            sequences against the float64 reference, a routing round trip, and
#                            compute-sanitizer memcheck + racecheck on a tiny CUDA-backend case
#   3. tests      (<= 240 s) the GPU cases of the test suite (-k "cuda or triton"; CPU-only files
#                            are CI's), scan files first, over pytest-xdist workers so compiles
#                            spread, a per-test timeout, and SIGINT at the deadline so that pytest
#                            prints its summary (-rfE --durations=20)
#   4. bench      (<= 150 s) the baselines from the wheelhouse (mamba_ssm's sdist unpacked onto
#                            PYTHONPATH, never built; fla-core's wheel without its dependencies),
#                            each warmed up (compiled, autotuned) under a deadline of its own and
#                            left out of the tables if it misses it; then the target table first,
#                            then the scan and precision tables
# The stages add up to more than 540 s: the tests stage gives way so that the bench keeps its time.
#
# From the device tool (the checkout travels there; ../shared and .git do not):
#   here, once:  rm -rf wheelhouse && cp -r ../shared/wheelhouse wheelhouse    (.gitignore'd)
#   run(command="MMHNET_COMMIT=<git rev-parse --short HEAD, run here> bash scripts/gpu_check.sh",
#       carry=["wheelhouse"], timeout_s=560)
# The reply's output_tail ends with summary.md; the six files come back under files_at.
# A wheelhouse is looked for in ./wheelhouse, then ../shared/wheelhouse; without one the bench
# runs without the baselines, and says so. Nothing else is needed beyond the repository.
#
# Files under $OUT (6; everything else goes to a temporary folder):
#   summary.md     each stage's status, time and failures, and the benchmark tables
#   build.log      the build(s)                 smoke.log   the smoke cases, one line each
#   sanitizer.log  compute-sanitizer's output   tests.txt   pytest's output
#   bench.md       the benchmark tables as `python -m benchmarks.run` prints them
#
# Environment, in seconds: GPU_CHECK_TOTAL_S 540; the stages' GPU_CHECK_BUILD_S 120,
# GPU_CHECK_SMOKE_S 60, GPU_CHECK_TESTS_S 240, GPU_CHECK_BENCH_S 150; GPU_CHECK_MIN_TESTS_S 60
# (the stages before the tests keep it for them); GPU_CHECK_FALLBACK_S 40 (the CUDA build keeps
# it for the CPU-only one), GPU_CHECK_REPORT_S 15 (the builds keep it for the versions report);
# GPU_CHECK_WARMUP_S 60 (the baselines' warm-ups), GPU_CHECK_MIN_TABLES_S 30 (kept after them for
# the tables); GPU_CHECK_TEST_TIMEOUT_S 120 (one test); GPU_CHECK_GRACE_S 10 (SIGTERM to SIGKILL,
# inside each deadline), GPU_CHECK_TEST_GRACE_S 25 (the tests' SIGINT to SIGKILL).
# Others: GPU_CHECK_WORKERS (cores), GPU_CHECK_TEST_FILES, GPU_CHECK_TEST_K, GPU_CHECK_SMOKE_ARGS,
# GPU_CHECK_BENCH_SECTIONS ("target scan precision"), GPU_CHECK_WHEELHOUSES (the folders looked
# in), PYTHON (python3), MMHNET_CUDA_ARCHS, MMHNET_COMMIT (the commit, where .git is absent).
# tests/test_gpu_check.py runs every stage on CPU with the GPU tools and heavy commands stubbed.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/out}
PY=${PYTHON:-python3}
# (nproc would count OMP_NUM_THREADS, not the cores)
CORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1)
TOTAL_S=${GPU_CHECK_TOTAL_S:-540}
BUILD_S=${GPU_CHECK_BUILD_S:-120}
SMOKE_S=${GPU_CHECK_SMOKE_S:-60}
TESTS_S=${GPU_CHECK_TESTS_S:-240}
BENCH_S=${GPU_CHECK_BENCH_S:-150}
MIN_TESTS_S=${GPU_CHECK_MIN_TESTS_S:-60}
FALLBACK_S=${GPU_CHECK_FALLBACK_S:-40}
WARMUP_S=${GPU_CHECK_WARMUP_S:-60}
MIN_TABLES_S=${GPU_CHECK_MIN_TABLES_S:-30}
TEST_TIMEOUT_S=${GPU_CHECK_TEST_TIMEOUT_S:-120}
GRACE_S=${GPU_CHECK_GRACE_S:-10}
# pytest-xdist waits 10 s for its workers after SIGINT before it prints the summary
TEST_GRACE_S=${GPU_CHECK_TEST_GRACE_S:-25}
REPORT_S=${GPU_CHECK_REPORT_S:-15}
WORKERS=${GPU_CHECK_WORKERS:-$CORES}
TEST_K=${GPU_CHECK_TEST_K:-cuda or triton}
SMOKE_ARGS=${GPU_CHECK_SMOKE_ARGS:-}
BENCH_SECTIONS=${GPU_CHECK_BENCH_SECTIONS:-target scan precision}
WHEELHOUSES=${GPU_CHECK_WHEELHOUSES:-$REPO/wheelhouse $REPO/../shared/wheelhouse}
# Test files of CPU-only code (CI runs them): never collected here.
CPU_ONLY_TESTS="test_scan_reference.py test_model*.py test_package.py test_profile*.py
  test_triton_aot.py test_nvcc_compile.py test_interp_rounding.py test_gpu_check.py test_cli*.py"
# pytest with SIGINT turned back into KeyboardInterrupt: a shell without job control starts its
# background children with SIGINT ignored, and a Python started so never sees the deadline's
# SIGINT (so would print no summary before the SIGKILL).
PYTEST_MAIN='import signal, sys, pytest
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(pytest.main())'

mkdir -p "$OUT"
TMPD=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
SUMMARY=$OUT/summary.md
START=$(date +%s)
END=$((START + TOTAL_S))

now() { date +%s; }
note() { printf '%s\n' "$*" >> "$TMPD/stage.md"; }   # a line of the running stage's section
fenced() { echo '```'; cat; echo '```'; }

# run_until DEADLINE SIGNAL GRACE CMD...: CMD, sent SIGNAL GRACE seconds before DEADLINE (epoch
# seconds) and SIGKILL at it (timeout signals CMD's whole process group); returns 124 when it
# was stopped, and without starting CMD when no time is left.
run_until() {
  local deadline=$1 sig=$2 grace=$3
  shift 3
  local left=$((deadline - grace - $(now)))
  if [ "$left" -le 0 ]; then
    echo "not started: no time left before the deadline"
    return 124
  fi
  timeout -s "$sig" -k "$grace" "$left" "$@"
}

# stage_begin NAME OWN_S RESERVE_S: the stage's deadline STAGE_END is OWN_S from now, or less
# where the total deadline must keep RESERVE_S for the stages after it.
stage_begin() {
  STAGE=$1
  STAGE_T0=$(now)
  local left=$((END - STAGE_T0 - $3))
  STAGE_BUDGET=$(($2 < left ? $2 : left))
  [ "$STAGE_BUDGET" -lt 0 ] && STAGE_BUDGET=0
  STAGE_END=$((STAGE_T0 + STAGE_BUDGET))
  : > "$TMPD/stage.md"
  echo "== $(date -u +%H:%M:%S) $STAGE: budget $STAGE_BUDGET s"
}

# stage_end STATUS: the stage's section into summary.md, its row into the overview.
stage_end() {
  local took=$(($(now) - STAGE_T0))
  { echo; echo "## $STAGE: $1 ($took s of $STAGE_BUDGET s)"; echo; cat "$TMPD/stage.md"; } \
    >> "$SUMMARY"
  echo "| $STAGE | $1 | $took | $STAGE_BUDGET |" >> "$TMPD/overview.md"
  echo "== $(date -u +%H:%M:%S) $STAGE: $1 ($took s)"
}

commit_id() {
  if [ -n "${MMHNET_COMMIT:-}" ]; then echo "$MMHNET_COMMIT"; return; fi
  local c
  if c=$(git rev-parse --short HEAD 2>/dev/null); then
    git diff --quiet HEAD 2>/dev/null && echo "$c" || echo "$c (with uncommitted changes)"
  else
    echo "unknown (no .git here; set MMHNET_COMMIT)"
  fi
}

# ---------------------------------------------------------------------------------------------
# 1. environment and build
# ---------------------------------------------------------------------------------------------
# "90" for compute capability 9.0; empty without a GPU (nvidia-smi then prints its error on
# stdout, which must not become an arch)
gpu_arch() {
  local cap
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1)
  cap=${cap//[. ]/}
  [[ $cap =~ ^[0-9]+[a-z]?$ ]] && echo "$cap"
}

build_package() {   # build_package 1|0 DEADLINE: pip's editable build, into build.log
  local archs=()
  [ -n "$ARCHS" ] && archs=(MMHNET_CUDA_ARCHS="$ARCHS")
  echo "=== $(date -u +%T) MMHNET_BUILD_CUDA=$1 ${archs[*]} MAX_JOBS=$CORES" >> "$OUT/build.log"
  run_until "$2" TERM "$GRACE_S" env MMHNET_BUILD_CUDA="$1" "${archs[@]}" MAX_JOBS="$CORES" \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . >> "$OUT/build.log" 2>&1
}

env_report() {   # versions and what the build gave, from the Python that runs everything
  run_until "$STAGE_END" TERM "$GRACE_S" "$PY" -c '
import sys, torch
try:
    import triton
    tv = triton.__version__
except ImportError as err:
    tv = f"not importable ({err})"
from mmhnet.ops._backend import native_module
print(f"- python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"triton {tv}; torch sees {torch.cuda.device_count()} GPU(s)")
for name in ("_C", "_C_cuda"):
    state = "built" if native_module(name) else "NOT importable"
    print(f"- mmhnet.{name}: {state}")
' 2>&1 | tail -6
}

stage_env_build() {
  stage_begin env+build "$BUILD_S" $((SMOKE_S + MIN_TESTS_S + BENCH_S))
  note "- commit $(commit_id), started $(date -u -d "@$START" +%Y-%m-%dT%H:%M:%SZ)"
  if command -v nvidia-smi >/dev/null; then
    note "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
      --format=csv,noheader 2>&1 | head -1)"
  else
    note "- GPU: nvidia-smi not found"
  fi
  ARCHS=${MMHNET_CUDA_ARCHS:-$(gpu_arch)}
  note "- cores $CORES; nvcc: $(command -v nvcc || echo 'not found'); compute-sanitizer:" \
    "$(command -v compute-sanitizer || echo 'not found')"
  : > "$OUT/build.log"
  local status=ok t0=$(now) rc
  # the CUDA build leaves FALLBACK_S for the CPU-only one, which leaves REPORT_S for env_report
  build_package 1 $((STAGE_END - FALLBACK_S))
  rc=$?
  if [ $rc -eq 0 ]; then
    note "- CUDA build for sm_${ARCHS:-default}: ok in $(($(now) - t0)) s"
  else
    [ $rc -eq 124 ] && why="stopped at its deadline after $(($(now) - t0)) s" || why="exit $rc"
    note "- CUDA build for sm_${ARCHS:-default}: FAILED ($why); the end of build.log:"
    tail -15 "$OUT/build.log" | fenced >> "$TMPD/stage.md"
    t0=$(now)
    if build_package 0 $((STAGE_END - REPORT_S)); then
      status="CUDA build failed; CPU-only build ok"
      note "- CPU-only build (MMHNET_BUILD_CUDA=0): ok in $(($(now) - t0)) s"
    else
      status="FAIL: no build"
      note "- CPU-only build (MMHNET_BUILD_CUDA=0): FAILED too; the end of build.log:"
      tail -15 "$OUT/build.log" | fenced >> "$TMPD/stage.md"
    fi
  fi
  env_report >> "$TMPD/stage.md"
  stage_end "$status"
}

# ---------------------------------------------------------------------------------------------
# 2. smoke
# ---------------------------------------------------------------------------------------------
stage_smoke() {
  stage_begin smoke "$SMOKE_S" $((MIN_TESTS_S + BENCH_S))
  : > "$OUT/smoke.log"
  : > "$OUT/sanitizer.log"
  # the cases' own budget ends before the stage's SIGTERM, so that the runner reports them
  local budget=$((STAGE_BUDGET - GRACE_S - 3)) rc status
  [ $budget -lt 1 ] && budget=1
  # shellcheck disable=SC2086 # SMOKE_ARGS is a list of words
  run_until "$STAGE_END" TERM "$GRACE_S" env CUDA_LAUNCH_BLOCKING=1 "$PY" scripts/gpu_smoke.py \
    --jobs "$CORES" --budget "$budget" --sanitizer-log "$OUT/sanitizer.log" $SMOKE_ARGS \
    >> "$OUT/smoke.log" 2>&1
  rc=$?
  grep -E '^(PASS|FAIL|SKIP|TIMEOUT|smoke:) ' "$OUT/smoke.log" | sed 's/^/- /' >> "$TMPD/stage.md"
  case $rc in
    0) status=ok ;;
    124) status="KILLED at the deadline"; note "- (stopped at the deadline; see smoke.log)" ;;
    *) status="FAIL (exit $rc)"
       # no closing line: the runner itself broke, and its traceback says why
       grep -qE '^smoke: ' "$OUT/smoke.log" \
         || tail -15 "$OUT/smoke.log" | fenced >> "$TMPD/stage.md" ;;
  esac
  stage_end "$status"
}

# ---------------------------------------------------------------------------------------------
# 3. GPU tests
# ---------------------------------------------------------------------------------------------
gpu_test_files() {   # scan files first (the slowest compiles), then the rest, CPU-only ones out
  if [ -n "${GPU_CHECK_TEST_FILES:-}" ]; then
    echo "$GPU_CHECK_TEST_FILES"
    return
  fi
  local f pattern seen=" "
  for f in tests/test_scan_*.py tests/test_*.py; do
    [ -f "$f" ] || continue
    case $seen in *" $f "*) continue ;; esac
    for pattern in $CPU_ONLY_TESTS; do
      # shellcheck disable=SC2254 # the patterns are globs
      case ${f#tests/} in $pattern) continue 2 ;; esac
    done
    seen="$seen$f "
  done
  echo $seen
}

stage_tests() {
  stage_begin tests "$TESTS_S" "$BENCH_S"
  local files args rc status
  read -r -a files <<< "$(gpu_test_files)"
  args=(-p no:cacheprovider -rfE --durations=20 -k "$TEST_K")
  if "$PY" -c "import xdist" 2>/dev/null; then
    # --dist load spreads one file's tests over the workers too, and with them the compiles
    # (loadfile would put all of test_scan_triton.py's on one worker)
    args+=(-n "$WORKERS" --dist load)
  else
    note "- pytest-xdist not importable: one process"
  fi
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    args+=("--timeout=$TEST_TIMEOUT_S")
  else
    note "- pytest-timeout not importable: no per-test timeout"
  fi
  local shown
  shown=$(printf ' %q' "${args[@]}" "${files[@]}")
  note "- \`pytest$shown\`"
  echo "\$ pytest$shown" > "$OUT/tests.txt"
  run_until "$STAGE_END" INT "$TEST_GRACE_S" "$PY" -c "$PYTEST_MAIN" "${args[@]}" "${files[@]}" \
    >> "$OUT/tests.txt" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    1) status=FAIL ;;
    124) status="INTERRUPTED at the deadline" ;;
    5) status="FAIL: no test selected" ;;
    *) status="FAIL (pytest exit $rc)" ;;
  esac
  note "- result: $(grep -E '^=+ .*( in [0-9.]+s).* =+$' "$OUT/tests.txt" | tail -1 \
    || echo 'no pytest summary line (see tests.txt)')"
  grep -qE 'KeyboardInterrupt' "$OUT/tests.txt" && note "- pytest was interrupted (SIGINT)"
  grep -E '^(FAILED|ERROR) ' "$OUT/tests.txt" | head -40 | sed 's/^/- /' >> "$TMPD/stage.md"
  stage_end "$status"
}

# ---------------------------------------------------------------------------------------------
# 4. benchmarks
# ---------------------------------------------------------------------------------------------
find_wheelhouse() {
  local d
  for d in $WHEELHOUSES; do
    [ -d "$d" ] && { (cd "$d" && pwd); return 0; }
  done
  return 1
}

# BASELINE_PATH[name]: what the baseline adds to PYTHONPATH ("" when it is installed already);
# a baseline without an entry is not available.
declare -A BASELINE_PATH
prepare_baselines() {
  local wheels file
  if "$PY" -c "import mamba_ssm.ops.triton.ssd_combined" 2>/dev/null; then
    BASELINE_PATH[mamba]=""
    note "- mamba_ssm: installed already"
  fi
  if "$PY" -c "import fla.ops.simple_gla" 2>/dev/null; then
    BASELINE_PATH[fla]=""
    note "- fla: installed already"
  fi
  if ! wheels=$(find_wheelhouse); then
    note "- no wheelhouse (looked in: $WHEELHOUSES): the tables go without the missing baselines"
    return
  fi
  note "- wheelhouse: $wheels"
  file=$(ls "$wheels"/mamba_ssm-*.tar.gz 2>/dev/null | tail -1)
  if [ -z "${BASELINE_PATH[mamba]+set}" ] && [ -n "$file" ]; then
    mkdir -p "$TMPD/mamba"
    # the sdist on PYTHONPATH, never built: the bench uses only its Triton SSD
    if tar xzf "$file" -C "$TMPD/mamba" 2>> "$TMPD/install.log"; then
      BASELINE_PATH[mamba]=$(ls -d "$TMPD"/mamba/mamba_ssm-* | tail -1)
      note "- mamba_ssm: $(basename "$file") unpacked onto PYTHONPATH"
    else
      note "- mamba_ssm: could not unpack $(basename "$file")"
    fi
  fi
  file=$(ls "$wheels"/fla_core-*.whl 2>/dev/null | tail -1)
  if [ -z "${BASELINE_PATH[fla]+set}" ] && [ -n "$file" ]; then
    if "$PY" -m pip install -q --no-index --no-deps --target "$TMPD/fla" "$file" \
        >> "$TMPD/install.log" 2>&1; then
      BASELINE_PATH[fla]=$TMPD/fla
      note "- fla: $(basename "$file") installed (--no-deps) onto PYTHONPATH"
    else
      note "- fla: installing $(basename "$file") FAILED: $(tail -1 "$TMPD/install.log")"
    fi
  fi
}

with_path() {   # with_path DIR CMD...: CMD with DIR (if any) first on PYTHONPATH
  if [ -n "$1" ]; then
    PYTHONPATH="$1${PYTHONPATH:+:$PYTHONPATH}" "${@:2}"
  else
    "${@:2}"
  fi
}

# Each warm-up runs in parallel with the others, under its own deadline; a baseline that misses
# it, or fails, is left out of the timed tables (its column says it is not importable).
warm_up_all() {
  local name deadline=$(($(now) + WARMUP_S)) t0 rc why last
  [ $deadline -gt $((STAGE_END - MIN_TABLES_S)) ] && deadline=$((STAGE_END - MIN_TABLES_S))
  for name in ours "${!BASELINE_PATH[@]}"; do
    (
      t0=$(now)
      with_path "${BASELINE_PATH[$name]:-}" run_until "$deadline" TERM "$GRACE_S" \
        "$PY" -m benchmarks.run --warmup "$name" > "$TMPD/warm_$name.log" 2>&1
      echo "$? $(($(now) - t0))" > "$TMPD/warm_$name.rc"
    ) &
  done
  wait
  for name in ours "${!BASELINE_PATH[@]}"; do
    read -r rc t0 < "$TMPD/warm_$name.rc"
    if [ "$rc" -eq 0 ]; then
      note "- warm-up $name: ok in $t0 s"
      continue
    fi
    [ "$rc" -eq 124 ] && why="stopped at its deadline after $t0 s" || why="exit $rc"
    last=$(tail -1 "$TMPD/warm_$name.log")
    note "- warm-up $name: FAILED ($why)${last:+: $last}"
    if [ "$name" = ours ]; then
      continue
    elif [ -n "${BASELINE_PATH[$name]}" ]; then
      unset "BASELINE_PATH[$name]"
      note "  $name is left out of the tables"
    else
      note "  $name is installed in the image: it stays in the tables"
    fi
  done
}

stage_bench() {
  stage_begin bench "$BENCH_S" 0
  : > "$OUT/bench.md"
  prepare_baselines
  warm_up_all
  local name path="" rc status
  for name in "${!BASELINE_PATH[@]}"; do
    [ -n "${BASELINE_PATH[$name]}" ] && path="${BASELINE_PATH[$name]}${path:+:$path}"
  done
  # shellcheck disable=SC2086 # BENCH_SECTIONS is a list of words
  with_path "$path" run_until "$STAGE_END" TERM "$GRACE_S" \
    "$PY" -m benchmarks.run --only $BENCH_SECTIONS >> "$OUT/bench.md" 2> "$TMPD/bench.err"
  rc=$?
  case $rc in
    0) status=ok ;;
    124) status="STOPPED at the deadline (the tables that finished are kept)" ;;
    *) status="FAIL (exit $rc)"
       note "- the end of its error output:"
       tail -15 "$TMPD/bench.err" | fenced >> "$TMPD/stage.md" ;;
  esac
  note ""
  grep -qE '^\|' "$OUT/bench.md" || note "(no table finished)"
  cat "$OUT/bench.md" >> "$TMPD/stage.md"
  stage_end "$status"
}

# ---------------------------------------------------------------------------------------------
{ echo "# GPU check"; echo; echo "Stages, deadlines, files: scripts/gpu_check.sh."; } > "$SUMMARY"
: > "$TMPD/overview.md"
stage_env_build
stage_smoke
stage_tests
stage_bench
{
  echo
  echo "## Overview ($(($(now) - START)) s of $TOTAL_S s)"
  echo
  echo "| stage | status | seconds | budget |"
  echo "|---|---|---|---|"
  cat "$TMPD/overview.md"
} >> "$SUMMARY"
echo
cat "$SUMMARY"
rm -rf "$TMPD"
