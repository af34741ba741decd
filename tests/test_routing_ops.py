"""Every backend of the routing ops against the float64 references: forward values and every
gradient (with a random upstream gradient), on the cases of routing_cases.CASES."""

import pytest
import torch

from helpers import TOL, assert_close_rel, random_cu_seqlens
from mmhnet.ops import (chunk_gather, chunk_scatter, ema_smooth, ratio_loss, route_and_gather,
                        route_boundaries, token_gather, token_scatter)
from mmhnet.ops import reference as ref
from mmhnet.ops._backend import native_module
from routing_cases import (CASES, DTYPES, backend_device, backend_params, make_case,
                           make_packed, with_cpu_streamed)

CASE_NAMES = list(CASES)


def _leaf(t, dtype=None, device=None):
    return t.detach().to(dtype=dtype or t.dtype, device=device or t.device).clone().requires_grad_(True)


def _dtype_params(op):
    out = []
    for bp in backend_params(op):
        for dt in DTYPES[bp.values[0]]:
            out.append(pytest.param(bp.values[0], dt, marks=bp.marks,
                                    id=f"{bp.values[0]}-{str(dt).replace('torch.', '')}"))
    return with_cpu_streamed(out)


def _routing(case, device="cpu"):
    """q, k, x, cu (float64) and the reference p, mask of one case."""
    q, k, x, cu = make_case(case, device)
    p, mask = ref.route_boundaries_reference(q, k, cu)
    return q, k, x, cu, p, mask


def _grads(out, leaves, upstream):
    return torch.autograd.grad(out, leaves, upstream)


def _assert_close_floor(out, ref, tol, floor, what):
    """Relative error with the denominator at least ``floor``: for gradients that vanish
    analytically (cos = +-1), where a relative error of rounding noise means nothing."""
    assert out.shape == ref.shape and torch.isfinite(out).all(), what
    err = ((out.double() - ref).norm() / max(ref.norm().item(), floor)).item()
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("backend,dtype", _dtype_params("route_boundaries"))
def test_route_boundaries(backend, dtype, case):
    dev = backend_device(backend)
    q, k, _, cu, _, _ = _routing(case)
    q, k = q.to(dtype).double(), k.to(dtype).double()  # what the kernel sees
    qr, kr = _leaf(q), _leaf(k)
    p_ref, m_ref = ref.route_boundaries_reference(qr, kr, cu)
    dp = torch.randn_like(p_ref)
    dq_ref, dk_ref = _grads(p_ref, (qr, kr), dp)

    qb, kb = _leaf(q, dtype, dev), _leaf(k, dtype, dev)
    p, mask = route_boundaries(qb, kb, cu.to(dev), backend=backend)
    assert p.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert mask.dtype == torch.bool and mask.shape == p_ref.shape
    dq, dk = _grads(p, (qb, kb), dp.to(device=dev, dtype=p.dtype))
    assert_close_rel(p.cpu(), p_ref, TOL[torch.float32] if dtype != torch.float64 else TOL[dtype], "p")
    # a decision within rounding of the 0.5 threshold may go either way; ties are exact
    clear = (p_ref - 0.5).abs() > 1e-4
    assert torch.equal(mask.cpu()[clear], m_ref[clear])
    if case == "ties":
        inner = p_ref != 1
        assert (p.cpu()[inner] == 0.5).all() and not mask.cpu()[inner].any()
    floor = (dp.norm() / q.norm(dim=-1).mean()).item()
    _assert_close_floor(dq.cpu(), dq_ref, TOL[dtype], floor, "dq")
    _assert_close_floor(dk.cpu(), dk_ref, TOL[dtype], floor, "dk")


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("backend,dtype", _dtype_params("chunk_gather"))
def test_chunk_gather(backend, dtype, case):
    dev = backend_device(backend)
    _, _, x, cu, p, mask = _routing(case)
    x = x.to(dtype)
    xc_ref, ccu_ref, cid_ref = ref.chunk_gather_reference(x, mask, cu)

    xb, pb = _leaf(x, device=dev), _leaf(p, device=dev)
    xc, ccu, cid, pc = chunk_gather(xb, mask.to(dev), cu.to(dev), p=pb, backend=backend)
    assert torch.equal(xc.detach().cpu(), xc_ref)
    assert torch.equal(pc.detach().cpu(), p[mask])
    assert ccu.dtype == cid.dtype == torch.int32
    assert torch.equal(ccu.cpu(), ccu_ref) and torch.equal(cid.cpu(), cid_ref)

    dxc, dpc = torch.randn_like(xc), torch.randn_like(pc)
    dx, dp = _grads((xc, pc), (xb, pb), (dxc, dpc))
    dx_ref = torch.zeros_like(x)
    dx_ref[mask] = dxc.cpu()
    dp_ref = torch.zeros_like(p)
    dp_ref[mask] = dpc.cpu()
    assert torch.equal(dx.cpu(), dx_ref) and torch.equal(dp.cpu(), dp_ref)

    xc2, ccu2, cid2 = chunk_gather(xb, mask.to(dev), cu.to(dev), backend=backend)
    assert torch.equal(xc2, xc) and torch.equal(cid2, cid)


