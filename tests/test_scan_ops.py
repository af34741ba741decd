"""Public scan API: argument errors, backend selection, torch.compile, edge sizes."""

import pytest
import torch

import mmhnet.ops as ops
from helpers import (HAS_CUDA, TOL, TRITON_DEVICE, assert_close_rel, clone_inputs,
                     make_scan_inputs, random_cu_seqlens)
from mmhnet.ops import BackendUnavailableError
from mmhnet.ops import reference as R


def _args(**kw):
    a = make_scan_inputs(2, 9, 4, 3, 2, 5, **kw)
    a.pop("dt_softplus")
    return a


def _call(op="bi_selective_scan", backend="reference", **over):
    a = _args()
    a.update(over)
    return getattr(ops, op)(**a, backend=backend)


BAD = [
    ("x rank", dict(x=torch.randn(2, 9, 12)), ValueError, "x must have 4 dimensions"),
    ("dt rank", dict(dt=torch.randn(2, 9)), ValueError, "dt must have shape (2, 9, 4)"),
    ("dt length", dict(dt=torch.randn(2, 10, 4)), ValueError, "dt must have shape (2, 9, 4)"),
    ("B length", dict(B=torch.randn(2, 8, 2, 5)), ValueError, "B must have shape (2, 9, 2, 5)"),
    ("C dstate", dict(C=torch.randn(2, 9, 2, 6)), ValueError, "C must have shape (2, 9, 2, 5)"),
    ("A shape", dict(A=torch.randn(3)), ValueError, "A must have shape (4,)"),
    ("groups", dict(B=torch.randn(2, 9, 3, 5), C=torch.randn(2, 9, 3, 5)), ValueError,
     "nheads (4, from x) must be divisible by ngroups (3, from B)"),
    ("D shape", dict(D=torch.randn(4, 2)), ValueError, "D must have shape (4,) or (4, 3)"),
    ("z shape", dict(z=torch.randn(2, 9, 4, 2)), ValueError, "z must have shape (2, 9, 4, 3)"),
    ("dt_bias shape", dict(dt_bias=torch.randn(5)), ValueError, "dt_bias must have shape (4,)"),
    ("int x", dict(x=torch.ones(2, 9, 4, 3, dtype=torch.int32)), TypeError, "x must have a floating"),
    ("int dt", dict(dt=torch.ones(2, 9, 4, dtype=torch.int64)), TypeError, "dt must have a floating"),
    ("not a tensor", dict(A=[1.0, 2.0, 3.0, 4.0]), TypeError, "A must be a torch.Tensor"),
    ("device", dict(A=torch.randn(4, device="meta")), ValueError, "A is on meta but x is on cpu"),
    ("cu batch", dict(cu_seqlens=torch.tensor([0, 9], dtype=torch.int32)), ValueError,
     "batch must be 1"),
    ("cu dtype", dict(cu_seqlens=torch.tensor([0.0, 9.0])), TypeError, "cu_seqlens must have"),
    ("B_rev shape", dict(B_rev=torch.randn(2, 9, 2, 4)), ValueError, "B_rev must have shape"),
    ("dt_rev length", dict(dt_rev=torch.randn(2, 8, 4)), ValueError, "dt_rev must have shape"),
    ("cu list", dict(cu_seqlens=[0, 9]), TypeError, "cu_seqlens must be a torch.Tensor"),
    ("softplus str", dict(dt_softplus="False"), TypeError, "dt_softplus must be a bool"),
    ("softplus tensor", dict(dt_softplus=torch.tensor([True, False])), TypeError,
     "dt_softplus must be a bool"),
]


