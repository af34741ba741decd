"""A CPU dry run of scripts/gpu_check.sh and scripts/gpu_smoke.py, so that a typo or a broken
fallback is found here and not in the few minutes a GPU is lent.

The GPU is stubbed at the edges only: fake ``nvidia-smi`` and ``compute-sanitizer`` first on
PATH, and PYTHON pointing at a fake interpreter that answers the heavy commands (pip's build,
the benchmark runner, and where a scenario asks, the smoke run and pytest) as the environment
says, and hands every other command to the real Python. Two full runs of the script with small
deadlines cover every stage's code paths (a third, all stubbed, its failure branches):

* "fallbacks": the CUDA build fails (CPU-only build instead), no wheelhouse, the real smoke
  runner (CPU, memcheck: two cases under the fake compute-sanitizer), the real pytest on a
  planted test file whose hanging test meets the deadline's SIGINT (the script itself started
  with SIGINT ignored, as a shell without job control starts it), the benchmark runner stopped
  at the deadline after its first table;
* "hangs": the CUDA build hangs (stopped, CPU-only build), the smoke hangs (stopped, later
  stages still run), pytest's arguments with xdist and pytest-timeout present, a wheelhouse whose
  fla warm-up hangs (left out of the tables) while mamba_ssm's passes (on PYTHONPATH).

The smoke cases themselves run in-process on CPU (Triton under the interpreter), for real.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest
import torch

from benchmarks import run as bench_run
from mmhnet.ops._backend import native_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "gpu_check.sh")
OUT_FILES_MAX = 6
# What a typo in the script would print.
SHELL_ERRORS = ("command not found", "unbound variable", "syntax error", "bad substitution",
                "No such file or directory", "integer expression expected")


def _load_smoke():
    spec = importlib.util.spec_from_file_location(
        "gpu_smoke", os.path.join(REPO, "scripts", "gpu_smoke.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


smoke = _load_smoke()

# ----------------------------------------------------------------------------------------------
# the fakes
# ----------------------------------------------------------------------------------------------

FAKE_PYTHON = r'''#!{python}
"""Fake interpreter for the gpu_check dry run: records each call in $FAKE_LOG and answers the
heavy commands as FAKE_* say; anything else runs on the real Python."""
import json, os, sys, time, zipfile

REAL = {python!r}
args = sys.argv[1:]
env = os.environ
with open(env["FAKE_LOG"], "a") as f:
    f.write(json.dumps(dict(argv=args, PYTHONPATH=env.get("PYTHONPATH", ""),
                            BUILD_CUDA=env.get("MMHNET_BUILD_CUDA"),
                            ARCHS=env.get("MMHNET_CUDA_ARCHS"), MAX_JOBS=env.get("MAX_JOBS"),
                            LAUNCH_BLOCKING=env.get("CUDA_LAUNCH_BLOCKING"))) + "\n")


def listed(name, value):
    return value in env.get("FAKE_" + name, "").split(",")


def hang():
    time.sleep(600)
    sys.exit(99)


if args[:2] == ["-m", "pip"]:
    if "--target" in args:                      # the fla wheel, installed without dependencies
        zipfile.ZipFile(args[-1]).extractall(args[args.index("--target") + 1])
        sys.exit(0)
    build = "CUDA_BUILD" if env.get("MMHNET_BUILD_CUDA") == "1" else "CPU_BUILD"
    if listed(build, "fail"):
        print("nvcc fatal   : Unsupported gpu architecture 'compute_90'" if build == "CUDA_BUILD"
              else "c++: fatal error: killed signal terminated program cc1plus")
        sys.exit(1)
    if listed(build, "hang"):
        hang()
    print("Successfully installed mmhnet-0.1.0")
    sys.exit(0)
if args[:2] == ["-m", "benchmarks.run"]:
    if "--warmup" in args:
        name = args[args.index("--warmup") + 1]
        if listed("WARMUP_HANG", name):
            hang()
        if listed("WARMUP_FAIL", name):
            print(f"warm-up {{name}}: not available: {{name}} not importable (ImportError)")
            sys.exit(3)
        print(f"warm-up {{name}}: done")
        sys.exit(0)
    print("Machine: fake GPU; date 2026-12-07\n", flush=True)
    for section in args[args.index("--only") + 1:]:
        if listed("BENCH_HANG", section):
            hang()
        if listed("BENCH_FAIL", section):
            print("Traceback (most recent call last):\nRuntimeError: CUDA error: out of memory",
                  file=sys.stderr)
            sys.exit(1)
        print(f"### fake {{section}} table\n\n| tokens | ms |\n|---|---|\n| 9375 | 1.0 |\n",
              flush=True)
    sys.exit(0)
if args[:1] == ["scripts/gpu_smoke.py"]:
    if listed("SMOKE", "hang"):
        print("smoke on cuda, seed 1, 8 cases", flush=True)
        hang()
    if listed("SMOKE", "crash"):
        print("Traceback (most recent call last):\nImportError: libcuda.so.1: cannot open")
        sys.exit(1)
if args[:1] == ["-c"]:
    if args[1] in ("import xdist", "import pytest_timeout") and listed("PLUGINS", "yes"):
        sys.exit(0)
    if args[1].startswith(("import mamba_ssm", "import fla")) and listed("BASELINES", "image"):
        sys.exit(0)
    if "pytest.main" in args[1] and listed("PYTEST", "record"):
        print("==================== 3 passed, 2 deselected in 0.10s ====================")
        sys.exit(0)
    if "pytest.main" in args[1] and listed("PYTEST", "fail"):
        print("FAILED tests/test_scan_triton.py::test_largest_tiles_below_the_limit_run[float32]")
        print("==================== 1 failed, 2 passed in 0.10s ====================")
        sys.exit(1)
    if "native_module" in args[1] and listed("ENV", "fake"):
        print("- python 3.12 (fake), torch 2.11 (fake)")
        sys.exit(0)
os.execv(REAL, [REAL] + args)
'''

FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
if [ -n "${FAKE_NO_DRIVER:-}" ]; then
  echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
  exit 9
fi
case "$*" in
  *name,driver_version*) echo "NVIDIA H100 80GB HBM3, 580.159.04, 81559 MiB, 9.0" ;;
  *compute_cap*) echo "9.0" ;;
  *) echo "fake nvidia-smi" ;;
esac
"""

