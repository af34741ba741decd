"""Tensors past 2^31 elements: every kernel offset is 64-bit, so rows past the 2^31st element are
read and written where they belong. And the int32 limits: more than 2^31 - 1 tokens where
tokens are indexed with int32, and int64 offsets that would wrap into valid int32 ones, are
rejected with a ValueError.

The big tensors are bfloat16, 2^31 / 1024 + 64 rows of 1024 (4.3 GB), zero except a few rows
at both ends. On CPU a fresh allocation that large is mapped from the kernel's zero page until
written, so the untouched inputs cost no memory; the outputs the kernels write do (peak ~9 GB,
~1 minute for the file). Expected values come from the float64 references on the rows that
hold data. The Triton interpreter is far too slow for the routing tests (their kernels visit
every row): Triton runs them on a GPU. The scan test reads few elements of its big buffer, so
Triton runs it under the interpreter too.
"""

import pytest
import torch

from helpers import HAS_CUDA, assert_close_rel
from mmhnet.ops import (bi_selective_scan, chunk_gather, chunk_scatter, ema_smooth, reference,
                        route_and_gather, route_boundaries, token_gather)
from routing_cases import backend_device, backend_params

DIM = 1024
ROWS = (1 << 31) // DIM + 64  # the last 64 rows lie past element 2^31
TAIL = 6  # rows at the end that hold data
DT = torch.bfloat16
BF16_TOL = 3e-2


