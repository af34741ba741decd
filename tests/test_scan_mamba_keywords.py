"""mamba_ssm's keywords of the scans (chunk_size, seq_idx, dt_limit; states: test_scan_states.py)
and of BiMamba2.forward (seqlen, seq_idx, inference_params): meanings, errors, torch.compile."""

import re

import pytest
import torch
import torch.nn.functional as F

import mmhnet.ops as ops
from helpers import (TOL, TRITON_DEVICE, assert_close_rel, clone_inputs, grads_of,
                     make_scan_inputs, random_cu_seqlens)
from mmhnet.layers import BiMamba2
from mmhnet.ops import reference as R
from mmhnet.ops._backend import native_module
from mmhnet.ops.scan import seq_idx_to_cu_seqlens

HAS_CPU = native_module("_C") is not None and hasattr(native_module("_C"), "bi_scan_fwd")
CPU_BACKENDS = ["reference", "cpu"] if HAS_CPU else ["reference"]


def _inputs(batch=2, seqlen=9, dtype=torch.float64, device="cpu", **kw):
    a = make_scan_inputs(batch, seqlen, 4, 3, 2, 5, dtype=dtype, device=device, D="h", z=True,
                         dt_bias=True, **kw)
    return a, a.pop("dt_softplus")


# ----------------------------------------------------------------------------------------------
# chunk_size
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_chunk_size_is_a_hint(backend):
    """Any chunk_size gives the very same result (the backends choose their chunking), also as
    mamba_chunk_scan_combined's sixth positional argument."""
    a, sp = _inputs()
    keys = ("x", "dt", "A", "B", "C")
    rest = {k: v for k, v in a.items() if k not in keys}
    y = ops.bi_selective_scan(**a, dt_softplus=sp, backend=backend)
    for cs in (1, 3, 64, 256):
        assert torch.equal(ops.bi_selective_scan(**a, dt_softplus=sp, chunk_size=cs,
                                                 backend=backend), y)
    y1 = ops.selective_scan(*(a[k] for k in keys), 256, **rest, dt_softplus=sp, backend=backend)
    assert torch.equal(y1, ops.selective_scan(**a, dt_softplus=sp, backend=backend))


# ----------------------------------------------------------------------------------------------
# dt_limit
# ----------------------------------------------------------------------------------------------

DT_LIMIT_CASES = [(b, "cpu", t) for b in CPU_BACKENDS for t in (torch.float64, torch.float32)] + [
    ("triton", TRITON_DEVICE, torch.float32)]


@pytest.mark.parametrize("backend,device,dtype", DT_LIMIT_CASES,
                         ids=[f"{b}-{str(t)[6:]}" for b, _, t in DT_LIMIT_CASES])