# compute-sanitizer's options come in pairs before the program: skip them, run the program
FAKE_SANITIZER = """#!/usr/bin/env bash
while [ "${1#--}" != "$1" ]; do shift 2; done
echo "========= COMPUTE-SANITIZER (fake)"
"$@"
rc=$?
echo "========= ERROR SUMMARY: 0 errors"
exit $rc
"""

PLANTED_TESTS = """import time


def test_triton_passes():
    assert 1 + 1 == 2


def test_cuda_fails():
    assert 1 + 1 == 3, "planted failure"


def test_triton_hangs():
    time.sleep(600)


def test_cpu_only_is_deselected():
    assert True
"""


def _write(path, text, mode=0o644):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _fake_bin(tmp_path, sanitizer):
    """A folder of fakes for the front of PATH; returns (bin folder, fake python)."""
    bin_dir = tmp_path / "bin"
    _write(bin_dir / "nvidia-smi", FAKE_NVIDIA_SMI, 0o755)
    if sanitizer:
        _write(bin_dir / "compute-sanitizer", FAKE_SANITIZER, 0o755)
    python = _write(bin_dir / "fakepy", FAKE_PYTHON.format(python=sys.executable), 0o755)
    return bin_dir, python


def _wheelhouse(tmp_path):
    """A mamba_ssm sdist and an fla-core wheel, as ../shared/wheelhouse holds them."""
    wheels = tmp_path / "wheelhouse"
    src = _write(tmp_path / "sdist" / "mamba_ssm-2.3.2" / "mamba_ssm" / "__init__.py", "")
    wheels.mkdir()
    with tarfile.open(wheels / "mamba_ssm-2.3.2.tar.gz", "w:gz") as tar:
        tar.add(src.parent.parent, arcname="mamba_ssm-2.3.2")
    with zipfile.ZipFile(wheels / "fla_core-0.6.0-py3-none-any.whl", "w") as whl:
        whl.writestr("fla/__init__.py", "")
    return wheels


def _run_script(tmp_path, bin_dir, python, env, ignore_sigint=False):
    """Run gpu_check.sh; returns (completed process, OUT folder, the fake's call records)."""
    out = tmp_path / "out"
    log = tmp_path / "fake.log"
    full = dict(os.environ, OUT=str(out), PYTHON=str(python), FAKE_LOG=str(log),
                PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path),
                GPU_CHECK_GRACE_S="2", GPU_CHECK_WORKERS="2", OMP_NUM_THREADS="1", **env)
    # a shell without job control starts its background jobs with SIGINT ignored
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    proc = subprocess.run(["bash", SCRIPT], env=full, capture_output=True, text=True,
                          timeout=400, preexec_fn=preexec)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, out, calls