def _check_route_and_gather(backend, dtype, q, k, x, cu):
    """route_and_gather on ``backend`` against route_boundaries_reference + chunk_gather_reference:
    values, and the gradients of q, k, x under random upstream gradients of p, x_chunks and
    p_chunks. The chunk outputs are compared with the reference gathered by the op's own mask
    (a decision within rounding of 0.5 may differ from the float64 one)."""
    dev = backend_device(backend)
    q, k, x = (t.to(dtype).double() for t in (q, k, x))  # what the kernels see
    leaves = [_leaf(t, dtype, dev) for t in (q, k, x)]
    p, mask, xc, ccu, cid, pc = route_and_gather(*leaves, cu.to(dev), backend=backend)
    assert mask.dtype == torch.bool and ccu.dtype == cid.dtype == torch.int32 and xc.dtype == dtype
    assert p.dtype == pc.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)

    qr, kr, xr = (_leaf(t) for t in (q, k, x))
    p_ref, m_ref = ref.route_boundaries_reference(qr, kr, cu)
    assert_close_rel(p.detach().cpu(), p_ref.detach(), TOL[torch.float32] if dtype != torch.float64
                     else TOL[dtype], "p")
    clear = (p_ref - 0.5).abs() > 1e-4
    mask = mask.cpu()
    assert torch.equal(mask[clear], m_ref[clear])
    xc_ref, ccu_ref, cid_ref = ref.chunk_gather_reference(xr, mask, cu)
    assert torch.equal(ccu.cpu(), ccu_ref) and torch.equal(cid.cpu(), cid_ref)
    assert torch.equal(xc.detach().cpu().double(), xc_ref.detach())
    assert torch.equal(pc.detach().cpu(), p.detach().cpu()[mask])

    ups = [torch.randn(t.shape, dtype=torch.float64) for t in (p_ref, xc_ref, xc_ref[:, 0])]
    loss_ref = (p_ref * ups[0]).sum() + (xc_ref * ups[1]).sum() + (p_ref[mask] * ups[2]).sum()
    grads_ref = _grads(loss_ref, (qr, kr, xr), None)
    grads = _grads((p, xc, pc), leaves, [u.to(device=dev, dtype=t.dtype)
                                         for u, t in zip(ups, (p, xc, pc))])
    floor = (ups[0].norm() / q.norm(dim=-1).mean()).item()
    for name, g, g_ref in zip(("dq", "dk", "dx"), grads, grads_ref):
        assert g.dtype == dtype
        _assert_close_floor(g.cpu(), g_ref, TOL[dtype], floor, name)


@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("backend,dtype", _dtype_params("route_and_gather"))
def test_route_and_gather(backend, dtype, case):
    q, k, x, cu = make_case(case)
    _check_route_and_gather(backend, dtype, q, k, x, cu)


@pytest.mark.parametrize("kind", ["random", "opposite", "same"])
@pytest.mark.parametrize("backend", with_cpu_streamed(
    [b for b in backend_params("route_and_gather") if b.values[0] != "triton"]))
def test_route_and_gather_many_tiles(backend, kind):
    """Sequences across the fused CUDA kernel's tiles of 64 tokens (the look-back chains the
    counts; a chunk offset is written by the tile of the token before it), empty and length-1
    sequences at tile edges. The triton backend runs the same kernels as route_boundaries and
    chunk_gather, tested on long inputs there."""
    lengths = [0, 1, 0, 130, 64, 1, 0, 0, 200, 63, 65, 1, 128, 0]
    q, k, x, cu = make_packed(lengths, 9, kind)
    _check_route_and_gather(backend, torch.float32, q, k, x, cu)