def big_backends(op):
    """The kernel backends of ``op`` (not the reference); Triton only on a GPU."""
    params = []
    for p in backend_params(op):
        name = p.values[0]
        if name == "reference":
            continue
        marks = list(p.marks)
        if name == "triton" and not HAS_CUDA:
            marks.append(pytest.mark.skip(reason="the Triton interpreter is too slow at 2^31 elements"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def lazy_zeros(shape, dtype, device):
    """Zeros; on CPU, pages nobody writes cost no memory (checked, and zeroed if the allocator
    handed back used memory)."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if t.device.type != "cpu" or bool(t.min() != 0) or bool(t.max() != 0):  # NaN fails too
        t.zero_()
    return t


def with_tail(device, rows=ROWS):
    """A (rows, DIM) tensor, zero but for TAIL random rows at the end."""
    t = lazy_zeros((rows, DIM), DT, device)
    t[-TAIL:] = torch.randn(TAIL, DIM, dtype=DT, device=device)
    return t


def assert_zero_rows(t, rows):
    for r in rows:
        assert not t[r].any(), f"row {r} should be zero"


# rows on both sides of element 2^31 and far from the data
QUIET_ROWS = [0, (1 << 31) // DIM - 1, (1 << 31) // DIM, ROWS - TAIL - 1]


@pytest.mark.parametrize("backend", big_backends("token_gather"))
def test_token_gather_and_its_backward(backend):
    dev = backend_device(backend)
    x = with_tail(dev).requires_grad_(True)
    index = torch.tensor([ROWS - 1, ROWS - 4, ROWS - 2, ROWS - 6], device=dev)
    out = token_gather(x, index, backend=backend)
    assert torch.equal(out, x.detach()[index])
    g = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x, g)  # token_scatter into a (ROWS, DIM) gradient
    assert torch.equal(dx[index], g)
    assert_zero_rows(dx, QUIET_ROWS + [ROWS - 3, ROWS - 5])


@pytest.mark.parametrize("backend", big_backends("chunk_gather"))
def test_chunk_gather_and_scatter(backend):
    """Chunks at token 0, ROWS - 3 and ROWS - 1: chunk_gather's backward and chunk_scatter's
    forward write (ROWS, DIM) tensors, and chunk_scatter's backward sums the last rows."""
    dev = backend_device(backend)
    x = with_tail(dev).requires_grad_(True)
    mask = torch.zeros(ROWS, dtype=torch.bool, device=dev)
    mask[[0, ROWS - 3, ROWS - 1]] = True
    p = torch.rand(ROWS, device=dev)
    x_chunks, chunk_cu, chunk_id = chunk_gather(x, mask, backend=backend)
    assert chunk_cu.tolist() == [0, 3]
    assert torch.equal(x_chunks, x.detach()[mask])
    assert chunk_id[-4:].tolist() == [0, 1, 1, 2]
    g = torch.randn_like(x_chunks)
    (dx,) = torch.autograd.grad(x_chunks, x, g)
    assert torch.equal(dx[[0, ROWS - 3, ROWS - 1]], g)
    assert_zero_rows(dx, QUIET_ROWS[1:] + [ROWS - 2])
    del x, dx

    z_chunks = torch.randn(3, DIM, dtype=DT, device=dev, requires_grad=True)
    p.requires_grad_(True)
    y = chunk_scatter(z_chunks, chunk_id, p=p, mask=mask, backend=backend)
    assert torch.equal(y[-3:], z_chunks.detach()[[1, 1, 2]])
    assert torch.equal(y[QUIET_ROWS[2]], z_chunks.detach()[0])
    dy = with_tail(dev)
    dz, dp = torch.autograd.grad(y, (z_chunks, p), dy)
    tail = dy[-TAIL:].double()
    expected = torch.stack([tail[:-3].sum(0), tail[-3:-1].sum(0), tail[-1]])
    assert_close_rel(dz.cpu(), expected.cpu(), BF16_TOL, "dz_chunks")
    # confidence straight-through: dp_t = +-(dy_t . z_chunk(t)), + at boundaries
    zt = z_chunks.detach().double()[chunk_id[-TAIL:].long()]
    sign = torch.where(mask[-TAIL:], 1.0, -1.0).double()
    assert_close_rel(dp[-TAIL:].cpu(), (sign * (tail * zt).sum(1)).cpu(), BF16_TOL, "dp tail")
    assert not dp[:-TAIL].any()


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("backend", big_backends("ema_smooth"))
def test_ema_smooth(backend, bidirectional):
    """z and the upstream gradient are zero before the last rows, so over the last 50 rows the
    op's output and gradients are those of the reference run on those rows alone."""
    dev = backend_device(backend)
    z = with_tail(dev).requires_grad_(True)
    p = (torch.rand(ROWS, device=dev) * 0.9 + 0.05).requires_grad_(True)
    out = ema_smooth(z, p, bidirectional=bidirectional, backend=backend)
    g = with_tail(dev)
    dz, dp = torch.autograd.grad(out, (z, p), g)
    zs = z.detach()[-50:].double().cpu().requires_grad_(True)
    ps = p.detach()[-50:].double().cpu().requires_grad_(True)
    ref = reference.ema_smooth_reference(zs, ps, bidirectional=bidirectional)
    ref.backward(g[-50:].double().cpu())
    assert_close_rel(out.detach()[-50:].cpu(), ref.detach(), BF16_TOL, "out")
    assert_close_rel(dz[-50:].cpu(), zs.grad, BF16_TOL, "dz")
    assert_close_rel(dp[-50:].cpu(), ps.grad, BF16_TOL, "dp")
    assert_zero_rows(out.detach(), QUIET_ROWS[:1])


@pytest.mark.parametrize("backend", big_backends("route_boundaries"))
def test_route_boundaries(backend):
    dev = backend_device(backend)
    q, k = with_tail(dev).requires_grad_(True), with_tail(dev).requires_grad_(True)
    p, mask = route_boundaries(q, k, backend=backend)
    dp = torch.zeros(ROWS, device=dev)
    dp[-TAIL:] = torch.randn(TAIL, device=dev)
    dq, dk = torch.autograd.grad(p, (q, k), dp)
    qs = q.detach()[-TAIL - 1:].double().cpu().requires_grad_(True)
    ks = k.detach()[-TAIL - 1:].double().cpu().requires_grad_(True)
    p_ref, mask_ref = reference.route_boundaries_reference(qs, ks)
    p_ref[1:].backward(dp[-TAIL:].double().cpu())  # row 0 of the slice is not a sequence start
    assert_close_rel(p[-TAIL:].cpu(), p_ref[1:].detach(), BF16_TOL, "p")
    assert_close_rel(dq[-TAIL:].cpu(), qs.grad[1:], BF16_TOL, "dq")
    assert_close_rel(dk[-TAIL - 1:].cpu(), ks.grad, BF16_TOL, "dk")
    assert_zero_rows(dq, QUIET_ROWS)


@pytest.mark.parametrize("backend", ["cpu", "triton", pytest.param(
    "cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"))])
def test_scan_reads_past_2_31_elements(backend):
    """x and z as views of a 2^31-element buffer, 2^25 elements between tokens: the scan's input
    offsets pass 2^31 (its outputs are small here; the routing tests above cover big outputs).
    Small enough for the Triton interpreter, whose int32 arithmetic wraps as a GPU's does (an
    int32 offset i * 2^25 would turn negative at token 64)."""
    L, H, P, N, gap = 66, 2, 16, 8, 1 << 25
    dev = backend_device(backend)
    base = lazy_zeros((L * gap,), torch.float32, dev)
    x = base.as_strided((1, L, H, P), (L * gap, gap, P, 1))
    x.copy_(torch.randn(1, L, H, P))
    g = torch.Generator().manual_seed(0)
    small = dict(dt=torch.randn(1, L, H, generator=g) - 1.0, A=-torch.rand(H, generator=g) - 0.5,
                 B=torch.randn(1, L, 1, N, generator=g), C=torch.randn(1, L, 1, N, generator=g))
    args = {k: v.to(dev).requires_grad_(True) for k, v in small.items()}
    xv = x.requires_grad_(True)
    y = bi_selective_scan(xv, args["dt"], args["A"], args["B"], args["C"], dt_softplus=True,
                          backend=backend)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [xv] + list(args.values()), dy)
    ref_in = {k: v.detach().double().cpu().requires_grad_(True) for k, v in args.items()}
    xr = x.detach().double().cpu().requires_grad_(True)
    y_ref = reference.bi_selective_scan_sequential(xr, ref_in["dt"], ref_in["A"], ref_in["B"],
                                                   ref_in["C"], dt_softplus=True)
    y_ref.backward(dy.double().cpu())
    assert_close_rel(y.detach().cpu(), y_ref.detach(), 2e-4, "y")
    for name, got, want in zip(["x"] + list(args), grads, [xr] + list(ref_in.values())):
        assert_close_rel(got.cpu(), want.grad, 2e-4, f"d{name}")