def _summary_section(summary, stage):
    """The text of the "## stage: ..." section of summary.md."""
    start = summary.index(f"\n## {stage}: ")
    end = summary.find("\n## ", start + 1)
    return summary[start:end if end >= 0 else None]


def _check_common(proc, out):
    """What every run must show: no shell error, at most 6 files, every stage summarised."""
    for error in SHELL_ERRORS:
        assert error not in proc.stderr and error not in proc.stdout, (error, proc.stderr)
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= OUT_FILES_MAX, files
    assert set(files) == {"summary.md", "build.log", "smoke.log", "sanitizer.log", "tests.txt",
                          "bench.md"}, files
    summary = (out / "summary.md").read_text()
    for stage in ("env+build", "smoke", "tests", "bench"):
        assert f"\n## {stage}: " in summary, stage
        assert f"| {stage} | " in summary, stage    # the overview row
    assert summary in proc.stdout                    # printed last, for the reply's tail
    return summary


# ----------------------------------------------------------------------------------------------
# the script
# ----------------------------------------------------------------------------------------------

def test_script_parses():
    proc = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(native_module("_C") is None, reason="the smoke's cpu cases need mmhnet._C")
def test_dry_run_fallbacks(tmp_path):
    """CUDA build failure -> CPU-only build; real smoke runner with the fake compute-sanitizer;
    real pytest interrupted at the deadline prints its summary; no wheelhouse; the bench stopped
    at its deadline keeps its first table."""
    bin_dir, python = _fake_bin(tmp_path, sanitizer=True)
    planted = _write(tmp_path / "planted" / "test_planted.py", PLANTED_TESTS)
    env = dict(GPU_CHECK_TOTAL_S="300", GPU_CHECK_BUILD_S="60", GPU_CHECK_SMOKE_S="150",
               GPU_CHECK_TESTS_S="26", GPU_CHECK_TEST_GRACE_S="15", GPU_CHECK_MIN_TESTS_S="10",
               GPU_CHECK_BENCH_S="8", GPU_CHECK_MIN_TABLES_S="3", GPU_CHECK_WARMUP_S="60",
               GPU_CHECK_TEST_FILES=str(planted), GPU_CHECK_WHEELHOUSES=str(tmp_path / "none"),
               GPU_CHECK_SMOKE_ARGS="--device cpu --case memcheck",
               FAKE_CUDA_BUILD="fail", FAKE_BENCH_HANG="scan")
    start = time.monotonic()
    proc, out, calls = _run_script(tmp_path, bin_dir, python, env, ignore_sigint=True)
    assert proc.returncode == 0, proc.stderr
    summary = _check_common(proc, out)

    builds = [c for c in calls if c["argv"][:2] == ["-m", "pip"]]
    assert [c["BUILD_CUDA"] for c in builds] == ["1", "0"]
    assert builds[0]["ARCHS"] == "90" and builds[0]["MAX_JOBS"] == str(len(os.sched_getaffinity(0)))
    build = _summary_section(summary, "env+build")
    assert "CUDA build failed; CPU-only build ok" in build
    assert "FAILED (exit 1)" in build and "Unsupported gpu architecture" in build
    assert "NVIDIA H100 80GB HBM3" in build and "mmhnet._C: built" in build

    smoke_calls = [c for c in calls if c["argv"][:1] == ["scripts/gpu_smoke.py"]]
    assert smoke_calls and smoke_calls[0]["LAUNCH_BLOCKING"] == "1"
    section = _summary_section(summary, "smoke")
    assert "smoke: ok" in section, section
    assert "- PASS memcheck: 0 errors" in section
    sanitized = (out / "sanitizer.log").read_text()    # the cases run under the sanitizer
    assert "PASS scan-cpu-float32: max rel err" in sanitized
    assert "PASS routing-cpu: max rel err" in sanitized
    assert "ERROR SUMMARY: 0 errors" in sanitized

    tests_txt = (out / "tests.txt").read_text()
    assert "short test summary info" in tests_txt and "KeyboardInterrupt" in tests_txt
    section = _summary_section(summary, "tests")
    assert "tests: INTERRUPTED at the deadline" in section
    assert "FAILED" in section and "test_cuda_fails" in section
    assert "1 failed, 1 passed, 1 deselected" in section
    assert "pytest was interrupted (SIGINT)" in section

    section = _summary_section(summary, "bench")
    assert "no wheelhouse" in section and "warm-up ours: ok" in section
    assert "bench: STOPPED at the deadline" in section
    assert "### fake target table" in section and "fake scan table" not in section
    assert "### fake target table" in (out / "bench.md").read_text()
    assert time.monotonic() - start < 300