@pytest.mark.parametrize("confidence", [False, True], ids=["plain", "ste"])
@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("backend,dtype", _dtype_params("chunk_scatter"))
def test_chunk_scatter(backend, dtype, case, confidence):
    dev = backend_device(backend)
    _, _, _, cu, p, mask = _routing(case)
    _, _, chunk_id = ref.chunk_gather_reference(p[:, None], mask, cu)
    z = torch.randn(int(mask.sum()), CASES[case][1], dtype=torch.float64).to(dtype).double()
    zr, pr = _leaf(z), _leaf(p)
    kw_ref = dict(p=pr, mask=mask) if confidence else {}
    out_ref = ref.chunk_scatter_reference(zr, chunk_id, **kw_ref)
    dout = torch.randn_like(out_ref).to(dtype).double()
    leaves_ref = (zr, pr) if confidence else (zr,)
    grads_ref = _grads(out_ref, leaves_ref, dout)

    zb, pb = _leaf(z, dtype, dev), _leaf(p, device=dev)
    kw = dict(p=pb, mask=mask.to(dev)) if confidence else {}
    out = chunk_scatter(zb, chunk_id.to(dev), backend=backend, **kw)
    assert out.dtype == dtype
    assert torch.equal(out.detach().cpu().double(), out_ref.detach())  # a copy: exact
    grads = _grads(out, (zb, pb) if confidence else (zb,), dout.to(device=dev, dtype=dtype))
    for name, g, g_ref in zip(("dz_chunks", "dp"), grads, grads_ref):
        assert_close_rel(g.cpu(), g_ref, TOL[dtype], name)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("case", CASE_NAMES)
@pytest.mark.parametrize("backend,dtype", _dtype_params("ema_smooth"))
def test_ema_smooth(backend, dtype, case, bidirectional):
    _, _, _, cu, p, mask = _routing(case)
    _, chunk_cu, _ = ref.chunk_gather_reference(p[:, None], mask, cu)
    z = torch.randn(int(mask.sum()), CASES[case][1], dtype=torch.float64).to(dtype).double()
    pc = p[mask].to(dtype).double()  # 1 at every sequence start: the op clamps it
    _check_ema(z, pc, chunk_cu, bidirectional, backend, dtype)


def _check_ema(z, pc, cu, bidirectional, backend, dtype):
    """ema_smooth of z, pc (float64 values representable in dtype) run in dtype on the
    backend's device against the float64 reference: the output and both gradients, under a
    random upstream gradient."""
    dev = backend_device(backend)
    zr, pr = _leaf(z), _leaf(pc)
    out_ref = ref.ema_smooth_reference(zr, pr, cu, bidirectional)
    dout = torch.randn_like(out_ref).to(dtype).double()
    dz_ref, dp_ref = _grads(out_ref, (zr, pr), dout)

    zb, pb = _leaf(z, dtype, dev), _leaf(pc, dtype, dev)
    out = ema_smooth(zb, pb, cu.to(dev), bidirectional, backend=backend)
    assert out.dtype == dtype
    dz, dp = _grads(out, (zb, pb), dout.to(device=dev, dtype=dtype))
    assert_close_rel(out.cpu(), out_ref, TOL[dtype], "out")
    assert_close_rel(dz.cpu(), dz_ref, TOL[dtype], "dz_chunks")
    assert_close_rel(dp.cpu(), dp_ref, TOL[dtype], "dp_chunks")


@pytest.mark.parametrize("backend,dtype", _dtype_params("ema_smooth"))
def test_ema_smooth_clamps_p(backend, dtype):
    """p is clamped to [1e-4, 1 - 1e-4] (DESIGN.md): p = 0 or 1 give the EMA of the clamped
    rates, and no gradient reaches a p outside that range."""
    dev = backend_device(backend)
    pc = torch.tensor([1.0, 0.0, 1.0, 0.3, 1e-5, 0.0, 1.0, 0.5], dtype=torch.float64)
    z = torch.randn(8, 5, dtype=torch.float64).to(dtype).double()
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    zr, pr = _leaf(z), _leaf(pc.clamp(1e-4, 1 - 1e-4))
    out_ref = ref.ema_smooth_reference(zr, pr, cu, True)
    dout = torch.randn_like(out_ref)
    dz_ref, dp_ref = _grads(out_ref, (zr, pr), dout)
    dp_ref = torch.where((pc > 1e-4) & (pc < 1 - 1e-4), dp_ref, 0)
    zb, pb = _leaf(z, dtype, dev), _leaf(pc, dtype, dev)
    out = ema_smooth(zb, pb, cu.to(dev), True, backend=backend)
    dz, dp = _grads(out, (zb, pb), dout.to(device=dev, dtype=dtype))
    assert dp.dtype == dtype
    assert_close_rel(out.cpu(), out_ref, TOL[dtype], "out")
    assert_close_rel(dz.cpu(), dz_ref, TOL[dtype], "dz_chunks")
    assert_close_rel(dp.cpu(), dp_ref, TOL[dtype], "dp_chunks")
    assert (dp.cpu()[dp_ref == 0] == 0).all()


