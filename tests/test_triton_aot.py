"""Every Triton kernel compiles for a real GPU target (sm_90), not only under the interpreter.

Triton's bundled ptxas compiles to cubin without a GPU, so this runs on CI. Scan kernels: the fp16
variants cover the quasiseparable, packed and separate-parameter paths, bf16 the shared ones.
Routing kernels: every launch the routing ops make, recorded under the interpreter.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has_ptxas():
    try:
        import triton
    except ImportError:
        return False
    return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia",
                                       "bin", "ptxas"))


@pytest.mark.skipif(not _has_ptxas(), reason="triton without its NVIDIA backend (no ptxas)")
def test_kernels_compile_for_sm90():
    from mmhnet.kernels.routing import boundaries  # noqa: F401  (the routing kernels exist)

    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "triton_aot_check.py"),
                           "--arch", "90", "--dtypes", "bf16", "fp16"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    names = {row.split("|")[1].split()[0] for row in rows}
    assert {"chunk_state", "chunk_scan", "chunk_scan_bwd", "state_passing",
            "boundaries_fwd_kernel", "ema_bwd_kernel", "segment_sum_blocks_kernel"} <= names, names
    assert not any("FAILED" in r for r in rows), proc.stdout