def test_dt_limit_clamps_effective_dt(backend, device, dtype):
    """dt' = clamp(softplus(dt + dt_bias), min, max), as mamba_ssm: against the float64
    sequential reference fed that dt', forward and every gradient (none where dt' is clamped).
    The limits cut through the draw, so both bounds clamp some tokens."""
    a, sp = _inputs(1, 7, device=device, rev=("dt",))
    a["dt"].mul_(3.0)  # dt' spread over ~0.01 .. 3
    limit = (0.1, 0.6)
    low = clone_inputs(a, dtype=dtype)
    ref = clone_inputs(low, dtype=torch.float64, device="cpu")
    eff = lambda d: F.softplus(d + ref["dt_bias"]).clamp(*limit)  # noqa: E731
    clamped = (F.softplus(ref["dt"] + ref["dt_bias"]) - eff(ref["dt"])).ne(0)
    assert clamped.any() and not clamped.all()
    rest = {k: v for k, v in ref.items() if k not in ("dt", "dt_rev", "dt_bias")}
    y_ref = R.bi_selective_scan_sequential(**rest, dt=eff(ref["dt"]), dt_rev=eff(ref["dt_rev"]),
                                           mode="quasiseparable")
    y = ops.bi_selective_scan(**low, dt_softplus=sp, dt_limit=limit, mode="quasiseparable",
                              backend=backend)
    dy = torch.randn_like(y_ref)
    g, g_ref = grads_of(y, low, dy.to(y)), grads_of(y_ref, ref, dy)
    assert_close_rel(y.cpu(), y_ref, TOL[dtype], "y")
    for k in g_ref:
        assert_close_rel(g[k].cpu(), g_ref[k], TOL[dtype], f"d{k}")
    assert torch.all(g["dt"].cpu()[clamped] == 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dt_limit_default_and_wide_limits_change_nothing(backend):
    a, sp = _inputs(dtype=torch.float32)
    y = ops.selective_scan(**a, dt_softplus=sp, backend=backend)
    assert torch.equal(ops.selective_scan(**a, dt_softplus=sp, dt_limit=(0, float("inf")),
                                          backend=backend), y)
    wide = ops.selective_scan(**a, dt_softplus=sp, dt_limit=(0.0, 1e9), backend=backend)
    assert_close_rel(wide, y, TOL[torch.float32], "limits that clamp nothing")


# ----------------------------------------------------------------------------------------------
# seq_idx
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_seq_idx_equals_cu_seqlens(backend):
    """batch 1: seq_idx [0 0 0 0 3 3 5 5 5] is the packing cu_seqlens [0 4 6 9], bit for bit,
    states included (per sequence)."""
    a, sp = _inputs(1, 9)
    seq_idx = torch.tensor([[0, 0, 0, 0, 3, 3, 5, 5, 5]])
    cu = torch.tensor([0, 4, 6, 9], dtype=torch.int32)
    h0 = (torch.randn(3, 4, 3, 5, dtype=torch.float64), None)
    kw = dict(dt_softplus=sp, mode="quasiseparable", initial_states=h0, return_final_states=True,
              backend=backend)
    y, (f, r) = ops.bi_selective_scan(**a, seq_idx=seq_idx, **kw)
    y_cu, (f_cu, r_cu) = ops.bi_selective_scan(**a, cu_seqlens=cu, **kw)
    assert torch.equal(y, y_cu) and torch.equal(f, f_cu) and torch.equal(r, r_cu)
    assert seq_idx_to_cu_seqlens(seq_idx).tolist() == cu.tolist()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_seq_idx_with_batch(backend):
    """batch 2: each row is cut where seq_idx changes, and rows never mix: the float64
    sequential reference run on each row with that row's offsets, forward and gradients."""
    a, sp = _inputs(2, 7)
    seq_idx = torch.tensor([[0, 0, 1, 1, 1, 1, 2], [4, 4, 4, 4, 4, 4, 4]], dtype=torch.int32)
    rows = [[0, 2, 6, 7], [0, 7]]
    low = clone_inputs(a)
    y = ops.selective_scan(**low, dt_softplus=sp, seq_idx=seq_idx, reverse=True, backend=backend)
    dy = torch.randn_like(y)
    g = grads_of(y, low, dy)
    ref = clone_inputs(a)
    per_row = {k: v for k, v in ref.items() if k in ("A", "D", "dt_bias")}
    y_ref = torch.cat([
        R.selective_scan_sequential(**{k: v[i:i + 1] for k, v in ref.items() if k not in per_row},
                                    **per_row, dt_softplus=sp, reverse=True,
                                    cu_seqlens=torch.tensor(bounds, dtype=torch.int32))
        for i, bounds in enumerate(rows)])
    g_ref = grads_of(y_ref, ref, dy)
    assert_close_rel(y, y_ref, TOL[torch.float64], "y")
    for k in g_ref:
        assert_close_rel(g[k], g_ref[k], TOL[torch.float64], f"d{k}")


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------

def _call(op="bi_selective_scan", **over):
    a, sp = _inputs(2, 9, dtype=torch.float32)
    a.update(over)
    return getattr(ops, op)(**a, dt_softplus=sp, backend="reference")


STATE = torch.zeros(2, 4, 3, 5)
BAD = [
    ("chunk 0", dict(chunk_size=0), ValueError, "chunk_size must be a positive int, got 0"),
    ("chunk float", dict(chunk_size=64.0), TypeError,
     "chunk_size must be a positive int, got float"),
    ("chunk bool", dict(chunk_size=True), TypeError, "chunk_size must be a positive int, got bool"),
    ("limit one", dict(dt_limit=(0.1,)), TypeError, "dt_limit must be a pair (min, max)"),
    ("limit tensor", dict(dt_limit=(torch.tensor(0.1), 1.0)), TypeError,
     "dt_limit min must be a Python number, got Tensor"),
    ("limit nan", dict(dt_limit=(0.0, float("nan"))), ValueError, "dt_limit must not hold NaN"),
    ("limit negative", dict(dt_limit=(-0.1, 1.0)), ValueError,
     "dt_limit min must be finite and >= 0"),
    ("limit inf min", dict(dt_limit=(float("inf"), float("inf"))), ValueError,
     "dt_limit min must be finite and >= 0"),
    ("limit min > max", dict(dt_limit=(0.5, 0.1)), ValueError,
     "dt_limit must have min <= max, got min 0.5 > max 0.1"),
    ("seq_idx float", dict(seq_idx=torch.zeros(2, 9)), TypeError, "seq_idx must have one of"),
    ("seq_idx shape", dict(seq_idx=torch.zeros(2, 8, dtype=torch.int64)), ValueError,
     "seq_idx must have shape (2, 9), got (2, 8)"),
    ("seq_idx list", dict(seq_idx=[[0] * 9] * 2), TypeError, "seq_idx must be a torch.Tensor"),
    ("seq_idx device", dict(seq_idx=torch.zeros(2, 9, dtype=torch.int64, device="meta")),
     ValueError, "seq_idx is on meta but x is on cpu"),
    ("seq_idx decreasing", dict(seq_idx=torch.tensor([[0] * 9, [0, 0, 1, 1, 0, 2, 2, 2, 2]])),
     ValueError, "seq_idx must not decrease along a row (each sequence one run of tokens), but "
                 "seq_idx[1, 4] = 0 < seq_idx[1, 3] = 1"),
    ("final flag", dict(return_final_states="yes"), TypeError,
     "return_final_states must be a bool, got str"),
    ("states bare", dict(initial_states=STATE), TypeError,
     "initial_states of bi_selective_scan must be a pair (h0_fwd, h0_rev)"),
    ("states shape", dict(initial_states=(torch.zeros(2, 4, 3, 6), None)), ValueError,
     "initial_states[0] (h0_fwd) must have shape (2, 4, 3, 5), got (2, 4, 3, 6)"),
    ("states dtype", dict(initial_states=(None, STATE.long())), TypeError,
     "initial_states[1] (h0_rev) must have a floating-point dtype"),
    ("states device", dict(initial_states=(STATE.to("meta"), None)), ValueError,
     "initial_states[0] (h0_fwd) is on meta but x is on cpu"),
]


@pytest.mark.parametrize("name,over,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_keywords(name, over, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        _call(**over)


def test_bad_keywords_of_selective_scan():
    with pytest.raises(ValueError, match=re.escape("seq_idx and cu_seqlens both mark sequence")):
        a, sp = _inputs(1, 9)
        ops.selective_scan(**a, seq_idx=torch.zeros(1, 9, dtype=torch.int64),
                           cu_seqlens=torch.tensor([0, 9], dtype=torch.int32))
    with pytest.raises(TypeError, match="initial_states must be a torch.Tensor or None, got tuple"):
        _call("selective_scan", initial_states=(STATE, None))
    with pytest.raises(ValueError, match=re.escape("initial_states must have shape (3, 4, 3, 5), "
                                                   "got (1, 4, 3, 5)")):
        a, sp = _inputs(1, 9)
        ops.selective_scan(**a, cu_seqlens=random_cu_seqlens([2, 3, 4]),
                           initial_states=torch.zeros(1, 4, 3, 5, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# torch.compile
# ----------------------------------------------------------------------------------------------

def test_torch_compile_fullgraph_with_keywords():
    """chunk_size, dt_limit, initial_states and return_final_states compile without graph
    breaks (torch code around the unchanged custom op), forward and backward, as eager. (The
    custom op's backend; the reference backend compiles the same wrapper, only slower.)"""
    backend = CPU_BACKENDS[-1]
    a, sp = _inputs(2, 10, dtype=torch.float32)
    h0 = torch.randn(2, 4, 3, 5)
    leaves = [a["x"], a["dt"], a["B"], h0]
    for t in leaves:
        t.requires_grad_(True)

    def f(x, dt, B, h0):
        y, (hf, hr) = ops.bi_selective_scan(
            x, dt, a["A"], B, a["C"], 128, D=a["D"], z=a["z"], dt_bias=a["dt_bias"],
            dt_softplus=sp, mode="quasiseparable", dt_limit=(0.05, 0.5),
            initial_states=(h0, None), return_final_states=True, backend=backend)
        return y.square().sum() + hf.square().sum() + hr.sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(*leaves), leaves)
    want = torch.autograd.grad(f(*leaves), leaves)
    for name, g, w in zip(("x", "dt", "B", "h0"), got, want):
        assert_close_rel(g, w, 1e-5, f"compiled d{name}")


# ----------------------------------------------------------------------------------------------
# BiMamba2.forward: Mamba2's seqlen, seq_idx, inference_params
# ----------------------------------------------------------------------------------------------

def _layer():
    torch.manual_seed(0)
    return BiMamba2(16, d_state=8, headdim=8, mode="quasiseparable", dtype=torch.float64,
                    backend="reference")


def test_bimamba2_seqlen_takes_flattened_input():
    layer = _layer()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    out = layer(x.reshape(14, 16), seqlen=7, inference_params=None)
    assert out.shape == (14, 16)
    assert_close_rel(out, layer(x).reshape(14, 16), TOL[torch.float64], "flattened")


def test_bimamba2_seq_idx():
    """seq_idx cuts each row into sequences: the same as cu_seqlens over the rows packed, the
    conv included, and with seqlen too."""
    layer = _layer()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [2, 2, 3, 3, 3, 3, 3]])
    cu = torch.tensor([0, 3, 7, 9, 14], dtype=torch.int32)
    want = layer(x.reshape(1, 14, 16), cu_seqlens=cu).reshape(2, 7, 16)
    assert_close_rel(layer(x, seq_idx=seq_idx), want, TOL[torch.float64], "seq_idx")
    assert_close_rel(layer(x.reshape(14, 16), seqlen=7, seq_idx=seq_idx), want.reshape(14, 16),
                     TOL[torch.float64], "seq_idx with seqlen")


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(inference_params=object()), ValueError,
     "inference_params must be None: BiMamba2 is non-causal"),
    (dict(seqlen=4), ValueError, "with seqlen=4, x must have shape (batch * seqlen, 16)"),
    (dict(seqlen=0), ValueError, "seqlen must be positive, got 0"),
    (dict(seqlen=7.0), TypeError, "seqlen must be an int, got float"),
    (dict(seq_idx=torch.zeros(2, 7, dtype=torch.int64), mask=torch.ones(2, 7, dtype=torch.bool)),
     ValueError, "pass it without cu_seqlens or mask"),
    (dict(seq_idx=torch.zeros(2, 6, dtype=torch.int64)), ValueError,
     "seq_idx must have shape (2, 7), got (2, 6)"),
])
def test_bimamba2_bad_keywords(kw, exc, msg):
    layer = _layer()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    if "seqlen" in kw:
        x = x.reshape(14, 16)
    with pytest.raises(exc, match=re.escape(msg)):
        layer(x, **kw)
