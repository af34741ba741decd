"""The CPU kernels' ISA builds (issue 24 item 3): mmhnet._C for x86-64-v3 (AVX2) and
mmhnet._C_avx512 for x86-64-v4, from the same sources; ``native_module("_C")`` picks one.

The selection logic is tested without AVX-512 hardware (the CPU-feature probe is replaced);
each ISA module is checked against the float64 references on the scan and routing ops, the
AVX-512 one only where the CPU has it (and then against the AVX2 one too).
"""

import importlib
import importlib.util
import re
import shutil
import subprocess

import pytest
import torch

import mmhnet._C as base_module
from helpers import TOL, assert_close_rel, make_scan_inputs
from mmhnet.ops import (BackendUnavailableError, bi_selective_scan, chunk_scatter, ema_smooth,
                        route_and_gather)
from mmhnet.ops import _backend
from routing_cases import make_case

PORTABLE = base_module.ISA == "avx2"
AVX512_SPEC = importlib.util.find_spec("mmhnet._C_avx512")


@pytest.fixture
def fresh_choice(monkeypatch):
    """native_module's cache emptied before and after, MMHNET_CPU_ISA unset."""
    monkeypatch.delenv("MMHNET_CPU_ISA", raising=False)
    _backend.native_module.cache_clear()
    yield monkeypatch
    _backend.native_module.cache_clear()


# (forced, base ISA, avx512 built, CPU has AVX-512) -> module name
@pytest.mark.parametrize("args, expected", [
    ((None, "avx2", True, True), "_C_avx512"),
    ((None, "avx2", True, False), "_C"),
    ((None, "avx2", False, True), "_C"),
    ((None, "native", False, True), "_C"),
    (("avx2", "avx2", True, True), "_C"),
    (("avx512", "avx2", True, True), "_C_avx512"),
])
def test_select_cpu_module(args, expected):
    assert _backend.select_cpu_module(*args) == expected


@pytest.mark.parametrize("args, error, message", [
    (("avx512", "avx2", True, False), BackendUnavailableError, "this CPU lacks AVX-512"),
    (("avx512", "native", False, True), BackendUnavailableError, "mmhnet._C_avx512 is not built"),
    (("avx2", "native", False, True), BackendUnavailableError, "built for ISA 'native'"),
    (("sse2", "avx2", True, True), ValueError, "MMHNET_CPU_ISA must be one of 'avx2', 'avx512'; "
                                               "got 'sse2'"),
])
def test_select_cpu_module_refuses(args, error, message):
    with pytest.raises(error, match=re.escape(message)):
        _backend.select_cpu_module(*args)


@pytest.mark.skipif(not PORTABLE, reason=f"mmhnet._C is a -march={base_module.ISA} build")
def test_native_module_follows_env_and_probe(fresh_choice):
    """The environment and the module's own CPU probe reach the choice."""
    fresh_choice.setattr(base_module, "cpu_supports_avx512", lambda: False)
    assert _backend.native_module("_C") is base_module
    fresh_choice.setenv("MMHNET_CPU_ISA", "avx2")
    _backend.native_module.cache_clear()
    assert _backend.native_module("_C") is base_module
    fresh_choice.setenv("MMHNET_CPU_ISA", "avx512")
    _backend.native_module.cache_clear()
    with pytest.raises(BackendUnavailableError, match="this CPU lacks AVX-512"):
        _backend.native_module("_C")


@pytest.mark.skipif(AVX512_SPEC is None, reason="mmhnet._C_avx512 is not built")
def test_native_module_loads_avx512_where_the_cpu_has_it(fresh_choice):
    """With the probe saying yes, the AVX-512 module is imported in _C's place (a stand-in
    here: importing the real one on a CPU without AVX-512 may fault)."""
    stand_in = object()
    real_import = importlib.import_module
    fresh_choice.setattr(base_module, "cpu_supports_avx512", lambda: True)
    fresh_choice.setattr(importlib, "import_module",
                         lambda name: stand_in if name == "mmhnet._C_avx512" else real_import(name))
    assert _backend.native_module("_C") is stand_in