@pytest.mark.parametrize("backend,dtype", _dtype_params("token_gather"))
def test_token_gather_and_scatter(backend, dtype):
    dev = backend_device(backend)
    x = torch.randn(13, 19, dtype=torch.float64).to(dtype).double()
    index = torch.cat([torch.randperm(13), torch.randint(0, 13, (9,))])  # with repeats
    xr = _leaf(x)
    out_ref = ref.token_gather_reference(xr, index)
    dout = torch.randn_like(out_ref).to(dtype).double()
    (dx_ref,) = _grads(out_ref, (xr,), dout)

    xb = _leaf(x, dtype, dev)
    out = token_gather(xb, index.to(dev), backend=backend)
    assert torch.equal(out.detach().cpu().double(), out_ref.detach())
    (dx,) = _grads(out, (xb,), dout.to(device=dev, dtype=dtype))
    assert_close_rel(dx.cpu(), dx_ref, TOL[dtype], "token_gather dx")

    yr = _leaf(dout)
    s_ref = ref.token_scatter_reference(yr, index, 15)
    ds = torch.randn_like(s_ref).to(dtype).double()
    (dy_ref,) = _grads(s_ref, (yr,), ds)
    yb = _leaf(dout, dtype, dev)
    s = token_scatter(yb, index.to(device=dev, dtype=torch.int32), 15, backend=backend)
    assert s.shape == (15, 19) and s.dtype == dtype
    assert_close_rel(s.cpu(), s_ref, TOL[dtype], "token_scatter")
    (dy,) = _grads(s, (yb,), ds.to(device=dev, dtype=dtype))
    assert torch.equal(dy.cpu().double(), dy_ref)


@pytest.mark.parametrize("backend,dtype", _dtype_params("token_gather"))
def test_token_routing_round_trip(backend, dtype):
    """Interleaving two modalities by time and back is the identity."""
    dev = backend_device(backend)
    audio, video = torch.randn(10, 8, dtype=dtype, device=dev), torch.randn(4, 8, dtype=dtype, device=dev)
    times = torch.cat([torch.arange(10) * 0.32, torch.arange(4) * 0.8 + 0.1])
    order = torch.argsort(times).to(dev)
    tokens = torch.cat([audio, video])
    interleaved = token_gather(tokens, order, backend=backend)
    back = token_scatter(interleaved, order, 14, backend=backend)
    assert torch.equal(back, tokens)


@pytest.mark.parametrize("backend,dtype", _dtype_params("ratio_loss"))
def test_ratio_loss(backend, dtype):
    dev = backend_device(backend)
    _, _, _, cu, p, mask = _routing("random")
    p = p.to(dtype).double()
    pr = _leaf(p)
    loss_ref = ref.ratio_loss_reference(mask, pr, 4.0)
    (dp_ref,) = _grads(loss_ref, (pr,), torch.tensor(0.7, dtype=torch.float64))
    pb = _leaf(p, dtype, dev)
    loss = ratio_loss(mask.to(dev), pb, 4.0, backend=backend)
    assert loss.dim() == 0
    (dp,) = _grads(loss, (pb,), torch.tensor(0.7, dtype=loss.dtype, device=dev))
    assert_close_rel(loss.cpu(), loss_ref, TOL[torch.float32], "loss")
    assert_close_rel(dp.cpu(), dp_ref, TOL[dtype], "dp")


@pytest.mark.parametrize("backend", with_cpu_streamed(backend_params("chunk_scatter")))
def test_chunk_scatter_backward_is_deterministic(backend):
    """The segment sum never uses float atomics: two runs agree bit for bit (long chunks that
    span several kernel blocks included)."""
    dev = backend_device(backend)
    total, dim = 300, 24
    mask = torch.rand(total) < 0.05
    mask[0] = True
    mask[100:260] = False  # one chunk of at least 160 tokens
    chunk_id = (torch.cumsum(mask.long(), 0) - 1).to(torch.int32)
    z = torch.randn(int(mask.sum()), dim, dtype=torch.float32, device=dev, requires_grad=True)
    p = torch.rand(total, device=dev, requires_grad=True)
    dout = torch.randn(total, dim, device=dev)
    runs = []
    for _ in range(2):
        out = chunk_scatter(z, chunk_id.to(dev), p=p, mask=mask.to(dev), backend=backend)
        runs.append(torch.autograd.grad(out, (z, p), dout))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    dz_ref = torch.zeros(z.shape, dtype=torch.float64).index_add(0, chunk_id.long(), dout.cpu().double())
    assert_close_rel(runs[0][0].cpu(), dz_ref, TOL[torch.float32], "dz_chunks")