@pytest.mark.parametrize("name,over,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments(name, over, exc, msg):
    with pytest.raises(exc, match=_re(msg)):
        _call(**over)


def test_reverse_must_be_a_bool():
    with pytest.raises(TypeError, match="reverse must be a bool, got str 'no'"):
        _call("selective_scan", reverse="no")
    a = _args()  # 0 and 1 are accepted as False and True
    assert torch.equal(ops.selective_scan(**a, reverse=1, backend="reference"),
                       ops.selective_scan(**a, reverse=True, backend="reference"))


def _re(msg):
    import re

    return re.escape(msg)


@pytest.mark.parametrize("cu,msg", [
    ([1, 4, 9], "cu_seqlens must start at 0"),
    ([0, 5, 3, 9], "cu_seqlens must not decrease"),
    ([0, 4, 8], "cu_seqlens must end at the total length 9"),
])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bad_cu_seqlens_values(cu, msg, backend):
    a = make_scan_inputs(1, 9, 2, 4, 1, 8, device=TRITON_DEVICE)
    with pytest.raises(ValueError, match=_re(msg)):
        ops.bi_selective_scan(**a, cu_seqlens=torch.tensor(cu, dtype=torch.int32,
                                                           device=TRITON_DEVICE), backend=backend)


def test_unknown_mode_and_backend():
    with pytest.raises(ValueError, match="mode must be one of 'sum', 'quasiseparable'"):
        _call(mode="hydra")
    with pytest.raises(ValueError, match="backend must be one of"):
        _call(backend="tpu")


def test_backend_env_override(monkeypatch):
    a = _args()
    monkeypatch.setenv("MMHNET_BACKEND", "nope")
    with pytest.raises(ValueError, match="MMHNET_BACKEND must be one of"):
        ops.selective_scan(**a)
    monkeypatch.setenv("MMHNET_BACKEND", "reference")
    y = ops.selective_scan(**a)
    assert_close_rel(y, R.selective_scan_sequential(**a), TOL[torch.float32], "env reference")


def test_unavailable_backend_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    a = _args()
    with pytest.raises(BackendUnavailableError, match="backend 'triton' needs CUDA tensors"):
        ops.bi_selective_scan(**a, backend="triton")
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' needs CUDA tensors"):
        ops.bi_selective_scan(**a, backend="cuda")


def test_triton_rejects_float64():
    a = make_scan_inputs(1, 5, 2, 4, 1, 8, dtype=torch.float64, device=TRITON_DEVICE)
    with pytest.raises(BackendUnavailableError, match="x is float64"):
        ops.bi_selective_scan(**a, backend="triton")


def test_default_backend_on_cpu():
    from mmhnet.ops._backend import native_module

    be = ops.resolve_backend(None, torch.device("cpu"), "t", "bi_scan_fwd")
    has_native = native_module("_C") is not None and hasattr(native_module("_C"), "bi_scan_fwd")
    assert be == ("cpu" if has_native else "reference")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_empty_sequence(backend):
    a = make_scan_inputs(2, 0, 2, 4, 1, 8, D="h", z=True, device=TRITON_DEVICE)
    for k in ("x", "dt", "B", "C", "z"):
        a[k].requires_grad_(True)
    y = ops.bi_selective_scan(**a, backend=backend)
    assert y.shape == a["x"].shape
    y.sum().backward()
    assert a["x"].grad.shape == a["x"].shape


@pytest.mark.parametrize("backend,packed", [("reference", False), ("triton", True),
                                            ("triton", False)])
def test_torch_compile_fullgraph(backend, packed):
    """The op compiles without graph breaks, forward and backward, and matches eager. (The
    reference backend is plain torch: with cu_seqlens it reads offsets on the host, so it is
    compiled without them.)"""
    a = make_scan_inputs(1, 12, 2, 4, 1, 8, D="h", z=True, dt_bias=True, device=TRITON_DEVICE)
    cu = random_cu_seqlens([5, 7], TRITON_DEVICE) if packed else None
    grad_keys = ("x", "dt", "B", "C")
    for k in grad_keys:
        a[k].requires_grad_(True)
    keys = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")

    def f(x, dt, A, B, C, D, z, dt_bias):
        return ops.bi_selective_scan(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True,
                                     mode="quasiseparable", cu_seqlens=cu,
                                     backend=backend).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    compiled(*(a[k] for k in keys)).backward()
    grads = [a[k].grad.clone() for k in grad_keys]
    for k in grad_keys:
        a[k].grad = None
    f(*(a[k] for k in keys)).backward()
    for k, g in zip(grad_keys, grads):
        assert_close_rel(g, a[k].grad, 1e-5, f"compiled d{k}")


def test_cu_seqlens_validated_again_after_modification():
    a = make_scan_inputs(1, 9, 2, 4, 1, 8)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    ops.bi_selective_scan(**a, cu_seqlens=cu, backend="reference")
    cu[1] = 10  # in place: the version counter changes, the cached validation must not apply
    with pytest.raises(ValueError, match="must not decrease"):
        ops.bi_selective_scan(**a, cu_seqlens=cu, backend="reference")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_inference_mode_with_offsets(backend):
    """Offsets made under torch.inference_mode have no version counter (their validation is not
    cached): the scans still run and give the no_grad values."""
    a = make_scan_inputs(1, 9, 4, 3, 2, 5, D="h")
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    with torch.no_grad():
        expected = ops.bi_selective_scan(**a, cu_seqlens=cu, backend=backend)
    with torch.inference_mode():
        for offsets in (cu, cu.clone(), cu.long()):
            got = ops.bi_selective_scan(**a, cu_seqlens=offsets, backend=backend)
            assert torch.equal(got, expected)


ONE_TOKEN_BACKENDS = [("reference", "cpu"), ("cpu", "cpu"), ("triton", TRITON_DEVICE)] + (
    [("cuda", "cuda")] if HAS_CUDA else [])
ONE_TOKEN_CASES = [(b, d, t) for b, d in ONE_TOKEN_BACKENDS for t in [torch.float32, torch.float64]
                   if not (b == "triton" and t == torch.float64)]
CASE_IDS = [f"{b}-{str(t)[6:]}" for b, _, t in ONE_TOKEN_CASES]


@pytest.mark.parametrize("backend,device,dtype", ONE_TOKEN_CASES, ids=CASE_IDS)
@pytest.mark.parametrize("lengths", [1, [1, 1, 1]], ids=["len1", "packed_len1"])
def test_one_token_sequences_give_exact_zero_dA(backend, device, dtype, lengths):
    """No decay reaches a state when every sequence has one token, so dA is 0 exactly: the
    telescoped sums the fast backwards use must not leave their rounding there (a relative
    error against an exact 0 is unbounded)."""
    packed = isinstance(lengths, list)
    L = sum(lengths) if packed else lengths
    cu = random_cu_seqlens(lengths, device) if packed else None
    calls = [("bi_selective_scan", dict(mode="sum")),
             ("bi_selective_scan", dict(mode="quasiseparable")),
             ("selective_scan", dict(reverse=False)), ("selective_scan", dict(reverse=True))]
    for op, kw in calls:
        rev = ("A",) if op == "bi_selective_scan" else ()
        a = clone_inputs(make_scan_inputs(1 if packed else 2, L, 4, 6, 2, 8, dtype=dtype,
                                          device=device, D="h", z=True, dt_bias=True, rev=rev))
        y = getattr(ops, op)(**a, **kw, cu_seqlens=cu, backend=backend)
        y.backward(torch.randn_like(y))
        for name in ("A", "A_rev"):
            if name in a:
                assert torch.equal(a[name].grad, torch.zeros_like(a[name])), (op, kw, name)


QUASI_EXACT_CASES = [c for c in ONE_TOKEN_CASES if c[0] != "triton"]


@pytest.mark.parametrize("backend,device,dtype", QUASI_EXACT_CASES,
                         ids=[i for c, i in zip(ONE_TOKEN_CASES, CASE_IDS) if c[0] != "triton"])
def test_quasiseparable_two_token_sequences_give_exact_zero_dA(backend, device, dtype):
    """In quasiseparable mode the last state of a sequence feeds no output, so with sequences of
    at most two tokens no decay reaches an output either: dA = 0 exactly. (The native backwards
    know the last step's log-decay gradient is 0; the Triton one does not, and leaves ~1e-8.)"""
    cu = random_cu_seqlens([2, 1, 2, 2], device)
    a = clone_inputs(make_scan_inputs(1, 7, 4, 6, 2, 8, dtype=dtype, device=device, D="hp",
                                      z=True, dt_bias=True, rev=("A",)))
    y = ops.bi_selective_scan(**a, mode="quasiseparable", cu_seqlens=cu, backend=backend)
    y.backward(torch.randn_like(y))
    assert torch.equal(a["A"].grad, torch.zeros_like(a["A"])), a["A"].grad
    assert torch.equal(a["A_rev"].grad, torch.zeros_like(a["A_rev"])), a["A_rev"].grad


def _strided_view(t, layout):
    """t's values in a non-contiguous view built from a fresh leaf (so gradients reach it):
    'step2' takes every other element of a longer buffer (a 2-D t as its transpose's
    transpose), 'broadcast' expands one value per row with stride 0."""
    if layout == "broadcast":
        base = t[..., :1].detach().clone().requires_grad_(True)
        return base.expand(t.shape)
    if t.dim() == 2:
        base = t.detach().t().contiguous().requires_grad_(True)
        return base.t()
    base = torch.stack([t.detach(), torch.full_like(t, float("nan"))], -1).flatten()
    base.requires_grad_(True)
    return base[::2]


@pytest.mark.parametrize("backend,device", ONE_TOKEN_BACKENDS,
                         ids=[b for b, _ in ONE_TOKEN_BACKENDS])
@pytest.mark.parametrize("layout", ["step2", "broadcast"])
@pytest.mark.parametrize("D", ["h", "hp"])
def test_strided_per_head_parameters(backend, device, layout, D):
    """A, A_rev, D and dt_bias as strided or stride-0 views: every backend reads their strides
    (the triton backend once read them as dense: wrong values, NaN for a stride-0 A)."""
    a = make_scan_inputs(1, 13, 4, 3, 2, 5, D=D, z=True, dt_bias=True, rev=("A",), device=device)
    cu = torch.tensor([0, 6, 13], dtype=torch.int32, device=device)
    softplus = a.pop("dt_softplus")
    for name in ("x", "dt", "B", "C", "z"):
        a[name].requires_grad_(True)
    for name in ("A", "A_rev", "D", "dt_bias"):
        a[name] = _strided_view(a[name], layout)
        assert not a[name].is_contiguous()
    ref = clone_inputs(a, dtype=torch.float64, device="cpu")
    y_ref = R.bi_selective_scan_sequential(**ref, dt_softplus=softplus, mode="quasiseparable",
                                           cu_seqlens=cu.cpu())
    y = ops.bi_selective_scan(**a, dt_softplus=softplus, mode="quasiseparable", cu_seqlens=cu,
                              backend=backend)
    dy = torch.randn_like(y_ref)
    names = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "A_rev"]
    got = torch.autograd.grad(y, [a[k] for k in names], dy.to(y))
    want = torch.autograd.grad(y_ref, [ref[k] for k in names], dy)
    assert_close_rel(y.cpu(), y_ref, TOL[torch.float32], f"{backend} y")
    for k, g, w in zip(names, got, want):
        assert_close_rel(g.cpu(), w, TOL[torch.float32], f"{backend} d{k}")
