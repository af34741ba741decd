"""NaN isolation (DESIGN.md, "NaN isolation"; issue 20): a NaN in one packed sequence never
reaches another sequence's outputs or gradients, on every backend available here, forward and
backward; for the row-wise routing ops (chunk_scatter, token_gather, token_scatter) a NaN stays
in its row or segment.

Each case runs an op twice, on clean inputs and with one element poisoned, under the same random
NaN-free upstream gradient (for the routing ops also with a NaN in one row of the upstream
gradient, as a poisoned downstream layer gives), and requires everything outside the poisoned
sequence (row) to be finite and equal to the clean run. Gradients of per-head parameters (A, D,
dt_bias) sum over every token, so a NaN anywhere rightly reaches them; they are not compared.
"""

import random

import pytest
import torch

import mmhnet.ops as ops
from helpers import HAS_CUDA, INTERPRET, TRITON_DEVICE, grads_of, make_scan_inputs, random_cu_seqlens
from mmhnet.ops import _scan_triton
from mmhnet.ops._backend import native_module, triton_available
from routing_cases import backend_device, backend_params

NAN = float("nan")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scan_backend_params():
    """(backend, device) of every scan backend, skipped with the reason where it cannot run."""
    def has_native(module):
        return hasattr(native_module(module), "bi_scan_fwd")

    cases = [
        ("reference", "cpu", None),
        ("cpu", "cpu", None if has_native("_C") else "mmhnet._C is not built"),
        ("triton", TRITON_DEVICE, None if triton_available() and (HAS_CUDA or INTERPRET)
         else "needs triton with a CUDA device or TRITON_INTERPRET=1"),
        ("cuda", "cuda", "needs a CUDA device" if not HAS_CUDA
         else (None if has_native("_C_cuda") else "mmhnet._C_cuda is not built")),
    ]
    return [pytest.param(b, d, id=b, marks=[pytest.mark.skip(reason=r)] if r else [])
            for b, d, r in cases]


SCAN_BACKENDS = _scan_backend_params()


