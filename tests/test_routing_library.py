"""torch.library registration of the routing ops: opcheck of every op and torch.compile."""

import pytest
import torch
from torch.library import opcheck

from mmhnet import ops
from mmhnet.ops import reference as ref
from helpers import permuted
from routing_cases import backend_device, backend_params, make_packed


def _inputs(dev):
    q, k, x, cu = make_packed([3, 0, 4, 1], 5, "random", dev)
    p, mask = ref.route_boundaries_reference(q, k, cu)
    xc, chunk_cu, chunk_id = ref.chunk_gather_reference(x, mask, cu)
    f32 = dict(dtype=torch.float32)
    return dict(q=q.to(**f32), k=k.to(**f32), x=x.to(**f32), cu=cu, p=p.to(**f32), mask=mask,
                z=xc.to(**f32), chunk_cu=chunk_cu, chunk_id=chunk_id,
                pc=p[mask].clamp(1e-4, 1 - 1e-4).to(**f32))


def _grad(t):
    return t.detach().clone().requires_grad_(True)


@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
@pytest.mark.parametrize("backend", backend_params("chunk_gather"))
def test_opcheck(backend, layout):
    """Every op and backward op; "permuted": the (rows, dim) inputs dense but column-major, where
    the fake kernels must still give the real outputs' strides."""
    a = _inputs(backend_device(backend))
    if layout == "permuted":
        a.update({k: permuted(a[k]) for k in ("q", "k", "x", "z")})
    mm = torch.ops.mmhnet
    cases = [
        (mm.route_boundaries, (_grad(a["q"]), _grad(a["k"]), a["cu"], backend)),
        (mm.chunk_gather, (_grad(a["x"]), a["mask"], a["cu"], _grad(a["p"]), backend)),
        (mm.chunk_gather, (a["x"], a["mask"], None, None, backend)),
        (mm.route_and_gather, (_grad(a["q"]), _grad(a["k"]), _grad(a["x"]), a["cu"], backend)),
        (mm.route_and_gather, (a["q"], a["k"], a["x"], None, backend)),
        (mm.chunk_expand, (a["z"], a["chunk_id"], a["mask"], backend)),
        (mm.chunk_scatter, (_grad(a["z"]), a["chunk_id"], _grad(a["p"]), a["mask"], backend)),
        (mm.chunk_scatter, (_grad(a["z"]), a["chunk_id"], None, None, backend)),
        (mm.token_gather, (_grad(a["x"]), a["chunk_id"].long(), backend)),
        (mm.token_scatter, (_grad(a["z"]), a["chunk_id"][: a["z"].shape[0]] % 7, 7, backend)),
    ]
    if backend != "cuda":
        cases += [
            (mm.ema_smooth, (_grad(a["z"]), _grad(a["pc"]), a["chunk_cu"], True, backend)),
            (mm.ema_smooth, (_grad(a["z"]), _grad(a["pc"]), None, False, backend)),
            (mm.ratio_loss, (a["mask"], _grad(a["p"]), 4.0, backend)),
        ]
    # the backward ops (no autograd of their own)
    dz = torch.randn(a["x"].shape[0], a["z"].shape[1], device=a["z"].device)
    stats = mm.route_boundaries(a["q"], a["k"], a["cu"], backend)[2]
    no_stats = a["q"].new_empty(0)  # recomputed by the backward
    backward_cases = [
        (mm.route_boundaries_bwd, (a["p"], a["q"], a["k"], a["cu"], stats, backend)),
        (mm.route_boundaries_bwd, (a["p"], a["q"], a["k"], a["cu"], no_stats, backend)),
        (mm.chunk_scatter_bwd, (dz, a["z"], a["chunk_id"], a["p"], a["mask"], backend)),
    ]
    if backend != "cuda":
        backward_cases.append((mm.ema_smooth_bwd, (a["z"], a["z"], a["pc"], a["chunk_cu"], True,
                                                   backend)))
    for op, args in backward_cases:
        opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    for op, args in cases:
        # data-dependent output size: the AOT tests trace without a shape environment, which
        # cannot hold the unbacked size (test_compile_chunk_gather covers tracing it)
        skip = (("test_aot_dispatch_static", "test_aot_dispatch_dynamic")
                if op in (mm.chunk_gather, mm.route_and_gather) else ())
        tests = [t for t in ("test_schema", "test_autograd_registration", "test_faketensor",
                             "test_aot_dispatch_static", "test_aot_dispatch_dynamic")
                 if t not in skip]
        opcheck(op, args, test_utils=tests)


def test_compile_fixed_size_ops():
    """The fixed-size ops under torch.compile(fullgraph=True) give the eager results."""
    a = _inputs("cpu")

    def dechunk(z, pc, chunk_cu, chunk_id, p, mask):
        e = ops.ema_smooth(z, pc, chunk_cu, True)
        y = ops.chunk_scatter(e, chunk_id, p=p, mask=mask)
        return y, ops.ratio_loss(mask, p, 4.0)

    def route(q, k, cu):
        return ops.route_boundaries(q, k, cu)

    for fn, args in [(dechunk, (a["z"], a["pc"], a["chunk_cu"], a["chunk_id"], a["p"], a["mask"])),
                     (route, (a["q"], a["k"], a["cu"]))]:
        eager = fn(*args)
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)
        for e, c in zip(eager, compiled):
            assert torch.equal(e, c)


def test_compile_chunk_gather():
    """chunk_gather's output size is data-dependent: under torch.compile it is an unbacked size
    (register_fake uses new_dynamic_size) and the graph still holds it whole."""
    a = _inputs("cpu")

    def gather_and_back(x, mask, cu):
        xc, chunk_cu, chunk_id = ops.chunk_gather(x, mask, cu)
        return ops.chunk_scatter(xc * 2, chunk_id)

    eager = gather_and_back(a["x"], a["mask"], a["cu"])
    compiled = torch.compile(gather_and_back, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(a["x"], a["mask"], a["cu"]), eager)

    def route_gather_and_back(q, k, x, cu):
        p, mask, xc, chunk_cu, chunk_id, pc = ops.route_and_gather(q, k, x, cu)
        return ops.chunk_scatter(xc * pc[:, None], chunk_id, p=p, mask=mask)

    args = (a["q"], a["k"], a["x"], a["cu"])
    compiled = torch.compile(route_gather_and_back, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(*args), route_gather_and_back(*args))


def test_compile_round_trip_with_gradients():
    """boundaries -> gather -> EMA (whose size check meets the unbacked chunk count) ->
    scatter with confidence, one graph, forward and gradients equal to eager."""
    a = _inputs("cpu")

    def round_trip(q, k, x, cu):
        p, mask, xc, chunk_cu, chunk_id, pc = ops.route_and_gather(q, k, x, cu)
        e = ops.ema_smooth(xc, pc, chunk_cu, True)
        return ops.chunk_scatter(e, chunk_id, p=p, mask=mask), ops.ratio_loss(mask, p, 4.0)

    compiled = torch.compile(round_trip, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (round_trip, compiled):
        leaves = [_grad(a[n]) for n in ("q", "k", "x")]
        y, loss = fn(*leaves, a["cu"])
        grads = torch.autograd.grad((y * torch.arange(y.numel()).view_as(y)).sum() + loss, leaves)
        results.append((y, loss, *grads))
    for e, c in zip(*results):
        assert torch.equal(e, c)