@pytest.mark.parametrize("backend", with_cpu_streamed(backend_params("chunk_gather")))
def test_round_trip_matches_reference(backend):
    """boundaries -> gather (with p) -> bidirectional EMA -> scatter with confidence: the whole
    dechunking path, forward and gradients, against the references composed."""
    dev = backend_device(backend)
    q, k, x, cu = make_case("random")

    def run(fns, q, k, x, cu):
        p, mask = fns["boundaries"](q, k, cu)
        xc, ccu, cid, pc = fns["gather"](x, mask, cu, p)
        e = fns["ema"](xc, pc.clamp(1e-4, 1 - 1e-4), ccu)
        return fns["scatter"](e, cid, p, mask) + fns["ratio"](mask, p)

    def ref_gather(x, mask, cu, p):
        xc, ccu, cid = ref.chunk_gather_reference(x, mask, cu)
        return xc, ccu, cid, p[mask]

    reference = dict(
        boundaries=ref.route_boundaries_reference, gather=ref_gather,
        ema=lambda z, p, cu: ref.ema_smooth_reference(z, p, cu, True),
        scatter=lambda z, cid, p, m: ref.chunk_scatter_reference(z, cid, p=p, mask=m),
        ratio=lambda m, p: ref.ratio_loss_reference(m, p, 3.0))
    ours = dict(
        boundaries=lambda q, k, cu: route_boundaries(q, k, cu, backend=backend),
        gather=lambda x, m, cu, p: chunk_gather(x, m, cu, p=p, backend=backend),
        ema=lambda z, p, cu: ema_smooth(z, p, cu, True, backend=backend if backend != "cuda" else None),
        scatter=lambda z, cid, p, m: chunk_scatter(z, cid, p=p, mask=m, backend=backend),
        ratio=lambda m, p: ratio_loss(m, p, 3.0, backend=backend if backend != "cuda" else None))
    leaves_ref = [_leaf(t) for t in (q, k, x)]
    out_ref = run(reference, *leaves_ref, cu)
    dout = torch.randn_like(out_ref)
    grads_ref = _grads(out_ref, leaves_ref, dout)
    leaves = [_leaf(t, torch.float32, dev) for t in (q, k, x)]
    out = run(ours, *leaves, cu.to(dev))
    grads = _grads(out, leaves, dout.to(device=dev, dtype=torch.float32))
    assert_close_rel(out.cpu(), out_ref, TOL[torch.float32], "out")
    for name, g, g_ref in zip(("dq", "dk", "dx"), grads, grads_ref):
        assert_close_rel(g.cpu(), g_ref, TOL[torch.float32], name)


@pytest.mark.parametrize("backend", with_cpu_streamed(backend_params("chunk_gather")))
def test_empty_inputs(backend):
    """No tokens at all (and empty sequences): every op returns empty results and gradients."""
    dev = backend_device(backend)
    q = torch.zeros(0, 5, device=dev, requires_grad=True)
    cu = torch.zeros(3, dtype=torch.int32, device=dev)
    p, mask = route_boundaries(q, q, cu, backend=backend)
    xc, chunk_cu, chunk_id, pc = chunk_gather(q, mask, cu, p=p, backend=backend)
    e = ema_smooth(xc, pc, chunk_cu, True, backend=None if backend == "cuda" else backend)
    y = chunk_scatter(e, chunk_id, p=p, mask=mask, backend=backend)
    (dq,) = torch.autograd.grad(y.sum(), (q,))
    assert y.shape == (0, 5) and dq.shape == (0, 5) and chunk_cu.tolist() == [0, 0, 0]
    none = torch.zeros(0, dtype=torch.long, device=dev)
    out = token_scatter(token_gather(q, none, backend=backend), none, 3, backend=backend)
    assert torch.equal(out, torch.zeros(3, 5, device=dev))


@pytest.mark.parametrize("backend", with_cpu_streamed(backend_params("chunk_gather")))
def test_zero_width_rows(backend):
    """dim 0: the rows are empty but the per-token results are not (the confidence gradient and
    dp of the EMA are sums over no columns: 0)."""
    dev = backend_device(backend)
    mask = torch.tensor([True, False, True, False, False], device=dev)
    chunk_id = torch.tensor([0, 0, 1, 1, 1], dtype=torch.int32, device=dev)
    z = torch.zeros(2, 0, device=dev, requires_grad=True)
    p = torch.rand(5, device=dev, requires_grad=True)
    y = chunk_scatter(z, chunk_id, p=p, mask=mask, backend=backend)
    dz, dp = torch.autograd.grad(y, (z, p), torch.zeros_like(y))
    assert y.shape == (5, 0) and dz.shape == (2, 0) and torch.equal(dp, torch.zeros_like(p))
    pc = torch.rand(2, device=dev, requires_grad=True)
    cu = torch.tensor([0, 2], dtype=torch.int32, device=dev)
    e = ema_smooth(z, pc, cu, True, backend=None if backend == "cuda" else backend)
    (dpc,) = torch.autograd.grad(e, (pc,), torch.zeros_like(e))
    assert e.shape == (2, 0) and torch.equal(dpc, torch.zeros_like(pc))
    out = token_scatter(z, torch.tensor([1, 1], device=dev), 3, backend=backend)
    assert out.shape == (3, 0)