# ------------------------------------------------------------------------------------------------
# int32 limits (no memory is touched: the checks read shapes only)

def test_too_many_tokens_is_a_value_error():
    n = 1 << 31
    q = torch.empty(n, 1, dtype=DT)  # never written: costs no memory
    mask = torch.empty(n, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"q has 2147483648 rows \(tokens\).*at most 2147483647"):
        route_boundaries(q, q)
    with pytest.raises(ValueError, match=r"x has 2147483648 rows"):
        chunk_gather(q, mask)
    with pytest.raises(ValueError, match=r"q has 2147483648 rows"):
        route_and_gather(q, q, q)
    with pytest.raises(ValueError, match=r"chunk_id has 2147483648 entries"):
        chunk_scatter(torch.zeros(1, 1), torch.empty(n, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"z_chunks has 2147483648 rows \(chunks\)"):
        ema_smooth(q, torch.empty(n))
    x, dt = torch.empty(1, n, 1, 1), torch.empty(1, n, 1)  # a packed scan: int32 offsets
    with pytest.raises(ValueError, match=r"x has 2147483648 packed tokens"):
        bi_selective_scan(x, dt, -torch.ones(1), x, x, cu_seqlens=torch.tensor([0, n]))


@pytest.mark.parametrize("bad,message", [
    ([0, (1 << 32) + 3, 5], r"cu_seqlens\[2\] = 5 < cu_seqlens\[1\] = 4294967299"),
    ([0, 2, (1 << 32) + 5], "must end at the total length 5, got 4294967301"),
])
def test_int64_offsets_do_not_wrap_into_valid_ones(bad, message):
    """Cast to int32 these would read [0, 3, 5] and [0, 2, 5]: valid. They must be rejected,
    and the message must show the values as given."""
    cu = torch.tensor(bad, dtype=torch.int64)
    q = torch.randn(5, 4)
    with pytest.raises(ValueError, match=message):
        route_boundaries(q, q, cu)
    x = torch.randn(1, 5, 2, 4)
    B = torch.randn(1, 5, 1, 4)
    with pytest.raises(ValueError, match=message):
        bi_selective_scan(x, torch.rand(1, 5, 2), -torch.ones(2), B, B, cu_seqlens=cu)
    # while tracing they are clamped instead of read: still rejected by the op's own check
    traced = torch.compile(route_boundaries, fullgraph=False, backend="aot_eager")
    with pytest.raises(Exception, match="cu_seqlens must"):
        traced(q, q, cu)


def test_tensor_memo_remembers_device_tensors_until_modified():
    """One packed batch passes the same offsets to every layer: on an accelerator their check
    (a host sync) and int64 -> int32 conversion are remembered while the tensor is unmodified.
    The meta device stands in for the accelerator."""
    from mmhnet.ops._checks import _TensorMemo

    memo, t = _TensorMemo(), torch.zeros(3, device="meta")
    memo.put(t, "key", "found")
    assert memo.get(t, "key") == "found" and memo.get(t, "other key") is None
    assert memo.get(torch.zeros(3, device="meta"), "key") is None
    t.add_(1)  # in place: the version counter moves, the memo no longer applies
    assert memo.get(t, "key") is None


def test_cpu_offsets_are_never_remembered():
    """CPU tensors are checked and converted at every use: memory shared with numpy changes
    without moving the version counter."""
    from mmhnet.ops._checks import offsets_int32

    cu = torch.tensor([0, 2, 5])
    assert offsets_int32(cu, 5).dtype == torch.int32
    cu.numpy()[1] = 3
    assert offsets_int32(cu, 5).tolist() == [0, 3, 5]
    cu.numpy()[1] = 9
    with pytest.raises(ValueError, match="must not decrease"):
        offsets_int32(cu, 5)