def test_dry_run_hangs(tmp_path):
    """Each hang is stopped at its stage's deadline and the later stages still run (the CPU-only
    build that follows the hung CUDA one fails too: the stages still run); pytest gets
    xdist and a per-test timeout when they are there, scan files first, CPU-only files out;
    a baseline whose warm-up misses its deadline is left off PYTHONPATH, the other stays."""
    bin_dir, python = _fake_bin(tmp_path, sanitizer=False)
    wheels = _wheelhouse(tmp_path)
    env = dict(GPU_CHECK_TOTAL_S="120", GPU_CHECK_BUILD_S="14", GPU_CHECK_FALLBACK_S="8",
               GPU_CHECK_REPORT_S="3",
               GPU_CHECK_SMOKE_S="5", GPU_CHECK_TESTS_S="20", GPU_CHECK_MIN_TESTS_S="5",
               GPU_CHECK_BENCH_S="20", GPU_CHECK_WARMUP_S="5", GPU_CHECK_MIN_TABLES_S="5",
               GPU_CHECK_TEST_GRACE_S="5", GPU_CHECK_TEST_TIMEOUT_S="77",
               GPU_CHECK_WHEELHOUSES=f"{tmp_path / 'none'} {wheels}",
               MMHNET_COMMIT="abc1234", FAKE_CUDA_BUILD="hang", FAKE_CPU_BUILD="fail",
               FAKE_SMOKE="hang",
               FAKE_PLUGINS="yes", FAKE_PYTEST="record", FAKE_ENV="fake", FAKE_WARMUP_HANG="fla")
    start = time.monotonic()
    proc, out, calls = _run_script(tmp_path, bin_dir, python, env)
    assert proc.returncode == 0, proc.stderr
    summary = _check_common(proc, out)
    assert time.monotonic() - start < 100

    build = _summary_section(summary, "env+build")
    assert "commit abc1234" in build and "compute-sanitizer: not found" in build
    assert "FAILED (stopped at its deadline" in build
    assert "env+build: FAIL: no build" in build and "cc1plus" in build

    assert "smoke: KILLED at the deadline" in summary

    pytest_call = next(c["argv"] for c in calls if c["argv"][:1] == ["-c"]
                       and "pytest.main" in c["argv"][1])
    args = pytest_call[2:]
    assert r"-k cuda\ or\ triton" in summary    # the command, quoted to be pasted
    assert args[args.index("-n") + 1] == "2" and args[args.index("--dist") + 1] == "load"
    assert "--timeout=77" in args and "-rfE" in args and "--durations=20" in args
    assert args[args.index("-k") + 1] == "cuda or triton"
    files = [a for a in args if a.startswith("tests/")]
    scan = [i for i, f in enumerate(files) if f.startswith("tests/test_scan_")]
    assert scan == list(range(len(scan))) and len(scan) >= 3, files
    for cpu_only in ("tests/test_gpu_check.py", "tests/test_triton_aot.py",
                     "tests/test_model.py", "tests/test_scan_reference.py"):
        assert cpu_only not in files
    assert "tests/test_scan_triton.py" in files and "tests/test_routing_ops.py" in files
    assert "tests: ok" in summary and "3 passed, 2 deselected" in summary

    section = _summary_section(summary, "bench")
    assert "mamba_ssm-2.3.2.tar.gz unpacked onto PYTHONPATH" in section
    assert "fla_core-0.6.0-py3-none-any.whl installed" in section
    assert "warm-up mamba: ok" in section and "warm-up ours: ok" in section
    assert "warm-up fla: FAILED (stopped at its deadline" in section
    assert "fla is left out of the tables" in section
    bench = next(c for c in calls if c["argv"][:2] == ["-m", "benchmarks.run"]
                 and "--only" in c["argv"])
    assert bench["argv"][bench["argv"].index("--only") + 1:] == ["target", "scan", "precision"]
    assert "mamba_ssm-2.3.2" in bench["PYTHONPATH"] and "fla" not in bench["PYTHONPATH"]
    assert "bench: ok" in section
    tables = [line for line in section.splitlines() if line.startswith("### fake")]
    assert tables == ["### fake target table", "### fake scan table", "### fake precision table"]