@pytest.mark.parametrize("backend", with_cpu_streamed(
    [p for p in backend_params("ema_smooth") if p.values[0] == "cpu"]))
def test_cpu_results_do_not_depend_on_thread_count(backend):
    """The C++ kernels split work by thread count but reduce in a fixed order: one thread and
    two threads give the same bits (EMA gradients, segment sums, chunk_scatter's backward)."""
    import mmhnet._C as C

    z = torch.randn(300, 200, dtype=torch.float32, requires_grad=True)
    pc = torch.rand(300, requires_grad=True)
    cu = torch.tensor([0, 250, 300], dtype=torch.int32)
    chunk_id = torch.sort(torch.randint(0, 300, (1000,)))[0].to(torch.int32)
    dout = torch.randn(300, 200)
    before = C.num_threads()
    runs = []
    try:
        for threads in (1, 2):
            C.set_num_threads(threads)
            e = ema_smooth(z, pc, cu, True, backend=backend)
            grads = torch.autograd.grad(e, (z, pc), dout)
            s = token_scatter(dout, chunk_id[:300], 300, backend=backend)
            p_tokens = torch.rand(1000, generator=torch.Generator().manual_seed(0))
            mask = p_tokens > 0.5
            mask[0] = True
            token_chunk = (mask.cumsum(0) - 1).to(torch.int32)
            zc = torch.randn(int(mask.sum()), 200, generator=torch.Generator().manual_seed(2))
            zc.requires_grad_(True)
            p_tokens.requires_grad_(True)
            y = chunk_scatter(zc, token_chunk, p=p_tokens, mask=mask, backend=backend)
            dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
            runs.append((e, *grads, s, *torch.autograd.grad(y, (zc, p_tokens), dy)))
    finally:
        C.set_num_threads(before)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", with_cpu_streamed(backend_params("chunk_gather")))
def test_sequences_longer_than_kernel_blocks(backend):
    """Sequences that span several kernel tiles: the EMA carries its state from tile to tile
    (tiles of 32 chunks), the compaction its count from block to block (blocks of 1024)."""
    dev = backend_device(backend)
    lengths = [70, 3, 45]
    cu = random_cu_seqlens(lengths)
    z = torch.randn(sum(lengths), 5, dtype=torch.float64)
    pc = 0.01 + 0.98 * torch.rand(sum(lengths), dtype=torch.float64)  # clear of the clamp
    zr, pr = _leaf(z), _leaf(pc)
    out_ref = ref.ema_smooth_reference(zr, pr, cu, True)
    dout = torch.randn_like(out_ref)
    grads_ref = _grads(out_ref, (zr, pr), dout)
    zb, pb = _leaf(z, torch.float32, dev), _leaf(pc, torch.float32, dev)
    out = ema_smooth(zb, pb, cu.to(dev), True, backend=None if backend == "cuda" else backend)
    grads = _grads(out, (zb, pb), dout.to(device=dev, dtype=torch.float32))
    assert_close_rel(out.cpu(), out_ref, TOL[torch.float32], "ema out")
    for name, g, g_ref in zip(("dz", "dp"), grads, grads_ref):
        assert_close_rel(g.cpu(), g_ref, TOL[torch.float32], name)

    mask = torch.rand(2500) < 0.3
    cu_tokens = random_cu_seqlens([1200, 1300])
    mask[[0, 1200]] = True
    x = torch.randn(2500, 3)
    xc, ccu, cid = chunk_gather(x.to(dev), mask.to(dev), cu_tokens.to(dev), backend=backend)
    xc_ref, ccu_ref, cid_ref = ref.chunk_gather_reference(x, mask, cu_tokens)
    assert torch.equal(xc.cpu(), xc_ref) and torch.equal(ccu.cpu(), ccu_ref)
    assert torch.equal(cid.cpu(), cid_ref)


CPU_ROUTING = [p for p in backend_params("route_and_gather") if p.values[0] == "cpu"]