def _module_for(isa):
    """The module MMHNET_CPU_ISA=isa selects, or skip with the reason it cannot run here."""
    if not PORTABLE:
        pytest.skip(f"mmhnet._C is a -march={base_module.ISA} build (no ISA pair)")
    if isa == "avx512":
        if AVX512_SPEC is None:
            pytest.skip("mmhnet._C_avx512 is not built")
        if not base_module.cpu_supports_avx512():
            pytest.skip("CPU lacks AVX-512")
    return isa


def _scan_and_routing(dtype, backend):
    """Outputs and gradients (random upstream gradients) of bi_selective_scan and three routing
    ops on fixed random inputs converted to ``dtype``; a dict name -> tensor."""
    g = torch.manual_seed(0)
    scan = make_scan_inputs(2, 150, 4, 16, 2, 16, D="h", z=True, dt_bias=True)
    q, k, x, cu = make_case("random")
    gy = torch.randn(2, 150, 4, 16, generator=g)
    flags = {n: v for n, v in scan.items() if not isinstance(v, torch.Tensor)}  # dt_softplus
    leaves = {n: t.to(dtype).requires_grad_() for n, t in scan.items() if n not in flags}
    rq, rk, rx = (t.to(dtype).requires_grad_() for t in (q, k, x))
    y = bi_selective_scan(**leaves, **flags, backend=backend)
    p, mask, x_chunks, chunk_cu, chunk_id, p_chunks = route_and_gather(rq, rk, rx, cu,
                                                                       backend=backend)
    smooth = ema_smooth(x_chunks, p_chunks, chunk_cu, bidirectional=True, backend=backend)
    z = chunk_scatter(smooth, chunk_id, p=p, mask=mask, backend=backend)
    gz = torch.randn(z.shape, generator=g).to(dtype)
    torch.autograd.backward([y, z], [gy.to(dtype), gz])
    out = {"y": y, "z": z, "p": p}
    out.update({f"d{n}": t.grad for n, t in leaves.items()})
    out.update(dq=rq.grad, dk=rk.grad, dx_routing=rx.grad)
    return {n: t.detach() for n, t in out.items()}


@pytest.fixture(scope="module")
def float64_reference():
    return _scan_and_routing(torch.float64, "reference")


@pytest.fixture(scope="module")
def avx2_results():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMHNET_CPU_ISA", "avx2")
        _backend.native_module.cache_clear()
        try:
            return _scan_and_routing(torch.float32, "cpu")
        finally:
            _backend.native_module.cache_clear()


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_isa_module_matches_reference(fresh_choice, float64_reference, avx2_results, isa):
    fresh_choice.setenv("MMHNET_CPU_ISA", _module_for(isa))
    assert _backend.native_module("_C").ISA == isa
    results = _scan_and_routing(torch.float32, "cpu")
    for name, ref in float64_reference.items():
        assert_close_rel(results[name], ref, TOL[torch.float32], f"{isa} {name} vs float64")
        assert_close_rel(results[name], avx2_results[name], TOL[torch.float32],
                         f"{isa} {name} vs avx2")


def _disassembly(path):
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True,
                          text=True, check=True).stdout


# AVX-512 shows as zmm or mask registers, the upper 16 xmm/ymm registers, or embedded broadcasts
AVX512_OPERANDS = re.compile(r"%zmm|%k[0-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b|\{1to\d+\}")


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump is not installed")
@pytest.mark.skipif(not PORTABLE, reason=f"mmhnet._C is a -march={base_module.ISA} build")
def test_avx2_module_has_no_avx512_instructions():
    hits = {m.group(0) for m in AVX512_OPERANDS.finditer(_disassembly(base_module.__file__))}
    assert not hits, f"mmhnet._C (x86-64-v3) uses AVX-512 operands: {sorted(hits)[:5]}"
    if AVX512_SPEC is not None:  # the pattern does find them where they are (read, not loaded)
        assert AVX512_OPERANDS.search(_disassembly(AVX512_SPEC.origin))