def test_dry_run_failures(tmp_path):
    """The CUDA build passes (no GPU answered nvidia-smi: the default archs); the smoke runner
    itself breaks (its output ends the section); failed tests are listed; baselines installed
    in the image stay in the tables although a warm-up failed; a failed bench shows its error."""
    bin_dir, python = _fake_bin(tmp_path, sanitizer=True)
    env = dict(GPU_CHECK_TOTAL_S="100", GPU_CHECK_BUILD_S="20", GPU_CHECK_FALLBACK_S="5",
               GPU_CHECK_REPORT_S="3", GPU_CHECK_SMOKE_S="10", GPU_CHECK_MIN_TESTS_S="5",
               GPU_CHECK_TESTS_S="10", GPU_CHECK_TEST_GRACE_S="5", GPU_CHECK_BENCH_S="20",
               GPU_CHECK_MIN_TABLES_S="5",
               GPU_CHECK_WHEELHOUSES=str(tmp_path / "none"), FAKE_NO_DRIVER="1",
               FAKE_SMOKE="crash", FAKE_PYTEST="fail", FAKE_ENV="fake", FAKE_BASELINES="image",
               FAKE_WARMUP_FAIL="mamba", FAKE_BENCH_FAIL="scan")
    proc, out, calls = _run_script(tmp_path, bin_dir, python, env)
    assert proc.returncode == 0, proc.stderr
    summary = _check_common(proc, out)

    build = _summary_section(summary, "env+build")
    assert "env+build: ok" in build and "CUDA build for sm_default: ok" in build
    assert "couldn't communicate with the NVIDIA driver" in build
    builds = [c for c in calls if c["argv"][:2] == ["-m", "pip"]]
    assert [(c["BUILD_CUDA"], c["ARCHS"]) for c in builds] == [("1", None)]

    smoke_section = _summary_section(summary, "smoke")
    assert "smoke: FAIL (exit 1)" in smoke_section and "libcuda.so.1" in smoke_section

    tests = _summary_section(summary, "tests")
    assert "tests: FAIL" in tests and "1 failed, 2 passed" in tests
    assert "- FAILED tests/test_scan_triton.py::test_largest_tiles_below_the_limit_run" in tests

    bench = _summary_section(summary, "bench")
    assert "mamba_ssm: installed already" in bench and "fla: installed already" in bench
    assert "warm-up mamba: FAILED (exit 3): warm-up mamba: not available" in bench
    assert "mamba is installed in the image: it stays in the tables" in bench
    assert "warm-up fla: ok" in bench
    assert "bench: FAIL (exit 1)" in bench and "CUDA error: out of memory" in bench
    assert "### fake target table" in bench


# ----------------------------------------------------------------------------------------------
# the smoke script, in-process on CPU
# ----------------------------------------------------------------------------------------------

# Every line of the cases' code; the bfloat16 path through the cpu backend (Triton's bf16
# precision is test_scan_triton.py's to judge, and under the interpreter it costs more time).
SMOKE_CASES = ["scan-triton-float32", "scan-cpu-float32", "scan-cpu-bfloat16", "routing-triton",
               "routing-cpu"]


@pytest.mark.parametrize("case", SMOKE_CASES)
def test_smoke_case_passes_on_cpu(case, one_torch_thread):
    if "cpu" in case and native_module("_C") is None:
        pytest.skip("mmhnet._C is not built")
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    detail = smoke.run_case(case, "cpu", seed)
    assert detail.startswith("max rel err ")


def test_smoke_compare_fails_on_a_wrong_gradient():
    ref = {"y": torch.randn(50, dtype=torch.float64), "dx": torch.randn(50, dtype=torch.float64)}
    ours = {"y": ref["y"].float(), "dx": ref["dx"].float() * 1.01}
    tol, rel_err = smoke._tolerances()
    with pytest.raises(AssertionError, match="dx: relative error 1.00e-02 > 2e-04"):
        smoke._compare(ours, ref, tol[torch.float32], rel_err)
    ours["dx"] = torch.full((50,), float("nan"))
    with pytest.raises(AssertionError, match="dx: non-finite"):
        smoke._compare(ours, ref, tol[torch.float32], rel_err)