@pytest.mark.parametrize("backend", CPU_ROUTING)
def test_cpu_routing_above_the_streaming_size(backend):
    """At the default threshold: route_and_gather then chunk_scatter with the confidence, with
    token outputs (dq, dk, dx, the scattered rows) and chunk outputs (x_chunks, the segment sums)
    large enough that the CPU kernels stream their stores, in rows of 999 float32 (not 16-byte
    aligned), against the float64 references. (The EMA's streamed path is checked by the
    cpu-streamed cases above: its float64 reference is too slow at this size.)"""
    native = native_module("_C")
    q, k, x, cu = make_packed([4100, 1, 4899], 999, "random")
    total, dim = x.shape
    _, mask_ref = ref.route_boundaries_reference(q, k, cu)
    chunk_bytes = int(mask_ref.sum()) * dim * 4
    assert min(total * dim * 4, chunk_bytes) >= native.routing_streaming_bytes()

    def run(q, k, x, backend):
        if backend == "reference":
            p, mask = ref.route_boundaries_reference(q, k, cu)
            xc, _, cid = ref.chunk_gather_reference(x, mask, cu)
            return ref.chunk_scatter_reference(xc * p[mask, None], cid, p=p, mask=mask)
        p, mask, xc, _, cid, pc = route_and_gather(q, k, x, cu, backend=backend)
        return chunk_scatter(xc * pc[:, None], cid, p=p, mask=mask, backend=backend)

    leaves_ref = [_leaf(t) for t in (q, k, x)]
    out_ref = run(*leaves_ref, "reference")
    dout = torch.randn_like(out_ref)
    grads_ref = _grads(out_ref, leaves_ref, dout)
    leaves = [_leaf(t, torch.float32) for t in (q, k, x)]
    out = run(*leaves, backend)
    grads = _grads(out, leaves, dout.float())
    assert_close_rel(out, out_ref, TOL[torch.float32], "out")
    for name, g, g_ref in zip(("dq", "dk", "dx"), grads, grads_ref):
        assert_close_rel(g, g_ref, TOL[torch.float32], name)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("dim", [64, 200])
@pytest.mark.parametrize("backend,dtype", [p for p in _dtype_params("ema_smooth")
                                           if p.values[0] == "cpu"])
def test_cpu_ema_over_register_tiles(backend, dtype, dim, bidirectional):
    """The CPU EMA keeps the states of 64 columns at a time in registers: whole tiles and a
    remainder (dim 200 = 3 x 64 + 8), several column tasks per sequence, and sequences that
    end exactly on, just past and inside a 32-chunk block, against the float64 reference."""
    lengths = [70, 1, 33, 0, 32, 5]
    cu = random_cu_seqlens(lengths)
    z = torch.randn(sum(lengths), dim, dtype=torch.float64).to(dtype).double()
    pc = (0.01 + 0.98 * torch.rand(sum(lengths), dtype=torch.float64)).to(dtype).double()
    _check_ema(z, pc, cu, bidirectional, backend, dtype)


@pytest.mark.parametrize("backend", CPU_ROUTING)
def test_streaming_threshold_default_and_errors(backend):
    """Unmarked tests run at the default threshold; a negative one is a ValueError."""
    native = native_module("_C")
    assert native.routing_streaming_bytes() == 4 << 20
    with pytest.raises(ValueError, match="bytes must be >= 0, got -1"):
        native.set_routing_streaming_bytes(-1)


@pytest.mark.parametrize("backend", CPU_ROUTING)
@pytest.mark.cpu_streamed
def test_streamed_marker_sets_threshold(backend):
    """The cpu_streamed marker really sets the threshold to 0 for its tests."""
    assert native_module("_C").routing_streaming_bytes() == 0


@pytest.mark.parametrize("backend", with_cpu_streamed(
    [p for p in backend_params("route_boundaries") if p.values[0] == "cpu"]))
def test_cpu_boundaries_backward_without_saved_stats(backend):
    """route_boundaries' CPU backward reuses the statistics its forward kept; given none (an
    empty tensor), it computes them again: the same gradients, bit for bit."""
    q, k, _, cu = make_case("random")
    q, k = q.float(), k.float()
    p, _, stats = torch.ops.mmhnet.route_boundaries(q, k, cu, backend)
    assert stats.shape == (q.shape[0], 3)
    dp = torch.randn_like(p)
    with_stats = torch.ops.mmhnet.route_boundaries_bwd(dp, q, k, cu, stats, backend)
    without = torch.ops.mmhnet.route_boundaries_bwd(dp, q, k, cu, q.new_empty(0), backend)
    for a, b in zip(with_stats, without):
        assert torch.equal(a, b)
    for bad in (stats[:-1], stats.double(), stats[:, :2]):
        with pytest.raises(ValueError, match="stats must be empty or route_boundaries'"):
            torch.ops.mmhnet.route_boundaries_bwd(dp, q, k, cu, bad, backend)


