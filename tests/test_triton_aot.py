"""Every Triton kernel compiles for a real GPU target (sm_90), not only under the interpreter.

Triton's bundled ptxas compiles to cubin without a GPU, so this runs on CI. Scan kernels: the fp16
variants cover the quasiseparable, packed and separate-parameter paths, bf16 the shared ones.
Routing kernels: every launch the routing ops make, recorded under the interpreter.

The largest tiles the scan launcher accepts (launch.MAX_TILE, per dtype) must fit the shared
memory of one sm_90 block, with this Triton and with Triton 3.6 (the GPU machine's) where its
virtual environment exists (.venv-triton36, or scripts/stack_check.sh's): the limit-critical
variants run here, `scripts/triton_aot_check.py` compiles every one.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "triton_aot_check.py")


def _has_ptxas():
    try:
        import triton
    except ImportError:
        return False
    return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia",
                                       "bin", "ptxas"))


def _pythons():
    """(id, interpreter): this one, and one with Triton 3.6 where such a venv exists."""
    found = [("this_triton", sys.executable)]
    for venv in (".venv-triton36", ".venv-stack-2.11.0-3.6.0"):
        python = os.path.join(ROOT, venv, "bin", "python")
        if os.path.exists(python):
            found.append(("triton_3.6", python))
            break
    return found


def _run(python, *args):
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([python, SCRIPT, *args], capture_output=True, text=True, env=env,
                          timeout=900)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    return proc, rows


@pytest.mark.skipif(not _has_ptxas(), reason="triton without its NVIDIA backend (no ptxas)")
def test_kernels_compile_for_sm90():
    from mmhnet.kernels.routing import boundaries  # noqa: F401  (the routing kernels exist)

    proc, rows = _run(sys.executable, "--arch", "90", "--dtypes", "bf16", "fp16", "--dims",
                      "64x64")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {row.split("|")[1].split()[0] for row in rows}
    assert {"chunk_state", "chunk_scan", "chunk_scan_bwd", "state_passing",
            "boundaries_fwd_kernel", "ema_bwd_kernel", "segment_sum_blocks_kernel"} <= names, names
    assert not any("FAILED" in r for r in rows), proc.stdout


@pytest.mark.skipif(not _has_ptxas(), reason="triton without its NVIDIA backend (no ptxas)")
@pytest.mark.parametrize("python", [p for _, p in _pythons()], ids=[i for i, _ in _pythons()])
@pytest.mark.parametrize("io", ["bf16", "fp32"])
def test_largest_tiles_fit_sm90_shared_memory(python, io):
    """The three kernels whose shared memory grows with the tile, at headdim 128 with the largest
    dstate accepted for the dtype (float32 with TF32 matmuls, which take the most shared memory;
    the script compiles every variant and tile: benchmarks/RESULTS.md). A variant over the
    232,448 B an sm_90 block may have is a FAILED row and a non-zero exit."""
    import torch

    import mmhnet.kernels.scan.launch as launch

    dstate = launch.max_tile({"bf16": torch.bfloat16, "fp32": torch.float32}[io]) // 128
    proc, rows = _run(python, "--arch", "90", "--no-routing", "--dtypes", io, "--precs", "tf32",
                      "--dims", f"128x{dstate}", "--only", "chunk_state forward",
                      "chunk_scan sum shared", "chunk_scan_bwd sum shared")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(rows) == 3 and all(f" {io} 128x{dstate} " in r for r in rows), proc.stdout
    shared = [int(r.split("|")[7].split()[0]) for r in rows]
    assert max(shared) <= 232448, proc.stdout