def _assert_same_where(got, clean, keep, what):
    """got[keep] finite and equal (to float32 rounding) to clean[keep]; keep indexes dim 0."""
    g, c = got[keep], clean[keep]
    assert torch.isfinite(g).all(), f"{what}: NaN/inf outside the poisoned sequence or row"
    torch.testing.assert_close(g, c, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: {m}")


# ------------------------------------------------------------------------------------------------
# scans

def _scan_lengths(chunk):
    """Packed lengths: 1-token sequences, one longer than a chunk (crossing a border, not a
    multiple of it), short and medium ones (crossing borders depending on the draw)."""
    r = random.randint
    return [r(2, 4), 1, r(chunk + 1, chunk + chunk // 2), 1, r(3, chunk // 2),
            r(chunk // 2, chunk + chunk // 4)]


# name -> (op, its keyword arguments, input options, {target: the sequence it poisons}, one run
# each). Sequences 2 and 5 are the ones that may cross a chunk border, 1 and 3 have one token
# (sitting in a chunk shared with others, so their decays are in the same tile as theirs), 0 is
# the first. Every target is poisoned in one or two configurations (few runs: the interpreter is
# slow).
SCAN_CONFIGS = {
    "fwd": ("selective_scan", dict(), dict(), {"x": 2, "dt": 1}),
    "reverse_options": ("selective_scan", dict(reverse=True), dict(D="hp", z=True, dt_bias=True),
                        {"B": 4, "z": 5}),
    "sum_plain": ("bi_selective_scan", dict(mode="sum"), dict(dt_softplus=False),
                  {"C": 0, "dt": 2}),
    "quasi_options": ("bi_selective_scan", dict(mode="quasiseparable"),
                      dict(D="h", z=True, dt_bias=True, rev=("dt", "C")), {"x": 5, "C": 2, "B": 3}),
}

PER_TOKEN = ("x", "dt", "B", "C", "z", "dt_rev", "B_rev", "C_rev")  # gradients indexed by token


def _scan_run(op, args, kw, backend, device, cu, dy):
    leaves = {k: v.detach().to(device).clone().requires_grad_(True) if isinstance(v, torch.Tensor)
              else v for k, v in args.items()}
    y = getattr(ops, op)(**leaves, cu_seqlens=cu.to(device), backend=backend, **kw)
    grads = grads_of(y, leaves, dy.to(device))
    return y.detach().cpu()[0], {k: g.cpu()[0] for k, g in grads.items() if k in PER_TOKEN}


@pytest.mark.parametrize("config", list(SCAN_CONFIGS))
@pytest.mark.parametrize("backend,device", SCAN_BACKENDS)
def test_scan_nan_stays_in_its_sequence(backend, device, config, monkeypatch):
    op, kw, opts, targets = SCAN_CONFIGS[config]
    chunk = 64
    if backend == "triton" and INTERPRET:
        # the interpreter's time grows with the programs run: shorter chunks, shorter sequences
        chunk = 16
        monkeypatch.setattr(_scan_triton, "CHUNK_SIZE", chunk)
    lengths = _scan_lengths(chunk)
    cu = random_cu_seqlens(lengths)
    opts = dict(opts)
    args = make_scan_inputs(1, sum(lengths), 1, 4, 1, 8, D=opts.pop("D", None),
                            z=opts.pop("z", False), dt_bias=opts.pop("dt_bias", False),
                            rev=opts.pop("rev", ()), dt_softplus=opts.pop("dt_softplus", True))
    dy = torch.randn_like(args["x"])
    y0, g0 = _scan_run(op, args, kw, backend, device, cu, dy)
    assert torch.isfinite(y0).all() and all(torch.isfinite(g).all() for g in g0.values())
    for name, s in targets.items():
        lo, hi = cu[s].item(), cu[s + 1].item()
        poisoned = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
        index = (0, random.randrange(lo, hi)) + tuple(random.randrange(n) for n in args[name].shape[2:])
        poisoned[name][index] = NAN
        y, g = _scan_run(op, poisoned, kw, backend, device, cu, dy)
        others = torch.ones(sum(lengths), dtype=torch.bool)
        others[lo:hi] = False
        what = f"{op}{kw}[{backend}] NaN in {name}[{index}] of sequence {s} (cu {cu.tolist()})"
        if hi - lo > 1:  # (a 1-token sequence's shifted quasiseparable output never reads it)
            assert not torch.isfinite(y[lo:hi]).all(), f"{what}: the NaN reached nothing"
        _assert_same_where(y, y0, others, f"{what}: y")
        for k in g0:
            _assert_same_where(g[k], g0[k], others, f"{what}: d{k}")


@pytest.mark.parametrize("backend,device", SCAN_BACKENDS)
def test_scan_issue_reproduction(backend, device):
    """Issue 20's case: x NaN at token 1 of sequence [0, 4); sequence [4, 8) stays finite, in y
    and in every per-token gradient."""
    x = torch.randn(1, 8, 1, 1)
    x[0, 1] = NAN
    leaves = [t.to(device).requires_grad_(True) for t in
              (x, torch.full((1, 8, 1), 0.5), torch.ones(1, 8, 1, 1), torch.ones(1, 8, 1, 1))]
    xs, dt, B, C = leaves
    y = ops.selective_scan(xs, dt, -torch.ones(1, device=device), B, C, backend=backend,
                           cu_seqlens=torch.tensor([0, 4, 8], dtype=torch.int32, device=device))
    y.backward(torch.randn_like(y))
    assert torch.isnan(y[0, 1:4]).all()
    for what, t in (("y", y), ("dx", xs.grad), ("ddt", dt.grad), ("dB", B.grad), ("dC", C.grad)):
        assert torch.isfinite(t[0, 4:]).all(), f"{backend}: {what} of the second sequence"


# ------------------------------------------------------------------------------------------------
# routing ops

ROUTE_LENGTHS = [3, 1, 6, 4, 5]
ROUTE_DIM = 8


def _leaf(t, device):
    return t.detach().to(device).clone().requires_grad_(True)


def _seq_of(cu, total):
    return torch.searchsorted(cu[1:], torch.arange(total, dtype=cu.dtype), right=True)


def _poison_row(t, row):
    t = t.clone()
    t[row, random.randrange(t.shape[1])] = NAN
    return t


def _boundaries_run(backend, q, k, cu, dp):
    dev = backend_device(backend)
    qb, kb = _leaf(q, dev), _leaf(k, dev)
    p, mask = ops.route_boundaries(qb, kb, cu.to(dev), backend=backend)
    dq, dk = torch.autograd.grad(p, (qb, kb), dp.to(dev, p.dtype))
    return p.detach().cpu(), mask.cpu(), dq.cpu(), dk.cpu()


# (which tensor, which token): q at a sequence start and k at a sequence's last token reach the
# pair that crosses into the neighbouring sequence; the others a pair inside their sequence
BOUNDARY_POISONS = [("q", "start"), ("k", "last"), ("q", "inner"), ("k", "inner")]


@pytest.mark.parametrize("tensor,where", BOUNDARY_POISONS, ids=[f"{a}-{b}" for a, b in BOUNDARY_POISONS])
@pytest.mark.parametrize("backend", backend_params("route_boundaries"))
def test_route_boundaries_nan(backend, tensor, where):
    cu = random_cu_seqlens(ROUTE_LENGTHS)
    total = cu[-1].item()
    q, k = torch.randn(total, ROUTE_DIM), torch.randn(total, ROUTE_DIM)
    dp = torch.randn(total)
    clean = _boundaries_run(backend, q, k, cu, dp)
    s = 2  # a sequence with neighbours on both sides
    lo, hi = cu[s].item(), cu[s + 1].item()
    row = {"start": lo, "last": hi - 1, "inner": lo + 2}[where]
    q2, k2 = (_poison_row(q, row), k) if tensor == "q" else (q, _poison_row(k, row))
    p, mask, dq, dk = _boundaries_run(backend, q2, k2, cu, dp)
    # q_t pairs with k_{t-1} (p_t); k_t with q_{t+1} (p_{t+1}); p = 1 at a sequence start
    pair = row if tensor == "q" else row + 1
    if lo < pair < hi:
        assert torch.isnan(p[pair]) and not mask[pair], f"{backend}: p at {pair} = {p[pair]}"
    others = (_seq_of(cu, total) != s)
    what = f"route_boundaries[{backend}] NaN in {tensor}[{row}]"
    _assert_same_where(p, clean[0], others, f"{what}: p")
    assert torch.equal(mask[others], clean[1][others]), f"{what}: mask"
    _assert_same_where(dq, clean[2], others, f"{what}: dq")
    _assert_same_where(dk, clean[3], others, f"{what}: dk")


@pytest.mark.parametrize("backend", backend_params("route_boundaries"))
def test_route_boundaries_issue_reproduction(backend):
    """Issue 20's case: p is NaN where q is, as torch.clamp gives (a clamp must not swallow it)."""
    dev = backend_device(backend)
    q, k = torch.randn(6, 4, device=dev), torch.randn(6, 4, device=dev)
    q[1] = NAN
    p, mask = ops.route_boundaries(q, k, torch.tensor([0, 6], dtype=torch.int32, device=dev),
                                   backend=backend)
    assert torch.isnan(p[1]) and not mask[1] and torch.isfinite(p[2:]).all()


@pytest.mark.parametrize("poison", ["q", "x", "upstream"])
@pytest.mark.parametrize("backend", backend_params("route_and_gather"))
def test_route_and_gather_nan(backend, poison):
    """NaN in q, x, or in one row of the upstream gradient of x_chunks, in one sequence: the
    other sequences' p, mask, chunks and every gradient are unchanged (their chunk ids may
    shift, so chunks are compared per sequence through chunk_cu_seqlens)."""
    dev = backend_device(backend)
    cu = random_cu_seqlens(ROUTE_LENGTHS)
    total = cu[-1].item()
    q, k, x = (torch.randn(total, ROUTE_DIM) for _ in range(3))
    up_p, up_x, up_pc = torch.randn(total), torch.randn(total, ROUTE_DIM), torch.randn(total)
    s = 2
    lo, hi = cu[s].item(), cu[s + 1].item()

    def run(q, x, up_x):
        leaves = [_leaf(t, dev) for t in (q, k, x)]
        p, mask, xc, ccu, cid, pc = ops.route_and_gather(*leaves, cu.to(dev), backend=backend)
        m = mask.cpu()
        ups = (up_p.to(dev), up_x[m].to(dev), up_pc[m].to(dev))
        grads = torch.autograd.grad((p, xc, pc), leaves, ups)
        return p.detach().cpu(), m, xc.detach().cpu(), ccu.cpu(), [g.cpu() for g in grads]

    clean = run(q, x, up_x)
    # x_chunks holds x at the boundary tokens only, so the poisoned row is the sequence start
    if poison == "q":
        q = _poison_row(q, lo + 2)
    elif poison == "x":
        x = _poison_row(x, lo)
    else:
        up_x = _poison_row(up_x, lo)
    p, mask, xc, ccu, grads = run(q, x, up_x)
    others = (_seq_of(cu, total) != s)
    what = f"route_and_gather[{backend}] NaN in {poison} of sequence {s}"
    _assert_same_where(p, clean[0], others, f"{what}: p")
    assert torch.equal(mask[others], clean[1][others]), f"{what}: mask"
    for j in range(len(ROUTE_LENGTHS)):
        if j != s:
            _assert_same_where(xc[ccu[j]:ccu[j + 1]], clean[2][clean[3][j]:clean[3][j + 1]],
                               slice(None), f"{what}: x_chunks of sequence {j}")
    for name, g, g0 in zip(("dq", "dk", "dx"), grads, clean[4]):
        _assert_same_where(g, g0, others, f"{what}: {name}")


@pytest.mark.parametrize("backend", backend_params("chunk_gather"))
def test_chunk_gather_nan(backend):
    """A NaN row of x (and of p) reaches only its own chunk row; a NaN row of the upstream
    gradient of x_chunks only its own token's gradient."""
    dev = backend_device(backend)
    cu = random_cu_seqlens(ROUTE_LENGTHS)
    total = cu[-1].item()
    x, p = torch.randn(total, ROUTE_DIM), torch.rand(total)
    mask = torch.rand(total) < 0.5
    mask[cu[:-1].long()] = True
    row = cu[2].item() + 1  # a boundary token inside a sequence: chunk c holds its row
    mask[row] = True
    cid = torch.cumsum(mask, 0) - 1
    nc = int(mask.sum())
    up_x, up_p = torch.randn(nc, ROUTE_DIM), torch.randn(nc)

    def run(x, p, up_x):
        xb, pb = _leaf(x, dev), _leaf(p, dev)
        xc, _, _, pc = ops.chunk_gather(xb, mask.to(dev), cu.to(dev), p=pb, backend=backend)
        dx, dp = torch.autograd.grad((xc, pc), (xb, pb), (up_x.to(dev), up_p.to(dev)))
        return xc.detach().cpu(), pc.detach().cpu(), dx.cpu(), dp.cpu()

    clean = run(x, p, up_x)
    c = cid[row].item()
    p2 = p.clone()
    p2[row] = NAN
    got = run(_poison_row(x, row), p2, _poison_row(up_x, c))
    other_chunks = torch.arange(nc) != c
    other_rows = torch.arange(total) != row
    what = f"chunk_gather[{backend}] NaN in x[{row}], p[{row}] and the upstream row {c}"
    assert torch.isnan(got[0][c]).any() and torch.isnan(got[1][c])
    _assert_same_where(got[0], clean[0], other_chunks, f"{what}: x_chunks")
    _assert_same_where(got[1], clean[1], other_chunks, f"{what}: p_chunks")
    _assert_same_where(got[2], clean[2], other_rows, f"{what}: dx")
    _assert_same_where(got[3], clean[3], other_rows, f"{what}: dp")


def _chunk_ids(total):
    """A random non-decreasing chunk_id over ``total`` tokens, chunk 0 first, no chunk empty."""
    starts = torch.rand(total) < 0.4
    starts[0] = True
    return torch.cumsum(starts, 0) - 1


@pytest.mark.parametrize("confidence", [False, True], ids=["plain", "ste"])
@pytest.mark.parametrize("backend", backend_params("chunk_scatter"))
def test_chunk_scatter_nan(backend, confidence):
    """A NaN chunk row reaches only its chunk's tokens; a NaN row of the upstream gradient only
    its own chunk's gradient (the backward sums each chunk's rows: issue 20's leak)."""
    dev = backend_device(backend)
    total = 70  # past the Triton segment sum's block of 32 rows
    cid = _chunk_ids(total)
    nc = int(cid[-1]) + 1
    z, p = torch.randn(nc, ROUTE_DIM), torch.rand(total)
    mask = torch.zeros(total, dtype=torch.bool)
    mask[1:] = cid[1:] != cid[:-1]
    mask[0] = True
    dout = torch.randn(total, ROUTE_DIM)

    def run(z, dout):
        zb, pb = _leaf(z, dev), _leaf(p, dev)
        kw = dict(p=pb, mask=mask.to(dev)) if confidence else {}
        out = ops.chunk_scatter(zb, cid.to(dev, torch.int32), backend=backend, **kw)
        leaves = (zb, pb) if confidence else (zb,)
        grads = torch.autograd.grad(out, leaves, dout.to(dev))
        return out.detach().cpu(), [g.cpu() for g in grads]

    clean = run(z, dout)
    c = random.randrange(nc)
    t = random.choice(torch.nonzero(cid == c).flatten().tolist())
    out, grads = run(_poison_row(z, c), _poison_row(dout, t))
    what = f"chunk_scatter[{backend}] NaN in z_chunks[{c}] and in the upstream row {t}"
    assert torch.isnan(out[cid == c]).any(dim=1).all()
    _assert_same_where(out, clean[0], cid != c, f"{what}: out")
    _assert_same_where(grads[0], clean[1][0], torch.arange(nc) != c, f"{what}: dz_chunks")
    if confidence:
        _assert_same_where(grads[1], clean[1][1], cid != c, f"{what}: dp")


@pytest.mark.parametrize("backend", backend_params("chunk_scatter"))
def test_chunk_scatter_backward_issue_reproduction(backend):
    dev = backend_device(backend)
    z = torch.ones(3, 1, device=dev, requires_grad=True)
    out = ops.chunk_scatter(z, torch.arange(3, dtype=torch.int32, device=dev), backend=backend)
    (dz,) = torch.autograd.grad(out, z, torch.tensor([[NAN], [1.0], [1.0]], device=dev))
    assert torch.isnan(dz[0]).all() and torch.equal(dz[1:].cpu(), torch.ones(2, 1))


@pytest.mark.parametrize("backend", backend_params("ema_smooth"))
def test_ema_smooth_nan(backend):
    """NaN in z_chunks, in p_chunks and in the upstream gradient, each in its own sequence (one
    run: the interpreter is slow); the other sequences' outputs and gradients are unchanged.
    Bidirectional: its first sweep is the forward EMA's."""
    dev = backend_device(backend)
    lengths = [3, 4, 5, 1, 6]
    cu = random_cu_seqlens(lengths)
    total = cu[-1].item()
    z, pc, dout = torch.randn(total, ROUTE_DIM), torch.rand(total), torch.randn(total, ROUTE_DIM)

    def run(z, pc, dout):
        zb, pb = _leaf(z, dev), _leaf(pc, dev)
        out = ops.ema_smooth(zb, pb, cu.to(dev), True, backend=backend)
        dz, dp = torch.autograd.grad(out, (zb, pb), dout.to(dev))
        return out.detach().cpu(), dz.cpu(), dp.cpu()

    clean = run(z, pc, dout)
    rows = [random.randrange(cu[s].item(), cu[s + 1].item()) for s in (1, 2, 3)]
    pc = pc.clone()
    pc[rows[1]] = NAN
    got = run(_poison_row(z, rows[0]), pc, _poison_row(dout, rows[2]))
    seq = _seq_of(cu, total)
    others = (seq != 1) & (seq != 2) & (seq != 3)
    what = f"ema_smooth[{backend}] NaN in z[{rows[0]}], p[{rows[1]}], upstream[{rows[2]}]"
    assert torch.isnan(got[0][rows[0]]).any() and torch.isnan(got[0][rows[1]]).any()
    for name, g, g0 in zip(("out", "dz", "dp"), got, clean):
        _assert_same_where(g, g0, others, f"{what}: {name}")


@pytest.mark.parametrize("backend", backend_params("token_gather"))
def test_token_gather_nan(backend):
    """out[i] = x[index[i]]: a NaN row of x reaches the rows that read it; a NaN row of the
    upstream gradient only the gradient of the row it read (the backward sums rows sharing an
    index: issue 20's leak)."""
    dev = backend_device(backend)
    n, m = 20, 70
    x = torch.randn(n, ROUTE_DIM)
    index = torch.randint(0, n, (m,))
    dout = torch.randn(m, ROUTE_DIM)

    def run(x, dout):
        xb = _leaf(x, dev)
        out = ops.token_gather(xb, index.to(dev), backend=backend)
        (dx,) = torch.autograd.grad(out, xb, dout.to(dev))
        return out.detach().cpu(), dx.cpu()

    clean = run(x, dout)
    r = index[random.randrange(m)].item()
    i = random.randrange(m)
    out, dx = run(_poison_row(x, r), _poison_row(dout, i))
    what = f"token_gather[{backend}] NaN in x[{r}] and in the upstream row {i}"
    _assert_same_where(out, clean[0], index != r, f"{what}: out")
    _assert_same_where(dx, clean[1], torch.arange(n) != index[i], f"{what}: dx")


@pytest.mark.parametrize("backend", backend_params("token_scatter"))
def test_token_scatter_nan(backend):
    dev = backend_device(backend)
    n, m = 20, 70
    y = torch.randn(m, ROUTE_DIM)
    index = torch.randint(0, n, (m,))
    dout = torch.randn(n, ROUTE_DIM)

    def run(y, dout):
        yb = _leaf(y, dev)
        out = ops.token_scatter(yb, index.to(dev), n, backend=backend)
        (dy,) = torch.autograd.grad(out, yb, dout.to(dev))
        return out.detach().cpu(), dy.cpu()

    clean = run(y, dout)
    i = random.randrange(m)
    r = random.randrange(n)
    out, dy = run(_poison_row(y, i), _poison_row(dout, r))
    what = f"token_scatter[{backend}] NaN in y[{i}] and in the upstream row {r}"
    assert torch.isnan(out[index[i]]).any()
    _assert_same_where(out, clean[0], torch.arange(n) != index[i], f"{what}: out")
    _assert_same_where(dy, clean[1], index != r, f"{what}: dy")


@pytest.mark.parametrize("backend", backend_params("token_scatter"))
def test_token_scatter_issue_reproduction(backend):
    dev = backend_device(backend)
    y = torch.tensor([[NAN], [1.0], [1.0]], device=dev)
    out = ops.token_scatter(y, torch.arange(3, device=dev), 3, backend=backend)
    assert torch.isnan(out[0]).all() and torch.equal(out[1:].cpu(), torch.ones(2, 1))
