"""Every CUDA source under csrc/ compiles with ``nvcc -c -arch=sm_90`` wherever nvcc exists
(CI has it, without a GPU), so the CUDA kernels cannot rot unseen. The files compile in
parallel, one nvcc per core."""

import concurrent.futures
import glob
import os
import shutil
import subprocess
import sysconfig

import pybind11
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
SOURCES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))


def _find_nvcc():
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
    if nvcc is None:
        for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
            if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
                return os.path.join(home, "bin", "nvcc")
    return nvcc


NVCC = _find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="needs nvcc (CUDA toolkit)")


def _compile(src, out_dir):
    obj = os.path.join(out_dir, src.replace(os.sep, "_") + ".o")
    cmd = [NVCC, "-c", "-arch=sm_90", "-std=c++17", "--expt-relaxed-constexpr",
           f"-I{CSRC}", f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
           os.path.join(ROOT, src), "-o", obj]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("nvcc"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {src: pool.submit(_compile, src, out_dir) for src in SOURCES}
        return {src: f.result() for src, f in futures.items()}


def test_there_are_cuda_sources():
    assert "csrc/module_cuda.cu" in SOURCES and len(SOURCES) > 1


@pytest.mark.parametrize("src", SOURCES)
def test_compiles_for_sm90(src, compiled):
    rc, log = compiled[src]
    assert rc == 0, f"nvcc failed on {src}:\n{log}"