def _strided(t):
    """The same values as a non-contiguous view (every other element of a buffer whose other
    elements are junk), as a slice of a larger tensor gives."""
    junk = torch.full_like(t, 7) if t.dtype != torch.bool else ~t
    return torch.stack([t, junk], dim=1)[:, 0]


@pytest.mark.parametrize("backend", backend_params("chunk_gather"))
def test_strided_1d_arguments(backend):
    """Offsets, masks, chunk ids, p and indices given as strided views give the results of
    contiguous ones, forward and backward (the kernels take them by address)."""
    dev = backend_device(backend)
    dtype = torch.float64 if backend in ("reference", "cpu") else torch.float32
    q, k, x, cu = (t.to(dtype) if t.is_floating_point() else t
                   for t in make_packed([4, 1, 6, 3], 5, "random", dev))
    p, mask = ref.route_boundaries_reference(q, k, cu)
    p = p.to(dtype)
    xc, chunk_cu, chunk_id = ref.chunk_gather_reference(x, mask, cu)
    pc = p[mask].clamp(0.1, 0.9)
    index = torch.randint(0, x.shape[0], (9,), device=dev, dtype=torch.int32)

    def run(cu, mask, p, chunk_id, chunk_cu, pc, index):
        leaves = [_leaf(t) for t in (q, k, x, xc, p, pc)]
        lq, lk, lx, lz, lp, lpc = leaves
        outs = [*route_boundaries(lq, lk, cu, backend=backend)[:1],
                *route_and_gather(lq, lk, lx, cu, backend=backend)[:3:2],
                chunk_gather(lx, mask, cu, p=lp, backend=backend)[0],
                chunk_scatter(lz, chunk_id, p=lp, mask=mask, backend=backend),
                token_gather(lx, index, backend=backend),
                token_scatter(lz[:9] if lz.shape[0] >= 9 else lx[:9], index, 20, backend=backend)]
        if backend != "cuda":
            outs += [ema_smooth(lz, lpc, chunk_cu, True, backend=backend),
                     ratio_loss(mask, lp, 3.0, backend=backend)]
        loss = sum((o * torch.linspace(-1, 1, o.numel(), device=dev,
                                       dtype=o.dtype).view_as(o)).sum() for o in outs)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return outs + [g for g in grads if g is not None]

    plain = (cu, mask, p, chunk_id, chunk_cu, pc, index)
    strided = tuple(_strided(t) for t in plain)
    assert not any(t.is_contiguous() for t in strided)
    for a, b in zip(run(*plain), run(*strided)):
        assert torch.equal(a, b)


def test_custom_op_refuses_q_and_k_of_different_dtypes():
    """The kernels read k with q's element type: the op itself refuses a mismatch, also when
    called directly through torch.ops."""
    q, k = torch.randn(6, 4), torch.randn(6, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="k must have the dtype of q"):
        torch.ops.mmhnet.route_boundaries(q, k, None, "cpu")
    with pytest.raises(TypeError, match="k must have the dtype of q"):
        torch.ops.mmhnet.route_and_gather(q, k, q, None, "cpu")
    with pytest.raises(TypeError, match="k must have the dtype of q"):
        torch.ops.mmhnet.route_boundaries_bwd(torch.rand(6), q, k, None, q.new_empty(0), "cpu")


@pytest.mark.parametrize("backend", backend_params("chunk_gather"))
def test_inference_mode_with_offsets(backend):
    """Under torch.inference_mode (whose tensors have no version counter, so their validation
    is not cached) every op gives its no_grad values, offsets made inside or outside."""
    dev = backend_device(backend)
    q, k, x, cu = (t.float() if t.is_floating_point() else t
                   for t in make_packed([4, 1, 6], 5, "random", dev))

    def run(cu):
        p, mask, xc, chunk_cu, chunk_id, pc = route_and_gather(q, k, x, cu, backend=backend)
        outs = [p, xc, route_boundaries(q, k, cu, backend=backend)[0],
                chunk_gather(x, mask, cu, backend=backend)[0],
                chunk_scatter(xc, chunk_id, p=p, mask=mask, backend=backend)]
        if backend != "cuda":
            outs.append(ema_smooth(xc, pc, chunk_cu.long(), True, backend=backend))
        return outs

    with torch.no_grad():
        expected = run(cu)
    with torch.inference_mode():
        inside = cu.clone()
        for got in (run(cu), run(inside), run(inside.long())):
            for a, b in zip(got, expected):
                assert torch.equal(a, b)