def test_smoke_child_reports_every_case(capsys):
    """A case that raises is one FAIL line, and the cases after it still run."""
    code = smoke.child_main(["scan-nope-float32", "routing-reference"], "cpu", 1)
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[0].startswith("FAIL scan-nope-float32: ValueError: unknown in-process smoke case")
    assert lines[1].startswith("FAIL routing-reference: ValueError")


def test_smoke_sanitizer_skips_without_compute_sanitizer(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(smoke.Skip, match="compute-sanitizer not found"):
        smoke.sanitizer_child("memcheck", "cpu", 1)


@pytest.mark.parametrize("rc,out,expected", [
    (0, "PASS scan-cuda-float32: ok\n========= ERROR SUMMARY: 0 errors\n", ("PASS", "0 errors")),
    (86, "PASS scan-cuda-float32: ok\n========= ERROR SUMMARY: 2 errors\n",
     ("FAIL", "sanitizer errors: 2 errors")),
    (1, "FAIL scan-cuda-float32: boom\n========= ERROR SUMMARY: 0 errors\n",
     ("FAIL", "0 errors; FAIL scan-cuda-float32: boom")),
    (0, "PASS scan-cuda-float32: ok\n", ("FAIL", "no error summary; exit code 0")),
])
def test_sanitizer_verdict(rc, out, expected):
    assert smoke._sanitizer_verdict(rc, out, "") == expected


def test_smoke_runner_kills_a_hanging_case():
    before = signal.getsignal(signal.SIGTERM)
    hang = smoke.Child("hang", [sys.executable, "-c",
                                "import time; print('started', flush=True); time.sleep(60)"])
    quick = smoke.Child("quick", [sys.executable, "-c", "print('PASS quick: fine')"])
    start = time.monotonic()
    reports = list(smoke.run_parallel([hang, quick], budget=3, jobs=2))
    assert time.monotonic() - start < 30
    assert "PASS quick: fine\n" in reports
    timeout = next(r for r in reports if r.startswith("TIMEOUT hang: killed after"))
    assert "started" in timeout
    assert hang.proc.poll() is not None
    assert signal.getsignal(signal.SIGTERM) == before   # the runner's handler is undone


# ----------------------------------------------------------------------------------------------
# benchmarks.run: the warm-ups and the target section
# ----------------------------------------------------------------------------------------------

FAKE_SSD = """import torch

CALLS = []


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, dt_softplus=False):
    CALLS.append(dict(shape=tuple(x.shape), chunk_size=chunk_size, dtype=x.dtype))
    dt = torch.nn.functional.softplus(dt) if dt_softplus else dt
    state = (B * C).sum(-1, keepdim=True)
    return x * (dt * A)[..., None] * state + x * D[:, None]
"""


def test_warm_up_enters_an_unbuilt_mamba_sdist(tmp_path, monkeypatch):
    """The sdist as gpu_check.sh unpacks it: its __init__ needs the CUDA build and fails, the
    warm-up enters the Triton SSD without it."""
    pkg = tmp_path / "mamba_ssm"
    _write(pkg / "__init__.py", "import selective_scan_cuda  # the CUDA build, absent\n")
    _write(pkg / "ops" / "__init__.py", "")
    _write(pkg / "ops" / "triton" / "__init__.py", "")
    _write(pkg / "ops" / "triton" / "ssd_combined.py", FAKE_SSD)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.split(".")[0] == "mamba_ssm"]:
        monkeypatch.delitem(sys.modules, name)
    try:
        bench_run.warm_up("mamba", "cpu", batch=1, tokens=32)
        calls = sys.modules["mamba_ssm.ops.triton.ssd_combined"].CALLS
        assert calls == [dict(shape=(1, 32, 16, 64), chunk_size=256, dtype=torch.bfloat16)]
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "mamba_ssm"]:
            del sys.modules[name]


def test_warm_up_of_a_missing_baseline(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fla", None)   # import fla raises ImportError
    with pytest.raises(RuntimeError, match="fla not importable"):
        bench_run.warm_up("fla", "cpu", batch=1, tokens=8)
    assert bench_run.main(["--warmup", "fla", "--device", "cpu"]) == 3
    assert "warm-up fla: not available: fla not importable" in capsys.readouterr().out


def test_target_section_is_gpu_only():
    assert bench_run.SECTIONS[0] == "target"
    assert bench_run.section_tables("target", "cpu", True) == []
